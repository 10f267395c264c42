//! Runs an [`EventHandler`] over a consumer group with at-least-once delivery.
//!
//! Each record is decoded, handed to the handler, and acknowledged only after
//! the handler returns — i.e. after its effect is durable — or after the
//! record was parked on the dead-letter topic. Transient failures are retried
//! with exponential backoff and jitter, a bounded number of times (by default
//! about 10 s in all, far below `max.poll.interval.ms`, so the member keeps
//! its place in the group); permanent failures, undecodable records and
//! exhausted retries go to the dead-letter topic and the partition moves on.
//! Handlers are idempotent by event id, so redelivery after a crash or
//! rebalance is harmless. Acknowledged offsets are committed on a timer that
//! runs beside the handler, so a slow or stuck handler shows as alive-but-stuck.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use taskstream_domain::EventEnvelope;
use taskstream_kafka::{EventConsumer, InboundRecord};
use taskstream_telemetry::{GroupLabels, Metrics, TraceParent};
use tracing::Instrument;

use crate::dead_letter::{DeadLetterPublisher, ErrorClass};
use crate::{Backoff, EncodingError, EventDecoder, Shutdown};

/// Why a handler could not finish.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
    /// Retrying cannot help (the event itself is at fault).
    pub permanent: bool,
}

impl HandlerError {
    /// A failure that may pass (a database or downstream outage).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that will repeat on every attempt.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

impl From<taskstream_store::StoreError> for HandlerError {
    fn from(e: taskstream_store::StoreError) -> Self {
        Self::transient(format!("store: {e}"))
    }
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The effect was applied now.
    Applied,
    /// The event had been handled before; nothing was done.
    Duplicate,
}

/// One decoded record on its way to a handler, with the span its logs belong to.
pub struct Delivery<'a> {
    pub record: &'a InboundRecord,
    pub event: &'a EventEnvelope,
    /// Carries the event's id, type and trace id.
    pub span: tracing::Span,
}

/// Reacts to events. Must be idempotent by event id.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies the event's effect durably; `record` says where it came from.
    async fn handle(
        &self,
        record: &InboundRecord,
        event: &EventEnvelope,
    ) -> Result<Handled, HandlerError>;

    /// Applies several events (in order) at once — one transaction instead of
    /// one per event, where the handler can. All or nothing: on error, the
    /// caller falls back to [`EventHandler::handle`] one event at a time.
    async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandlerError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for d in batch {
            outcomes.push(
                self.handle(d.record, d.event)
                    .instrument(d.span.clone())
                    .await?,
            );
        }
        Ok(outcomes)
    }
}

/// The most records handled together.
const MAX_BATCH: usize = 256;

/// What became of a record's bytes.
enum Decoded {
    Event(Box<EventEnvelope>),
    /// Undecodable; parked on the dead-letter topic.
    DeadLettered,
    /// Shutdown came first; the record stays unacknowledged.
    Interrupted,
}

/// A consumer-group member driving one handler.
pub struct ConsumerService<H> {
    consumer: Arc<EventConsumer>,
    decoder: Arc<EventDecoder>,
    handler: H,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetterPublisher,
    retry: RetryPolicy,
}

impl<H: EventHandler> ConsumerService<H> {
    pub fn new(
        consumer: EventConsumer,
        decoder: Arc<EventDecoder>,
        handler: H,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetterPublisher,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            consumer: Arc::new(consumer),
            decoder,
            handler,
            metrics,
            dead_letters,
            retry,
        }
    }

    /// Consumes until `shutdown`; the record in hand is finished first, then
    /// acknowledged offsets are committed and the group is left.
    pub async fn run(self, mut shutdown: Shutdown) {
        let group = self.consumer.group().to_owned();
        let committer = tokio::spawn(commit_periodically(
            Arc::clone(&self.consumer),
            shutdown.clone(),
        ));
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let record = tokio::select! {
                _ = shutdown.wait() => break,
                received = self.consumer.recv() => received,
            };
            match record {
                Ok(record) => {
                    backoff.reset();
                    // Whatever else is already waiting joins this batch.
                    let mut batch = vec![record];
                    while batch.len() < MAX_BATCH {
                        match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                            Ok(Ok(next)) => batch.push(next),
                            _ => break,
                        }
                    }
                    if !self.process_batch(&batch, &mut shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, %error, "receive failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let _ = committer.await;
        let Ok(consumer) = Arc::try_unwrap(self.consumer) else {
            tracing::error!(group, "consumer still shared at shutdown; not committing");
            return;
        };
        match consumer.close(Duration::from_secs(5)).await {
            Ok(()) => tracing::info!(group, "consumer stopped; offsets committed"),
            Err(error) => {
                tracing::warn!(group, %error, "consumer stopped; final commit failed (unacknowledged events are redelivered)")
            }
        }
    }

    /// Handles records received together. When every one decodes, the
    /// handler applies them as one batch; otherwise, or if the batch fails,
    /// each is processed on its own (retries, dead letters), in order.
    async fn process_batch(&self, batch: &[InboundRecord], shutdown: &mut Shutdown) -> bool {
        let mut events = Vec::with_capacity(batch.len());
        if batch.len() > 1 {
            for record in batch {
                match record.payload.as_deref() {
                    Some(bytes) => match self.decoder.decode(bytes).await {
                        Ok(event) => events.push(event),
                        Err(_) => break,
                    },
                    None => break,
                }
            }
        }
        if events.len() == batch.len() {
            let group = self.consumer.group();
            let deliveries: Vec<Delivery<'_>> = batch
                .iter()
                .zip(&events)
                .map(|(record, event)| Delivery {
                    record,
                    event,
                    span: event_span(group, record, event),
                })
                .collect();
            let started = Instant::now();
            if let Ok(outcomes) = self.handler.handle_batch(&deliveries).await {
                let each = started.elapsed().as_secs_f64() / batch.len() as f64;
                for (d, handled) in deliveries.iter().zip(outcomes) {
                    self.record_outcome(d.event, handled, each);
                    self.ack(d.record);
                }
                return true;
            }
        }
        for record in batch {
            if !self.process(record, shutdown).await {
                return false;
            }
        }
        true
    }

    fn record_outcome(&self, event: &EventEnvelope, handled: Handled, seconds: f64) {
        let group = self.consumer.group();
        let outcome = match handled {
            Handled::Applied => "ok",
            Handled::Duplicate => "duplicate",
        };
        self.metrics
            .handled(group, event.event_type.as_str(), outcome);
        self.metrics
            .handler_duration
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .observe(seconds);
    }

    /// Handles one record: applied, or parked on the dead-letter topic.
    /// Returns `false` if shutdown came first (the record stays
    /// unacknowledged and is redelivered).
    async fn process(&self, record: &InboundRecord, shutdown: &mut Shutdown) -> bool {
        let group = self.consumer.group();
        let event = match self.decode(record, shutdown).await {
            Decoded::Event(event) => *event,
            Decoded::DeadLettered => return true,
            Decoded::Interrupted => return false,
        };
        let span = event_span(group, record, &event);
        self.handle_with_retries(record, &event, shutdown)
            .instrument(span)
            .await
    }

    /// Decodes a record, retrying while the schema registry is unreachable;
    /// an undecodable record is dead-lettered.
    async fn decode(&self, record: &InboundRecord, shutdown: &mut Shutdown) -> Decoded {
        let group = self.consumer.group();
        let mut backoff = Backoff::new(self.retry.initial_backoff, self.retry.max_backoff);
        let mut attempt = 1;
        loop {
            let outcome = match record.payload.as_deref() {
                Some(bytes) => self.decoder.decode(bytes).await,
                None => Err(EncodingError {
                    message: "record has no value".to_owned(),
                    retriable: false,
                }),
            };
            let error = match outcome {
                Ok(event) => return Decoded::Event(Box::new(event)),
                Err(error) => error,
            };
            let event_type = record.header_str("type").unwrap_or("unknown").to_owned();
            if error.retriable && attempt < self.retry.max_attempts {
                self.metrics.handled(group, &event_type, "retried");
                let delay = backoff.next_delay();
                tracing::warn!(group, %error, attempt, "cannot decode the record yet; retrying");
                tokio::select! {
                    _ = shutdown.wait() => return Decoded::Interrupted,
                    _ = tokio::time::sleep(delay) => {}
                }
                attempt += 1;
                continue;
            }
            let class = if error.retriable {
                ErrorClass::RetriesExhausted
            } else {
                ErrorClass::Undecodable
            };
            tracing::error!(group, topic = record.topic, partition = record.partition, offset = record.offset, %error, "undecodable record");
            return match self
                .dead_letter(
                    record,
                    &event_type,
                    class,
                    &error.message,
                    attempt,
                    shutdown,
                )
                .await
            {
                true => Decoded::DeadLettered,
                false => Decoded::Interrupted,
            };
        }
    }

    async fn handle_with_retries(
        &self,
        record: &InboundRecord,
        event: &EventEnvelope,
        shutdown: &mut Shutdown,
    ) -> bool {
        let group = self.consumer.group();
        let event_type = event.event_type.as_str();
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry.initial_backoff, self.retry.max_backoff);
        let mut attempt = 1;
        loop {
            match self.handler.handle(record, event).await {
                Ok(handled) => {
                    self.record_outcome(event, handled, started.elapsed().as_secs_f64());
                    self.ack(record);
                    return true;
                }
                Err(error) if error.permanent => {
                    tracing::error!(group, %error, "handler failed permanently");
                    return self
                        .dead_letter(
                            record,
                            event_type,
                            ErrorClass::Permanent,
                            &error.message,
                            attempt,
                            shutdown,
                        )
                        .await;
                }
                Err(error) if attempt >= self.retry.max_attempts => {
                    tracing::error!(group, %error, attempts = attempt, "handler kept failing; giving up on the event");
                    return self
                        .dead_letter(
                            record,
                            event_type,
                            ErrorClass::RetriesExhausted,
                            &error.message,
                            attempt,
                            shutdown,
                        )
                        .await;
                }
                Err(error) => {
                    self.metrics.handled(group, event_type, "retried");
                    let delay = backoff.next_delay();
                    tracing::warn!(group, %error, attempt, retry_in_ms = delay.as_millis() as u64, "handler failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Parks `record` on the dead-letter topic, retrying until the broker
    /// takes it (nothing is acknowledged before), then acknowledges it.
    async fn dead_letter(
        &self,
        record: &InboundRecord,
        event_type: &str,
        class: ErrorClass,
        error: &str,
        attempts: u32,
        shutdown: &mut Shutdown,
    ) -> bool {
        let group = self.consumer.group();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self
                .dead_letters
                .publish(record, group, class, error, attempts)
                .await
            {
                Ok(()) => {
                    self.metrics.handled(group, event_type, "dead_lettered");
                    tracing::warn!(
                        group,
                        class = class.as_str(),
                        partition = record.partition,
                        offset = record.offset,
                        "record sent to the dead-letter topic"
                    );
                    self.ack(record);
                    return true;
                }
                Err(publish_error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, error = %publish_error, "cannot publish a dead letter; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn ack(&self, record: &InboundRecord) {
        if !self.consumer.ack(record) {
            // The partition was revoked meanwhile: its new owner redelivers
            // the record and idempotence absorbs it.
            tracing::debug!(
                group = self.consumer.group(),
                "partition revoked before the ack"
            );
        }
    }
}

/// The span an event is handled in: its ids, type and trace id.
fn event_span(group: &str, record: &InboundRecord, event: &EventEnvelope) -> tracing::Span {
    let trace_id = record
        .header_str("traceparent")
        .and_then(TraceParent::parse)
        .map(|tp| tp.trace_id)
        .unwrap_or_default();
    tracing::info_span!(
        "event",
        group,
        event_id = %event.id,
        event_type = %event.event_type,
        task_id = event.subject,
        trace_id,
        correlation_id = event.correlation_id.as_deref().unwrap_or(""),
    )
}

/// Commits acknowledged offsets every commit interval until shutdown.
async fn commit_periodically(consumer: Arc<EventConsumer>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(consumer.commit_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                if let Err(error) = consumer.commit_acked(false).await {
                    tracing::debug!(group = consumer.group(), %error, "periodic commit failed");
                }
            }
        }
    }
}
