//! The outbox relay: publishes committed task events to Kafka, in commit
//! order, and marks each one published only after the broker acknowledged it.
//! A row holds the record as it goes on the topic, so the relay publishes its
//! bytes as stored (see [`crate::EventEncoding::record`]; only rows earlier
//! versions stored as JSON are converted, when the format is Avro).
//!
//! It is woken right after every commit through a [`Notify`], and also polls
//! on a slow timer so that writes made by another process are not missed.
//! While the broker is unreachable, records wait in the producer, which
//! retries them without a deadline (a record giving up while a later one of
//! the same task got through would be republished after it); rows stay
//! pending meanwhile, so nothing is dropped. Failures that do surface (an
//! event that cannot be encoded yet, a producer error) are retried with
//! backoff. A row that was published but not yet marked (a
//! crash in between) is published again: consumers de-duplicate by event id.
//! A producer that hit a fatal error can never publish again, so the relay
//! replaces it with a new one and carries on from the first unmarked row.
//!
//! Only the relay holding the outbox's [`Lease`] publishes; another one
//! (a second replica on PostgreSQL) stands by, asks for the lease every
//! round, and takes over once the holder released it or is gone. A relay
//! whose lease ended (its database session failed) stops publishing until
//! it wins the lease again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskstream_kafka::{EventProducer, KafkaError};
use taskstream_store::{Lease, OutboxStore, PendingMessage, StoreError};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::{Backoff, EncodingError, EventEncoding, Shutdown};

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per round.
    pub batch_size: u32,
    /// How often to look for rows even when not woken.
    pub poll_interval: Duration,
    /// Longest wait between retries while the broker is failing.
    pub max_backoff: Duration,
    /// How long shutdown may spend publishing what is still pending.
    pub drain_timeout: Duration,
    /// Published messages older than this are deleted from the outbox (the
    /// topic keeps them); `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often expired messages are looked for.
    pub prune_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            // As long as the task-event topic keeps them.
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            prune_interval: Duration::from_secs(600),
        }
    }
}

/// Why a relay round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox unavailable")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A row stored as JSON by an earlier version could not be converted to
    /// Avro (the registry was down or refused the schema); it stays pending.
    #[error("cannot encode the event: {0}")]
    Encoding(#[from] EncodingError),
}

/// Published messages deleted per statement when pruning.
const PRUNE_BATCH: u32 = 1000;

/// Makes the relay's producer: once at start, and again after a fatal error.
pub type ProducerFactory = Arc<dyn Fn() -> Result<EventProducer, KafkaError> + Send + Sync>;

/// Publishes the outbox. See the module docs.
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    producer: std::sync::Mutex<EventProducer>,
    new_producer: ProducerFactory,
    wake: Arc<Notify>,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    encoding: EventEncoding,
    /// Who this relay is, in the lease and in logs.
    holder: String,
    /// The outbox lease while this relay holds it.
    lease: tokio::sync::Mutex<Option<Lease>>,
    /// Whether the standby state was logged since the lease was last held.
    standing_by: AtomicBool,
}

impl OutboxRelay {
    /// `wake` is notified by writers after each commit; `new_producer`
    /// makes the producer now, and its replacement after a fatal error.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        new_producer: ProducerFactory,
        wake: Arc<Notify>,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
        encoding: EventEncoding,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            store,
            producer: std::sync::Mutex::new(new_producer()?),
            new_producer,
            wake,
            settings,
            metrics,
            encoding,
            holder: format!("relay-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            lease: tokio::sync::Mutex::new(None),
            standing_by: AtomicBool::new(false),
        })
    }

    /// Whether this relay holds the outbox lease (as of its latest round).
    pub async fn holds_lease(&self) -> bool {
        self.lease.lock().await.is_some()
    }

    /// The producer in use.
    fn producer(&self) -> EventProducer {
        self.producer.lock().expect("never poisoned").clone()
    }

    /// Replaces the producer if a fatal error ended it; `true` if it did.
    fn replace_dead_producer(&self) -> bool {
        let Some(reason) = self.producer().fatal_error() else {
            return false;
        };
        match (self.new_producer)() {
            Ok(fresh) => {
                tracing::error!(%reason, "the relay's producer hit a fatal error; replaced it, unmarked events are published again");
                self.metrics.relay_producer_restarts.inc();
                *self.producer.lock().expect("never poisoned") = fresh;
                true
            }
            Err(error) => {
                tracing::error!(%reason, %error, "the relay's producer hit a fatal error and a new one cannot be made yet");
                false
            }
        }
    }

    /// Runs until `shutdown`, then publishes what is pending (for at most
    /// `drain_timeout`) and flushes the producer.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.settings.max_backoff);
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + self.settings.prune_interval;
                if let Err(error) = self.prune_expired().await {
                    tracing::warn!(%error, "cannot prune the outbox; trying again later");
                }
            }
            let pause = match self.publish_pending().await {
                Ok(n) if n == self.settings.batch_size as usize => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    None
                }
                Err(error) => {
                    if self.replace_dead_producer() {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox relay round failed; events stay pending");
                    Some(delay)
                }
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = self.wake.notified(), if pause.is_none() => {}
                _ = tokio::time::sleep(pause.unwrap_or(self.settings.poll_interval)) => {}
            }
        }
        self.drain().await;
    }

    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                match self.publish_pending().await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match drained {
            Ok(Ok(())) => tracing::info!("outbox relay drained"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox relay stopped with events pending; they are published on next start")
            }
            Err(_) => tracing::warn!(
                "outbox relay drain timed out; pending events are published on next start"
            ),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(error) = self
            .producer()
            .flush(left.max(Duration::from_millis(100)))
            .await
        {
            tracing::warn!(%error, "producer flush incomplete");
        }
        // Only now: everything this relay handed the producer is settled, so
        // a standby taking over cannot publish alongside it.
        if let Some(lease) = self.lease.lock().await.take() {
            if let Err(error) = self.store.release_lease(lease).await {
                tracing::warn!(%error, "cannot release the outbox lease; a standby takes over when the session ends");
            }
        }
    }

    /// Deletes published messages older than the retention, a thousand at a
    /// time (short transactions); returns how many.
    pub async fn prune_expired(&self) -> Result<u64, RelayError> {
        let Some(retention) = self.settings.retention else {
            return Ok(0);
        };
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return Ok(0);
        };
        let before = taskstream_domain::now() - retention;
        let mut pruned = 0;
        loop {
            let n = self.store.prune_published(before, PRUNE_BATCH).await?;
            pruned += n;
            if n < u64::from(PRUNE_BATCH) {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "deleted published events past the outbox retention");
        }
        Ok(pruned)
    }

    /// Publishes one batch of pending rows; returns how many were published.
    ///
    /// Rows are handed to the producer in commit order, then their delivery
    /// reports are awaited. Every acknowledged row is marked; after the first
    /// failure, later rows stay pending even if acknowledged, so that the
    /// retry starts at the failed row and republishes in order (duplicates
    /// are harmless, reordering is not).
    ///
    /// Without the outbox lease (another relay holds it) nothing is
    /// published and the answer is `Ok(0)`.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let mut lease = self.lease.lock().await;
        if lease.is_none() {
            match self.store.acquire_lease(&self.holder).await? {
                Some(won) => {
                    self.standing_by.store(false, Ordering::Relaxed);
                    *lease = Some(won);
                }
                None => {
                    if !self.standing_by.swap(true, Ordering::Relaxed) {
                        tracing::info!(holder = %self.holder, "another relay holds the outbox lease; standing by");
                    }
                    return Ok(0);
                }
            }
        }
        let held = lease.as_ref().expect("acquired above");
        let batch = match self.store.pending(held, self.settings.batch_size).await {
            Ok(batch) => batch,
            Err(error) => {
                // The lease may have ended with the failure: win it again
                // (or stand by) before publishing anything more.
                *lease = None;
                return Err(error.into());
            }
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let producer = self.producer();
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut enqueue_error = None;
        for row in &batch {
            match self.enqueue(&producer, row).await {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    self.metrics.relay_errors.inc();
                    enqueue_error = Some((row.seq, error));
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(deliveries.len());
        // Rows enqueued before a failed enqueue still count: they precede it.
        let mut failure = None;
        for (row, delivery) in batch.iter().zip(deliveries) {
            let result = delivery.await;
            match &result {
                Ok(_) => {
                    self.metrics.relay_published.inc();
                    let waited = taskstream_domain::now() - row.message.created_at;
                    self.metrics
                        .relay_latency
                        .observe(waited.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                }
                Err(_) => {
                    self.metrics.relay_errors.inc();
                }
            }
            match result {
                Ok(_) if failure.is_none() => published.push(row.seq),
                Ok(_) => {}
                Err(error) if failure.is_none() => {
                    failure = Some((row.seq, RelayError::from(error)))
                }
                Err(_) => {}
            }
        }
        let failure = failure.or(enqueue_error);
        self.store
            .mark_published(&published, taskstream_domain::now())
            .await?;
        if !published.is_empty() {
            tracing::debug!(count = published.len(), "events published");
        }
        match failure {
            None => Ok(published.len()),
            Some((seq, error)) => {
                self.store.record_failure(seq, &error.to_string()).await?;
                Err(error)
            }
        }
    }

    async fn enqueue(
        &self,
        producer: &EventProducer,
        row: &PendingMessage,
    ) -> Result<taskstream_kafka::DeliveryFuture, RelayError> {
        let record = self.encoding.record(&row.message).await?;
        let headers = record.borrowed_headers();
        Ok(producer.enqueue(record.outbound(&headers)).await?)
    }
}
