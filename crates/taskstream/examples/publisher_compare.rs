//! The relay and Debezium, measured on the same Apache Kafka (testkit's
//! cluster from Maven Central jars) and the same PostgreSQL in one run.
//!
//! ```sh
//! TASKSTREAM_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p taskstream --example publisher_compare -- [PACED] [BACKLOG]
//! ```
//!
//! For each publisher, on a database of its own:
//! - **latency**: `PACED` tasks (default 400) created one at a time through
//!   the Task API over HTTP, 20 ms apart; for each, the time from sending
//!   the `POST /tasks` to a consumer already positioned at the end of
//!   `task-events` receiving its record (matched by key, the task id);
//!   p50, p99 and max.
//! - **throughput**: a backlog of `BACKLOG` outbox rows (default 20,000)
//!   written while the publisher is stopped (the relay not started yet;
//!   the connector paused), then the time from starting (resuming) it until
//!   the consumer has every one of them: rows drained per second.
//!
//! The relay runs in this process with its defaults (500 rows a round,
//! woken by `LISTEN`); Debezium runs in a Kafka Connect worker (its own
//! JVM) with the configuration `taskstream cdc connector-config` generates.
//! Events are JSON (no registry): both publish the stored bytes unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::Connection;
use taskstream::components::{self, Component};
use taskstream::ops::cdc::OutboxConnector;
use taskstream_kafka::KafkaConfig;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{EventEncoding, RelaySettings};
use taskstream_store::{Database, OutboxStore, SqliteOptions, Store};
use taskstream_telemetry::Metrics;
use taskstream_testkit::{kafka_or_skip, ConnectWorker, KafkaCluster, Shape};
use tokio::sync::Notify;

const PARTITIONS: i32 = 3;
const PATIENCE: Duration = Duration::from_secs(300);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let paced: usize = args.next().map_or(Ok(400), |a| a.parse())?;
    let backlog: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let cluster = kafka_or_skip(Shape::SingleNode, "publisher comparison")
        .context("no Apache Kafka (needs Java and Maven)")?;
    create_topic(cluster)?;
    let admin = std::env::var("TASKSTREAM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());

    let mut results = Vec::new();
    for publisher in [Publisher::Relay, Publisher::Debezium] {
        let db = Scratch::new(&admin).await?;
        let outcome = measure(publisher, cluster, &db, paced, backlog).await;
        db.drop().await;
        results.push((publisher, outcome?));
    }
    println!(
        "\n| publisher | latency p50 | p99 | max | backlog | drained in | rows/s |\n|---|---|---|---|---|---|---|"
    );
    for (publisher, r) in &results {
        println!(
            "| {publisher:?} | {:.1} ms | {:.1} ms | {:.1} ms | {backlog} | {:.2} s | {:.0} |",
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.drain.as_secs_f64(),
            backlog as f64 / r.drain.as_secs_f64()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publisher {
    Relay,
    Debezium,
}

struct Outcome {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    drain: Duration,
}

async fn measure(
    publisher: Publisher,
    cluster: &'static KafkaCluster,
    db: &Scratch,
    paced: usize,
    backlog: usize,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let store = components::open_store(
        dir.path(),
        Some(&Database::Postgres(db.url.clone())),
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await?;
    let kafka = KafkaConfig::new(cluster.bootstrap_servers());
    let encoding = EventEncoding::for_registry(None, TASK_EVENTS);
    let metrics = Metrics::new();
    let wake = Arc::new(Notify::new());
    let api = components::task_api(Arc::clone(&store), Arc::clone(&wake), encoding.clone());
    let (_, http) = components::http("127.0.0.1:0".parse()?, api, &Default::default()).await?;
    let base = http.address().context("the API listens")?.to_owned();

    let mut running: Vec<Component> = vec![http];
    let mut worker = None;
    let start_relay = |store: &Arc<Store>| -> anyhow::Result<Vec<Component>> {
        let mut started: Vec<Component> = components::outbox_listener(store, Arc::clone(&wake))
            .into_iter()
            .collect();
        started.push(components::relay(
            Arc::clone(store),
            &kafka,
            Arc::clone(&wake),
            RelaySettings::default(),
            encoding.clone(),
            &metrics,
        )?);
        Ok(started)
    };
    match publisher {
        Publisher::Relay => running.extend(start_relay(&store)?),
        Publisher::Debezium => {
            let w = ConnectWorker::start(cluster, &format!("compare-{}", db.name)).await?;
            let connector = OutboxConnector {
                slot: db.name.clone(),
                publication: db.name.clone(),
                ..OutboxConnector::for_database(&db.url)?
            };
            w.put_connector("outbox", &Value::Object(connector.config()))
                .await?;
            w.wait_until_running("outbox", PATIENCE).await?;
            worker = Some(w);
        }
    }

    // Latency: paced creates, each timed from its request to its record.
    let watcher = Watcher::at_end(cluster)?;
    let client = reqwest::Client::new();
    let mut sent = HashMap::new();
    for i in 0..paced {
        let at = Instant::now();
        let created: Value = client
            .post(format!("{base}/tasks"))
            .json(&json!({ "title": format!("compare {i}") }))
            .send()
            .await?
            .json()
            .await?;
        let id = created["id"].as_str().context("a task id")?.to_owned();
        sent.insert(id, at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = watcher.wait_for(paced).await?;
    let mut latencies: Vec<f64> = sent
        .iter()
        .map(|(id, at)| {
            arrivals
                .get(id.as_bytes())
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
                .context("a record for every task")
        })
        .collect::<anyhow::Result<_>>()?;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };

    // Throughput: a backlog written while nothing publishes, then drained.
    match publisher {
        Publisher::Relay => {
            // Stop the relay (and its listener), keeping the API.
            for component in running.split_off(1) {
                component.stop().await;
            }
        }
        Publisher::Debezium => {
            let w = worker.as_ref().expect("started");
            let paused = client
                .put(format!("{}/connectors/outbox/pause", w.url()))
                .send()
                .await?;
            if !paused.status().is_success() {
                bail!("pausing the connector: {}", paused.status());
            }
            wait_for_state(&client, w, "PAUSED").await?;
        }
    }
    write_backlog(&store, backlog).await?;
    let watcher = Watcher::at_end(cluster)?;
    let started = Instant::now();
    match publisher {
        Publisher::Relay => running.extend(start_relay(&store)?),
        Publisher::Debezium => {
            let w = worker.as_ref().expect("started");
            client
                .put(format!("{}/connectors/outbox/resume", w.url()))
                .send()
                .await?;
        }
    }
    watcher.wait_for(backlog).await?;
    let drain = started.elapsed();

    components::stop_all(running).await;
    if let Some(w) = worker {
        let _ = w.delete_connector("outbox").await;
    }
    Ok(Outcome {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *latencies.last().unwrap(),
        drain,
    })
}

async fn wait_for_state(
    client: &reqwest::Client,
    worker: &ConnectWorker,
    state: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status: Value = client
            .get(format!("{}/connectors/outbox/status", worker.url()))
            .send()
            .await?
            .json()
            .await?;
        if status["tasks"][0]["state"] == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the connector never reached {state}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` outbox rows: 100 real task events through the store, then copies of
/// them with fresh ids and keys, in one statement per 5,000.
async fn write_backlog(store: &Store, n: usize) -> anyhow::Result<()> {
    let pg = store.postgres().context("PostgreSQL")?;
    let (before,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
        .fetch_one(pg.pool())
        .await?;
    let mut left = n as i64;
    while left > 0 {
        let batch = left.min(5000);
        sqlx::query(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at)
             SELECT gen_random_uuid(), o.aggregatetype, gen_random_uuid()::text, o.type, o.payload, o.topic,
                    o.content_type, o.traceparent, now()
             FROM generate_series(1, $1) g
             JOIN LATERAL (SELECT * FROM outbox ORDER BY seq LIMIT 1 OFFSET (g % 100)) o ON true",
        )
        .bind(batch)
        .execute(pg.pool())
        .await?;
        left -= batch;
    }
    let stats = store.outbox_stats().await?;
    if stats.total != before + n as i64 {
        bail!("wrote {} rows, not {n}", stats.total - before);
    }
    Ok(())
}

/// A consumer of `task-events` positioned at its end, recording when each
/// record (by key) arrives.
struct Watcher {
    arrivals: Arc<Mutex<HashMap<Vec<u8>, Instant>>>,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn at_end(cluster: &KafkaCluster) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set(
                "group.id",
                format!("compare-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let (_, high) = consumer.fetch_watermarks(TASK_EVENTS, p, Duration::from_secs(30))?;
            assignment.add_partition_offset(TASK_EVENTS, p, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (arrivals, count, stop) = (arrivals.clone(), count.clone(), stop.clone());
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                        let now = Instant::now();
                        let key = m.key().unwrap_or_default().to_vec();
                        arrivals.lock().unwrap().entry(key).or_insert(now);
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Self {
            arrivals,
            count,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until `n` records arrived; returns when each key first did.
    async fn wait_for(mut self, n: usize) -> anyhow::Result<HashMap<Vec<u8>, Instant>> {
        let deadline = Instant::now() + PATIENCE;
        while self.count.load(std::sync::atomic::Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} records arrived",
                    self.count.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let arrivals = std::mem::take(&mut *self.arrivals.lock().unwrap());
        Ok(arrivals)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn create_topic(cluster: &KafkaCluster) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()?;
    let created = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(
            TASK_EVENTS,
            PARTITIONS,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for result in created {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating {topic}: {code}"),
        }
    }
    Ok(())
}

/// A database of its own, dropped with its replication slot afterwards.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn new(admin: &str) -> anyhow::Result<Self> {
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .context("no PostgreSQL at TASKSTREAM_TEST_POSTGRES")?;
        let name = format!("compare_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').context("a database URL")?.0;
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop(self) {
        let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await else {
            return;
        };
        for _ in 0..60 {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
            )
            .bind(&self.name)
            .execute(&mut conn)
            .await;
            let dropped = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&self.name)
            .execute(&mut conn)
            .await;
            if dropped.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await;
    }
}
