//! The outbox relay: publishes the store's pending events to Kafka.

use std::sync::Arc;

use anyhow::Context;
use taskstream_kafka::{EventProducer, KafkaConfig, ProducerSettings};
use taskstream_services::{EventEncoding, OutboxRelay, ProducerFactory, RelaySettings};
use taskstream_store::Store;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use super::Component;

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
