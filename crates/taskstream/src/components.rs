//! Starting and stopping each component. Every component runs as a tokio
//! task with its own shutdown trigger, so a process (or a test) can run any
//! subset of them and stop one without the others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_api::{ApiBuilder, ErrorResponder, HttpLimits, Problem, ReadinessCheck};
use taskstream_avro::RegistryClient;
use taskstream_domain::{EventCodec, JsonCodec};
use taskstream_kafka::{
    ConsumerSettings, EventConsumer, EventProducer, KafkaConfig, PartitionHealth, ProducerSettings,
    TopicHealth, TopicProbe,
};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{
    AuditHandler, ConsumerService, DeadLetterPublisher, Deduplicated, DelayedSink, EventDecoder,
    EventEncoding, EventHandler, GapRepair, LogSink, NotificationHandler, NotificationSink,
    OffsetResets, OutboxRelay, OutboxRepair, ProcessedEvents, ProducerFactory, RelaySettings,
    RetryPolicy, Shutdown, ShutdownTrigger, WebhookSink, AUDITOR_GROUP, NOTIFIER_GROUP,
};
use taskstream_store::{Database, OutboxStore, PgOptions, SqliteOptions, Store};
use taskstream_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::data_dir_lock::{DataDirLock, REGISTRY_LOCK_FILE};

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "taskstream.db";

/// How long a component may take to stop before it is abandoned.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A running component. Dropping it without [`Component::stop`] aborts it.
pub struct Component {
    name: &'static str,
    trigger: ShutdownTrigger,
    task: Option<JoinHandle<()>>,
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Component {
    /// Runs `body` as a task that stops when this component is stopped.
    pub fn spawn<F, Fut>(name: &'static str, body: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (trigger, shutdown) = Shutdown::new();
        let task = Some(tokio::spawn(body(shutdown)));
        Self {
            name,
            trigger,
            task,
        }
    }

    /// The component's name (`api`, `relay`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Signals the component to stop and waits for it to finish its in-flight
    /// work, for at most [`STOP_DEADLINE`].
    pub async fn stop(self) {
        self.stop_by(tokio::time::Instant::now() + STOP_DEADLINE)
            .await;
    }

    /// Signals the component to stop and waits for it to finish its
    /// in-flight work until `deadline` (at most [`STOP_DEADLINE`] from now),
    /// then abandons it: a process stopping several components gives them
    /// one deadline, so its shutdown stays within
    /// [`crate::shutdown_guard::SHUTDOWN_BOUND`].
    pub async fn stop_by(mut self, deadline: tokio::time::Instant) {
        self.trigger.trigger();
        let name = self.name;
        let Some(mut task) = self.task.take() else {
            return;
        };
        let deadline = deadline.min(tokio::time::Instant::now() + STOP_DEADLINE);
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(())) => tracing::debug!(component = name, "stopped"),
            Ok(Err(e)) => tracing::error!(component = name, error = %e, "component task failed"),
            Err(_) => {
                tracing::warn!(component = name, "did not stop in time; abandoning it");
                task.abort();
            }
        }
    }
}

/// How long a process's components together may take to stop gracefully;
/// the rest of [`crate::shutdown_guard::SHUTDOWN_BOUND`] is left for closing
/// the store and the runtime.
pub const GRACEFUL_STOP_BUDGET: Duration = Duration::from_secs(8);

/// Stops `components` in order, sharing [`GRACEFUL_STOP_BUDGET`].
pub async fn stop_all(components: Vec<Component>) {
    let deadline = tokio::time::Instant::now() + GRACEFUL_STOP_BUDGET;
    for component in components {
        component.stop_by(deadline).await;
    }
}

/// Opens (creating and migrating) the store: `database` when given, else
/// the SQLite file in `data_dir`.
pub async fn open_store(
    data_dir: &Path,
    database: Option<&Database>,
    sqlite: &SqliteOptions,
    postgres: &PgOptions,
) -> anyhow::Result<Arc<Store>> {
    let database = database
        .cloned()
        .unwrap_or_else(|| Database::Sqlite(data_dir.join(DATABASE_FILE)));
    let store = Store::open(&database, sqlite, postgres)
        .await
        .with_context(|| format!("cannot open the store at {database}"))?;
    Ok(Arc::new(store))
}

/// With PostgreSQL, wakes the relay whenever another process commits an
/// event (`LISTEN`), instead of waiting for its next poll. Reconnects after
/// a lost connection; the relay's poll covers the gap.
pub fn outbox_listener(store: &Arc<Store>, wake: Arc<Notify>) -> Option<Component> {
    let Store::Postgres(_) = &**store else {
        return None;
    };
    let store = Arc::clone(store);
    Some(Component::spawn(
        "outbox-listener",
        move |mut shutdown| async move {
            let mut backoff = taskstream_services::Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(10),
            );
            loop {
                let listened = store
                    .postgres()
                    .expect("checked above")
                    .listen_for_commits(&wake);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    Err(error) = listened => {
                        tracing::warn!(%error, "lost the outbox notification channel; reconnecting");
                    }
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        },
    ))
}

/// The event encoding in use.
pub fn codec() -> Arc<dyn EventCodec> {
    Arc::new(JsonCodec)
}

/// Binds `addr` and serves `router` as component `name` within `limits`
/// until stopped, then runs `after`. Errors the server answers itself are
/// written by `errors`. Returns the bound address (useful with port 0).
pub async fn serve(
    name: &'static str,
    addr: SocketAddr,
    router: axum::Router,
    limits: &HttpLimits,
    errors: ErrorResponder,
    after: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, Component)> {
    limits
        .validate()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid HTTP limits for {name}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name})"))?;
    let bound = listener.local_addr()?;
    let limits = limits.clone();
    let component = Component::spawn(name, move |mut shutdown| async move {
        let stop = async move { shutdown.wait().await };
        if let Err(error) = taskstream_api::serve(listener, router, limits, errors, stop).await {
            tracing::error!(component = name, %error, "server failed");
        }
        after.await;
    });
    Ok((bound, component))
}

/// Binds `addr` and serves `api` within `limits` until stopped. Returns
/// the bound address (useful with port 0).
pub async fn http(
    addr: SocketAddr,
    api: ApiBuilder,
    limits: &HttpLimits,
) -> anyhow::Result<(SocketAddr, Component)> {
    serve(
        "http",
        addr,
        api.build(),
        limits,
        Problem::response,
        async {},
    )
    .await
}

/// The Task API's routes over `store`; `relay_wake` is notified after each commit.
pub fn task_api(store: Arc<Store>, relay_wake: Arc<Notify>) -> ApiBuilder {
    let service = taskstream_api::TaskService::new(store, codec(), relay_wake, TASK_EVENTS);
    ApiBuilder::new().tasks(service)
}

/// Starts the outbox relay.
pub fn relay(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    wake: Arc<Notify>,
    settings: RelaySettings,
    encoding: EventEncoding,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    // A record that timed out while a later one of the same task got through
    // would be published after it on retry: the relay's records never time out.
    let kafka = kafka.clone();
    let new_producer: ProducerFactory =
        Arc::new(move || EventProducer::new(&kafka, "relay", &ProducerSettings::ordered()));
    let relay = OutboxRelay::new(
        store,
        new_producer,
        wake,
        settings,
        Arc::clone(metrics),
        encoding,
    )
    .context("cannot create the relay's Kafka producer")?;
    Ok(Component::spawn("relay", move |shutdown| {
        relay.run(shutdown)
    }))
}

/// How a consumer service talks to its group and treats failures.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    pub kafka: ConsumerSettings,
    pub retry: RetryPolicy,
    /// Resolves the schema ids of Avro records; without it only JSON is read.
    pub registry: Option<Arc<RegistryClient>>,
    /// Where the consumers started with these options report offset
    /// resets, for [`OffsetResetCheck`].
    pub resets: Arc<OffsetResets>,
}

impl ConsumerOptions {
    /// Defaults tuned for the dev broker (see [`ConsumerSettings::for_dev_broker`]).
    pub fn for_dev_broker() -> Self {
        Self {
            kafka: ConsumerSettings::for_dev_broker(),
            ..Self::default()
        }
    }
}

fn consumer<H: EventHandler>(
    name: &'static str,
    kafka: &KafkaConfig,
    group: &str,
    options: &ConsumerOptions,
    handler: H,
    repair: Arc<dyn GapRepair>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let consumer = EventConsumer::subscribe(kafka, group, &[TASK_EVENTS], &options.kafka)
        .with_context(|| format!("cannot join consumer group {group}"))?;
    let producer = EventProducer::new(kafka, &format!("{group}-dlq"), &ProducerSettings::default())
        .context("cannot create the dead-letter producer")?;
    let service = ConsumerService::new(
        consumer,
        Arc::new(EventDecoder::new(options.registry.clone())),
        handler,
        Arc::clone(metrics),
        DeadLetterPublisher::new(producer),
        options.retry.clone(),
    )
    .with_offset_resets(Arc::clone(&options.resets), Some(repair));
    Ok(Component::spawn(name, move |shutdown| {
        service.run(shutdown)
    }))
}

/// Starts the audit-log service in `group` (default `auditor`).
pub fn auditor(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let group = group.unwrap_or(AUDITOR_GROUP);
    // Records deleted before the auditor read them are republished from
    // the outbox, where this store has them.
    let repair = Arc::new(OutboxRepair::for_auditor(Arc::clone(&store)));
    consumer(
        "auditor",
        kafka,
        group,
        options,
        AuditHandler::new(store),
        repair,
        metrics,
    )
}

/// Starts the notification service in `group` (default `notifier`) with the
/// log sink, waiting `delay` before each notification (zero in normal use;
/// a slow notifier on purpose shows consumer lag building up).
pub fn notifier(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    sink: &NotifierSink,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let group = group.unwrap_or(NOTIFIER_GROUP);
    fn slowed<S: NotificationSink>(sink: S, delay: Duration) -> Arc<dyn NotificationSink> {
        if delay.is_zero() {
            Arc::new(sink)
        } else {
            Arc::new(DelayedSink::new(sink, delay))
        }
    }
    let sink = match &sink.webhook {
        Some(url) => slowed(
            WebhookSink::new(url, WEBHOOK_TIMEOUT).map_err(anyhow::Error::msg)?,
            sink.delay,
        ),
        None => slowed(LogSink, sink.delay),
    };
    let repair = Arc::new(OutboxRepair::for_notifier(Arc::clone(&store), group));
    let handler = Deduplicated::new(
        ProcessedEvents::new(store.clone()),
        NotificationHandler::new(store, sink),
    );
    consumer("notifier", kafka, group, options, handler, repair, metrics)
}

/// How long the notifier waits for a webhook to answer (a slower one is
/// retried, then dead-lettered).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the notifier sends notifications.
#[derive(Debug, Clone, Default)]
pub struct NotifierSink {
    /// POST each notification here (http); `None` logs them.
    pub webhook: Option<String>,
    /// Wait this long before each one (a slow notifier on purpose).
    pub delay: Duration,
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
pub struct KafkaCheck(TopicProbe);

/// How long each step of the Kafka check (metadata, the leaders, the
/// topic's config) may take: together within `/readyz`'s 2 s per check.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_millis(600);

impl KafkaCheck {
    pub fn new(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let probe = TopicProbe::new(kafka, "readiness")
            .context("cannot create the readiness check's Kafka client")?;
        Ok(Self(probe))
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for KafkaCheck {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn check(&self) -> Result<String, String> {
        match self.0.probe(TASK_EVENTS, KAFKA_PROBE_TIMEOUT).await {
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
/// them in the last reset report window (15 minutes by default): each reset
/// fails the check for that long, naming the group, the partition, the
/// offsets skipped and what the repair did, so a probe or a person sees it
/// even when the repair made it whole. The counters
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
        if recent.is_empty() {
            return Ok(format!(
                "no consumer skipped records deleted unread in the last {} s",
                self.window.as_secs()
            ));
        }
        Err(recent
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
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

/// Serves the embedded schema registry within `limits`, its state in
/// `data_dir`. Only one process serves a data directory's registry:
/// `command` (`up`, `registry`) names this one to another that tries.
pub async fn registry(
    addr: SocketAddr,
    data_dir: &Path,
    command: &str,
    limits: &HttpLimits,
) -> anyhow::Result<(SocketAddr, Component)> {
    let lock = DataDirLock::acquire(data_dir, REGISTRY_LOCK_FILE, command)?;
    let path = data_dir.join(REGISTRY_FILE);
    let store = taskstream_registry::RegistryStore::open(&path)
        .await
        .with_context(|| {
            format!(
                "cannot open the schema registry's database at {}",
                path.display()
            )
        })?;
    let router = taskstream_registry::router(store.clone());
    serve(
        "schema-registry",
        addr,
        router,
        limits,
        taskstream_registry::error_response,
        async move {
            store.close().await;
            drop(lock);
        },
    )
    .await
}

/// The schema registry's database file inside a data directory.
pub const REGISTRY_FILE: &str = "registry.db";

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
