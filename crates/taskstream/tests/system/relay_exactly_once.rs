//! The exactly-once relay, proven against the crash it exists for: the
//! real `taskstream up` dies (fault injection,
//! `TASKSTREAM_TEST_RELAY_CRASH_BEFORE_MARK`) right after a batch was
//! published and before it was marked. Restarted, an exactly-once relay
//! finds the batch on the topic and publishes nothing again; an
//! at-least-once relay publishes it again — the check can fail. Runs on
//! taskstream's broker and on Apache Kafka (skipped without Java and Maven,
//! failed with `TASKSTREAM_REQUIRE_KAFKA=1`).
//!
//! Also: consumers never hand a record of an aborted transaction to a
//! handler, and exactly-once on the mock cluster is refused at start-up.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskstream_kafka::{
    apply_topics, group_offsets, read_committed, read_uncommitted, ConsumerSettings, EventConsumer,
    KafkaConfig, OutboundRecord, TopicSpec, TransactionSettings, TransactionalProducer,
};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{EventEncoding, OutboxRelay, RelayError, RelayPublisher, RelaySettings};
use taskstream_store::OutboxStore;
use taskstream_testkit::Shape;

use crate::binary::ChildGuard;
use crate::brokers::Broker;
use crate::helpers::client;

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");
const CRASH_BEFORE_MARK: &str = "TASKSTREAM_TEST_RELAY_CRASH_BEFORE_MARK";

/// Starts `taskstream up` on `dir` with `args`; `crash` sets the fault
/// injection. Returns the child and its API's base URL.
fn up(dir: &std::path::Path, args: &[String], crash: bool) -> (ChildGuard, String) {
    let mut command = Command::new(BIN);
    command
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--registry-http",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        // The checks compare the outbox with task-events: no suggestion
        // rows, no saga events.
        .args(["--no-agent", "--no-saga"])
        .args(args)
        .env("RUST_LOG", "warn,librdkafka=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if crash {
        command.env(CRASH_BEFORE_MARK, "1");
    } else {
        command.env_remove(CRASH_BEFORE_MARK);
    }
    let mut child = ChildGuard(command.spawn().unwrap());
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let http = first.strip_prefix("http: ").unwrap().to_owned();
    (child, http)
}

/// Every id in the outbox of the SQLite database in `dir`, with whether it
/// is marked published.
async fn outbox(dir: &std::path::Path) -> Vec<(String, bool)> {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("taskstream.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT id, published_at IS NOT NULL FROM outbox ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    rows
}

async fn create_tasks(http: &str, n: usize) -> usize {
    let client = client();
    let mut created = 0;
    for i in 0..n {
        let answer = client
            .post(format!("{http}/tasks"))
            .json(&json!({ "title": format!("crash {i}"), "assignee": "ana" }))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            created += 1;
        }
    }
    created
}

/// How many times each event id is on `task-events` for a `read_committed` reader.
async fn committed_ids(kafka: &KafkaConfig) -> HashMap<String, usize> {
    let records = read_committed(kafka, TASK_EVENTS, Duration::from_secs(30))
        .await
        .expect("task-events is read back");
    let mut counts = HashMap::new();
    for record in &records {
        let id = record.header_str("id").expect("every event has an id");
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// What one crash-and-restart run found.
struct Run {
    /// Events in the outbox, all marked published at the end.
    events: usize,
    /// Events the killed process had published (committed) but not marked.
    unmarked_at_the_crash: usize,
    /// Events on the topic more than once.
    duplicated: usize,
    /// Outbox events missing from the topic.
    missing: usize,
    /// The restarted relay's committed transactions, from its `/metrics`.
    committed_transactions: f64,
}

/// `up` with `delivery_args` publishes one batch and dies before marking
/// it; restarted (without the fault), it publishes the rest. Reads the
/// topic back `read_committed`.
async fn crash_between_publish_and_mark(broker: &Broker, delivery_args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut args = broker.up_args();
    args.extend(delivery_args.iter().map(|a| (*a).to_owned()));

    // First run: tasks are written; the relay publishes its first batch
    // and the process aborts before marking it.
    let (mut child, http) = up(dir.path(), &args, true);
    let created = create_tasks(&http, 5).await;
    assert!(created >= 1, "the API took a task before the crash");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the relay did not crash");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The fault fires only after a non-empty batch was committed (or, at
    // least once, acknowledged): the crash left at least one event on the
    // topic unmarked.
    assert_eq!(
        status.signal(),
        Some(libc_sigabrt()),
        "the fault injection aborted the process: {status:?}"
    );
    let after_crash = outbox(dir.path()).await;
    let unmarked_at_the_crash = after_crash.iter().filter(|(_, marked)| !marked).count();

    // Second run, without the fault: more tasks, then everything drains.
    let (mut child, http) = up(dir.path(), &args, false);
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("endpoints.json")).unwrap())
            .unwrap();
    let kafka = KafkaConfig::new(endpoints["kafka"].as_str().unwrap()).quiet();
    create_tasks(&http, 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = outbox(dir.path()).await;
        if rows.iter().all(|(_, marked)| *marked) {
            break rows;
        }
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on_topic = committed_ids(&kafka).await;
    let duplicated = on_topic.values().filter(|n| **n > 1).count();
    let missing = rows
        .iter()
        .filter(|(id, _)| !on_topic.contains_key(id))
        .count();
    let metrics = client()
        .get(format!("{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed_transactions = metrics
        .lines()
        .find(|l| {
            l.starts_with("taskstream_kafka_transactions_total")
                && l.contains(r#"component="relay""#)
                && l.contains(r#"outcome="committed""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.0.wait().unwrap().success(), "clean exit");
    let run = Run {
        committed_transactions,
        events: rows.len(),
        unmarked_at_the_crash,
        duplicated,
        missing,
    };
    eprintln!(
        "crash before mark: broker={} delivery={delivery_args:?} events={} unmarked_at_the_crash={} duplicated={} missing={}",
        broker.name(),
        run.events,
        run.unmarked_at_the_crash,
        run.duplicated,
        run.missing
    );
    run
}

/// `SIGABRT`, what `std::process::abort` raises.
fn libc_sigabrt() -> i32 {
    6
}

async fn exactly_once_after_a_crash_before_the_mark(broker: &Broker) {
    // The default wherever the broker has transactions.
    let run = crash_between_publish_and_mark(broker, &["--relay-delivery", "exactly-once"]).await;
    assert!(
        run.unmarked_at_the_crash >= 1,
        "the crash left a published batch unmarked"
    );
    assert_eq!((run.duplicated, run.missing), (0, 0));
    assert!(
        run.committed_transactions >= 1.0,
        "the restarted relay counts its transactions"
    );
}

async fn at_least_once_after_a_crash_before_the_mark(broker: &Broker) {
    let run = crash_between_publish_and_mark(broker, &["--relay-delivery", "at-least-once"]).await;
    assert!(run.unmarked_at_the_crash >= 1);
    assert_eq!(run.missing, 0);
    assert!(
        run.duplicated >= 1,
        "the unmarked batch is published again at least once"
    );
    assert_eq!(run.committed_transactions, 0.0, "no transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_relay_killed_between_the_commit_and_the_mark_publishes_nothing_again() {
    exactly_once_after_a_crash_before_the_mark(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_relay_killed_between_the_publish_and_the_mark_publishes_the_batch_again()
{
    at_least_once_after_a_crash_before_the_mark(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_relay_killed_between_the_commit_and_the_mark_publishes_nothing_again_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the exactly-once relay").await
    else {
        return;
    };
    exactly_once_after_a_crash_before_the_mark(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_relay_killed_between_the_publish_and_the_mark_publishes_again_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the at-least-once relay").await
    else {
        return;
    };
    at_least_once_after_a_crash_before_the_mark(&kafka).await;
}

#[test]
fn exactly_once_delivery_on_the_mock_cluster_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--registry-http",
            "127.0.0.1:0",
        ])
        .args(["--dev-broker", "mock", "--relay-delivery", "exactly-once"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--relay-delivery exactly-once needs a broker with transactions"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--relay-delivery at-least-once"),
        "says what to do instead: {stderr}"
    );
}

/// A consumer group member reads `read_committed`: records of an aborted
/// transaction are in the log (a `read_uncommitted` reader sees them) but
/// never reach the consumer's caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_never_hands_a_record_of_an_aborted_transaction_to_its_handler_and_commits_past_the_markers(
) {
    let data = tempfile::tempdir().unwrap();
    let broker =
        taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(data.path()))
            .expect("taskstream's broker starts");
    let kafka = KafkaConfig::new(broker.addr().to_string()).quiet();
    let topic = format!("aborted-{}", uuid::Uuid::new_v4());
    apply_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }],
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let producer = TransactionalProducer::start(
        &kafka,
        "test",
        &TransactionSettings::new(format!("aborting-{}", uuid::Uuid::new_v4())),
    )
    .await
    .unwrap();
    // Committed, aborted, committed: the aborted records sit between the
    // committed ones on each partition.
    for (outcome, commit) in [("committed", true), ("aborted", false), ("later", true)] {
        producer.begin().unwrap();
        let mut deliveries = Vec::new();
        for i in 0..20 {
            let key = format!("{outcome}-{i}");
            let record = OutboundRecord {
                topic: &topic,
                key: key.as_bytes(),
                payload: outcome.as_bytes(),
                headers: &[],
            };
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        // Written to the log before the abort (an abort drops what is
        // still queued in the client).
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        if commit {
            producer.commit().await.unwrap();
        } else {
            producer.abort().await.unwrap();
        }
    }
    let everything = read_uncommitted(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        everything
            .iter()
            .filter(|r| r.payload.as_deref() == Some(b"aborted".as_slice()))
            .count(),
        20,
        "the aborted records are in the log"
    );

    let consumer = EventConsumer::subscribe(
        &kafka,
        &format!("handler-{}", uuid::Uuid::new_v4()),
        &[&topic],
        &ConsumerSettings::default(),
    )
    .unwrap();
    let mut handed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while handed.len() < 40 {
        assert!(Instant::now() < deadline, "got {handed:?}");
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record comes")
            .unwrap();
        assert!(consumer.ack(&record));
        handed.push(String::from_utf8(record.payload.unwrap()).unwrap());
    }
    // Nothing more comes: the aborted records are skipped, not late.
    let more = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    assert!(more.is_err(), "an unexpected record: {more:?}");
    let by_outcome = handed.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.as_str()).or_insert(0) += 1;
        m
    });
    assert_eq!(
        by_outcome,
        BTreeMap::from([("committed", 20), ("later", 20)])
    );
    // Each partition ends with a commit marker, never delivered: once
    // every record is handled, the group's commits move past it (two
    // commits apart), so its lag is 0, not 1 per partition.
    for _ in 0..2 {
        consumer.commit_acked(true).await.unwrap();
    }
    let offsets = group_offsets(&kafka, consumer.group(), &topic, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        offsets.iter().all(|p| p.lag() == 0),
        "{:?}",
        offsets
            .iter()
            .map(|p| (p.partition, p.committed, p.log_end))
            .collect::<Vec<_>>()
    );
}

/// A relay (its own SQLite outbox and lease) with `transactional_id`,
/// publishing to `topic` of `kafka`, driven round by round.
async fn relay_on(
    dir: &std::path::Path,
    kafka: &KafkaConfig,
    transactional_id: &str,
    topic: &str,
    events: usize,
) -> (std::sync::Arc<taskstream_store::Store>, OutboxRelay) {
    use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};
    use taskstream_store::TaskStore;

    let store = taskstream::components::open_store(
        dir,
        None,
        &taskstream_store::SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    for i in 0..events {
        let change = Task::create(
            NewTask {
                title: TaskTitle::parse(&format!("fenced {i}")).unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: None,
            },
            taskstream_domain::now(),
            Cause::default(),
        );
        let message = EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                topic,
                None,
            )
            .unwrap();
        store.insert_task(&change.task, &message).await.unwrap();
    }
    let relay = OutboxRelay::new(
        std::sync::Arc::clone(&store) as std::sync::Arc<dyn taskstream_store::OutboxStore>,
        RelayPublisher::Transactional {
            kafka: kafka.clone(),
            settings: TransactionSettings::new(transactional_id),
        },
        std::sync::Arc::new(tokio::sync::Notify::new()),
        RelaySettings::default(),
        taskstream_telemetry::Metrics::new(),
        EventEncoding::Json,
    )
    .unwrap();
    (store, relay)
}

/// Two relays with one transactional id (a zombie and its successor): the
/// newer one's producer fences the older, whose next batch fails as
/// fenced; it gives its lease up instead of retrying the dead producer,
/// and nothing of its cut-off transaction is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_fenced_by_a_newer_one_with_its_transactional_id_gives_up_its_lease() {
    let data = tempfile::tempdir().unwrap();
    let broker =
        taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(data.path()))
            .expect("taskstream's broker starts");
    let kafka = KafkaConfig::new(broker.addr().to_string()).quiet();
    let topic = format!("fenced-{}", uuid::Uuid::new_v4());
    apply_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let id = format!("relay-{}", uuid::Uuid::new_v4());
    let (older_dir, newer_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (older_store, older) = relay_on(older_dir.path(), &kafka, &id, &topic, 3).await;
    assert_eq!(older.publish_pending().await.unwrap(), 3);
    let (_newer_store, newer) = relay_on(newer_dir.path(), &kafka, &id, &topic, 2).await;
    assert_eq!(
        newer.publish_pending().await.unwrap(),
        2,
        "the newer relay publishes"
    );

    // The older one has more to publish, on a fenced producer.
    let (_, more) = relay_on(older_dir.path(), &kafka, "unused", &topic, 2).await;
    drop(more);
    let error = older.publish_pending().await.expect_err("fenced");
    let RelayError::Transaction(error) = error else {
        panic!("a transactional failure, got {error:?}");
    };
    assert!(error.fenced, "{error}");
    assert!(
        !older.holds_lease().await,
        "the fenced relay gave its lease up"
    );
    let pending = older_store.outbox_stats().await.unwrap().pending;
    assert_eq!(pending, 2, "its cut-off batch stays pending");
    let on_topic = read_committed(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        on_topic.len(),
        5,
        "nothing of the fenced transaction is visible"
    );
}

/// An exactly-once relay whose rows go to a topic that does not exist yet
/// reads no tail back for it (nothing can have been published there) and
/// publishes them, the broker creating the topic, instead of failing every
/// round on the read-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_relay_publishes_to_a_topic_that_does_not_exist_yet() {
    let data = tempfile::tempdir().unwrap();
    let broker =
        taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(data.path()))
            .expect("taskstream's broker starts");
    let kafka = KafkaConfig::new(broker.addr().to_string()).quiet();
    let topic = format!("created-on-first-use-{}", uuid::Uuid::new_v4());
    let dir = tempfile::tempdir().unwrap();
    let id = format!("relay-{}", uuid::Uuid::new_v4());
    let (store, relay) = relay_on(dir.path(), &kafka, &id, &topic, 3).await;
    assert_eq!(relay.publish_pending().await.unwrap(), 3);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    let on_topic = read_committed(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(on_topic.len(), 3);
}

/// taskstream's broker on a fresh directory, with a topic named after
/// `prefix` (one partition, `configs`) created on it: the directory, the
/// broker, a client configuration and the topic's name.
async fn broker_with_topic(
    prefix: &str,
    configs: BTreeMap<String, String>,
) -> (
    tempfile::TempDir,
    taskstream_broker::RunningBroker,
    KafkaConfig,
    String,
) {
    let data = tempfile::tempdir().unwrap();
    let broker =
        taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(data.path()))
            .expect("taskstream's broker starts");
    let kafka = KafkaConfig::new(broker.addr().to_string()).quiet();
    let topic = format!("{prefix}-{}", uuid::Uuid::new_v4());
    apply_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
            configs,
        }],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    (data, broker, kafka, topic)
}

/// A relay whose drain at shutdown times out in the middle of a
/// transaction (one record sent, the next one's encoding waiting on a
/// schema registry that never answers) aborts that transaction: left
/// open, it would hold every `read_committed` reader of the partition at
/// its first record until the transaction timeout (a minute). Its rows
/// stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_mid_transaction_aborts_the_transaction() {
    use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};
    use taskstream_store::TaskStore;

    let (_data, _broker, kafka, topic) = broker_with_topic("cut-short", BTreeMap::new()).await;
    // Accepts connections and never answers.
    let silent_registry = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = std::sync::Arc::new(taskstream_avro::RegistryClient::new(&format!(
        "http://{}",
        silent_registry.local_addr().unwrap()
    )));
    let dir = tempfile::tempdir().unwrap();
    let store = taskstream::components::open_store(
        dir.path(),
        None,
        &taskstream_store::SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    // Rows stored as Avro are published as stored; a row an earlier
    // version stored as JSON is converted, which asks the registry.
    let insert = |title: &str, stored_as_avro: bool| {
        let change = Task::create(
            NewTask {
                title: TaskTitle::parse(title).unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: None,
            },
            taskstream_domain::now(),
            Cause::default(),
        );
        let mut message = EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                &topic,
                None,
            )
            .unwrap();
        if stored_as_avro {
            message.content_type = taskstream_avro::AVRO_CONTENT_TYPE.to_owned();
        }
        let store = std::sync::Arc::clone(&store);
        async move {
            store.insert_task(&change.task, &message).await.unwrap();
            message.id
        }
    };
    insert("published before the shutdown", true).await;
    let relay = OutboxRelay::new(
        std::sync::Arc::clone(&store) as std::sync::Arc<dyn OutboxStore>,
        RelayPublisher::Transactional {
            kafka: kafka.clone(),
            settings: TransactionSettings::new(format!("relay-{}", uuid::Uuid::new_v4())),
        },
        std::sync::Arc::new(tokio::sync::Notify::new()),
        RelaySettings {
            // Only the first round and the drain publish.
            poll_interval: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(1),
            ..RelaySettings::default()
        },
        taskstream_telemetry::Metrics::new(),
        EventEncoding::avro(registry, &topic),
    )
    .unwrap();
    let (trigger, shutdown) = taskstream_services::Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown));
    crate::helpers::eventually(
        "the first row is published",
        Duration::from_secs(30),
        || {
            let store = std::sync::Arc::clone(&store);
            async move { (store.outbox_stats().await.ok()?.pending == 0).then_some(()) }
        },
    )
    .await;

    let sent = insert("sent, then cut short", true).await;
    insert("waits on the registry", false).await;
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the relay stops")
        .unwrap();

    let everything = read_uncommitted(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    let cut_short = everything
        .iter()
        .find(|r| r.header_str("id") == Some(sent.to_string().as_str()))
        .expect("the drain sent the first row of its transaction");
    let ends = taskstream_kafka::end_offsets(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        ends[&0] > cut_short.offset,
        "read_committed readers stop at the cut-short transaction ({} <= {}): it was left open",
        ends[&0],
        cut_short.offset
    );
    let committed = read_committed(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(committed.len(), 1, "only the first row is visible");
    assert_eq!(store.outbox_stats().await.unwrap().pending, 2);
}

/// `n` rows for `topic` in `store`'s outbox, each stored as Avro (so
/// published as stored) with a payload of `size` bytes; returns their ids.
async fn insert_rows(
    store: &taskstream_store::Store,
    topic: &str,
    n: usize,
    size: usize,
) -> Vec<uuid::Uuid> {
    use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};
    use taskstream_store::TaskStore;

    let mut ids = Vec::new();
    for i in 0..n {
        let change = Task::create(
            NewTask {
                title: TaskTitle::parse(&format!("row {i}")).unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: None,
            },
            taskstream_domain::now(),
            Cause::default(),
        );
        let mut message = EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                topic,
                None,
            )
            .unwrap();
        message.content_type = taskstream_avro::AVRO_CONTENT_TYPE.to_owned();
        message.payload = vec![b'x'; size];
        store.insert_task(&change.task, &message).await.unwrap();
        ids.push(message.id);
    }
    ids
}

/// A relay with its own SQLite outbox publishing through `kafka` with
/// `settings`.
async fn bare_relay(
    dir: &std::path::Path,
    kafka: &KafkaConfig,
    settings: TransactionSettings,
) -> (std::sync::Arc<taskstream_store::Store>, OutboxRelay) {
    let store = taskstream::components::open_store(
        dir,
        None,
        &taskstream_store::SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let relay = OutboxRelay::new(
        std::sync::Arc::clone(&store) as std::sync::Arc<dyn OutboxStore>,
        RelayPublisher::Transactional {
            kafka: kafka.clone(),
            settings,
        },
        std::sync::Arc::new(tokio::sync::Notify::new()),
        RelaySettings::default(),
        taskstream_telemetry::Metrics::new(),
        EventEncoding::Json,
    )
    .unwrap();
    (store, relay)
}

/// A record the broker refuses makes the relay's transaction abortable:
/// the relay aborts it (none of the batch becomes visible, none of it is
/// marked) and publishes the batch again on a new producer, never on the
/// one with the broken sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_aborts_the_relays_transaction_and_the_batch_stays_pending() {
    let (_data, _broker, kafka, topic) = broker_with_topic(
        "refusing",
        BTreeMap::from([("max.message.bytes".to_owned(), "2000".to_owned())]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, relay) = bare_relay(
        dir.path(),
        &kafka,
        TransactionSettings::new(format!("relay-{}", uuid::Uuid::new_v4())),
    )
    .await;
    insert_rows(&store, &topic, 3, 100).await;
    insert_rows(&store, &topic, 1, 10_000).await;
    for round in 0..2 {
        let error = relay
            .publish_pending()
            .await
            .expect_err("the broker refuses");
        let RelayError::Transaction(error) = error else {
            panic!("a transactional failure in round {round}, got {error:?}");
        };
        assert_eq!(
            error.kind,
            taskstream_kafka::TransactionErrorKind::Abortable,
            "{error}"
        );
        assert!(!error.fenced, "{error}");
        assert!(
            relay.holds_lease().await,
            "an abortable error keeps the lease"
        );
        assert_eq!(store.outbox_stats().await.unwrap().pending, 4);
    }
    let visible = read_committed(&kafka, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        visible.is_empty(),
        "an aborted batch is invisible: {visible:?}"
    );
}

/// A commit that times out (the broker's answers held back for longer
/// than the producer's operation timeout) is made again, not aborted: the
/// batch is committed once and marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_commit_that_times_out_is_made_again_and_the_batch_committed_once() {
    let (_data, broker, direct, topic) = broker_with_topic("slow-commit", BTreeMap::new()).await;
    let proxy = taskstream_testkit::FaultProxy::start(&broker.addr().to_string())
        .await
        .unwrap();
    let kafka = KafkaConfig::new(proxy.bootstrap_servers()).quiet();
    let dir = tempfile::tempdir().unwrap();
    let operation_timeout = Duration::from_secs(1);
    let (store, relay) = bare_relay(
        dir.path(),
        &kafka,
        TransactionSettings {
            operation_timeout,
            ..TransactionSettings::new(format!("relay-{}", uuid::Uuid::new_v4()))
        },
    )
    .await;
    insert_rows(&store, &topic, 2, 100).await;
    assert_eq!(relay.publish_pending().await.unwrap(), 2, "a first batch");

    insert_rows(&store, &topic, 3, 100).await;
    proxy.stall_responses();
    let relay = std::sync::Arc::new(relay);
    let publishing = tokio::spawn({
        let relay = std::sync::Arc::clone(&relay);
        async move { relay.publish_pending().await }
    });
    // Two operation timeouts: the first commit attempts time out.
    tokio::time::sleep(operation_timeout * 5 / 2).await;
    proxy.resume_responses();
    let published = publishing
        .await
        .unwrap()
        .expect("committed on a later attempt");
    assert_eq!(published, 3);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    let on_topic = read_committed(&direct, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(on_topic.len(), 5, "each row committed once");
}

/// One committed record on `topic`'s partition 0 (the record, then its
/// commit marker), from `producer`.
async fn commit_one(producer: &TransactionalProducer, topic: &str, payload: &str) {
    producer.begin().unwrap();
    let record = OutboundRecord {
        topic,
        key: b"k",
        payload: payload.as_bytes(),
        headers: &[],
    };
    let delivery = producer.enqueue(record).await.unwrap();
    delivery.await.unwrap();
    producer.commit().await.unwrap();
}

/// A partition whose last offsets are a commit marker: once the group
/// moved past the marker, the log starting after it (records deleted by
/// retention or `DeleteRecords`) deleted nothing the group had to read,
/// and the next record is no skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_start_moved_past_the_commit_marker_the_group_moved_past_is_no_skip() {
    let (_data, broker, kafka, topic) = broker_with_topic("markers-last", BTreeMap::new()).await;
    let producer = TransactionalProducer::start(
        &kafka,
        "test",
        &TransactionSettings::new(format!("markers-{}", uuid::Uuid::new_v4())),
    )
    .await
    .unwrap();
    commit_one(&producer, &topic, "first").await;

    let consumer = EventConsumer::subscribe(
        &kafka,
        &format!("past-markers-{}", uuid::Uuid::new_v4()),
        &[&topic],
        &ConsumerSettings::default(),
    )
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record comes")
        .unwrap();
    assert_eq!(first.offset, 0);
    assert!(consumer.confirm_skips().await.is_empty());
    assert!(consumer.ack(&first));
    // The commits move past the marker (two commits apart).
    crate::helpers::eventually(
        "the group moves past the marker",
        Duration::from_secs(30),
        || {
            let (kafka, consumer, topic) = (&kafka, &consumer, &topic);
            async move {
                // Polling moves librdkafka's position past the marker.
                let more = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
                assert!(more.is_err(), "an unexpected record: {more:?}");
                consumer.commit_acked(true).await.ok()?;
                let offsets =
                    group_offsets(kafka, consumer.group(), topic, Duration::from_secs(10))
                        .await
                        .ok()?;
                offsets.iter().all(|p| p.committed == Some(2)).then_some(())
            }
        },
    )
    .await;

    // The log now starts after the marker.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.addr().to_string())
            .create()
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(2))
        .unwrap();
    let deleted = admin
        .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.elements().iter().all(|e| e.error().is_ok()));

    commit_one(&producer, &topic, "second").await;
    let second = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record comes")
        .unwrap();
    assert_eq!(second.offset, 2);
    let resets = consumer.confirm_skips().await;
    assert!(
        resets.is_empty(),
        "a marker the group had moved past was taken for skipped records: {resets:?}"
    );
}
