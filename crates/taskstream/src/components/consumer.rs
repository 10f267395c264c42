//! The consumers of `task-events`: the audit-log service and the
//! notification service (which reads `task-sagas` too), each in its own
//! consumer group.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_avro::RegistryClient;
use taskstream_kafka::{
    ConsumerSettings, EventConsumer, EventProducer, KafkaConfig, ProducerSettings,
};
use taskstream_services::topics::{TASK_EVENTS, TASK_SAGAS};
use taskstream_services::{
    AuditHandler, ConsumerService, DeadLetterPublisher, Deduplicated, DelayedSink, EventDecoder,
    EventHandler, GapRepair, LogSink, NotificationHandler, NotificationSink, NotifierDecoder,
    OffsetResets, OutboxRepair, ProcessedEvents, RecordDecoder, RetryPolicy, WebhookSink,
    AUDITOR_GROUP, NOTIFIER_GROUP,
};
use taskstream_store::Store;
use taskstream_telemetry::Metrics;

use super::{Checks, Component, KafkaCheck, OffsetResetCheck, RegistryCheck, StoreCheck};

/// How a consumer service talks to its group and treats failures.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    pub kafka: ConsumerSettings,
    pub retry: RetryPolicy,
    /// Resolves the schema ids of Avro records; without it only JSON is read.
    pub registry: Option<Arc<RegistryClient>>,
    /// Where the consumers started with these options report offset
    /// resets, for [`OffsetResetCheck`].
    pub resets: Arc<OffsetResets>,
}

impl ConsumerOptions {
    /// Defaults tuned for the dev broker (see [`ConsumerSettings::for_dev_broker`]).
    pub fn for_dev_broker() -> Self {
        Self {
            kafka: ConsumerSettings::for_dev_broker(),
            ..Self::default()
        }
    }
}

/// A consumer is ready while the store answers, Kafka takes the events,
/// no offset reset was reported lately and the schema registry (if any)
/// answers.
pub(super) fn checks(store: &Arc<Store>, kafka: &KafkaConfig, options: &ConsumerOptions) -> Checks {
    let mut checks: Checks = vec![
        Arc::new(StoreCheck::new(Arc::clone(store))),
        Arc::new(KafkaCheck::new(kafka)),
        Arc::new(OffsetResetCheck::new(options)),
    ];
    if let Some(registry) = &options.registry {
        checks.push(Arc::new(RegistryCheck(Arc::clone(registry))));
    }
    checks
}

/// A consumer of `task-events` in `group`.
pub(super) fn consumer<H: EventHandler>(
    name: &'static str,
    kafka: &KafkaConfig,
    group: &str,
    options: &ConsumerOptions,
    handler: H,
    repair: Option<Arc<dyn GapRepair>>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let decoder = EventDecoder::new(options.registry.clone());
    let reads = Reads {
        topics: &[TASK_EVENTS],
        decoder,
    };
    consumer_of(name, kafka, group, reads, options, handler, repair, metrics)
}

/// The topics a consumer subscribes to, and how it reads their records.
struct Reads<'a, D> {
    topics: &'a [&'a str],
    decoder: D,
}

#[allow(clippy::too_many_arguments)]
fn consumer_of<D: RecordDecoder, H: EventHandler<D::Event>>(
    name: &'static str,
    kafka: &KafkaConfig,
    group: &str,
    reads: Reads<'_, D>,
    options: &ConsumerOptions,
    handler: H,
    repair: Option<Arc<dyn GapRepair>>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let consumer = EventConsumer::subscribe(kafka, group, reads.topics, &options.kafka)
        .with_context(|| format!("cannot join consumer group {group}"))?;
    let producer = EventProducer::new(kafka, &format!("{group}-dlq"), &ProducerSettings::default())
        .context("cannot create the dead-letter producer")?;
    let service = ConsumerService::new(
        consumer,
        Arc::new(reads.decoder),
        handler,
        Arc::clone(metrics),
        DeadLetterPublisher::new(producer),
        options.retry.clone(),
    )
    .with_offset_resets(Arc::clone(&options.resets), repair);
    Ok(Component::spawn(name, move |shutdown| {
        service.run(shutdown)
    }))
}

/// Starts the audit-log service in `group` (default `auditor`): the
/// consumer runtime ([`ConsumerService`]: decode, retry and hold, dead
/// letters, metrics) around the group's inbox ([`ProcessedEvents`]) around
/// [`AuditHandler`], whose effect is the audit entry.
///
/// `store` is the auditor's own database; `outbox`, the Task API's, which
/// a gap in the group's records is repaired from (`None`: no outbox is
/// reachable, and such a gap is reported as lost).
pub fn auditor(
    store: Arc<Store>,
    outbox: Option<Arc<Store>>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let group = group.unwrap_or(AUDITOR_GROUP);
    // Records deleted before the auditor read them are republished from
    // the outbox, which tells them by the audit log in this store.
    let repair = outbox.map(|outbox| {
        Arc::new(OutboxRepair::for_auditor(outbox, Arc::clone(&store))) as Arc<dyn GapRepair>
    });
    let checks = checks(&store, kafka, options);
    let handler = Deduplicated::new(
        ProcessedEvents::new(store.clone()),
        AuditHandler::new(store),
    );
    Ok(consumer("auditor", kafka, group, options, handler, repair, metrics)?.with_checks(checks))
}

/// Starts the notification service in `group` (default `notifier`), shaped
/// like [`auditor`] around [`NotificationHandler`], reading `task-events`
/// and the saga's `task-sagas` ([`NotifierDecoder`]), with the
/// log sink, waiting `delay` before each notification (zero in normal use;
/// a slow notifier on purpose shows consumer lag building up).
///
/// `store` is the notifier's own database, `outbox` as for [`auditor`].
pub fn notifier(
    store: Arc<Store>,
    outbox: Option<Arc<Store>>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    sink: &NotifierSink,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let group = group.unwrap_or(NOTIFIER_GROUP);
    fn slowed<S: NotificationSink>(sink: S, delay: Duration) -> Arc<dyn NotificationSink> {
        if delay.is_zero() {
            Arc::new(sink)
        } else {
            Arc::new(DelayedSink::new(sink, delay))
        }
    }
    let sink = match &sink.webhook {
        Some(url) => slowed(
            WebhookSink::new(url, WEBHOOK_TIMEOUT).map_err(anyhow::Error::msg)?,
            sink.delay,
        ),
        None => slowed(LogSink, sink.delay),
    };
    let repair = outbox.map(|outbox| {
        Arc::new(OutboxRepair::for_notifier(
            outbox,
            Arc::clone(&store),
            group,
        )) as Arc<dyn GapRepair>
    });
    let checks = checks(&store, kafka, options);
    let handler = Deduplicated::new(
        ProcessedEvents::new(store.clone()),
        NotificationHandler::new(store, sink),
    );
    let reads = Reads {
        topics: &[TASK_EVENTS, TASK_SAGAS],
        decoder: NotifierDecoder::new(EventDecoder::new(options.registry.clone())),
    };
    Ok(consumer_of(
        "notifier", kafka, group, reads, options, handler, repair, metrics,
    )?
    .with_checks(checks))
}

/// How long the notifier waits for a webhook to answer (a slower one is
/// retried, then dead-lettered).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the notifier sends notifications.
#[derive(Debug, Clone, Default)]
pub struct NotifierSink {
    /// POST each notification here (http); `None` logs them.
    pub webhook: Option<String>,
    /// Wait this long before each one (a slow notifier on purpose).
    pub delay: Duration,
}
