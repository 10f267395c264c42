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
use taskstream_testkit::{
    skip_or_fail, ConnectWorker, KafkaRuntime, POSTGRES_CONNECTOR, REQUIRE_KAFKA_ENV,
};

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

/// A database of its own on the test PostgreSQL with an outbox table.
struct OutboxDatabase {
    /// The administrative connection URL it was created through.
    admin: String,
    name: String,
    host: String,
    port: String,
    user: String,
}

/// An [`OutboxDatabase`], or `None` after reporting the check skipped (a
/// failure under `TASKSTREAM_REQUIRE_POSTGRES=1`).
async fn outbox_database() -> Option<OutboxDatabase> {
    use sqlx::Connection;
    let admin = std::env::var("TASKSTREAM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(conn) => conn,
        Err(e) => {
            let why = format!("no PostgreSQL for Debezium: {e}");
            assert!(
                std::env::var("TASKSTREAM_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{why} (TASKSTREAM_REQUIRE_POSTGRES=1)"
            );
            eprintln!("SKIPPED: Kafka Connect on taskstream's broker — {why}");
            return None;
        }
    };
    let name = format!("connect_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE outbox (
            id uuid PRIMARY KEY,
            aggregatetype varchar(255) NOT NULL,
            aggregateid varchar(255) NOT NULL,
            type varchar(255) NOT NULL,
            payload bytea NOT NULL
        )",
    )
    .execute(&mut db)
    .await
    .unwrap();
    // postgres://user[:password]@host[:port]/db
    let authority = url
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://")
        .rsplit_once('/')
        .unwrap()
        .0;
    let (user, host_port) = authority.rsplit_once('@').unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    Some(OutboxDatabase {
        admin,
        name,
        host: host.to_owned(),
        port: port.to_owned(),
        user: user.split(':').next().unwrap().to_owned(),
    })
}

async fn insert_outbox_rows(admin: &str, database: &str, range: std::ops::RangeInclusive<u32>) {
    use sqlx::Connection;
    let url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for i in range {
        sqlx::query("INSERT INTO outbox VALUES (gen_random_uuid(), 'task', $1, 'created', $2)")
            .bind(format!("key-{i}"))
            .bind(format!("payload-{i}").into_bytes())
            .execute(&mut db)
            .await
            .unwrap();
    }
}

async fn drop_outbox_database(admin: &str, database: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    // The slot is released once the killed worker's connection is gone.
    for _ in 0..60 {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
        )
        .bind(database)
        .execute(&mut conn)
        .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}

/// Reads `topic` from its start with `isolation` until `count` records
/// arrived or `patience` passed: their keys and values.
fn read_topic(
    bootstrap: &str,
    topic: &str,
    isolation: &str,
    count: usize,
    patience: Duration,
) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "connect-readers")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let deadline = std::time::Instant::now() + patience;
    let mut records = Vec::new();
    while records.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            records.push((text(m.key()), text(m.payload())));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_connect_with_exactly_once_sources_delivers_debezium_outbox_rows_once_across_a_worker_restart(
) {
    let what = "Kafka Connect (exactly-once sources) on taskstream's broker";
    let Some(runtime) = java_or_skip(what) else {
        return;
    };
    let Some(db) = outbox_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("broker"));
    let bootstrap = broker.addr().to_string();
    create_topics(&broker, &["connect-events"]).await;
    let eos = [("exactly.once.source.support", "enabled")];
    let worker = ConnectWorker::start_on(&bootstrap, dir.path(), &runtime, "cx", &eos)
        .await
        .expect("the Connect worker starts on taskstream's broker");
    let connector = serde_json::json!({
        "connector.class": POSTGRES_CONNECTOR,
        "tasks.max": "1",
        "exactly.once.support": "required",
        "database.hostname": db.host,
        "database.port": db.port,
        "database.user": db.user,
        "database.dbname": db.name,
        "topic.prefix": db.name,
        "plugin.name": "pgoutput",
        "slot.name": db.name,
        "publication.name": db.name,
        "publication.autocreate.mode": "filtered",
        "table.include.list": "public.outbox",
        "snapshot.mode": "no_data",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "id",
        "transforms.outbox.table.field.event.key": "aggregateid",
        "transforms.outbox.table.field.event.payload": "payload",
        "transforms.outbox.route.topic.replacement": "connect-events",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
    });
    worker
        .put_connector("outbox", &connector)
        .await
        .expect("connector created");
    worker
        .wait_until_running("outbox", PATIENCE * 4)
        .await
        .expect("the connector runs");
    insert_outbox_rows(&db.admin, &db.name, 1..=3).await;
    let first = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || read_topic(&bootstrap, "connect-events", "read_committed", 3, PATIENCE)
    })
    .await
    .unwrap();
    assert_eq!(first.len(), 3, "{first:?}");

    // A killed worker comes back from its transactional offsets: nothing
    // published twice, nothing lost.
    worker.kill();
    worker.restart().await.expect("the worker starts again");
    worker
        .wait_until_running("outbox", PATIENCE * 4)
        .await
        .expect("the connector runs again");
    insert_outbox_rows(&db.admin, &db.name, 4..=6).await;
    let all = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        // One more than published: a duplicate would show within 10 s.
        move || {
            read_topic(
                &bootstrap,
                "connect-events",
                "read_committed",
                7,
                Duration::from_secs(10),
            )
        }
    })
    .await
    .unwrap();
    let expected: Vec<(String, String)> = (1..=6)
        .map(|i| (format!("key-{i}"), format!("payload-{i}")))
        .collect();
    worker.kill();
    drop_outbox_database(&db.admin, &db.name).await;
    assert_eq!(all, expected, "each row once, in order");
}
