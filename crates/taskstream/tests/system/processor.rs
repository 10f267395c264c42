//! The workload processor (`taskstream processor`), exactly once, on Apache
//! Kafka and on taskstream's own broker:
//!
//! - the kill harness: the real binary SIGKILLed at random moments while it
//!   works through a backlog of task events, then run to the end. A
//!   `read_committed` reader of its topics sees each input event's outputs
//!   exactly once; a `read_uncommitted` reader of the same topics sees the
//!   records of the transactions the kills cut off — so the check can fail;
//! - fencing: a second processor with the same transactional id stops the
//!   first, which exits with a one-line error instead of retrying;
//! - coordinator failure (three-node Kafka): the broker coordinating the
//!   transactional id is killed mid-run; nothing is lost or doubled.
//!
//! Size the harness with `TASKSTREAM_PROCESSOR_TASKS` (default 150) and
//! `TASKSTREAM_PROCESSOR_KILLS` (default 4); it prints a summary line.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskstream::components::{DevBrokerKind, EmbeddedBroker, EmbeddedBrokerSettings};
use taskstream_domain::{
    headers, Assignee, Cause, EventCodec, EventEnvelope, JsonCodec, NewTask, Priority, Task,
    TaskPatch, TaskTitle,
};
use taskstream_kafka::{
    read_committed, read_uncommitted, EventProducer, InboundRecord, KafkaConfig, OutboundRecord,
    ProducerSettings,
};
use taskstream_services::processor::{Workload, CAUSATION_ID};
use taskstream_services::topics::{ASSIGNEE_WORKLOAD, TASK_EVENTS, WORKLOAD_TASK_STATE};
use taskstream_testkit::Shape;

use crate::binary::{launch, ChildGuard};
use crate::brokers::Broker;
use crate::crash::{env_or, seed, Rng};
use crate::helpers::eventually;

const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the processor runs against: Apache Kafka, or taskstream's broker
/// in this process.
enum Target {
    Kafka(Broker),
    Taskstream(EmbeddedBroker, #[allow(dead_code)] tempfile::TempDir),
}

impl Target {
    async fn kafka(shape: Shape, what: &str) -> Option<Self> {
        Broker::apache_kafka(shape, what).await.map(Self::Kafka)
    }

    async fn taskstream() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::start(&EmbeddedBrokerSettings {
            kind: DevBrokerKind::Taskstream,
            ..EmbeddedBrokerSettings::new(Some(dir.path().join("broker")))
        })
        .await
        .expect("taskstream's broker starts with the declared topics");
        Self::Taskstream(broker, dir)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Kafka(broker) => broker.name(),
            Self::Taskstream(..) => "taskstream",
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Self::Kafka(broker) => broker.cluster().unwrap().bootstrap_servers().to_owned(),
            Self::Taskstream(broker, _) => broker.bootstrap_servers().to_owned(),
        }
    }

    fn config(&self) -> KafkaConfig {
        KafkaConfig::new(self.bootstrap()).quiet()
    }
}

/// Starts `taskstream processor` with `transactional_id` and small
/// transactions, so that most of its time is spent inside one.
fn start_processor(bootstrap: &str, transactional_id: &str, extra: &[&str]) -> ChildGuard {
    start_processor_http(bootstrap, transactional_id, extra).0
}

/// [`start_processor`], also returning where its /metrics is served.
fn start_processor_http(
    bootstrap: &str,
    transactional_id: &str,
    extra: &[&str],
) -> (ChildGuard, String) {
    let mut args = vec![
        "processor",
        "--http",
        "127.0.0.1:0",
        "--kafka-bootstrap",
        bootstrap,
        "--transactional-id",
        transactional_id,
        "--max-open-tasks",
        "4",
        "--max-batch",
        "5",
        "--batch-linger-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    let (child, line) = launch(&args, "warn,librdkafka=off", Stdio::inherit());
    let http = line
        .strip_prefix("http: ")
        .expect("the processor prints its address")
        .to_owned();
    (child, http)
}

/// A history of task events: `tasks` tasks created for a handful of
/// assignees (some overdue), a third of them handed to someone else, half
/// of them completed. Each task's events are in order.
fn history(tasks: usize, rng: &mut Rng) -> Vec<EventEnvelope> {
    let names = ["ada", "grace", "alan", "edsger", "barbara"];
    let now = taskstream_domain::now();
    let mut events = Vec::new();
    for _ in 0..tasks {
        let due = now + chrono::Duration::minutes(rng.below(120) as i64 - 60);
        let assignee = names[rng.below(names.len() as u64) as usize];
        let created = Task::create(
            NewTask {
                title: TaskTitle::parse("work").unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: Some(due),
                assignee: Some(Assignee::parse(assignee).unwrap()),
            },
            now,
            Cause::default(),
        );
        events.push(created.event);
        let mut task = created.task;
        if rng.below(3) == 0 {
            let other = names[rng.below(names.len() as u64) as usize];
            let patch = TaskPatch {
                assignee: Some(Some(Assignee::parse(other).unwrap())),
                ..TaskPatch::default()
            };
            if let Some(change) = task.update(patch, now, Cause::default()).unwrap() {
                events.push(change.event);
                task = change.task;
            }
        }
        if rng.below(2) == 0 {
            let change = task.complete(now, Cause::default()).unwrap();
            events.push(change.event);
        }
    }
    events
}

/// Publishes `events` to `task-events` as the relay would (JSON).
async fn publish(config: &KafkaConfig, events: &[EventEnvelope]) {
    let producer = EventProducer::new(config, "test-events", &ProducerSettings::default()).unwrap();
    let mut deliveries = Vec::new();
    for event in events {
        let payload = JsonCodec.encode(event).unwrap();
        let id = event.id.to_string();
        let headers: [(&str, &[u8]); 3] = [
            (headers::EVENT_ID, id.as_bytes()),
            (headers::EVENT_TYPE, event.event_type.as_str().as_bytes()),
            (headers::CONTENT_TYPE, headers::JSON_CONTENT_TYPE.as_bytes()),
        ];
        deliveries.push(
            producer
                .enqueue(OutboundRecord {
                    topic: TASK_EVENTS,
                    key: event.subject.as_bytes(),
                    payload: &payload,
                    headers: &headers,
                })
                .await
                .unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.expect("the event is published");
    }
}

/// Records per input event id (the causation-id header).
fn per_cause(records: &[InboundRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        let cause = r
            .header_str(CAUSATION_ID)
            .expect("a causation id")
            .to_owned();
        *counts.entry(cause).or_insert(0) += 1;
    }
    counts
}

/// How many workload records each event should cause (one per assignee it
/// touches), and every assignee's open tasks at the end, from the model.
fn expected(events: &[EventEnvelope]) -> (HashMap<String, usize>, BTreeMap<String, u32>) {
    let mut model = Workload::new(4);
    let mut per_event = HashMap::new();
    let mut last = BTreeMap::new();
    for event in events {
        let changes = model.apply(event).expect("every event changes something");
        per_event.insert(event.id.to_string(), changes.workloads.len());
        for w in changes.workloads {
            last.insert(w.assignee, w.open_tasks);
        }
    }
    (per_event, last)
}

/// Waits until the processor's committed state holds one record per event.
async fn wait_until_processed(config: &KafkaConfig, events: usize, within: Duration) {
    eventually("every event to be processed", within, || async {
        let state = read_committed(config, WORKLOAD_TASK_STATE, READ_TIMEOUT)
            .await
            .ok()?;
        (state.len() >= events).then_some(())
    })
    .await;
}

/// The exactly-once verdict over the processor's committed output.
async fn assert_exactly_once(config: &KafkaConfig, events: &[EventEnvelope]) -> (usize, usize) {
    let (workloads_per_event, final_open) = expected(events);
    let state = read_committed(config, WORKLOAD_TASK_STATE, READ_TIMEOUT)
        .await
        .unwrap();
    let workloads = read_committed(config, ASSIGNEE_WORKLOAD, READ_TIMEOUT)
        .await
        .unwrap();
    let state_per_cause = per_cause(&state);
    let workload_per_cause = per_cause(&workloads);
    let mut doubled = 0;
    let mut lost = 0;
    for event in events {
        let id = event.id.to_string();
        match state_per_cause.get(&id) {
            Some(1) => {}
            Some(_) => doubled += 1,
            None => lost += 1,
        }
        assert_eq!(
            workload_per_cause.get(&id).copied().unwrap_or(0),
            workloads_per_event[&id],
            "workload records caused by event {id}"
        );
    }
    assert_eq!(
        (lost, doubled),
        (0, 0),
        "state records: each input event's exactly once"
    );
    assert_eq!(state.len(), events.len(), "no output without an input");
    // The latest workload per assignee holds the final open counts.
    let mut latest: BTreeMap<String, (i64, u32)> = BTreeMap::new();
    for r in &workloads {
        let value: serde_json::Value = serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
        let assignee = value["assignee"].as_str().unwrap().to_owned();
        let open = value["open_tasks"].as_u64().unwrap() as u32;
        // Keyed by assignee: one partition holds all of an assignee's records.
        let entry = latest.entry(assignee).or_insert((-1, 0));
        if r.offset > entry.0 {
            *entry = (r.offset, open);
        }
    }
    let got: BTreeMap<String, u32> = latest.into_iter().map(|(k, (_, v))| (k, v)).collect();
    assert_eq!(got, final_open, "each assignee's open tasks at the end");
    (state.len(), workloads.len())
}

/// The processor's committed transactions, from its /metrics (0 while it
/// does not answer).
async fn committed_transactions(http: &str) -> f64 {
    let Ok(response) = crate::helpers::client()
        .get(format!("{http}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let metrics = response.text().await.unwrap_or_default();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("taskstream_kafka_transactions_total{")
                && l.contains(r#"component="processor""#)
                && l.contains(r#"outcome="committed""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Publishes `events` a few at a time, as a live system would.
async fn publish_paced(config: KafkaConfig, events: Vec<EventEnvelope>) {
    for chunk in events.chunks(3) {
        publish(&config, chunk).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Records of the state topic a `read_uncommitted` reader sees beyond the
/// committed ones: those of aborted or still open transactions.
async fn uncommitted_extra(config: &KafkaConfig) -> usize {
    let committed = read_committed(config, WORKLOAD_TASK_STATE, READ_TIMEOUT)
        .await
        .unwrap()
        .len();
    let all = read_uncommitted(config, WORKLOAD_TASK_STATE, READ_TIMEOUT)
        .await
        .unwrap()
        .len();
    all.saturating_sub(committed)
}

async fn sigkill_the_processor_at_random_moments(target: Target) {
    let tasks = env_or("TASKSTREAM_PROCESSOR_TASKS", 150);
    let kills = env_or("TASKSTREAM_PROCESSOR_KILLS", 4);
    let seed = seed();
    eprintln!("processor kill harness: seed={seed}");
    let mut rng = Rng(seed);
    let config = target.config();
    let bootstrap = target.bootstrap();
    let id = format!("processor-harness-{seed}");
    let per_run = (tasks / (kills + 1)).max(5);
    let mut events = Vec::new();
    // Each run gets new events, published while it works, and is killed
    // at a random moment. Kills go on (a bounded number of times) until at
    // least one cut a transaction off after it wrote records: what the
    // read_uncommitted reader below must be shown to see.
    let max_kills = kills * 6;
    let mut done_kills = 0;
    let mut cut_off = false;
    loop {
        let (child, http) = tokio::task::spawn_blocking({
            let bootstrap = bootstrap.clone();
            let id = id.clone();
            move || start_processor_http(&bootstrap, &id, &[])
        })
        .await
        .unwrap();
        let fresh = history(per_run, &mut rng);
        events.extend(fresh.iter().cloned());
        let publisher = tokio::spawn(publish_paced(config.clone(), fresh));
        let pid = child.0.id().to_string();
        if done_kills >= kills && cut_off {
            publisher.await.unwrap();
            wait_until_processed(&config, events.len(), Duration::from_secs(120)).await;
            let mut child = child;
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(
                child.0.wait().unwrap().success(),
                "the last run stops cleanly"
            );
            break;
        }
        assert!(
            done_kills < max_kills,
            "{max_kills} kills and none cut a transaction off after it wrote records"
        );
        // Once this run has committed a transaction (it owns its
        // partitions and works through its events, a few per
        // transaction), a moment later: most such moments fall inside an
        // open transaction whose records are written.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while committed_transactions(&http).await < 1.0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
        let mut child = child;
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        child.0.wait().unwrap();
        done_kills += 1;
        publisher.await.unwrap();
        // The killed process's open transaction, if it had written
        // anything, is still open (aborted when the next run starts).
        cut_off |= uncommitted_extra(&config).await > 0;
    }
    let (state, workloads) = assert_exactly_once(&config, &events).await;
    let uncommitted = read_uncommitted(&config, WORKLOAD_TASK_STATE, READ_TIMEOUT)
        .await
        .unwrap();
    let doubled_uncommitted = per_cause(&uncommitted).values().filter(|n| **n > 1).count();
    println!(
        "processor kill harness: broker={} events={} kills={done_kills} committed_state_records={state} committed_workload_records={workloads} uncommitted_state_records={} events_seen_twice_uncommitted={doubled_uncommitted}",
        target.name(),
        events.len(),
        uncommitted.len()
    );
    assert!(
        uncommitted.len() > state,
        "a read_uncommitted reader sees the records of the transactions the kills cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_the_processor_at_random_moments_leaves_each_events_outputs_exactly_once_on_apache_kafka(
) {
    let Some(target) = Target::kafka(Shape::SingleNode, "the processor kill harness").await else {
        return;
    };
    sigkill_the_processor_at_random_moments(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_the_processor_at_random_moments_leaves_each_events_outputs_exactly_once_on_taskstreams_broker(
) {
    sigkill_the_processor_at_random_moments(Target::taskstream().await).await;
}

async fn a_second_processor_fences_the_first(target: Target) {
    let config = target.config();
    let bootstrap = target.bootstrap();
    let mut rng = Rng(seed());
    let first_events = history(10, &mut rng);
    publish(&config, &first_events).await;
    let id = "processor-fencing";
    let mut older = start_processor(&bootstrap, id, &[]);
    wait_until_processed(&config, first_events.len(), Duration::from_secs(60)).await;
    let (mut newer, newer_http) = start_processor_http(&bootstrap, id, &[]);
    // The older one learns it was fenced at its next transactional call:
    // keep events coming until it has exited.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = first_events;
    let status = loop {
        let more = history(2, &mut rng);
        publish(&config, &more).await;
        events.extend(more);
        if let Some(status) = older.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the older processor is still running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!status.success(), "a fenced processor exits with an error");
    assert!(
        newer.0.try_wait().unwrap().is_none(),
        "the newer one runs on"
    );
    wait_until_processed(&config, events.len(), Duration::from_secs(60)).await;
    assert_exactly_once(&config, &events).await;
    let metrics = crate::helpers::client()
        .get(format!("{newer_http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed = committed_transactions(&newer_http).await;
    assert!(
        committed >= 1.0,
        "committed transactions are counted:\n{metrics}"
    );
    assert!(
        metrics.contains(
            "taskstream_kafka_transaction_duration_seconds_count{component=\"processor\"}"
        ),
        "transaction latency is measured"
    );
    Command::new("kill")
        .args(["-TERM", &newer.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        newer.0.wait().unwrap().success(),
        "the newer one stops cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_with_the_same_transactional_id_fences_the_first_which_exits_on_apache_kafka(
) {
    let Some(target) = Target::kafka(Shape::SingleNode, "processor fencing").await else {
        return;
    };
    a_second_processor_fences_the_first(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_with_the_same_transactional_id_fences_the_first_which_exits_on_taskstreams_broker(
) {
    a_second_processor_fences_the_first(Target::taskstream().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_transaction_coordinator_mid_run_loses_and_doubles_nothing_on_three_kafka_nodes(
) {
    let Some(target) = Target::kafka(Shape::ThreeNodes, "processor coordinator failure").await
    else {
        return;
    };
    let Target::Kafka(broker) = &target else {
        unreachable!()
    };
    let cluster = broker.cluster().unwrap();
    let config = target.config();
    let bootstrap = target.bootstrap();
    let mut rng = Rng(seed());
    let id = "processor-coordinator-failure";
    let mut events = history(20, &mut rng);
    publish(&config, &events).await;
    let mut processor = start_processor(&bootstrap, id, &[]);
    wait_until_processed(&config, events.len(), Duration::from_secs(90)).await;
    let coordinator = cluster
        .transaction_coordinator(id)
        .unwrap()
        .expect("the transactional id has a coordinator");
    // More events, and the coordinator killed while they are processed.
    let more = history(60, &mut rng);
    publish(&config, &more).await;
    events.extend(more);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || cluster.kill_node(coordinator))
        .await
        .unwrap()
        .unwrap();
    let after = history(20, &mut rng);
    publish(&config, &after).await;
    events.extend(after);
    wait_until_processed(&config, events.len(), Duration::from_secs(120)).await;
    assert!(
        processor.0.try_wait().unwrap().is_none(),
        "the processor recovered by itself"
    );
    let (state, workloads) = assert_exactly_once(&config, &events).await;
    println!(
        "processor coordinator failure: killed node index {coordinator}; events={} committed_state_records={state} committed_workload_records={workloads}",
        events.len()
    );
    Command::new("kill")
        .args(["-TERM", &processor.0.id().to_string()])
        .status()
        .unwrap();
    processor.0.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_workload_processor_and_its_counts_follow_the_api() {
    let app = crate::helpers::spawn_app().await;
    assert!(app.system.component_names().contains(&"processor"));
    let mut ids = Vec::new();
    for i in 0..3 {
        let task = app.created(&format!("ana's task {i}"), Some("ana")).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.complete(&ids[0]).await.status(), 200);
    let config = KafkaConfig::new(app.system.kafka_bootstrap());
    let latest = eventually(
        "ana's workload after three creates and one completion",
        Duration::from_secs(60),
        || {
            let config = config.clone();
            async move {
                let records = read_committed(&config, ASSIGNEE_WORKLOAD, Duration::from_secs(10))
                    .await
                    .ok()?;
                let latest = records
                    .iter()
                    .rfind(|r| r.key.as_deref() == Some(b"ana".as_slice()))?;
                let workload: serde_json::Value =
                    serde_json::from_slice(latest.payload.as_deref()?).ok()?;
                (workload["open_tasks"] == 2).then_some(workload)
            }
        },
    )
    .await;
    assert_eq!(latest["overdue_tasks"], 0, "{latest}");
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_no_processor_when_told_not_to_or_on_the_mock() {
    for mock in [false, true] {
        let app = crate::helpers::spawn_app_with(|config| {
            if mock {
                config.dev_broker = DevBrokerKind::Mock;
            } else {
                config.processor = None;
            }
        })
        .await;
        let running = app.system.component_names();
        assert!(!running.contains(&"processor"), "mock: {mock}: {running:?}");
        assert!(running.contains(&"auditor"), "mock: {mock}: {running:?}");
        app.system.shutdown().await;
    }
}
