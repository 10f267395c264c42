//! Clients nobody on the taskstream team wrote, running transactions
//! against taskstream's broker: confluent-kafka-python (librdkafka) and
//! Apache Kafka's own Java client, through Kafka's tools.
//!
//! Neither may skip silently: the Java checks fail instead of skipping when
//! `TASKSTREAM_REQUIRE_KAFKA=1` (Java and Kafka's jars must be there), and
//! the Python one when `TASKSTREAM_REQUIRE_INTEROP=1` or
//! `TASKSTREAM_REQUIRE_KAFKA=1` (confluent-kafka must be importable), as
//! `.ci/run` sets them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use taskstream_broker::{Broker, BrokerConfig, RunningBroker};
use taskstream_testkit::{skip_or_fail, KafkaRuntime, REQUIRE_KAFKA_ENV};

const PATIENCE: Duration = Duration::from_secs(30);

fn start_broker(dir: &std::path::Path) -> RunningBroker {
    Broker::start(BrokerConfig::new(dir)).expect("taskstream's broker starts")
}

async fn create_topics(broker: &RunningBroker, names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.addr().to_string())
        .create()
        .expect("admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("CreateTopics answered")
    {
        result.expect("topic created");
    }
}

/// The Python with confluent-kafka installed: `TASKSTREAM_PYTHON`, else the
/// workspace's `.venv` (which `.ci/run` creates).
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TASKSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    let importable = Command::new(&candidate)
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    importable.then_some(candidate)
}

fn must_run_interop() -> bool {
    ["TASKSTREAM_REQUIRE_INTEROP", REQUIRE_KAFKA_ENV]
        .iter()
        .any(|var| std::env::var(var).as_deref() == Ok("1"))
}

fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_commits_aborts_and_copies_in_transactions_that_read_committed_honours(
) {
    let Some(python) = python() else {
        assert!(
            !must_run_interop(),
            "the Python interop check must run here, but confluent-kafka is not importable \
             (set TASKSTREAM_PYTHON or create .venv as .ci/run does)"
        );
        eprintln!("SKIPPED: confluent-kafka-python transactions — no Python with confluent-kafka");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    create_topics(&broker, &["py-txn", "py-txn-copy"]).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/broker_clients/transactions.py");
    let bootstrap = broker.addr().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--bootstrap", &bootstrap])
            .args(["--topic", "py-txn", "--copy-topic", "py-txn-copy"])
            .stdin(Stdio::null())
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_str(&succeeded("the Python client", &output))
        .expect("the script prints JSON");

    let committed: Vec<String> = (1..=10).map(|i| format!("committed-{i}")).collect();
    assert_eq!(report["read_committed"], serde_json::json!(committed));
    let mut everything: Vec<String> = (1..=5).map(|i| format!("committed-{i}")).collect();
    everything.extend((1..=5).map(|i| format!("aborted-{i}")));
    everything.extend((6..=10).map(|i| format!("committed-{i}")));
    assert_eq!(report["read_uncommitted"], serde_json::json!(everything));
    assert_eq!(report["copied"], 10);
    assert_eq!(report["copy"], serde_json::json!(committed));
    // Offsets 0-4, 6-10 and 12-16 hold records, 5, 11 and 17 markers: the
    // copier committed the end of the input, past the last marker
    // (librdkafka steps its position over control records).
    assert_eq!(report["copier_committed_offset"], 18);
}

/// Kafka's jars and a Java to run its tools, or `None` after reporting the
/// check skipped (a failure under `TASKSTREAM_REQUIRE_KAFKA=1`).
fn java_or_skip(what: &str) -> Option<KafkaRuntime> {
    match KafkaRuntime::locate() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            skip_or_fail(what, &e.to_string());
            None
        }
    }
}

/// Runs one of Kafka's tools (a class of its jars) to completion.
async fn kafka_tool(runtime: &KafkaRuntime, class: &str, args: &[&str]) -> String {
    let mut command = Command::new(runtime.java());
    command
        .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
        .arg("-Dlog4j2.level=WARN")
        .arg("-cp")
        .arg(runtime.classpath())
        .arg(class)
        .args(args)
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output().expect("java runs"))
        .await
        .unwrap();
    succeeded(class, &output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_copies_exactly_once_through_aborted_transactions_and_reads_committed() {
    let Some(runtime) = java_or_skip("the Java client's transactions on taskstream's broker")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let bootstrap = broker.addr().to_string();
    create_topics(&broker, &["java-in", "java-out"]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let values: Vec<String> = (0..60).map(|i| format!("value-{i}")).collect();
    for value in &values {
        producer
            .send(
                FutureRecord::to("java-in").key("k").payload(value),
                PATIENCE,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("sent");
    }

    // Kafka's exactly-once test tool: read_committed consumer, producer
    // transactions of 10 records carrying the consumed offsets
    // (sendOffsetsToTransaction with group metadata), each aborted with a
    // chance of one in three and then redone from the last committed
    // offsets (the Python check aborts deterministically).
    let progress = kafka_tool(
        &runtime,
        "org.apache.kafka.tools.TransactionalMessageCopier",
        &[
            "--broker-list",
            &bootstrap,
            "--input-topic",
            "java-in",
            "--input-partition",
            "0",
            "--output-topic",
            "java-out",
            "--transactional-id",
            "java-copier",
            "--consumer-group",
            "java-copiers",
            "--transaction-size",
            "10",
            "--enable-random-aborts",
            "--use-group-metadata",
        ],
    )
    .await;
    let last = progress
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or_else(|| panic!("no progress report in:\n{progress}"));
    assert_eq!(
        (&last["remaining"], &last["consumed"]),
        (&Value::from(0), &Value::from(60)),
        "{progress}"
    );

    let read = kafka_tool(
        &runtime,
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            "java-out",
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            "60",
            "--timeout-ms",
            "30000",
        ],
    )
    .await;
    let read: Vec<&str> = read.lines().collect();
    assert_eq!(read, values, "every record once, in order, none aborted");

    // The copier's group has no members left: described from its
    // committed offsets, which reached the end of the input.
    let described = kafka_tool(
        &runtime,
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--describe",
            "--group",
            "java-copiers",
        ],
    )
    .await;
    let row = described
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some("java-in"))
        .unwrap_or_else(|| panic!("no row for java-in in:\n{described}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert_eq!(
        &columns[..6],
        ["java-copiers", "java-in", "0", "60", "60", "0"],
        "{described}"
    );
}
