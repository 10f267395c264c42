//! The outbox relay: publishes the store's pending events to Kafka.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_avro::RegistryClient;
use taskstream_kafka::{EventProducer, KafkaConfig, ProducerSettings};
use taskstream_services::{EventEncoding, OutboxRelay, ProducerFactory, RelaySettings};
use taskstream_store::Store;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use super::{Component, KafkaCheck, OutboxAgeCheck, RegistryCheck, StoreCheck};

/// What the relay's readiness asks.
#[derive(Clone)]
pub struct RelayReadiness {
    /// Ready while the oldest unpublished event is younger than this.
    pub outbox_max_age: Duration,
    /// The registry the events' schemas are registered with (Avro).
    pub registry: Option<Arc<RegistryClient>>,
}

impl Default for RelayReadiness {
    /// 30 s, the `--ready-max-outbox-age` default; no registry.
    fn default() -> Self {
        Self {
            outbox_max_age: Duration::from_secs(30),
            registry: None,
        }
    }
}

/// Starts the outbox relay, with the default [`RelayReadiness`].
pub fn relay(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    wake: Arc<Notify>,
    settings: RelaySettings,
    encoding: EventEncoding,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let readiness = RelayReadiness::default();
    relay_with_readiness(store, kafka, wake, settings, encoding, &readiness, metrics)
}

/// Starts the outbox relay, ready while the store answers, Kafka takes the
/// events, the outbox is younger than `readiness.outbox_max_age` and the
/// schema registry (if any) answers.
pub fn relay_with_readiness(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    wake: Arc<Notify>,
    settings: RelaySettings,
    encoding: EventEncoding,
    readiness: &RelayReadiness,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let mut checks: super::Checks = vec![
        Arc::new(StoreCheck::new(Arc::clone(&store))),
        Arc::new(KafkaCheck::new(kafka)),
        Arc::new(OutboxAgeCheck {
            store: Arc::clone(&store),
            max_age: readiness.outbox_max_age,
        }),
    ];
    if let Some(registry) = &readiness.registry {
        checks.push(Arc::new(RegistryCheck(Arc::clone(registry))));
    }
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
    Ok(Component::spawn("relay", move |shutdown| relay.run(shutdown)).with_checks(checks))
}
