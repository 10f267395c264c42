//! The assignment saga: its orchestrator, a consumer group on
//! `task-events`, and its timer over the persisted deadlines (see
//! `taskstream_services::saga`).

use std::sync::Arc;

use taskstream_kafka::KafkaConfig;
use taskstream_services::saga::{
    Compensator, SagaOrchestrator, SagaSettings, SagaTimer, SAGA_GROUP,
};
use taskstream_services::{Deduplicated, EventEncoding, ProcessedEvents};
use taskstream_store::Store;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use super::consumer::{checks, consumer};
use super::{Component, ConsumerOptions};

/// Where the saga's components wake others, and are woken.
#[derive(Debug, Clone, Default)]
pub struct SagaWakes {
    /// Notified after every commit (the relay of this process, if any).
    pub relay: Arc<Notify>,
    /// Wakes the timer (after a decline served by this process).
    pub timer: Arc<Notify>,
}

/// What the saga runs with, besides its consumer group.
#[derive(Clone)]
pub struct SagaRun {
    pub settings: SagaSettings,
    /// How the task events it writes while compensating are stored.
    pub encoding: EventEncoding,
    pub wakes: SagaWakes,
}

/// Starts the saga orchestrator in `group` (default `saga`) behind the
/// group's inbox, and the saga timer.
pub fn saga(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    run: SagaRun,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Vec<Component>> {
    let SagaRun {
        settings,
        encoding,
        wakes,
    } = run;
    let group = group.unwrap_or(SAGA_GROUP);
    let compensator = Arc::new(Compensator::new(
        store.clone(),
        encoding,
        settings,
        Arc::clone(&wakes.relay),
    ));
    let handler = Deduplicated::new(
        ProcessedEvents::new(store.clone()),
        SagaOrchestrator::new(store.clone(), Arc::clone(&compensator)),
    );
    let checks = checks(&store, kafka, options);
    // No gap repair: the saga acts on the latest assignment only, and the
    // timer finds every deadline in the store whatever the topic lost.
    let orchestrator =
        consumer("saga", kafka, group, options, handler, None, metrics)?.with_checks(checks);
    let timer = SagaTimer::new(store, compensator, Arc::clone(&wakes.timer));
    let timer = Component::spawn("saga-timer", move |shutdown| timer.run(shutdown));
    Ok(vec![orchestrator, timer])
}
