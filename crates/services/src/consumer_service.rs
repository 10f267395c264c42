//! Runs an [`EventHandler`] over a consumer group with at-least-once delivery.
//!
//! Each record is decoded, handed to the handler, and acknowledged only after
//! the handler returns — i.e. after its effect is durable — or after the
//! record was parked on the dead-letter topic. A transient failure (a
//! database, registry or webhook outage) is retried a few times at once, with
//! exponential backoff and jitter; if it persists, the record's partition is
//! *held*: paused and rewound to the record, which comes again after a
//! growing delay, while the other partitions flow and the member keeps
//! polling (so it keeps its place in the group and takes part in
//! rebalances). Nothing behind the record is handled before it, so one
//! task's events keep their order through an outage. Only a failure that
//! lasts longer than [`RetryPolicy::give_up_after`] sends the record to the
//! dead-letter topic; permanent failures and undecodable records go there at
//! once, and the partition moves on.
//! Handlers are idempotent by event id, so redelivery after a crash or
//! rebalance is harmless. Acknowledged offsets are committed on a timer that
//! runs beside the handler, so a slow or stuck handler shows as alive-but-stuck.
//! Records deleted before the group read them are reported, never skipped
//! in silence, and repaired where a [`GapRepair`] is given (see
//! [`crate::offset_resets`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use taskstream_domain::EventEnvelope;
use taskstream_kafka::{EventConsumer, InboundRecord};
use taskstream_telemetry::{GroupLabels, Metrics, TraceParent};
use tracing::Instrument;

use crate::dead_letter::{DeadLetterPublisher, ErrorClass};
use crate::offset_resets::{GapRepair, OffsetResets, Repair};
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
    /// Attempts made in a row, the first included, before the partition is held.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// The longest wait between attempts, in a row or while held.
    pub max_backoff: Duration,
    /// How long a transient failure may last, from its first attempt,
    /// before the record is dead-lettered (zero: after the attempts in a row).
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            give_up_after: Duration::from_secs(15 * 60),
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
    /// Not decoded: dead-lettered, held, or interrupted.
    Done(Step),
}

/// A consumer-group member driving one handler.
pub struct ConsumerService<H> {
    consumer: Arc<EventConsumer>,
    decoder: Arc<EventDecoder>,
    handler: H,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetterPublisher,
    retry: RetryPolicy,
    /// Partitions held at a failing record, by (topic, partition).
    held: Mutex<HashMap<(String, i32), Held>>,
    /// Where offset resets are reported for readiness.
    resets: Option<Arc<OffsetResets>>,
    /// What repairs them.
    repair: Option<Arc<dyn GapRepair>>,
}

/// A partition waiting to redeliver the record whose handling keeps failing.
struct Held {
    /// The consumer's ownership of the partition when it was held; another
    /// value means it was lost (and maybe assigned again) meanwhile.
    ownership: u64,
    offset: i64,
    /// The first failed attempt at this record.
    since: Instant,
    /// When to fetch again; `None` once resumed.
    resume_at: Option<Instant>,
    backoff: Backoff,
    /// Attempts at this record so far, across redeliveries.
    attempts: u32,
}

/// Where a record's processing ended.
enum Step {
    /// Applied, a duplicate, or dead-lettered: acknowledged.
    Done,
    /// A transient failure persists: the partition is held at the record.
    Held,
    /// Shutdown came first; the record stays unacknowledged.
    Interrupted,
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
            held: Mutex::new(HashMap::new()),
            resets: None,
            repair: None,
        }
    }

    /// Reports offset resets into `resets` (what readiness reads) and
    /// repairs them with `repair`, when given.
    pub fn with_offset_resets(
        mut self,
        resets: Arc<OffsetResets>,
        repair: Option<Arc<dyn GapRepair>>,
    ) -> Self {
        self.resets = Some(resets);
        self.repair = repair;
        self
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
        // A record met while skipping queued errors, handled next.
        let mut carried = None;
        loop {
            let resume_at = self.next_resume();
            let record = match carried.take() {
                Some(record) => Ok(record),
                None => tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now).into()), if resume_at.is_some() => {
                        self.resume_due();
                        continue;
                    }
                    received = self.consumer.recv() => received,
                },
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
                    self.report_skips().await;
                    batch.retain(|record| !self.is_held(record));
                    if !batch.is_empty() && !self.process_batch(&batch, &mut shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, %error, "receive failed; retrying");
                    // While a broker is away librdkafka queues an error for
                    // every failed connection (and reconnects by itself).
                    // Read past those already queued before waiting, or
                    // they pile up faster than one per wait, and a
                    // rebalance or records behind them wait minutes after
                    // the broker is back.
                    let mut skipped = 0u32;
                    loop {
                        match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                            Ok(Err(_)) => skipped += 1,
                            Ok(Ok(record)) => {
                                carried = Some(record);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if skipped > 0 {
                        tracing::debug!(group, skipped, "skipped queued receive errors");
                    }
                    if carried.is_none() {
                        tokio::time::sleep(delay).await;
                    }
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
                    self.release(d.record);
                }
                return true;
            }
        }
        // Once a record holds its partition, the records behind it wait too.
        let mut held = HashSet::new();
        for record in batch {
            let partition = (record.topic.as_str(), record.partition);
            if held.contains(&partition) {
                continue;
            }
            match self.process(record, shutdown).await {
                Step::Done => {}
                Step::Held => {
                    held.insert(partition);
                }
                Step::Interrupted => return false,
            }
        }
        true
    }

    /// Reports the records the consumer confirms it skipped because they
    /// were deleted unread, then repairs the gap where it can. Runs before
    /// the received records are handled.
    async fn report_skips(&self) {
        let resets = self.consumer.confirm_skips().await;
        if resets.is_empty() {
            return;
        }
        let group = self.consumer.group();
        for reset in &resets {
            tracing::error!(
                group,
                topic = reset.topic,
                partition = reset.partition,
                from_offset = reset.from,
                to_offset = reset.to,
                skipped = reset.skipped(),
                log_start = reset.log_start,
                "offset reset: group {group} skipped offsets {}..{} of {}[{}] ({} events), deleted before it read them",
                reset.from,
                reset.to,
                reset.topic,
                reset.partition,
                reset.skipped()
            );
            self.metrics
                .offset_reset(group, &reset.topic, reset.partition, reset.skipped() as u64);
            if let Some(registry) = &self.resets {
                registry.record(reset);
            }
        }
        let repair = match &self.repair {
            None => Repair::Unavailable,
            Some(repair) => {
                let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
                let mut attempt = 1;
                loop {
                    match repair.repair(&resets).await {
                        Ok(requeued) => {
                            tracing::warn!(group, requeued, "repairing the offset reset: events this group has not handled are published again from the outbox");
                            self.metrics
                                .consumer_republished_events
                                .get_or_create(&GroupLabels {
                                    group: group.to_owned(),
                                })
                                .inc_by(requeued);
                            break Repair::Republished(requeued);
                        }
                        Err(error) if attempt < 3 => {
                            tracing::warn!(group, %error, attempt, "cannot repair the offset reset yet; retrying");
                            tokio::time::sleep(backoff.next_delay()).await;
                            attempt += 1;
                        }
                        Err(error) => {
                            tracing::error!(group, %error, "cannot repair the offset reset: the skipped events stay lost to this group");
                            break Repair::Failed(error);
                        }
                    }
                }
            }
        };
        if let Some(registry) = &self.resets {
            for reset in &resets {
                registry.repaired(reset, &repair);
            }
        }
    }

    /// The earliest time a held partition is due to fetch again.
    fn next_resume(&self) -> Option<Instant> {
        let held = self.held.lock().expect("never poisoned");
        held.values().filter_map(|h| h.resume_at).min()
    }

    /// Resumes every held partition whose wait is over, rewound to its
    /// held record. Entries of partitions lost meanwhile are dropped (a new
    /// assignment starts unpaused, from the committed offset).
    fn resume_due(&self) {
        let now = Instant::now();
        let mut held = self.held.lock().expect("never poisoned");
        held.retain(|(topic, partition), h| {
            if self.consumer.ownership(topic, *partition) != Some(h.ownership) {
                return false;
            }
            if h.resume_at.is_some_and(|at| at <= now) {
                match self.consumer.resume_at(topic, *partition, h.offset) {
                    Ok(()) => h.resume_at = None,
                    Err(error) => {
                        tracing::warn!(group = self.consumer.group(), %error, "cannot resume a held partition; trying again");
                        h.resume_at = Some(now + Duration::from_millis(500));
                    }
                }
            }
            true
        });
    }

    /// Whether `record` arrived while its partition is held (it will come
    /// again: resuming rewinds to the held record). The partition is paused
    /// again, should the pause not have stopped it.
    fn is_held(&self, record: &InboundRecord) -> bool {
        let mut held = self.held.lock().expect("never poisoned");
        let key = (record.topic.clone(), record.partition);
        let Some(h) = held.get(&key) else {
            return false;
        };
        if self.consumer.ownership(&record.topic, record.partition) != Some(h.ownership) {
            // Lost and assigned again since: the hold is over.
            held.remove(&key);
            return false;
        }
        if h.resume_at.is_none() {
            return false;
        }
        if let Err(error) = self.consumer.pause(&record.topic, record.partition) {
            tracing::warn!(group = self.consumer.group(), %error, "cannot pause a held partition");
        }
        true
    }

    /// Attempts to make in a row at `record`: the policy's, or one when it
    /// is a held record coming back (its partition waits between rounds).
    fn attempts_in_row(&self, record: &InboundRecord) -> u32 {
        let held = self.held.lock().expect("never poisoned");
        let key = (record.topic.clone(), record.partition);
        match held.get(&key) {
            Some(h) if h.offset == record.offset => 1,
            _ => self.retry.max_attempts.max(1),
        }
    }

    /// After a transient failure of `record` outlasted `attempts` in a row:
    /// holds its partition at the record and returns [`Step::Held`], or,
    /// once the failure has lasted `give_up_after`, the attempts made in all
    /// (the caller dead-letters the record).
    fn hold(&self, record: &InboundRecord, error: &str, attempts: u32) -> Result<Step, u32> {
        let group = self.consumer.group();
        let key = (record.topic.clone(), record.partition);
        let Some(ownership) = self.consumer.ownership(&record.topic, record.partition) else {
            // Not ours any more: its new owner starts at the committed
            // offset, before this record. Nothing behind it is handled here.
            return Ok(Step::Held);
        };
        let mut held = self.held.lock().expect("never poisoned");
        let entry = held.entry(key.clone()).or_insert_with(|| Held {
            ownership,
            offset: record.offset,
            since: Instant::now(),
            resume_at: None,
            backoff: Backoff::new(self.retry.initial_backoff, self.retry.max_backoff),
            attempts: 0,
        });
        if entry.offset != record.offset || entry.ownership != ownership {
            // Another record, or another assignment: a new failure.
            *entry = Held {
                ownership,
                offset: record.offset,
                since: Instant::now(),
                resume_at: None,
                backoff: Backoff::new(self.retry.initial_backoff, self.retry.max_backoff),
                attempts: 0,
            };
        }
        entry.attempts += attempts;
        let total = entry.attempts;
        let failing_for = entry.since.elapsed();
        if failing_for >= self.retry.give_up_after {
            // The partition is not paused (this record was just delivered).
            held.remove(&key);
            return Err(total);
        }
        // Should pausing fail, records behind arrive and are dropped (and
        // the pause tried again) until the resume rewinds to this record.
        if let Err(pause_error) = self.consumer.pause(&record.topic, record.partition) {
            tracing::warn!(group, error = %pause_error, "cannot pause the partition");
        }
        let delay = entry.backoff.next_delay();
        entry.resume_at = Some(Instant::now() + delay);
        tracing::warn!(
            group,
            error,
            partition = record.partition,
            offset = record.offset,
            failing_for_s = failing_for.as_secs(),
            retry_in_ms = delay.as_millis() as u64,
            "still failing; holding the partition at this record"
        );
        Ok(Step::Held)
    }

    /// The record was handled: its partition is no longer held.
    fn release(&self, record: &InboundRecord) {
        let mut held = self.held.lock().expect("never poisoned");
        let key = (record.topic.clone(), record.partition);
        if held.get(&key).is_some_and(|h| h.offset <= record.offset) {
            held.remove(&key);
        }
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

    /// Handles one record: applied, dead-lettered, or its partition held.
    async fn process(&self, record: &InboundRecord, shutdown: &mut Shutdown) -> Step {
        let group = self.consumer.group();
        let event = match self.decode(record, shutdown).await {
            Decoded::Event(event) => *event,
            Decoded::Done(step) => return step,
        };
        let span = event_span(group, record, &event);
        let step = self
            .handle_with_retries(record, &event, shutdown)
            .instrument(span)
            .await;
        if matches!(step, Step::Done) {
            self.release(record);
        }
        step
    }

    /// Decodes a record, retrying while the schema registry is unreachable
    /// (then holding the partition); an undecodable record is dead-lettered.
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
            if error.retriable {
                self.metrics.handled(group, &event_type, "retried");
                if attempt < self.attempts_in_row(record) {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, %error, attempt, "cannot decode the record yet; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return Decoded::Done(Step::Interrupted),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                    continue;
                }
                match self.hold(record, &error.message, attempt) {
                    Ok(step) => return Decoded::Done(step),
                    Err(attempts) => attempt = attempts,
                }
            }
            let class = if error.retriable {
                ErrorClass::RetriesExhausted
            } else {
                ErrorClass::Undecodable
            };
            tracing::error!(group, topic = record.topic, partition = record.partition, offset = record.offset, %error, "undecodable record");
            let step = self
                .dead_letter(
                    record,
                    &event_type,
                    class,
                    &error.message,
                    attempt,
                    shutdown,
                )
                .await;
            return Decoded::Done(step);
        }
    }

    async fn handle_with_retries(
        &self,
        record: &InboundRecord,
        event: &EventEnvelope,
        shutdown: &mut Shutdown,
    ) -> Step {
        let group = self.consumer.group();
        let event_type = event.event_type.as_str();
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry.initial_backoff, self.retry.max_backoff);
        let mut attempt = 1;
        loop {
            let error = match self.handler.handle(record, event).await {
                Ok(handled) => {
                    self.record_outcome(event, handled, started.elapsed().as_secs_f64());
                    self.ack(record);
                    return Step::Done;
                }
                Err(error) => error,
            };
            if error.permanent {
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
            self.metrics.handled(group, event_type, "retried");
            if attempt < self.attempts_in_row(record) {
                let delay = backoff.next_delay();
                tracing::warn!(group, %error, attempt, retry_in_ms = delay.as_millis() as u64, "handler failed; retrying");
                tokio::select! {
                    _ = shutdown.wait() => return Step::Interrupted,
                    _ = tokio::time::sleep(delay) => {}
                }
                attempt += 1;
                continue;
            }
            return match self.hold(record, &error.message, attempt) {
                Ok(step) => step,
                Err(attempts) => {
                    tracing::error!(group, %error, attempts, "handler kept failing; giving up on the event");
                    self.dead_letter(
                        record,
                        event_type,
                        ErrorClass::RetriesExhausted,
                        &error.message,
                        attempts,
                        shutdown,
                    )
                    .await
                }
            };
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
    ) -> Step {
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
                    self.release(record);
                    return Step::Done;
                }
                Err(publish_error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, error = %publish_error, "cannot publish a dead letter; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return Step::Interrupted,
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
