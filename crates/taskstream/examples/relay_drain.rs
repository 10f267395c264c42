//! The relay's publish rate on a backlog, for rows as the outbox stores
//! them now (Avro, published as stored) and as earlier versions stored them
//! (the JSON envelope, which an Avro relay decodes and encodes as Avro per
//! row, as every row was before the outbox stored records).
//!
//! `cargo run --release -p taskstream --example relay_drain [EVENTS] [ROUNDS] [IN_FLIGHT]`
//! (defaults 20,000, 3 and the relay's default batches in flight; 1 is one
//! batch at a time: claim, publish, await, mark, then the next). One
//! process: the dev broker (librdkafka's mock cluster), the embedded schema
//! registry and a fresh SQLite outbox per round; the rounds alternate the
//! two row formats. Prints events per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskstream::components;
use taskstream_avro::RegistryClient;
use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};
use taskstream_kafka::{DevBroker, KafkaConfig};
use taskstream_services::topics::{declared_topics, TASK_EVENTS};
use taskstream_services::{EventEncoding, RelaySettings};
use taskstream_store::{OutboxStore, SqliteOptions, TaskStore};
use taskstream_telemetry::Metrics;

/// Writes `count` tasks and their rows in `stored`, then times an Avro
/// relay draining them; events per second.
async fn drain(
    kafka: &KafkaConfig,
    avro: &EventEncoding,
    stored: &EventEncoding,
    count: usize,
    settings: &RelaySettings,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = components::open_store(
        dir.path(),
        None,
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await?;
    for _ in 0..count {
        let new = NewTask {
            title: TaskTitle::parse("drain")?,
            description: None,
            priority: Priority::Medium,
            due_at: None,
            assignee: None,
        };
        let change = Task::create(new, taskstream_domain::now(), Cause::default());
        let message = stored.outbox_message(
            &change.event,
            "task",
            change.task.id.to_string(),
            TASK_EVENTS,
            None,
        )?;
        store.insert_task(&change.task, &message).await?;
    }
    let started = Instant::now();
    let relay = components::relay(
        Arc::clone(&store),
        kafka,
        Arc::new(tokio::sync::Notify::new()),
        settings.clone(),
        avro.clone(),
        &Metrics::new(),
    )?;
    while store.outbox_stats().await?.pending > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay did not drain in ten minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    relay.stop().await;
    store.close().await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let mut settings = RelaySettings::default();
    if let Some(in_flight) = args.next() {
        settings.batches_in_flight = in_flight.parse()?;
    }
    println!(
        "batches of {}, up to {} in flight",
        settings.batch_size, settings.batches_in_flight
    );
    let broker = DevBroker::start(&declared_topics(1))?;
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let dir = tempfile::tempdir()?;
    let (addr, registry) = components::registry(
        "127.0.0.1:0".parse()?,
        dir.path(),
        "registry",
        &Default::default(),
    )
    .await?;
    let avro = EventEncoding::avro(
        Arc::new(RegistryClient::new(&format!("http://{addr}"))),
        TASK_EVENTS,
    );
    avro.register_schemas().await?;
    for round in 1..=rounds {
        let json_rows = drain(&kafka, &avro, &EventEncoding::Json, count, &settings).await?;
        let avro_rows = drain(&kafka, &avro, &avro, count, &settings).await?;
        println!(
            "round {round}: {count} events; JSON rows converted by the relay {json_rows:.0}/s, \
             Avro rows published as stored {avro_rows:.0}/s ({:+.0}%)",
            (avro_rows / json_rows - 1.0) * 100.0
        );
    }
    registry.stop().await;
    Ok(())
}
