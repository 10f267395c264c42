//! `taskstream bench`: the whole system under load, measured against the
//! ceilings of the same machine in the same run.
//!
//! The run starts `taskstream up` in-process on a fresh data directory — on
//! the dev broker, or on the Kafka cluster given with `--kafka-bootstrap` —
//! (or drives one given with `--url`, API figures only), sends a mix of task
//! creations, updates and completions from `--concurrency` keep-alive
//! clients, and then measures, on the same broker, store and HTTP stack:
//! a raw producer sending as many records of the same size, a record's trip
//! from a producer to a consumer through the broker alone (at a steady
//! rate, with the fetch wait the system's consumers use), a raw store
//! commit loop with the same durability, and a no-op route under the same
//! load generator. Each of our figures is reported as a ratio of its ceiling.
//!
//! `--brokers` measures the brokers alone instead, side by side in one run:
//! taskstream's broker and librdkafka's mock, each started here on its own
//! (and the cluster given with `--kafka-bootstrap`): produce throughput,
//! consume throughput, and a record's trip from a producer to a consumer,
//! each broker with the consumer settings `up` gives it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use taskstream_kafka::{
    apply_topics, end_offsets, ArrivalReader, ConsumerSettings, EventProducer, KafkaConfig,
    OutboundRecord, ProducerSettings, TopicSpec,
};
use taskstream_services::topics::declared_topics;
use taskstream_services::NOTIFIER_GROUP;
use taskstream_store::{AuditStore, SqliteOptions, SqliteStore, Store, Synchronous, TaskStore};

use crate::components::{DevBrokerKind, EmbeddedBroker, EmbeddedBrokerSettings};
use crate::ops::catch_up::{self, CatchUp, Sample};
use crate::system::{RunningSystem, SystemConfig};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Requests in the measured phase.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Concurrent HTTP clients (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Send at this many requests per second instead of as fast as possible.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Out of every 10 requests, how many update a task (the rest create or complete).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=5))]
    pub updates: u8,
    /// Out of every 10 requests, how many complete a task.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=5))]
    pub completions: u8,
    /// Drive an already running API from this process instead: API
    /// figures, and with `--watch-group` how far behind each group fell.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: a consumer group to watch on `--kafka-bootstrap`
    /// (repeatable): its lag when the load ended and when it caught up.
    #[arg(long = "watch-group", value_name = "GROUP", requires = "url")]
    pub watch_groups: Vec<String>,
    /// With `--watch-group`: the topic the service publishes its changes to.
    #[arg(long, default_value = "task-events")]
    pub watch_topic: String,
    /// With `--url`: every this many seconds during the load, sample the
    /// service's resident memory (its `/metrics`) and the watched groups' lag.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_every: u64,
    /// With `--watch-group`: how long to wait for the groups to catch up, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub catch_up_timeout: u64,
    /// A small run (1,000 requests, 8 clients) for smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where to write the end-to-end latency plot (SVG).
    #[arg(long, default_value = "bench-latency.svg")]
    pub plot: PathBuf,
    /// SQLite durability for the run (the store ceiling uses the same).
    #[arg(long, default_value = "full")]
    pub sqlite_synchronous: Synchronous,
    /// Run against this Kafka cluster (plaintext) instead of the dev broker;
    /// the ceilings are measured on it too. Missing topics are created.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_bootstrap: Option<String>,
    /// Without `--kafka-bootstrap`: the embedded broker to run on,
    /// taskstream's own or librdkafka's mock (with its dev-only consumer timings).
    #[arg(long, value_enum, default_value_t = DevBrokerKind::Taskstream)]
    pub dev_broker: DevBrokerKind,
    /// Replication factor of the topics created on `--kafka-bootstrap`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=5))]
    pub replication_factor: i32,
    /// Compare the brokers alone instead of loading the system: taskstream's
    /// broker and librdkafka's mock, started here, and with
    /// `--kafka-bootstrap` that cluster too, side by side in one run:
    /// produce and consume throughput, and a record's trip from producer
    /// to consumer with each one's consumer settings.
    #[arg(long, conflicts_with_all = [
        "url", "rate", "dev_broker", "relay_delivery", "requests", "concurrency",
        "updates", "completions", "sqlite_synchronous", "plot",
    ])]
    pub brokers: bool,
    /// How the system's relay publishes during the load: `exactly-once`
    /// (one transaction per batch; not on `--dev-broker mock`) or
    /// `at-least-once`. Default: as `taskstream up` publishes.
    #[arg(long, value_enum)]
    pub relay_delivery: Option<crate::cli::RelayDeliveryArg>,
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.01..=1_000_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "expected requests per second between 0.01 and 1000000, got {raw:?}"
        )),
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One rate next to its ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    pub ours_per_s: f64,
    pub ceiling_per_s: f64,
    pub ratio: f64,
}

impl Versus {
    fn new(ours: f64, ceiling: f64) -> Self {
        Self {
            ours_per_s: ours,
            ceiling_per_s: ceiling,
            ratio: if ceiling > 0.0 { ours / ceiling } else { 0.0 },
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: usize,
    pub concurrency: usize,
    pub rate_limit_per_s: Option<f64>,
    pub sqlite_synchronous: String,
    /// `dev broker`, or the Kafka cluster's bootstrap address.
    pub broker: String,
    pub api_per_s: f64,
    pub api_latency: Percentiles,
    pub http_errors: usize,
    /// Changes the API acknowledged in the measured phase.
    pub acknowledged_changes: usize,
    /// API acknowledgement to the effect stored, per consumer group.
    pub end_to_end: HashMap<String, Percentiles>,
    /// The relay's rate during the load (bounded by the API's).
    pub relay_per_s: Option<f64>,
    /// The relay draining a backlog: its own capacity, with the delivery
    /// the system runs (exactly-once unless the broker has no transactions).
    pub relay_drain_per_s: Option<f64>,
    /// The same backlog drained with one transaction per batch.
    pub relay_drain_exactly_once_per_s: Option<f64>,
    /// The same backlog drained with the idempotent producer alone.
    pub relay_drain_at_least_once_per_s: Option<f64>,
    pub consumer_per_s: HashMap<String, f64>,
    /// A record's trip from a producer's send to a consumer's receipt on
    /// the broker alone (`read_committed`, the system consumers' fetch
    /// wait), at a steady 1,000 records/s, after the load.
    pub broker_latency: Option<Percentiles>,
    /// The fetch wait the broker latency was measured with, in ms.
    pub broker_latency_fetch_wait_ms: Option<u64>,
    pub noop_http_latency: Option<Percentiles>,
    /// Ours vs the machine's ceilings, measured in the same run.
    pub api_vs_noop_http: Option<Versus>,
    pub api_vs_store_commits: Option<Versus>,
    pub relay_vs_raw_producer: Option<Versus>,
    pub event_bytes: usize,
    pub plot: Option<String>,
    /// With `--url --watch-group`: the groups at the end of the load.
    pub catch_up: Option<CatchUp>,
    /// With `--url`: the service's memory and the groups' lag during the load.
    pub samples: Vec<Sample>,
}

fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client builds")
}

/// What one request changed, as acknowledged.
#[derive(Clone)]
struct Ack {
    task_id: String,
    version: i64,
    at: DateTime<Utc>,
}

struct LoadResult {
    latency: Histogram<u64>,
    acks: Vec<Ack>,
    errors: usize,
    elapsed: Duration,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Sends `total` requests from `concurrency` clients; `request(i)` builds the i-th.
async fn drive(
    base: &str,
    total: usize,
    concurrency: usize,
    rate: Option<f64>,
    mix: Option<(u8, u8)>,
    quiet: bool,
) -> LoadResult {
    let http = client(concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    let open: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let progress = {
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = next.load(Ordering::Relaxed).min(total);
                if !quiet {
                    eprintln!("  {done}/{total} requests");
                }
                if done >= total {
                    return;
                }
            }
        })
    };
    let workers = (0..concurrency).map(|_| {
        let (http, next, open, base) = (http.clone(), Arc::clone(&next), Arc::clone(&open), base.to_owned());
        tokio::spawn(async move {
            let mut latency = new_histogram();
            let mut acks = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if let Some(interval) = interval {
                    tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
                }
                let request = match mix {
                    None => http.get(format!("{base}/healthz")),
                    Some((updates, completions)) => {
                        let slot = (i % 10) as u8;
                        let existing = if slot < updates + completions {
                            let mut open = open.lock().expect("open tasks poisoned");
                            let len = open.len();
                            (len > 0).then(|| {
                                let pick = i.wrapping_mul(2_654_435_761) % len;
                                if slot < updates {
                                    open[pick].clone()
                                } else {
                                    open.swap_remove(pick)
                                }
                            })
                        } else {
                            None
                        };
                        match existing {
                            Some(id) if slot < updates => http
                                .patch(format!("{base}/tasks/{id}"))
                                .json(&json!({ "title": format!("updated {i}") })),
                            Some(id) => http.post(format!("{base}/tasks/{id}/complete")),
                            None => {
                                let assignee = (i % 2 == 0).then(|| format!("user{}", i % 50));
                                http.post(format!("{base}/tasks"))
                                    .json(&json!({ "title": format!("bench task {i}"), "assignee": assignee }))
                            }
                        }
                    }
                };
                let sent = Instant::now();
                let response = request.send().await;
                let at = Utc::now();
                let elapsed = sent.elapsed().as_micros() as u64;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = latency.record(elapsed.max(1));
                        if mix.is_some() {
                            if let Ok(task) = r.json::<Value>().await {
                                if let (Some(id), Some(version)) = (task["id"].as_str(), task["version"].as_i64()) {
                                    if version == 1 {
                                        open.lock().expect("open tasks poisoned").push(id.to_owned());
                                    }
                                    acks.push(Ack {
                                        task_id: id.to_owned(),
                                        version,
                                        at,
                                    });
                                }
                            }
                        } else {
                            let _ = r.bytes().await;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (latency, acks, errors)
        })
    });
    let mut result = LoadResult {
        latency: new_histogram(),
        acks: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for worker in futures::future::join_all(workers).await {
        let (latency, acks, errors) = worker.expect("load worker panicked");
        let _ = result.latency.add(latency);
        result.acks.extend(acks);
        result.errors += errors;
    }
    result.elapsed = started.elapsed();
    progress.abort();
    result
}

/// The raw producer ceiling: `count` records of `size` bytes, same settings as the relay.
async fn raw_producer(kafka: &KafkaConfig, count: usize, size: usize) -> anyhow::Result<f64> {
    raw_producer_to(kafka, CEILING_TOPIC, count, size).await
}

/// [`raw_producer`] to `topic`.
async fn raw_producer_to(
    kafka: &KafkaConfig,
    topic: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let producer = EventProducer::new(kafka, "bench-ceiling", &ProducerSettings::default())?;
    let payload = vec![b'x'; size];
    // Connect and initialise the idempotent producer before timing.
    let warm: [(&str, &[u8]); 0] = [];
    producer
        .enqueue(OutboundRecord {
            topic,
            key: b"warm-up",
            payload: &payload,
            headers: &warm,
        })
        .await?
        .await?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("key-{}", i % 1000);
        deliveries.push(
            producer
                .enqueue(OutboundRecord {
                    topic,
                    key: key.as_bytes(),
                    payload: &payload,
                    headers: &[],
                })
                .await?,
        );
    }
    for d in deliveries {
        d.await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// A record's trip through the broker alone: `count` records of `size`
/// bytes sent at a steady 1,000/s by the relay's producer settings, each
/// timed from its send to its receipt by a `read_committed` consumer
/// fetching with `fetch_wait`. Records are sent until the consumer has
/// received one from every partition first (its fetches are running on
/// all of them), and those are not counted.
async fn broker_latency(
    kafka: &KafkaConfig,
    topic: &str,
    fetch_wait: Duration,
    count: usize,
    size: usize,
) -> anyhow::Result<Percentiles> {
    const RATE: f64 = 1_000.0;
    let timeout = Duration::from_secs(30);
    let mut reader = ArrivalReader::start(kafka, topic, fetch_wait, timeout).await?;
    let producer = EventProducer::new(kafka, "bench-latency", &ProducerSettings::default())?;
    let base = Instant::now();
    // A record's value: the microseconds since `base` when it was sent,
    // then padding up to `size`.
    let record = |warm: bool| {
        let mut value = (base.elapsed().as_micros() as u64).to_be_bytes().to_vec();
        value.push(u8::from(warm));
        value.resize(size.max(value.len()), b'x');
        value
    };
    let partitions = taskstream_services::topics::TASK_EVENTS_PARTITIONS as usize;
    let mut warmed = std::collections::HashSet::new();
    let warm_until = Instant::now() + timeout;
    let mut i = 0usize;
    while warmed.len() < partitions {
        if Instant::now() > warm_until {
            bail!(
                "the consumer received nothing from some partitions of {topic} within {timeout:?}"
            );
        }
        send(&producer, topic, &format!("warm-{i}"), &record(true)).await?;
        i += 1;
        while let Some(arrival) = reader.next(Duration::from_millis(5)).await? {
            warmed.insert(arrival.partition);
        }
    }
    // Drain the warm-up records still on their way.
    while reader.next(Duration::from_millis(300)).await?.is_some() {}

    let mut latency = new_histogram();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut received = 0usize;
    let deadline = started + Duration::from_secs_f64(count as f64 / RATE) + timeout;
    while received < count {
        if Instant::now() > deadline {
            bail!("{received} of {count} records reached the consumer within {timeout:?} of the last send");
        }
        // Send what is due by now; otherwise take what arrived until the next is due.
        let due = started + Duration::from_secs_f64(sent as f64 / RATE);
        if sent < count && Instant::now() >= due {
            send(
                &producer,
                topic,
                &format!("key-{}", sent % 1000),
                &record(false),
            )
            .await?;
            sent += 1;
            continue;
        }
        let wait = if sent < count {
            due.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(100)
        };
        while let Some(arrival) = reader.next(wait).await? {
            let Some((stamp, warm)) = arrival.value.split_first_chunk::<8>() else {
                continue;
            };
            if warm.first() == Some(&1) {
                continue;
            }
            let sent_us = u64::from_be_bytes(*stamp);
            let at_us = arrival.at.saturating_duration_since(base).as_micros() as u64;
            let _ = latency.record(at_us.saturating_sub(sent_us));
            received += 1;
            if sent < count {
                break;
            }
        }
    }
    Ok(Percentiles::of(&latency))
}

/// Hands one record to `producer` without awaiting its delivery: the
/// consumer's receipt is what [`broker_latency`] times.
async fn send(
    producer: &EventProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    drop(
        producer
            .enqueue(OutboundRecord {
                topic,
                key: key.as_bytes(),
                payload,
                headers: &[],
            })
            .await?,
    );
    Ok(())
}

const CEILING_TOPIC: &str = "bench-ceiling";
const LATENCY_TOPIC: &str = "bench-latency";

/// The topic the broker's latency is measured on: as many partitions as
/// `task-events`.
fn latency_topic(replication_factor: i32) -> TopicSpec {
    bench_topic(LATENCY_TOPIC, replication_factor)
}

/// The topic the ceilings and the relay drain write to: as many partitions
/// as `task-events`.
fn ceiling_topic(replication_factor: i32) -> TopicSpec {
    bench_topic(CEILING_TOPIC, replication_factor)
}

/// A topic the bench writes to outside the system: `task-events`' partitions.
fn bench_topic(name: &str, replication_factor: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: taskstream_services::topics::TASK_EVENTS_PARTITIONS,
        replication_factor,
        configs: Default::default(),
    }
}

/// A fresh store in a temporary directory, with the run's durability.
async fn scratch_store(
    synchronous: Synchronous,
) -> anyhow::Result<(tempfile::TempDir, Arc<Store>)> {
    let dir = tempfile::tempdir()?;
    let options = SqliteOptions {
        synchronous,
        ..SqliteOptions::default()
    };
    let store = Arc::new(Store::Sqlite(
        SqliteStore::open(&dir.path().join("scratch.db"), &options).await?,
    ));
    Ok((dir, store))
}

/// Writes `count` new tasks and their outbox rows, as the API does, from
/// `writers` concurrent writers. The payload is the event in `encoding`
/// (schemas registered), or `payload_bytes` filler bytes when given.
async fn write_tasks(
    store: &Arc<Store>,
    count: usize,
    writers: usize,
    topic: &'static str,
    payload_bytes: Option<usize>,
    encoding: &taskstream_services::EventEncoding,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks = (0..writers).map(|_| {
        let (store, next) = (Arc::clone(store), Arc::clone(&next));
        let encoding = encoding.clone();
        tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let change = taskstream_domain::Task::create(
                    taskstream_domain::NewTask {
                        title: taskstream_domain::TaskTitle::parse("bench").expect("valid title"),
                        description: None,
                        priority: taskstream_domain::Priority::Medium,
                        due_at: None,
                        assignee: Some(
                            taskstream_domain::Assignee::parse("ana").expect("valid assignee"),
                        ),
                    },
                    taskstream_domain::now(),
                    taskstream_domain::Cause::default(),
                );
                let mut message = encoding.outbox_message(
                    &change.event,
                    "task",
                    change.task.id.to_string(),
                    topic,
                    None,
                )?;
                if let Some(n) = payload_bytes {
                    message.payload = vec![b'x'; n];
                }
                store.insert_task(&change.task, &message).await?;
            }
            anyhow::Ok(())
        })
    });
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    Ok(())
}

/// The relay's capacity: a fresh relay draining `count` events queued
/// before it starts, with the same encoding and broker as the system.
async fn relay_drain(
    kafka: &KafkaConfig,
    registry: Option<&str>,
    count: usize,
    synchronous: Synchronous,
    delivery: taskstream_services::RelayDelivery,
) -> anyhow::Result<f64> {
    use taskstream_store::OutboxStore;
    let (_dir, store) = scratch_store(synchronous).await?;
    let encoding = match registry {
        Some(url) => taskstream_services::EventEncoding::avro(
            Arc::new(taskstream_avro::RegistryClient::new(url)),
            CEILING_TOPIC,
        ),
        None => taskstream_services::EventEncoding::Json,
    };
    encoding.register_schemas().await?;
    write_tasks(&store, count, 16, CEILING_TOPIC, None, &encoding).await?;
    let metrics = taskstream_telemetry::Metrics::new();
    let started = Instant::now();
    let relay = crate::components::relay(
        Arc::clone(&store),
        kafka,
        Arc::new(tokio::sync::Notify::new()),
        taskstream_services::RelaySettings {
            delivery,
            ..taskstream_services::RelaySettings::default()
        },
        encoding,
        &metrics,
    )?;
    while store.outbox_stats().await?.pending > 0 {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the relay did not drain {count} events in two minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    relay.stop().await;
    store.close().await;
    Ok(rate)
}

/// The store ceiling: `count` task + outbox commits from `concurrency` writers.
async fn store_commits(
    count: usize,
    concurrency: usize,
    synchronous: Synchronous,
    event_bytes: usize,
) -> anyhow::Result<f64> {
    let (_dir, store) = scratch_store(synchronous).await?;
    let started = Instant::now();
    let json = taskstream_services::EventEncoding::Json;
    write_tasks(
        &store,
        count,
        concurrency,
        "task-events",
        Some(event_bytes),
        &json,
    )
    .await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

/// Writes a latency distribution plot: the share of events handled within each latency.
fn plot(path: &PathBuf, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    plot_latency_cdf(
        path,
        "End-to-end latency: API acknowledgement to effect stored",
        "events handled within (%)",
        series,
    )
}

/// Writes an SVG of cumulative latency distributions: for each named series
/// of latencies in milliseconds, the share (y) done within each latency (x).
pub(crate) fn plot_latency_cdf(
    path: &PathBuf,
    caption: &str,
    y_desc: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max * 1.05, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc(y_desc)
        .draw()?;
    let colors = [BLUE, RED, GREEN];
    for ((name, values), color) in series.iter().zip(colors) {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        // At most ~1,000 points per curve keeps the SVG small.
        let step = (sorted.len() / 1000).max(1);
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == sorted.len())
            .map(|(i, v)| (*v, (i + 1) as f64 * 100.0 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn micros_between(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_microseconds().unwrap_or(0).max(1) as u64
}

/// One broker's figures in `bench --brokers`.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerFigures {
    pub broker: String,
    /// Records of `record_bytes` a second from the relay's producer settings
    /// (idempotent, `acks=all`), sent as fast as it takes them.
    pub produce_per_s: f64,
    pub produce_mib_per_s: f64,
    /// The same records read back from the start by a `read_committed`
    /// consumer outside any group.
    pub consume_per_s: f64,
    /// A record's trip from its send to its receipt, at 1,000 records/s.
    pub latency: Percentiles,
    /// The consumer's `fetch.wait.max.ms` in the latency run.
    pub fetch_wait_ms: u64,
}

/// Everything `bench --brokers` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BrokersReport {
    pub records: usize,
    pub record_bytes: usize,
    pub latency_records: usize,
    pub brokers: Vec<BrokerFigures>,
}

/// The size of a record in `bench --brokers`: about a task event's.
const BROKERS_RECORD_BYTES: usize = 400;

/// `bench --brokers`: each broker alone, one after the other, the same
/// measurements on each.
async fn compare_brokers(args: &BenchArgs) -> anyhow::Result<()> {
    // Within what the mock keeps (about 5 MiB a partition, 20 MB here
    // over six), so that every record can be read back from each broker.
    let records = if args.quick { 10_000 } else { 50_000 };
    let latency_records = if args.quick { 500 } else { 5_000 };
    let quiet = args.json;
    let mut report = BrokersReport {
        records,
        record_bytes: BROKERS_RECORD_BYTES,
        latency_records,
        brokers: Vec::new(),
    };
    for kind in [DevBrokerKind::Taskstream, DevBrokerKind::Mock] {
        let name = match kind {
            DevBrokerKind::Taskstream => "taskstream",
            DevBrokerKind::Mock => "mock",
        };
        if !quiet {
            eprintln!("measuring {name}'s broker");
        }
        let broker = EmbeddedBroker::start(&EmbeddedBrokerSettings {
            kind,
            ..EmbeddedBrokerSettings::new(None)
        })
        .await?;
        let kafka = KafkaConfig::new(broker.bootstrap_servers());
        let topics = [ceiling_topic(1), latency_topic(1)];
        match broker.mock() {
            Some(mock) => {
                for topic in &topics {
                    mock.create_topic(topic)?;
                }
            }
            None => {
                apply_topics(&kafka, &topics, Duration::from_secs(30)).await?;
            }
        }
        // Each with the consumer settings `up` gives it.
        let fetch_wait = match kind {
            DevBrokerKind::Taskstream => ConsumerSettings::default().fetch_wait,
            DevBrokerKind::Mock => ConsumerSettings::for_dev_broker().fetch_wait,
        };
        let figures = measure_broker(
            name,
            &kafka,
            (CEILING_TOPIC, LATENCY_TOPIC),
            fetch_wait,
            records,
            latency_records,
        )
        .await;
        broker.shutdown(Duration::from_secs(1));
        report.brokers.push(figures?);
    }
    if let Some(bootstrap) = &args.kafka_bootstrap {
        if !quiet {
            eprintln!("measuring the cluster at {bootstrap}");
        }
        let kafka = KafkaConfig::new(bootstrap);
        // Topics of their own: the cluster may keep an earlier run's.
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (throughput, latency) = (
            format!("{CEILING_TOPIC}-{run}"),
            format!("{LATENCY_TOPIC}-{run}"),
        );
        apply_topics(
            &kafka,
            &[
                bench_topic(&throughput, args.replication_factor),
                bench_topic(&latency, args.replication_factor),
            ],
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("cannot create the topics on {bootstrap}"))?;
        report.brokers.push(
            measure_broker(
                &format!("kafka {bootstrap}"),
                &kafka,
                (&throughput, &latency),
                ConsumerSettings::default().fetch_wait,
                records,
                latency_records,
            )
            .await?,
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "taskstream bench --brokers: {} records of {} bytes; latency: {} records at 1,000/s",
        report.records, report.record_bytes, report.latency_records
    );
    println!(
        "  {:<28} {:>14} {:>10} {:>14} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "broker",
        "produce/s",
        "MiB/s",
        "consume/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "fetch wait"
    );
    for b in &report.brokers {
        println!(
            "  {:<28} {:>14.0} {:>10.1} {:>14.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} ms",
            b.broker,
            b.produce_per_s,
            b.produce_mib_per_s,
            b.consume_per_s,
            b.latency.p50_ms,
            b.latency.p90_ms,
            b.latency.p99_ms,
            b.latency.max_ms,
            b.fetch_wait_ms
        );
    }
    Ok(())
}

/// One broker's figures: produce throughput to `topics.0`, consume
/// throughput reading it back, then the latency on `topics.1`.
async fn measure_broker(
    name: &str,
    kafka: &KafkaConfig,
    topics: (&str, &str),
    fetch_wait: Duration,
    records: usize,
    latency_records: usize,
) -> anyhow::Result<BrokerFigures> {
    let produce_per_s = raw_producer_to(kafka, topics.0, records, BROKERS_RECORD_BYTES)
        .await
        .with_context(|| format!("producing to {name}"))?;
    let started = Instant::now();
    // The records and the producer's warm-up record, from the start.
    let read = taskstream_kafka::read_published(
        kafka,
        topics.0,
        &HashMap::new(),
        records + 1,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("consuming from {name}"))?;
    let consumed = started.elapsed();
    if read.records < records + 1 {
        bail!(
            "{name}: {} of {} records could be read back",
            read.records,
            records + 1
        );
    }
    let latency = broker_latency(
        kafka,
        topics.1,
        fetch_wait,
        latency_records,
        BROKERS_RECORD_BYTES,
    )
    .await
    .with_context(|| format!("timing records through {name}"))?;
    Ok(BrokerFigures {
        broker: name.to_owned(),
        produce_per_s,
        produce_mib_per_s: produce_per_s * BROKERS_RECORD_BYTES as f64 / (1024.0 * 1024.0),
        consume_per_s: read.records as f64 / consumed.as_secs_f64(),
        latency,
        fetch_wait_ms: fetch_wait.as_millis() as u64,
    })
}

/// Runs the benchmark and prints its report.
pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.brokers {
        return compare_brokers(&args).await;
    }
    if args.quick {
        args.requests = args.requests.min(1_000);
        args.concurrency = args.concurrency.min(8);
    }
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be positive");
    }
    let quiet = args.json;
    let mix = Some((args.updates, args.completions));
    let say = |msg: &str| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    let mut report = Report {
        requests: args.requests,
        concurrency: args.concurrency,
        rate_limit_per_s: args.rate,
        sqlite_synchronous: format!("{:?}", args.sqlite_synchronous).to_lowercase(),
        broker: args.kafka_bootstrap.as_ref().map_or_else(
            || format!("dev broker ({:?})", args.dev_broker).to_lowercase(),
            |b| format!("kafka {b}"),
        ),
        api_per_s: 0.0,
        api_latency: Percentiles::of(&new_histogram()),
        http_errors: 0,
        acknowledged_changes: 0,
        end_to_end: HashMap::new(),
        relay_per_s: None,
        relay_drain_per_s: None,
        relay_drain_exactly_once_per_s: None,
        relay_drain_at_least_once_per_s: None,
        consumer_per_s: HashMap::new(),
        broker_latency: None,
        broker_latency_fetch_wait_ms: None,
        noop_http_latency: None,
        api_vs_noop_http: None,
        api_vs_store_commits: None,
        relay_vs_raw_producer: None,
        event_bytes: 0,
        plot: None,
        catch_up: None,
        samples: Vec::new(),
    };

    if let Some(url) = &args.url {
        say(&format!(
            "driving {url}: {} requests from {} clients",
            args.requests, args.concurrency
        ));
        let watch = match (&args.kafka_bootstrap, args.watch_groups.is_empty()) {
            (_, true) => None,
            (None, false) => {
                bail!("--watch-group needs --kafka-bootstrap: the cluster the groups consume from")
            }
            (Some(bootstrap), false) => {
                let kafka = KafkaConfig::new(bootstrap);
                let start = end_offsets(&kafka, &args.watch_topic, Duration::from_secs(10))
                    .await
                    .with_context(|| {
                        format!("cannot read the end of {} on {bootstrap}", args.watch_topic)
                    })?;
                Some((kafka, start))
            }
        };
        let sampler = catch_up::Sampler::start(
            client(1),
            url,
            watch.as_ref().map(|(kafka, _)| {
                (
                    kafka.clone(),
                    args.watch_topic.clone(),
                    args.watch_groups.clone(),
                )
            }),
            Duration::from_secs(args.sample_every),
        );
        let load = drive(url, args.requests, args.concurrency, args.rate, mix, quiet).await;
        report.samples = sampler.finish().await;
        report.api_per_s = (args.requests - load.errors) as f64 / load.elapsed.as_secs_f64();
        report.api_latency = Percentiles::of(&load.latency);
        report.http_errors = load.errors;
        report.acknowledged_changes = load.acks.len();
        if let Some((kafka, start)) = watch {
            say("waiting for the watched groups to catch up");
            report.catch_up = Some(
                catch_up::measure(
                    &kafka,
                    &args.watch_topic,
                    &args.watch_groups,
                    &start,
                    load.acks.len(),
                    Duration::from_secs(args.catch_up_timeout),
                )
                .await?,
            );
        }
        let noop = drive(url, args.requests, args.concurrency, None, None, true).await;
        report.noop_http_latency = Some(Percentiles::of(&noop.latency));
        let noop_rate = (args.requests - noop.errors) as f64 / noop.elapsed.as_secs_f64();
        report.api_vs_noop_http = Some(Versus::new(report.api_per_s, noop_rate));
        return print(&report, args.json);
    }

    let dir = tempfile::tempdir()?;
    let mut config = SystemConfig::new("127.0.0.1:0".parse()?, dir.path());
    config.sqlite.synchronous = args.sqlite_synchronous;
    config.dev_broker = args.dev_broker;
    if args.kafka_bootstrap.is_none() && args.dev_broker == DevBrokerKind::Mock {
        if args.relay_delivery == Some(crate::cli::RelayDeliveryArg::ExactlyOnce) {
            bail!("--relay-delivery exactly-once needs a broker with transactions, and librdkafka's mock cluster has none");
        }
        config.relay.delivery = taskstream_services::RelayDelivery::AtLeastOnce;
    }
    // As `taskstream up` publishes: exactly once where the broker has
    // transactions, unless asked otherwise.
    let mock = args.kafka_bootstrap.is_none() && args.dev_broker == DevBrokerKind::Mock;
    match args
        .relay_delivery
        .or((!mock).then_some(crate::cli::RelayDeliveryArg::ExactlyOnce))
    {
        Some(crate::cli::RelayDeliveryArg::AtLeastOnce) => {
            config.relay.delivery = taskstream_services::RelayDelivery::AtLeastOnce;
        }
        Some(crate::cli::RelayDeliveryArg::ExactlyOnce) => {
            config.relay.delivery = taskstream_services::RelayDelivery::ExactlyOnce {
                transactional_id: taskstream_services::RELAY_TRANSACTIONAL_ID.to_owned(),
            };
        }
        None => {}
    }
    if let Some(bootstrap) = &args.kafka_bootstrap {
        let kafka = KafkaConfig::new(bootstrap);
        let mut topics = declared_topics(args.replication_factor);
        topics.push(ceiling_topic(args.replication_factor));
        topics.push(latency_topic(args.replication_factor));
        apply_topics(&kafka, &topics, Duration::from_secs(30))
            .await
            .with_context(|| format!("cannot create the topics on {bootstrap}"))?;
        config.kafka = Some(kafka);
    }
    let system = RunningSystem::start(config)
        .await
        .context("cannot start the system under test")?;
    let base = format!("http://{}", system.http_addr());
    // Warm up: consumers join, schemas register, connections open.
    say("warming up");
    let warm = drive(
        &base,
        200.min(args.requests),
        args.concurrency.min(8),
        None,
        mix,
        true,
    )
    .await;
    wait_for_audit(&system, warm.acks.len(), Duration::from_secs(60)).await?;
    let before = system
        .audit_store()
        .audit_entries(None, u32::MAX)
        .await?
        .len();

    say(&format!(
        "measuring: {} requests from {} clients",
        args.requests, args.concurrency
    ));
    let load = drive(
        &base,
        args.requests,
        args.concurrency,
        args.rate,
        mix,
        quiet,
    )
    .await;
    report.api_per_s = (args.requests - load.errors) as f64 / load.elapsed.as_secs_f64();
    report.api_latency = Percentiles::of(&load.latency);
    report.http_errors = load.errors;
    report.acknowledged_changes = load.acks.len();

    say("waiting for every event to be handled");
    wait_for_audit(&system, before + load.acks.len(), Duration::from_secs(300)).await?;
    let acked: HashMap<(String, i64), DateTime<Utc>> = load
        .acks
        .iter()
        .map(|a| ((a.task_id.clone(), a.version), a.at))
        .collect();
    let audit = system.audit_store().audit_entries(None, u32::MAX).await?;
    let mut audit_latency = new_histogram();
    let mut audit_ms = Vec::new();
    let mut by_event = HashMap::new();
    let mut audit_times = Vec::new();
    for e in &audit {
        if let Some(at) = acked.get(&(e.task_id.clone(), e.task_version)) {
            let us = micros_between(*at, e.recorded_at);
            let _ = audit_latency.record(us);
            audit_ms.push(us as f64 / 1000.0);
            by_event.insert(e.event_id, *at);
            audit_times.push(e.recorded_at);
        }
    }
    // The notifier marks each event processed once it is handled.
    let mut notifier_latency = new_histogram();
    let mut notifier_ms = Vec::new();
    let mut notifier_times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let processed = system
            .notifier_store()
            .processed_times(NOTIFIER_GROUP)
            .await?;
        let ours: Vec<_> = processed
            .iter()
            .filter(|(id, _)| by_event.contains_key(id))
            .collect();
        if ours.len() >= by_event.len() || Instant::now() > deadline {
            for (id, at) in ours {
                let us = micros_between(by_event[id], *at);
                let _ = notifier_latency.record(us);
                notifier_ms.push(us as f64 / 1000.0);
                notifier_times.push(*at);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report
        .end_to_end
        .insert("auditor".into(), Percentiles::of(&audit_latency));
    report
        .end_to_end
        .insert("notifier".into(), Percentiles::of(&notifier_latency));
    let span_rate = |times: &mut Vec<DateTime<Utc>>| {
        times.sort();
        match (times.first(), times.last()) {
            (Some(a), Some(b)) if b > a => {
                Some(times.len() as f64 / ((*b - *a).num_microseconds()? as f64 / 1e6))
            }
            _ => None,
        }
    };
    if let Some(r) = span_rate(&mut audit_times) {
        report.consumer_per_s.insert("auditor".into(), r);
    }
    if let Some(r) = span_rate(&mut notifier_times) {
        report.consumer_per_s.insert("notifier".into(), r);
    }
    let mut published = system.store().published_times().await?;
    let published_in_run = published.split_off(published.len().saturating_sub(load.acks.len()));
    report.relay_per_s = span_rate(&mut published_in_run.clone());

    // The same machine's ceilings, in the same run.
    say("measuring the ceilings: raw producer, store commits, no-op HTTP");
    report.event_bytes = average_event_bytes(&system).await.unwrap_or(400);
    let kafka = KafkaConfig::new(system.kafka_bootstrap());
    let ceiling_topics = [ceiling_topic(1), latency_topic(1)];
    if let Some(broker) = system.dev_broker() {
        for topic in &ceiling_topics {
            broker.create_topic(topic)?;
        }
    } else if system.embedded_broker().is_some() {
        apply_topics(&kafka, &ceiling_topics, Duration::from_secs(30)).await?;
    }
    let ceiling_records = load.acks.len().max(10_000);
    let producer_rate = raw_producer(&kafka, ceiling_records, report.event_bytes).await?;
    // The mock gets the system consumers' dev-only fetch wait, as in `up`.
    let fetch_wait = match system.dev_broker() {
        Some(_) => ConsumerSettings::for_dev_broker().fetch_wait,
        None => ConsumerSettings::default().fetch_wait,
    };
    let latency_records = if args.quick { 500 } else { 5_000 };
    report.broker_latency = Some(
        broker_latency(
            &kafka,
            LATENCY_TOPIC,
            fetch_wait,
            latency_records,
            report.event_bytes,
        )
        .await
        .context("measuring the broker's produce-to-consume latency")?,
    );
    report.broker_latency_fetch_wait_ms = Some(fetch_wait.as_millis() as u64);
    // Idempotent-only publishing, then (where the broker has them) one
    // transaction per batch: the same backlog, broker and encoding.
    let at_least_once = relay_drain(
        &kafka,
        system.registry_url(),
        ceiling_records,
        args.sqlite_synchronous,
        taskstream_services::RelayDelivery::AtLeastOnce,
    )
    .await?;
    report.relay_drain_at_least_once_per_s = Some(at_least_once);
    let mut drain = at_least_once;
    if system.dev_broker().is_none() {
        let exactly_once = relay_drain(
            &kafka,
            system.registry_url(),
            ceiling_records,
            args.sqlite_synchronous,
            taskstream_services::RelayDelivery::ExactlyOnce {
                transactional_id: format!("taskstream-bench-relay-{}", uuid::Uuid::new_v4()),
            },
        )
        .await?;
        report.relay_drain_exactly_once_per_s = Some(exactly_once);
        drain = exactly_once;
    }
    report.relay_drain_per_s = Some(drain);
    report.relay_vs_raw_producer = Some(Versus::new(drain, producer_rate));
    let commit_rate = store_commits(
        args.requests,
        args.concurrency,
        args.sqlite_synchronous,
        report.event_bytes,
    )
    .await?;
    report.api_vs_store_commits = Some(Versus::new(report.api_per_s, commit_rate));
    // The ceiling is the stack's maximum, so it runs unthrottled even under --rate.
    let noop = drive(&base, args.requests, args.concurrency, None, None, true).await;
    report.noop_http_latency = Some(Percentiles::of(&noop.latency));
    let noop_rate = (args.requests - noop.errors) as f64 / noop.elapsed.as_secs_f64();
    report.api_vs_noop_http = Some(Versus::new(report.api_per_s, noop_rate));

    plot(
        &args.plot,
        &[
            ("auditor".into(), audit_ms),
            ("notifier".into(), notifier_ms),
        ],
    )
    .with_context(|| format!("cannot write the plot to {}", args.plot.display()))?;
    report.plot = Some(args.plot.display().to_string());
    system.shutdown().await;
    print(&report, args.json)
}

async fn wait_for_audit(
    system: &RunningSystem,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = system
            .audit_store()
            .audit_entries(None, u32::MAX)
            .await?
            .len();
        if have >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {count} events were audited within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The average size of the records published in the run: the audit log's
/// envelopes, encoded as the relay encodes them (Avro with its 5-byte
/// header when a registry is in use, JSON otherwise).
async fn average_event_bytes(system: &RunningSystem) -> Option<usize> {
    let entries = system.audit_store().audit_entries(None, 200).await.ok()?;
    let schemas = taskstream_avro::EventSchemas::embedded();
    let sizes: Vec<usize> = entries
        .iter()
        .filter_map(|e| {
            if system.registry_url().is_none() {
                return Some(e.envelope.len());
            }
            let event: taskstream_domain::EventEnvelope = serde_json::from_str(&e.envelope).ok()?;
            let schema = &schemas.for_type(event.event_type).schema;
            let value = taskstream_avro::to_avro(&event, schema).ok()?;
            Some(5 + apache_avro_datum_len(schema, value)?)
        })
        .collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum::<usize>() / sizes.len())
}

fn apache_avro_datum_len(
    schema: &taskstream_avro::Schema,
    value: taskstream_avro::Value,
) -> Option<usize> {
    taskstream_avro::to_avro_datum(schema, value)
        .ok()
        .map(|d| d.len())
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let p = |l: &Percentiles| {
        format!(
            "p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>8.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )
    };
    let v = |v: &Option<Versus>| {
        v.as_ref().map_or_else(
            || "-".to_owned(),
            |v| {
                format!(
                    "{:>9.0}/s of {:>9.0}/s = {:>5.1}%",
                    v.ours_per_s,
                    v.ceiling_per_s,
                    v.ratio * 100.0
                )
            },
        )
    };
    println!(
        "taskstream bench: {} requests, {} clients{}, sqlite synchronous={}, {}",
        report.requests,
        report.concurrency,
        report
            .rate_limit_per_s
            .map_or(String::new(), |r| format!(", {r}/s")),
        report.sqlite_synchronous,
        report.broker
    );
    println!(
        "  API                {:>9.0} req/s   {}   errors {}",
        report.api_per_s,
        p(&report.api_latency),
        report.http_errors
    );
    for group in ["auditor", "notifier"] {
        if let Some(l) = report.end_to_end.get(group) {
            println!("  end-to-end {group:<8}  {:>6} events   {}", l.count, p(l));
        }
    }
    if let (Some(l), Some(wait)) = (&report.broker_latency, report.broker_latency_fetch_wait_ms) {
        println!(
            "  broker alone       {:>6} records  {}   (1,000/s, fetch wait {wait} ms)",
            l.count,
            p(l)
        );
    }
    if let Some(r) = report.relay_per_s {
        println!("  relay under load   {r:>9.0} events/s");
    }
    if let Some(r) = report.relay_drain_per_s {
        println!("  relay draining     {r:>9.0} events/s");
    }
    if let Some(r) = report.relay_drain_exactly_once_per_s {
        println!("    exactly-once     {r:>9.0} events/s  (one transaction per batch)");
    }
    if let Some(r) = report.relay_drain_at_least_once_per_s {
        println!("    at-least-once    {r:>9.0} events/s  (idempotent producer only)");
    }
    for (group, r) in &report.consumer_per_s {
        println!("  consumer {group:<9} {r:>9.0} events/s");
    }
    if let Some(l) = &report.noop_http_latency {
        println!("  no-op HTTP                          {}", p(l));
    }
    println!("  ratios to the ceilings measured in this run:");
    println!(
        "    API / no-op HTTP        {}",
        v(&report.api_vs_noop_http)
    );
    println!(
        "    API / store commits     {}",
        v(&report.api_vs_store_commits)
    );
    println!(
        "    relay draining / raw producer {}",
        v(&report.relay_vs_raw_producer)
    );
    if !report.samples.is_empty() {
        print_samples(&report.samples);
    }
    if let Some(c) = &report.catch_up {
        let ms = |v: Option<u64>| {
            v.map_or_else(
                || "not within the timeout".to_owned(),
                |ms| format!("{ms} ms"),
            )
        };
        println!(
            "  {} of {} acknowledged changes on {}; the last after {}",
            c.published,
            c.expected,
            c.topic,
            ms(c.published_after_ms)
        );
        for (group, g) in &c.groups {
            println!(
                "  group {group:<16} {:>8} behind at the end; caught up after {}",
                g.lag_at_end,
                ms(g.caught_up_after_ms)
            );
        }
    }
    if let Some(plot) = &report.plot {
        println!("  latency plot: {plot}");
    }
    Ok(())
}

/// Resident memory and lag at the start, the middle and the end of the load.
fn print_samples(samples: &[Sample]) {
    let picks = [0, samples.len() / 2, samples.len() - 1];
    let mib = |s: &Sample| {
        s.resident_bytes.map_or_else(
            || "-".to_owned(),
            |b| format!("{:.1} MiB", b as f64 / 1048576.0),
        )
    };
    let at = |i: usize| format!("{:.0} s", samples[i].at_s);
    println!(
        "  resident memory    {} at {}, {} at {}, {} at {}",
        mib(&samples[picks[0]]),
        at(picks[0]),
        mib(&samples[picks[1]]),
        at(picks[1]),
        mib(&samples[picks[2]]),
        at(picks[2])
    );
    for group in samples[picks[2]].lag.keys() {
        let lag = |i: usize| {
            samples[i]
                .lag
                .get(group)
                .map_or("-".to_owned(), i64::to_string)
        };
        println!(
            "  lag {group:<14} {} at {}, {} at {}, {} at {}",
            lag(picks[0]),
            at(picks[0]),
            lag(picks[1]),
            at(picks[1]),
            lag(picks[2]),
            at(picks[2])
        );
    }
}
