//! The outbox relay: publishes the store's pending events to Kafka.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_avro::RegistryClient;
use taskstream_kafka::{EventProducer, KafkaConfig, ProducerSettings, TransactionSettings};
use taskstream_services::{
    EventEncoding, OutboxRelay, ProducerFactory, RelayDelivery, RelayPublisher, RelaySettings,
};
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
    let publisher = match &settings.delivery {
        RelayDelivery::ExactlyOnce { transactional_id } => RelayPublisher::Transactional {
            kafka: kafka.clone(),
            settings: TransactionSettings::new(transactional_id),
        },
        RelayDelivery::AtLeastOnce => {
            // A record that timed out while a later one of the same task
            // got through would be published after it on retry: the
            // relay's records never time out.
            let kafka = kafka.clone();
            let new_producer: ProducerFactory =
                Arc::new(move || EventProducer::new(&kafka, "relay", &ProducerSettings::ordered()));
            RelayPublisher::Idempotent(new_producer)
        }
    };
    tracing::info!(delivery = ?settings.delivery, "outbox relay delivery");
    let settings = with_fault_injection(settings);
    let relay = OutboxRelay::new(
        store,
        publisher,
        wake,
        settings,
        Arc::clone(metrics),
        encoding,
    )
    .context("cannot create the relay's Kafka producer")?;
    Ok(Component::spawn("relay", move |shutdown| relay.run(shutdown)).with_checks(checks))
}

/// The environment variable that makes the relay abort the process right
/// after its Nth published batch, before marking it (a crash between the
/// Kafka commit and the outbox mark). Test only: read only in builds with
/// the `bench` feature, which the production image leaves out.
pub const CRASH_BEFORE_MARK_ENV: &str = "TASKSTREAM_TEST_RELAY_CRASH_BEFORE_MARK";

#[cfg(feature = "bench")]
fn with_fault_injection(settings: RelaySettings) -> RelaySettings {
    match std::env::var(CRASH_BEFORE_MARK_ENV)
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        Some(n) if n > 0 => {
            tracing::warn!(
                batches = n,
                "{CRASH_BEFORE_MARK_ENV} is set: the relay aborts the process before marking batch {n} (fault injection for tests)"
            );
            RelaySettings {
                crash_before_mark: Some(n),
                ..settings
            }
        }
        _ => settings,
    }
}

#[cfg(not(feature = "bench"))]
fn with_fault_injection(settings: RelaySettings) -> RelaySettings {
    settings
}
