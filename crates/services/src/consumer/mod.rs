//! Runs an [`EventHandler`] over a consumer group with at-least-once delivery.
//!
//! Each record is decoded, handed to the handler, and acknowledged only after
//! the handler returns — i.e. after its effect is durable — or after the
//! record was parked on the dead-letter topic. Acknowledged offsets are
//! committed on a timer that runs beside the handler, so a slow or stuck
//! handler shows as alive-but-stuck. Records deleted before the group read
//! them are reported, never skipped in silence, and repaired where a
//! [`GapRepair`] is given (see [`crate::offset_resets`]).
//!
//! This module is the run loop: it polls, batches, keeps the held
//! partitions and commits. What happens to one record is told by layers,
//! one file each, in the order a record meets them:
//! - [`decode`]: the record's value into an event;
//! - [`metrics`]: the event's span, and the outcome counters;
//! - [`retry`]: transient failures retried in a row, then the partition
//!   held, one policy for decode and handler failures;
//! - [`inbox`]: events the group has handled skip the handler;
//! - [`dead_letter`]: records the group gives up on are parked;
//! - [`handler`]: the business logic itself.
//!
//! Records deleted before the group read them are reported by [`skips`].

mod dead_letter;
mod decode;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
mod handler;
mod inbox;
mod metrics;
mod retry;
mod skips;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskstream_kafka::{EventConsumer, InboundRecord};
use taskstream_telemetry::Metrics;
use tokio::time::Instant;
use tracing::Instrument;

use self::dead_letter::Stage;
use self::metrics::{event_span, GroupMetrics};
use self::retry::{attempt_in_a_row, Attempts, Hold, Holds};
use crate::offset_resets::{GapRepair, OffsetResets};
use crate::{Backoff, DeadLetterPublisher, EventDecoder, Shutdown};

pub use decode::{value as record_value, RecordDecoder};
pub use error::{BoxError, HandleError};
pub use handler::{ConsumedEvent, Delivery, EventHandler, Handled};
pub use inbox::{Deduplicated, Inbox, ProcessedEvents};
pub use retry::RetryPolicy;

/// The most records handled together.
const MAX_BATCH: usize = 256;

/// A consumer-group member driving one handler, with the records read by
/// `D` (task events by default).
pub struct ConsumerService<H, D = EventDecoder> {
    consumer: Arc<EventConsumer>,
    decoder: Arc<D>,
    handler: H,
    metrics: GroupMetrics,
    dead_letters: DeadLetterPublisher,
    /// Partitions held at a failing record, and the policy that holds them.
    holds: Mutex<Holds>,
    /// Where offset resets are reported for readiness.
    resets: Option<Arc<OffsetResets>>,
    /// What repairs them.
    repair: Option<Arc<dyn GapRepair>>,
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

impl<D: RecordDecoder, H: EventHandler<D::Event>> ConsumerService<H, D> {
    pub fn new(
        consumer: EventConsumer,
        decoder: Arc<D>,
        handler: H,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetterPublisher,
        retry: RetryPolicy,
    ) -> Self {
        let metrics = GroupMetrics::new(metrics, consumer.group());
        Self {
            consumer: Arc::new(consumer),
            decoder,
            handler,
            metrics,
            dead_letters,
            holds: Mutex::new(Holds::new(retry)),
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
            let resume_at = self.holds().next_resume();
            let record = match carried.take() {
                Some(record) => Ok(record),
                None => tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now)), if resume_at.is_some() => {
                        self.holds().resume_due(&*self.consumer);
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
                    batch.retain(|record| !self.holds().is_held(&*self.consumer, record));
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

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().expect("never poisoned")
    }

    /// Handles records received together. When every one decodes, the
    /// handler applies them as one batch; otherwise, or if the batch fails,
    /// each is processed on its own (retries, dead letters), in order.
    async fn process_batch(&self, batch: &[InboundRecord], shutdown: &mut Shutdown) -> bool {
        let group = self.consumer.group();
        let mut events = Vec::with_capacity(batch.len());
        if batch.len() > 1 {
            for record in batch {
                match self.decoder.decode(record).await {
                    Ok(event) => events.push(event),
                    Err(_) => break,
                }
            }
        }
        if events.len() == batch.len() {
            let deliveries: Vec<Delivery<'_, D::Event>> = batch
                .iter()
                .zip(&events)
                .map(|(record, event)| Delivery {
                    group,
                    record,
                    event,
                    span: event_span(group, record, event),
                })
                .collect();
            let started = Instant::now();
            // A handler owes one outcome per delivery; one that answers
            // otherwise is treated as a failed batch (each record is then
            // handled on its own), never as a reason to skip records.
            let answered = self
                .handler
                .handle_batch(&deliveries)
                .await
                .ok()
                .filter(|outcomes| outcomes.len() == deliveries.len());
            if let Some(outcomes) = answered {
                let each = started.elapsed().as_secs_f64() / batch.len() as f64;
                for (d, handled) in deliveries.iter().zip(outcomes) {
                    self.metrics.handled(d.event, handled, each);
                    self.ack(d.record);
                    self.holds().release(d.record);
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

    /// Handles one record: applied, dead-lettered, or its partition held.
    async fn process(&self, record: &InboundRecord, shutdown: &mut Shutdown) -> Step {
        let event = match self.decode(record, shutdown).await {
            Ok(event) => event,
            Err(step) => return step,
        };
        let group = self.consumer.group();
        let span = event_span(group, record, &event);
        let delivery = Delivery {
            group,
            record,
            event: &event,
            span: span.clone(),
        };
        let step = self.handle(&delivery, shutdown).instrument(span).await;
        if matches!(step, Step::Done) {
            self.holds().release(record);
        }
        step
    }

    /// Decodes a record, retrying while the schema registry is unreachable
    /// (then holding the partition); an undecodable record is dead-lettered.
    async fn decode(
        &self,
        record: &InboundRecord,
        shutdown: &mut Shutdown,
    ) -> Result<D::Event, Step> {
        let group = self.consumer.group();
        let event_type = decode::declared_type(record);
        let allowed = self.holds().attempts_in_a_row(record);
        let policy = self.holds().policy().clone();
        let on_transient = |error: &HandleError, attempt: u32, retry_in: Option<Duration>| {
            self.metrics.retried(event_type);
            if retry_in.is_some() {
                tracing::warn!(group, %error, attempt, "cannot decode the record yet; retrying");
            }
        };
        let outcome = attempt_in_a_row(&policy, allowed, shutdown, on_transient, || {
            self.decoder.decode(record)
        })
        .await;
        let (error, mut attempts) = match outcome {
            Attempts::Succeeded(event) => return Ok(event),
            Attempts::Interrupted => return Err(Step::Interrupted),
            Attempts::Failed { error, attempts } => (error, attempts),
        };
        if error.is_retriable() {
            match self.hold(record, &error, attempts) {
                Hold::Held => return Err(Step::Held),
                Hold::GiveUp(all) => attempts = all,
            }
        }
        tracing::error!(group, topic = record.topic, partition = record.partition, offset = record.offset, %error, "undecodable record");
        Err(self
            .dead_letter(
                record,
                event_type,
                Stage::Decode,
                &error,
                attempts,
                shutdown,
            )
            .await)
    }

    /// Hands an event to the handler, retrying transient failures, then
    /// holding the partition; a permanent failure is dead-lettered.
    async fn handle(&self, delivery: &Delivery<'_, D::Event>, shutdown: &mut Shutdown) -> Step {
        let Delivery {
            group,
            record,
            event,
            ..
        } = *delivery;
        let event_type = event.event_type();
        let started = Instant::now();
        let allowed = self.holds().attempts_in_a_row(record);
        let policy = self.holds().policy().clone();
        let on_transient = |error: &HandleError, attempt: u32, retry_in: Option<Duration>| {
            self.metrics.retried(event_type);
            if let Some(delay) = retry_in {
                tracing::warn!(group, %error, attempt, retry_in_ms = delay.as_millis() as u64, "handler failed; retrying");
            }
        };
        let outcome = attempt_in_a_row(&policy, allowed, shutdown, on_transient, || {
            self.handler.handle(delivery)
        })
        .await;
        let (error, attempts) = match outcome {
            Attempts::Succeeded(handled) => {
                self.metrics
                    .handled(event, handled, started.elapsed().as_secs_f64());
                self.ack(record);
                return Step::Done;
            }
            Attempts::Interrupted => return Step::Interrupted,
            Attempts::Failed { error, attempts } => (error, attempts),
        };
        if !error.is_retriable() {
            tracing::error!(group, %error, "handler failed permanently");
            return self
                .dead_letter(
                    record,
                    event_type,
                    Stage::Handle,
                    &error,
                    attempts,
                    shutdown,
                )
                .await;
        }
        match self.hold(record, &error, attempts) {
            Hold::Held => Step::Held,
            Hold::GiveUp(attempts) => {
                tracing::error!(group, %error, attempts, "handler kept failing; giving up on the event");
                self.dead_letter(
                    record,
                    event_type,
                    Stage::Handle,
                    &error,
                    attempts,
                    shutdown,
                )
                .await
            }
        }
    }

    fn hold(&self, record: &InboundRecord, error: &HandleError, attempts: u32) -> Hold {
        self.holds()
            .hold(&*self.consumer, record, error.message(), attempts)
    }

    /// Parks `record` on the dead-letter topic (nothing is acknowledged
    /// before), then acknowledges it.
    async fn dead_letter(
        &self,
        record: &InboundRecord,
        event_type: &str,
        stage: Stage,
        error: &HandleError,
        attempts: u32,
        shutdown: &mut Shutdown,
    ) -> Step {
        let group = self.consumer.group();
        let class = dead_letter::class_of(stage, error);
        let message = error.message();
        if !dead_letter::park(
            &self.dead_letters,
            record,
            group,
            class,
            message,
            attempts,
            shutdown,
        )
        .await
        {
            return Step::Interrupted;
        }
        self.metrics.dead_lettered(event_type);
        self.ack(record);
        self.holds().release(record);
        Step::Done
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

    /// Reports the records the consumer confirms it skipped because they
    /// were deleted unread, then repairs the gap where it can. Runs before
    /// the received records are handled.
    async fn report_skips(&self) {
        let resets = self.consumer.confirm_skips().await;
        if resets.is_empty() {
            return;
        }
        skips::report(
            self.consumer.group(),
            &resets,
            &self.metrics,
            self.resets.as_deref(),
            self.repair.as_deref(),
        )
        .await;
    }
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
