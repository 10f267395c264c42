//! Readiness: the checks each component carries (see
//! [`super::Component::readiness_checks`]), and how a process's `/readyz`
//! list is assembled from the components it runs.
//!
//! A component checks what it depends on: every one that uses the store
//! checks the store, the relay and the consumers check Kafka, the relay the
//! outbox's age, the consumers offset resets, and whoever encodes or
//! decodes Avro the schema registry. A Task API alone is ready while it can
//! take writes: a lagging relay is the relay's readiness problem, and the
//! outbox keeps the writes meanwhile.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskstream_api::ReadinessCheck;
use taskstream_avro::RegistryClient;
use taskstream_kafka::{KafkaConfig, PartitionHealth, TopicHealth, TopicProbe};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{OffsetResets, Repair, ReportedReset};
use taskstream_store::{OutboxStore, Store};

use super::ConsumerOptions;

/// A list of readiness checks, as `/readyz` runs them.
pub type Checks = Vec<Arc<dyn ReadinessCheck>>;

/// The `/readyz` list of a process running components with these checks:
/// each check once (the first component to carry a name keeps it), in the
/// order the components list them — a check new to the list goes before
/// the first of its component's later checks already in it. So a process
/// reports `store`, `kafka`, `outbox_age`, `offset_resets`,
/// `schema_registry`, keeping those its components carry.
pub fn assemble<'a>(components: impl IntoIterator<Item = &'a [Arc<dyn ReadinessCheck>]>) -> Checks {
    let mut assembled: Checks = Vec::new();
    let position = |list: &Checks, name: &str| list.iter().position(|check| check.name() == name);
    for checks in components {
        for (i, check) in checks.iter().enumerate() {
            if position(&assembled, check.name()).is_some() {
                continue;
            }
            let at = checks[i + 1..]
                .iter()
                .find_map(|later| position(&assembled, later.name()))
                .unwrap_or(assembled.len());
            assembled.insert(at, Arc::clone(check));
        }
    }
    assembled
}

/// The Task API can encode events: with Avro, the event schemas are
/// registered (a registry down when the API started leaves them
/// unregistered, and every task write is refused with 503 until they are).
/// Once registered, a registry outage no longer matters to the API.
pub struct SchemasCheck {
    encoding: taskstream_services::EventEncoding,
}

impl SchemasCheck {
    pub fn new(encoding: taskstream_services::EventEncoding) -> Self {
        Self { encoding }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for SchemasCheck {
    fn name(&self) -> &'static str {
        "schemas"
    }

    async fn check(&self) -> Result<String, String> {
        if self.encoding.is_ready() {
            Ok("the event schemas are registered".into())
        } else {
            Err("the event schemas are not registered yet (the schema registry has not answered): task writes are refused until they are".into())
        }
    }
}

/// The store answers queries and takes writes.
///
/// While task writes are failing (a full disk, a lost database), the check
/// fails and says why; it then tries a small write of its own at most once
/// a second, so readiness comes back by itself once the database takes
/// writes again, even when no client is writing.
pub struct StoreCheck {
    store: Arc<Store>,
    last_probe: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl StoreCheck {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            last_probe: tokio::sync::Mutex::new(None),
        }
    }
}

/// How often readiness may write to find out whether writes work again.
const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[async_trait::async_trait]
impl ReadinessCheck for StoreCheck {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<String, String> {
        self.store.ping().await.map_err(|e| e.to_string())?;
        if self.store.write_health().failing().is_some() {
            let mut last = self.last_probe.lock().await;
            if last.is_none_or(|at| at.elapsed() >= WRITE_PROBE_INTERVAL) {
                *last = Some(tokio::time::Instant::now());
                let _ = self.store.probe_write().await;
            }
        }
        match self.store.write_health().failing() {
            None => Ok("the database answers and takes writes".to_owned()),
            Some(failure) => Err(format!(
                "writes have failed since {}: {}",
                failure
                    .since
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                failure.error
            )),
        }
    }
}

/// Kafka can take the events: `task-events` exists, and each of its
/// partitions has a leader that answers, with at least
/// `min.insync.replicas` copies in sync. One broker answering is not
/// enough — with two of three down, the third still answers while every
/// write waits — so the detail names the partitions and brokers at fault.
///
/// Its Kafka client is created at the first check: of the Kafka checks a
/// process's components carry, only the one its `/readyz` keeps (see
/// [`assemble`]) ever starts one.
pub struct KafkaCheck {
    kafka: KafkaConfig,
    probe: OnceLock<TopicProbe>,
}

/// How long each step of the Kafka check (metadata, the leaders, the
/// topic's config) may take: together within `/readyz`'s 2 s per check.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_millis(600);

impl KafkaCheck {
    pub fn new(kafka: &KafkaConfig) -> Self {
        Self {
            kafka: kafka.clone(),
            probe: OnceLock::new(),
        }
    }

    fn probe(&self) -> Result<&TopicProbe, String> {
        if let Some(probe) = self.probe.get() {
            return Ok(probe);
        }
        let probe = TopicProbe::new(&self.kafka, "readiness")
            .map_err(|e| format!("cannot create the readiness check's Kafka client: {e}"))?;
        Ok(self.probe.get_or_init(|| probe))
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for KafkaCheck {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn check(&self) -> Result<String, String> {
        match self.probe()?.probe(TASK_EVENTS, KAFKA_PROBE_TIMEOUT).await {
            Err(e) => Err(format!("no broker answers: {e}")),
            Ok(None) => Err(format!(
                "topic {TASK_EVENTS} does not exist (create it with `taskstream topics apply`)"
            )),
            Ok(Some(health)) => judge_topic(&health),
        }
    }
}

/// `partition 3`, or `partitions 1, 4`.
fn partition_list<'a>(partitions: impl Iterator<Item = &'a PartitionHealth>) -> String {
    let ids: Vec<String> = partitions.map(|p| p.partition.to_string()).collect();
    let noun = if ids.len() == 1 {
        "partition"
    } else {
        "partitions"
    };
    format!("{noun} {}", ids.join(", "))
}

/// Whether writes to the topic can be acknowledged, and if not, why.
fn judge_topic(health: &TopicHealth) -> Result<String, String> {
    let topic = &health.topic;
    let mut problems = Vec::new();
    let leaderless: Vec<&PartitionHealth> = health
        .partitions
        .iter()
        .filter(|p| p.leader.is_none())
        .collect();
    if !leaderless.is_empty() {
        problems.push(format!(
            "no leader for {}",
            partition_list(leaderless.into_iter())
        ));
    }
    let mut silent: Vec<i32> = health
        .partitions
        .iter()
        .filter(|p| !p.leader_answers)
        .filter_map(|p| p.leader)
        .collect();
    silent.sort_unstable();
    silent.dedup();
    for leader in silent {
        let led = health
            .partitions
            .iter()
            .filter(|p| p.leader == Some(leader));
        problems.push(format!(
            "broker {leader} ({}), leader of {}, does not answer",
            health.address(leader),
            partition_list(led)
        ));
    }
    let under: Vec<&PartitionHealth> = health
        .partitions
        .iter()
        .filter(|p| p.in_sync < p.replicas)
        .collect();
    let min_insync = health.min_insync_replicas;
    let too_few: Vec<&PartitionHealth> = under
        .iter()
        .copied()
        .filter(|p| min_insync.is_some_and(|min| (p.in_sync as i64) < i64::from(min)))
        .collect();
    if let (false, Some(min)) = (too_few.is_empty(), min_insync) {
        problems.push(format!(
            "fewer replicas in sync than min.insync.replicas ({min}) on {}, so writes wait",
            partition_list(too_few.into_iter())
        ));
    }
    let brokers = health.brokers.len();
    if !problems.is_empty() {
        return Err(format!(
            "{topic}: {} ({brokers} brokers listed)",
            problems.join("; ")
        ));
    }
    let mut detail = format!(
        "{topic}: the leaders of all {} partitions answer ({brokers} brokers listed)",
        health.partitions.len()
    );
    if !under.is_empty() {
        detail.push_str(&format!(
            "; under-replicated, with enough replicas in sync: {}",
            partition_list(under.into_iter())
        ));
    }
    Ok(detail)
}

/// No consumer of this process skipped records deleted before it read
/// them, unrepaired, in the last reset report window (15 minutes by
/// default). A reset whose repair is pending, failed, or impossible (no
/// outbox: the events are lost) fails the check for that long; one the
/// outbox repaired (its events republished) is named in the passing
/// detail instead, so a person still sees it while the process stays in
/// service. Each names the group, the partition, the offsets skipped and
/// what the repair did. The counters
/// `taskstream_consumer_offset_resets_total` and
/// `taskstream_consumer_skipped_events_total` keep every reset.
pub struct OffsetResetCheck {
    resets: Arc<OffsetResets>,
    window: Duration,
}

impl OffsetResetCheck {
    pub fn new(options: &ConsumerOptions) -> Self {
        Self {
            resets: Arc::clone(&options.resets),
            window: options.kafka.reset_report_window,
        }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for OffsetResetCheck {
    fn name(&self) -> &'static str {
        "offset_resets"
    }

    async fn check(&self) -> Result<String, String> {
        let recent = self.resets.within(self.window);
        let join = |resets: &[&ReportedReset]| {
            resets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (repaired, unrepaired): (Vec<_>, Vec<_>) = recent
            .iter()
            .partition(|r| matches!(r.repair, Repair::Republished(_)));
        if !unrepaired.is_empty() {
            return Err(join(&unrepaired));
        }
        if repaired.is_empty() {
            return Ok(format!(
                "no consumer skipped records deleted unread in the last {} s",
                self.window.as_secs()
            ));
        }
        Ok(format!("repaired: {}", join(&repaired)))
    }
}

/// The relay keeps up: the oldest unpublished event is younger than `max_age`.
pub struct OutboxAgeCheck {
    pub store: Arc<Store>,
    pub max_age: Duration,
}

#[async_trait::async_trait]
impl ReadinessCheck for OutboxAgeCheck {
    fn name(&self) -> &'static str {
        "outbox_age"
    }

    async fn check(&self) -> Result<String, String> {
        let stats = self.store.outbox_stats().await.map_err(|e| e.to_string())?;
        let Some(oldest) = stats.oldest_pending_at else {
            return Ok("no events pending".to_owned());
        };
        let age = (taskstream_domain::now() - oldest)
            .to_std()
            .unwrap_or_default();
        let detail = format!(
            "{} pending, oldest {:.1} s old (limit {} s)",
            stats.pending,
            age.as_secs_f64(),
            self.max_age.as_secs()
        );
        if age <= self.max_age {
            Ok(detail)
        } else {
            Err(detail)
        }
    }
}

/// The schema registry answers.
pub struct RegistryCheck(pub Arc<RegistryClient>);

#[async_trait::async_trait]
impl ReadinessCheck for RegistryCheck {
    fn name(&self) -> &'static str {
        "schema_registry"
    }

    async fn check(&self) -> Result<String, String> {
        self.0
            .ping()
            .await
            .map(|()| format!("{} answers", self.0.url()))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reset_fails_readiness_until_the_outbox_republished_its_events() {
        let options = ConsumerOptions::default();
        let check = OffsetResetCheck::new(&options);
        assert!(check.check().await.is_ok());
        let reset = taskstream_kafka::OffsetReset {
            group: "auditor".into(),
            topic: "task-events".into(),
            partition: 3,
            from: 10,
            to: 250,
            log_start: 240,
            detected_at_ms: 0,
        };
        options.resets.record(&reset);
        let pending = check.check().await.unwrap_err();
        assert!(
            pending.contains("task-events[3]") && pending.contains("repair pending"),
            "{pending}"
        );
        options.resets.repaired(&reset, &Repair::Unavailable);
        let lost = check.check().await.unwrap_err();
        assert!(lost.contains("the events are lost"), "{lost}");
        options.resets.repaired(&reset, &Repair::Republished(240));
        let repaired = check.check().await.unwrap();
        assert!(
            repaired.starts_with("repaired: ")
                && repaired.contains("240 unhandled events republished"),
            "{repaired}"
        );
    }

    #[tokio::test]
    async fn an_api_whose_schemas_are_not_registered_is_not_ready() {
        let unreachable = Arc::new(RegistryClient::new("http://127.0.0.1:1"));
        let avro = taskstream_services::EventEncoding::avro(unreachable, TASK_EVENTS);
        let _ = avro.register_schemas().await;
        let failing = SchemasCheck::new(avro).check().await.unwrap_err();
        assert!(failing.contains("task writes are refused"), "{failing}");
        assert!(SchemasCheck::new(taskstream_services::EventEncoding::Json)
            .check()
            .await
            .is_ok());
    }

    /// A check that only has a name.
    struct Named(&'static str);

    #[async_trait::async_trait]
    impl ReadinessCheck for Named {
        fn name(&self) -> &'static str {
            self.0
        }

        async fn check(&self) -> Result<String, String> {
            Ok(String::new())
        }
    }

    fn checks(names: &[&'static str]) -> Checks {
        names
            .iter()
            .map(|&name| Arc::new(Named(name)) as Arc<dyn ReadinessCheck>)
            .collect()
    }

    fn names(checks: &Checks) -> Vec<&'static str> {
        checks.iter().map(|c| c.name()).collect()
    }

    #[test]
    fn a_process_checks_each_dependency_of_its_components_once_in_the_components_order() {
        let api = checks(&["store"]);
        let relay = checks(&["store", "kafka", "outbox_age", "schema_registry"]);
        let consumer = checks(&["store", "kafka", "offset_resets", "schema_registry"]);
        let registry = checks(&["schema_registry"]);
        let broker = checks(&["kafka"]);
        let up = assemble([&api, &relay, &consumer, &consumer, &registry, &broker].map(|c| &c[..]));
        assert_eq!(
            names(&up),
            [
                "store",
                "kafka",
                "outbox_age",
                "offset_resets",
                "schema_registry"
            ]
        );
        assert!(
            Arc::ptr_eq(&up[1], &relay[1]),
            "the first carrier keeps its check"
        );
        let consumer_alone = assemble([&consumer[..]]);
        assert_eq!(
            names(&consumer_alone),
            ["store", "kafka", "offset_resets", "schema_registry"]
        );
        let json_up = assemble(
            [
                &api,
                &checks(&["store", "kafka", "outbox_age"]),
                &checks(&["store", "kafka", "offset_resets"]),
            ]
            .map(|c| &c[..]),
        );
        assert_eq!(
            names(&json_up),
            ["store", "kafka", "outbox_age", "offset_resets"]
        );
    }

    fn partition(
        partition: i32,
        leader: Option<i32>,
        answers: bool,
        in_sync: usize,
    ) -> PartitionHealth {
        PartitionHealth {
            partition,
            leader,
            leader_answers: answers,
            replicas: 3,
            in_sync,
        }
    }

    fn topic(partitions: Vec<PartitionHealth>, min_insync_replicas: Option<i32>) -> TopicHealth {
        TopicHealth {
            topic: "task-events".into(),
            brokers: vec![
                (1, "k1:9092".into()),
                (2, "k2:9092".into()),
                (3, "k3:9092".into()),
            ],
            partitions,
            min_insync_replicas,
        }
    }

    #[test]
    fn a_healthy_topic_is_ready() {
        let health = topic(
            vec![
                partition(0, Some(1), true, 3),
                partition(1, Some(2), true, 3),
            ],
            None,
        );
        assert_eq!(
            judge_topic(&health),
            Ok("task-events: the leaders of all 2 partitions answer (3 brokers listed)".into())
        );
    }

    #[test]
    fn leaders_that_do_not_answer_are_named_with_their_partitions() {
        let health = topic(
            vec![
                partition(0, Some(2), false, 3),
                partition(1, Some(3), true, 3),
                partition(2, Some(2), false, 3),
                partition(3, None, false, 0),
            ],
            None,
        );
        assert_eq!(
            judge_topic(&health),
            Err("task-events: no leader for partition 3; broker 2 (k2:9092), leader of partitions 0, 2, does not answer (3 brokers listed)".into())
        );
    }

    #[test]
    fn too_few_replicas_in_sync_is_not_ready_and_a_few_missing_is_only_said() {
        let below = topic(
            vec![
                partition(0, Some(1), true, 1),
                partition(1, Some(1), true, 3),
            ],
            Some(2),
        );
        assert_eq!(
            judge_topic(&below),
            Err("task-events: fewer replicas in sync than min.insync.replicas (2) on partition 0, so writes wait (3 brokers listed)".into())
        );
        let degraded = topic(
            vec![
                partition(0, Some(1), true, 2),
                partition(1, Some(1), true, 3),
            ],
            Some(2),
        );
        assert_eq!(
            judge_topic(&degraded),
            Ok("task-events: the leaders of all 2 partitions answer (3 brokers listed); under-replicated, with enough replicas in sync: partition 0".into())
        );
    }
}
