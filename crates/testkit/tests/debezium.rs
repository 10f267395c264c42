//! Kafka Connect with the Debezium PostgreSQL connector and the outbox
//! `EventRouter`, on Apache Kafka and PostgreSQL (`wal_level=logical`): a row
//! inserted into an outbox table becomes a Kafka record whose key, value
//! bytes and headers are the row's columns, unchanged; and a worker killed
//! mid-stream resumes from its stored position, losing nothing.
//!
//! Needs Java and Maven (skipped loudly without them; failed with
//! `TASKSTREAM_REQUIRE_KAFKA=1`) and PostgreSQL at `TASKSTREAM_TEST_POSTGRES`
//! (skipped loudly without it; failed with `TASKSTREAM_REQUIRE_POSTGRES=1`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use taskstream_testkit::{kafka_or_skip, ConnectWorker, KafkaCluster, Shape};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(120);

/// A database of its own, with an outbox table shaped as the event router
/// reads it, and the replication slot and publication the connector makes.
struct Scratch {
    admin: String,
    name: String,
    url: String,
    host: String,
    port: u16,
    user: String,
}

impl Scratch {
    async fn new() -> Option<Self> {
        let admin = std::env::var("TASKSTREAM_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                let why = format!("no PostgreSQL for the Debezium tests: {e}");
                if std::env::var("TASKSTREAM_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("{why} (TASKSTREAM_REQUIRE_POSTGRES=1)");
                }
                eprintln!("SKIPPED: {why}");
                return None;
            }
        };
        let (wal_level,): (String,) = sqlx::query_as("SHOW wal_level")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            wal_level, "logical",
            "Debezium reads PostgreSQL's logical decoding: set wal_level = logical and restart \
             PostgreSQL (.ci/run does)"
        );
        let name = format!("cdc_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0.to_owned();
        let url = format!("{base}/{name}");
        // postgres://user[:password]@host:port/db
        let authority = base
            .trim_start_matches("postgres://")
            .trim_start_matches("postgresql://");
        let (user, hostport) = authority.rsplit_once('@').unwrap();
        let user = user.split(':').next().unwrap().to_owned();
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
        let mut db = PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TABLE outbox (
                id uuid PRIMARY KEY,
                aggregatetype varchar(255) NOT NULL,
                aggregateid varchar(255) NOT NULL,
                type varchar(255) NOT NULL,
                traceparent varchar(64),
                payload bytea NOT NULL
            )",
        )
        .execute(&mut db)
        .await
        .unwrap();
        Some(Self {
            admin,
            name,
            url,
            host: host.to_owned(),
            port: port.parse().unwrap(),
            user,
        })
    }

    /// The connector configuration: the outbox table of this database to
    /// `topic`, payload bytes unchanged, key and headers from the columns.
    fn connector_config(&self, topic: &str) -> serde_json::Value {
        json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": self.host,
            "database.port": self.port.to_string(),
            "database.user": self.user,
            "database.dbname": self.name,
            "topic.prefix": self.name,
            "plugin.name": "pgoutput",
            "slot.name": self.name,
            "publication.name": self.name,
            "publication.autocreate.mode": "filtered",
            "table.include.list": "public.outbox",
            "snapshot.mode": "no_data",
            "transforms": "outbox",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": "id",
            "transforms.outbox.table.field.event.key": "aggregateid",
            "transforms.outbox.table.field.event.payload": "payload",
            "transforms.outbox.route.topic.replacement": topic,
            "transforms.outbox.table.fields.additional.placement":
                "type:header:event-type,traceparent:header:traceparent",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        })
    }

    /// Deletes the connector; dropping `self` then drops the slot and the
    /// database.
    async fn finish(self, worker: &ConnectWorker, connector: &str) {
        let _ = worker.delete_connector(connector).await;
    }
}

/// A failed test drops its slot and database too: a slot left behind keeps
/// WAL forever and keeps its database from being dropped.
impl Drop for Scratch {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A thread and runtime of its own: drop cannot await, and may run
        // while the test's runtime is unwinding.
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut conn = PgConnection::connect(&admin).await.unwrap();
                    let deadline = Instant::now() + PATIENCE;
                    loop {
                        // The slot is held until its reader's session ends.
                        let _ = sqlx::query(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                             WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                        let dropped = sqlx::query(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                             WHERE slot_name = $1",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                        if dropped.is_ok() || Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                })
        })
        .join();
        if cleaned.is_err() {
            eprintln!("could not drop replication slot and database {}", self.name);
        }
    }
}

/// Inserts `row` into the outbox, as the API does with each change.
async fn insert(db: &mut PgConnection, row: &Row) {
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, traceparent, payload)
         VALUES ($1, 'task', $2, $3, $4, $5)",
    )
    .bind(row.id)
    .bind(&row.key)
    .bind(&row.event_type)
    .bind(&row.traceparent)
    .bind(&row.payload)
    .execute(db)
    .await
    .unwrap();
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: Uuid,
    key: String,
    event_type: String,
    traceparent: String,
    payload: Vec<u8>,
}

impl Row {
    fn new(n: usize) -> Self {
        let id = Uuid::new_v4();
        // Bytes as a Confluent-framed record would have them: a zero magic
        // byte, a schema id, then a body with every byte value in it.
        let mut payload = vec![0, 0, 0, 0, 7];
        payload.extend((0..=255u8).cycle().skip(n % 256).take(64 + n % 100));
        Self {
            id,
            key: format!("task-{}", n % 7),
            event_type: if n.is_multiple_of(2) {
                "TaskCreated"
            } else {
                "TaskUpdated"
            }
            .to_owned(),
            traceparent: format!("00-{}-{:016x}-01", Uuid::new_v4().simple(), n),
            payload,
        }
    }
}

fn kafka(what: &str) -> Option<&'static KafkaCluster> {
    kafka_or_skip(Shape::SingleNode, what)
}

fn create_topic(cluster: &KafkaCluster, partitions: i32) -> String {
    let name = format!("cdc-{}", Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("admin");
    let created = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(PATIENCE)),
    ))
    .expect("CreateTopics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    name
}

/// Every record of `topic` (partitions `0..partitions`) from the start,
/// until `expected` distinct ids have been read.
fn read_until(cluster: &KafkaCluster, topic: &str, partitions: i32, expected: usize) -> Vec<Row> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", format!("reader-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut rows = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + PATIENCE;
    while ids.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} records from {topic}",
            ids.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("a record");
        let header = |name: &str| -> String {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).expect("a UTF-8 header"))
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        let row = Row {
            id: header("id")
                .parse()
                .expect("the id header is the row's uuid"),
            key: String::from_utf8(message.key().expect("a key").to_vec()).unwrap(),
            event_type: header("event-type"),
            traceparent: header("traceparent"),
            payload: message.payload().expect("a value").to_vec(),
        };
        ids.insert(row.id);
        rows.push(row);
    }
    rows
}

/// The connector's name on the worker.
const CONNECTOR: &str = "outbox";

/// A Connect worker of its own running the outbox connector of `pg` to
/// `topic`, once its task runs.
async fn outbox_connector(cluster: &KafkaCluster, pg: &Scratch, topic: &str) -> ConnectWorker {
    let group = format!("connect-{}", Uuid::new_v4().simple());
    let worker = ConnectWorker::start(cluster, &group)
        .await
        .expect("the Connect worker starts with the Debezium plugin");
    worker
        .put_connector(CONNECTOR, &pg.connector_config(topic))
        .await
        .expect("the connector is accepted");
    worker
        .wait_until_running(CONNECTOR, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_tail(40)));
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_becomes_a_record_with_the_rows_key_bytes_and_headers_unchanged() {
    let Some(cluster) = kafka("Debezium: outbox rows to records") else {
        return;
    };
    let Some(pg) = Scratch::new().await else {
        return;
    };
    let topic = create_topic(cluster, 1);
    let worker = outbox_connector(cluster, &pg, &topic).await;
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let rows: Vec<Row> = (0..20).map(Row::new).collect();
    for row in &rows {
        insert(&mut db, row).await;
    }
    let read = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_until(cluster, &topic, 1, 20)
    })
    .await
    .unwrap();
    assert_eq!(read, rows, "the records are the rows, in commit order");
    pg.finish(&worker, CONNECTOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_worker_killed_mid_stream_resumes_from_its_stored_position_and_loses_nothing() {
    let Some(cluster) = kafka("Debezium: a worker killed mid-stream") else {
        return;
    };
    let Some(pg) = Scratch::new().await else {
        return;
    };
    let topic = create_topic(cluster, 3);
    let worker = outbox_connector(cluster, &pg, &topic).await;

    // Rows keep coming while the worker is killed, down, and started again.
    let url = pg.url.clone();
    let writer = tokio::spawn(async move {
        let mut db = PgConnection::connect(&url).await.unwrap();
        let mut written = Vec::new();
        for n in 0..600 {
            let row = Row::new(n);
            insert(&mut db, &row).await;
            written.push(row);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        written
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker
        .restart()
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_tail(40)));
    let written = writer.await.unwrap();
    worker
        .wait_until_running(CONNECTOR, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_tail(40)));

    let read = tokio::task::spawn_blocking({
        let topic = topic.clone();
        let expected = written.len();
        move || read_until(cluster, &topic, 3, expected)
    })
    .await
    .unwrap();
    let mut copies: BTreeMap<Uuid, usize> = BTreeMap::new();
    for row in &read {
        *copies.entry(row.id).or_default() += 1;
    }
    let by_id: BTreeMap<Uuid, &Row> = read.iter().map(|r| (r.id, r)).collect();
    for row in &written {
        assert_eq!(
            by_id.get(&row.id),
            Some(&row),
            "row {} arrived unchanged",
            row.id
        );
    }
    // Per key (one partition each), the first copy of every row comes in
    // the order the rows were written.
    let mut seen = std::collections::HashSet::new();
    let mut firsts: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for row in &read {
        if seen.insert(row.id) {
            firsts.entry(&row.key).or_default().push(row.id);
        }
    }
    for (key, ids) in &firsts {
        let expected: Vec<Uuid> = written
            .iter()
            .filter(|r| &r.key == key)
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, &expected, "rows of key {key} in order");
    }
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    eprintln!(
        "debezium_worker_kill: rows={} records={} duplicates={duplicates} lost=0",
        written.len(),
        read.len()
    );
    pg.finish(&worker, CONNECTOR).await;
}
