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
//! backoff. With [`RelayDelivery::AtLeastOnce`] (an idempotent producer), a
//! row that was published but not yet marked (a crash in between) is
//! published again: consumers de-duplicate by event id. A producer that hit
//! a fatal error can never publish again, so the relay replaces it with a
//! new one and carries on from the first unmarked row.
//!
//! # Pipelining
//!
//! A round publishes until a claim finds fewer rows than a batch (at
//! least once) or none (exactly once), and it keeps the producer busy
//! while the outbox is read and written: the
//! store's claim leaves out the seqs of the batches in flight
//! ([`OutboxStore::claim`]; the exact seqs, neither a cursor nor their
//! span, so that a row with a lower seq that commits late on PostgreSQL is
//! claimed in the very next batch, before the rows with higher seqs — the
//! same task's next event among them — never passed over or held back).
//!
//! At least once: up to [`RelaySettings::batches_in_flight`] batches are
//! with the producer at a time; the oldest one's delivery reports are
//! awaited and its rows marked, then the next batch is claimed and
//! enqueued. Batches are settled and marked strictly in claim order, so
//! the marked rows are always a prefix of what was handed to the producer,
//! as with one batch at a time. A failure keeps the one-batch rules across
//! batches: the rows acknowledged before the first failed row are marked,
//! the failed row gets [`OutboxStore::record_failure`], and every later
//! row — of its batch and of the batches behind it, acknowledged or not —
//! stays pending (their reports are still awaited: nothing is left
//! unsettled); no new batch is claimed, and the retry republishes from the
//! failed row, in seq order. Order per key: the records of one task go to
//! one partition, in seq order, through one idempotent producer, which
//! keeps them in that order on the partition (its retries keep sequence
//! numbers, and it never lets a record time out). A record of a later
//! batch can only be acknowledged after an earlier one of the same
//! partition failed when the producer gave that one up for good (a fatal
//! error, or a refused record); it is then not marked, and the retry
//! publishes the failed record and it again, in order: the topic holds a
//! duplicate, as a failure inside one batch always left, and never an
//! event whose predecessor is missing from what follows it. A mark that
//! fails leaves its batch and every later one pending (published again).
//!
//! Exactly once: transactions stay one after the other on the one
//! producer; while batch N's transaction runs (begin, enqueue, commit),
//! batch N-1 is marked. Batch N+1 is claimed then too when batch N was
//! full (a backlog), and otherwise as soon as N's commit is answered, so
//! that rows written during a transaction go out in the next one without
//! waiting for a mark: under a steady load the marks (a write to the
//! store, fsynced) stay off the path from a row's commit to its
//! transaction's. Batch N is marked only once batch N-1's mark succeeded.
//!
//! # Exactly once ([`RelayDelivery::ExactlyOnce`])
//!
//! With a broker that has transactions, each batch is published in one
//! Kafka transaction under a stable `transactional.id` (one per
//! deployment), committed, and only then marked published. The lease makes
//! one relay active; the transactional id fences a zombie: the producer
//! is started (`init_transactions`) only once the lease is won, which makes
//! every older producer with the id fail fatally and aborts the transaction
//! it left open. A fenced relay gives the lease up and stands by; any
//! other fatal error drops the producer and builds a new one (never a retry
//! on the dead one); an abortable error aborts the batch, which is then
//! published again on a new producer; a commit that failed retriably is
//! made again a few times before the batch is aborted.
//!
//! A crash between the commit and the mark must not publish the batch
//! again, so before it publishes anything, a relay with a new producer
//! reads back what committed transactions left on the topic and marks it.
//! Every record carries the outbox row's id in its `id` header (the row's
//! `id` is unique, and it is the header Debezium writes too, so the record
//! format does not change): for each partition of each topic that
//! unpublished rows go to, records are read `read_committed` backwards from
//! the end, a chunk at a time, and each record whose row is still unmarked
//! is marked. Reading stops at a chunk holding a record whose row is marked
//! (or pruned, or unknown), or at the log start. Why this finds every
//! committed, unmarked row:
//!
//! - `read_committed` shows exactly the records of committed transactions
//!   (after `init_transactions` nothing of ours is open any more, so the
//!   last stable offset is the end), so every unmarked row found was
//!   published by a committed transaction: marking it is right.
//! - Batches are published one transaction after the other, and marked
//!   (one statement each, all or nothing) in the same order: batch N-1's
//!   mark runs while batch N's transaction does, and batch N's mark waits
//!   for it and is never made after it failed; after a failed mark,
//!   recovery runs again before anything more is published. So at most the
//!   last two transactions are committed but unmarked, no marked batch
//!   follows an unmarked one, and on every partition the unmarked batches'
//!   records come after every record of a marked batch: the first marked
//!   record met going backwards ends the unmarked tail of that partition.
//! - Exactly the rows found are marked, never "every seq up to the largest
//!   seen": on PostgreSQL a lower seq can commit after a higher one, so a
//!   row with a lower seq may still be unpublished and absent from the
//!   topic.
//!
//! Records an at-least-once relay (or an earlier version) left behind are
//! handled the same way: any unmarked row found on the topic was published.
//!
//! Only the relay holding the outbox's [`Lease`] publishes; another one
//! (a second replica on PostgreSQL) stands by, asks for the lease every
//! round, and takes over once the holder released it or is gone. A relay
//! whose lease ended (its database session failed) stops publishing until
//! it wins the lease again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskstream_domain::headers;
use taskstream_kafka::{
    CommittedTail, EventProducer, KafkaConfig, KafkaError, TransactionError, TransactionErrorKind,
    TransactionSettings, TransactionalProducer,
};
use taskstream_store::{Lease, OutboxStore, PendingMessage, StoreError};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::{Backoff, EncodingError, EventEncoding, Shutdown};

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per batch (one transaction each, exactly
    /// once).
    pub batch_size: u32,
    /// At least once: how many batches may be with the producer at once
    /// (claimed and enqueued, their delivery reports outstanding); 1 is
    /// one batch at a time. Exactly once pipelines one transaction with the
    /// previous batch's mark and the next batch's claim, whatever this is.
    pub batches_in_flight: usize,
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
    /// Transactions or idempotent publishing; read by whoever builds the
    /// relay's [`RelayPublisher`].
    pub delivery: RelayDelivery,
    /// Test only (fault injection): abort the process right after this
    /// many batches were published (committed, or acknowledged), before the
    /// last one is marked — a crash between the publish and the mark.
    pub crash_before_mark: Option<u32>,
}

/// How the relay publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayDelivery {
    /// Each batch in one Kafka transaction under `transactional_id`; a
    /// restarted relay marks what was committed before a crash instead of
    /// publishing it again. Needs a broker with transactions.
    ExactlyOnce { transactional_id: String },
    /// An idempotent producer; a crash between the publish and the mark
    /// publishes the batch again (consumers de-duplicate by event id).
    AtLeastOnce,
}

/// The relay's transactional id unless told otherwise.
pub const RELAY_TRANSACTIONAL_ID: &str = "taskstream-relay";

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batches_in_flight: 3,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            // As long as the task-event topic keeps them.
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            prune_interval: Duration::from_secs(600),
            delivery: RelayDelivery::AtLeastOnce,
            crash_before_mark: None,
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
    /// A transactional call failed (exactly-once delivery).
    #[error(transparent)]
    Transaction(#[from] TransactionError),
}

/// Published messages deleted per statement when pruning.
const PRUNE_BATCH: u32 = 1000;

/// Makes the relay's producer: once at start, and again after a fatal error.
pub type ProducerFactory = Arc<dyn Fn() -> Result<EventProducer, KafkaError> + Send + Sync>;

/// How many times a commit that failed retriably is made again before the
/// batch is aborted.
const COMMIT_ATTEMPTS: u32 = 5;

/// Records read per step when reading a partition's committed tail back.
const TAIL_CHUNK: i64 = 1000;

/// The component name in transaction metrics and logs.
const COMPONENT: &str = "relay";

/// The least time given to aborting a transaction the drain cut short.
const ABORT_PATIENCE: Duration = Duration::from_secs(2);

/// The most batches one round claims: a long backlog is drained in rounds,
/// so that pruning (between rounds) still runs while it lasts.
const ROUND_BATCHES: usize = 100;

/// What the relay publishes with.
pub enum RelayPublisher {
    /// An idempotent producer, made by the factory (at least once).
    Idempotent(ProducerFactory),
    /// A transactional producer on `kafka` (exactly once).
    Transactional {
        kafka: KafkaConfig,
        settings: TransactionSettings,
    },
}

impl From<ProducerFactory> for RelayPublisher {
    fn from(factory: ProducerFactory) -> Self {
        Self::Idempotent(factory)
    }
}

enum Publisher {
    Idempotent {
        producer: std::sync::Mutex<EventProducer>,
        new_producer: ProducerFactory,
    },
    Transactional(Box<tokio::sync::Mutex<Transactional>>),
}

/// The exactly-once relay's producer and what it knows of the topic.
struct Transactional {
    kafka: KafkaConfig,
    settings: TransactionSettings,
    /// Started once the lease is won; dropped after a fatal error.
    producer: Option<TransactionalProducer>,
    /// Whether the committed tail was read back and marked since the
    /// producer started (and since the last failed mark).
    recovered: bool,
    /// Whether a transaction was begun and not yet committed or aborted:
    /// a round cut short (the drain timing out) leaves it open, and it is
    /// aborted then.
    open: bool,
}

/// An at-least-once batch with the producer.
struct InFlight {
    /// The rows enqueued, in seq order (the claimed batch up to a row that
    /// could not be enqueued).
    rows: Vec<PendingMessage>,
    /// One per row of `rows`.
    deliveries: Vec<taskstream_kafka::DeliveryFuture>,
    /// The seqs claimed, left out of later claims while in flight.
    seqs: Vec<i64>,
    /// The row that could not be enqueued, ending the batch.
    enqueue_error: Option<(i64, RelayError)>,
    claim: Duration,
    enqueue: Duration,
    enqueued_at: Instant,
}

/// What an exactly-once batch's transaction did.
struct Transacted {
    /// Rows enqueued and committed: the batch's first ones.
    enqueued: usize,
    /// The row that could not be encoded, ending the batch.
    failure: Option<(i64, RelayError)>,
    enqueue: Duration,
    commit: Duration,
}

/// An exactly-once batch committed, to be marked.
struct Committed {
    rows: Vec<PendingMessage>,
    claim: Duration,
    enqueue: Duration,
    commit: Duration,
}

/// The seqs of a claimed batch.
fn batch_seqs(batch: &[PendingMessage]) -> Vec<i64> {
    batch.iter().map(|row| row.seq).collect()
}

/// Publishes the outbox. See the module docs.
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    publisher: Publisher,
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
    /// Batches published so far (for [`RelaySettings::crash_before_mark`]).
    batches: std::sync::atomic::AtomicU32,
}

impl OutboxRelay {
    /// `wake` is notified by writers after each commit. An idempotent
    /// `publisher`'s factory makes the producer now, and its replacement
    /// after a fatal error; a transactional one is started once the lease
    /// is won.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        publisher: impl Into<RelayPublisher>,
        wake: Arc<Notify>,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
        encoding: EventEncoding,
    ) -> Result<Self, KafkaError> {
        let publisher = match publisher.into() {
            RelayPublisher::Idempotent(new_producer) => Publisher::Idempotent {
                producer: std::sync::Mutex::new(new_producer()?),
                new_producer,
            },
            RelayPublisher::Transactional { kafka, settings } => {
                Publisher::Transactional(Box::new(tokio::sync::Mutex::new(Transactional {
                    kafka,
                    settings,
                    producer: None,
                    recovered: false,
                    open: false,
                })))
            }
        };
        Ok(Self {
            store,
            publisher,
            wake,
            settings,
            metrics,
            encoding,
            holder: format!("relay-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            lease: tokio::sync::Mutex::new(None),
            standing_by: AtomicBool::new(false),
            batches: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Whether this relay holds the outbox lease (as of its latest round).
    pub async fn holds_lease(&self) -> bool {
        self.lease.lock().await.is_some()
    }

    /// The idempotent producer in use, if the relay publishes with one.
    fn producer(&self) -> Option<EventProducer> {
        match &self.publisher {
            Publisher::Idempotent { producer, .. } => {
                Some(producer.lock().expect("never poisoned").clone())
            }
            Publisher::Transactional(_) => None,
        }
    }

    /// Replaces the idempotent producer if a fatal error ended it; `true`
    /// if it did. (A transactional one is replaced where its error is seen.)
    fn replace_dead_producer(&self) -> bool {
        let Publisher::Idempotent {
            producer,
            new_producer,
        } = &self.publisher
        else {
            return false;
        };
        let Some(reason) = self.producer().and_then(|p| p.fatal_error()) else {
            return false;
        };
        match new_producer() {
            Ok(fresh) => {
                tracing::error!(%reason, "the relay's producer hit a fatal error; replaced it, unmarked events are published again");
                self.metrics.relay_producer_restarts.inc();
                *producer.lock().expect("never poisoned") = fresh;
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
            // A round publishes until the outbox is caught up, or for
            // `ROUND_BATCHES` full batches.
            let pause = match self.publish_pending().await {
                Ok(n) if n == ROUND_BATCHES * self.settings.batch_size as usize => {
                    backoff.reset();
                    // A long backlog runs round after round: a stop is
                    // noticed between them, not only once it is drained.
                    if shutdown.is_triggered() {
                        break;
                    }
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
        // A transactional relay has nothing in flight between rounds: each
        // batch was committed or aborted, except the one a timed-out drain
        // cut short.
        self.abort_cut_short(left.max(ABORT_PATIENCE)).await;
        if let Some(producer) = self.producer() {
            if let Err(error) = producer.flush(left.max(Duration::from_millis(100))).await {
                tracing::warn!(%error, "producer flush incomplete");
            }
        }
        // Only now: everything this relay handed the producer is settled, so
        // a standby taking over cannot publish alongside it.
        if let Some(lease) = self.lease.lock().await.take() {
            if let Err(error) = self.store.release_lease(lease).await {
                tracing::warn!(%error, "cannot release the outbox lease; a standby takes over when the session ends");
            }
        }
    }

    /// Aborts the transaction a round cut short left open (the drain timed
    /// out mid-transaction): left open, the coordinator would abort it only
    /// after the transaction timeout, and `read_committed` consumers of its
    /// partitions would wait that long. Its rows stay pending.
    async fn abort_cut_short(&self, patience: Duration) {
        let Publisher::Transactional(state) = &self.publisher else {
            return;
        };
        let mut state = state.lock().await;
        if !std::mem::take(&mut state.open) {
            return;
        }
        let Some(producer) = state.producer.as_ref() else {
            return;
        };
        match tokio::time::timeout(patience, producer.abort()).await {
            Ok(Ok(())) => {
                self.metrics.transaction(COMPONENT, "aborted", 0.0);
                tracing::info!("aborted the transaction the drain cut short; its events are published on next start");
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot abort the transaction the drain cut short; the next relay's producer aborts it")
            }
            Err(_) => tracing::warn!(
                "aborting the transaction the drain cut short timed out; the next relay's producer aborts it"
            ),
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

    /// Publishes pending rows until a claim finds fewer than a batch (at
    /// least once) or none (exactly once), that is until the outbox is
    /// caught up; or until a hundred batches were claimed, or something
    /// fails. Returns how many rows were published (and marked).
    ///
    /// Batches are pipelined (see the module docs): the next batch is
    /// claimed while earlier ones are with the broker, and batches are
    /// marked one after the other, in claim order. Every acknowledged row
    /// is marked; after the first failure, later rows (of that batch and of
    /// every batch behind it) stay pending even if acknowledged, so that
    /// the retry starts at the failed row and republishes in order
    /// (duplicates are harmless, reordering is not).
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
                    // Another relay may have published meanwhile (and died
                    // before marking): a new producer fences it, and the
                    // committed tail is read back before publishing.
                    if let Publisher::Transactional(state) = &self.publisher {
                        let mut state = state.lock().await;
                        state.producer = None;
                        state.recovered = false;
                    }
                }
                None => {
                    if !self.standing_by.swap(true, Ordering::Relaxed) {
                        tracing::info!(holder = %self.holder, "another relay holds the outbox lease; standing by");
                    }
                    return Ok(0);
                }
            }
        }
        if let Publisher::Transactional(state) = &self.publisher {
            let mut state = state.lock().await;
            return self.publish_transactionally(&mut lease, &mut state).await;
        }
        self.publish_idempotently(&mut lease).await
    }

    /// The at-least-once pipeline: keeps up to
    /// [`RelaySettings::batches_in_flight`] batches with the producer,
    /// settling (awaiting, then marking) the oldest before claiming more.
    async fn publish_idempotently(&self, lease: &mut Option<Lease>) -> Result<usize, RelayError> {
        let producer = self.producer().expect("an idempotent relay");
        let depth = self.settings.batches_in_flight.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // Set once a claim came back short or failed, or a row could not
        // be enqueued: nothing more is claimed this round.
        let mut claiming = true;
        let mut claimed = 0;
        // The first failure, in seq order: nothing after it is marked.
        let mut failure: Option<(Option<i64>, RelayError)> = None;
        let mut claim_error = None;
        let mut published = 0;
        loop {
            if claiming && failure.is_none() && in_flight.len() < depth {
                let seqs: Vec<i64> = in_flight
                    .iter()
                    .flat_map(|b| b.seqs.iter().copied())
                    .collect();
                let started = Instant::now();
                match self.claim_batch(lease, &seqs).await {
                    Ok(batch) => {
                        claimed += 1;
                        claiming = batch.len() == self.settings.batch_size as usize
                            && claimed < ROUND_BATCHES;
                        if !batch.is_empty() {
                            let claim = started.elapsed();
                            let batch = self.enqueue_batch(&producer, batch, claim).await;
                            if batch.enqueue_error.is_some() {
                                claiming = false;
                            }
                            in_flight.push_back(batch);
                        }
                    }
                    Err(error) => {
                        // What is in flight precedes the rows not claimed:
                        // it is still marked as it is acknowledged.
                        claiming = false;
                        claim_error = Some(error);
                    }
                }
                continue;
            }
            let Some(batch) = in_flight.pop_front() else {
                break;
            };
            let in_flight_behind = in_flight.len();
            let InFlight {
                rows,
                deliveries,
                enqueue_error,
                claim,
                enqueue,
                enqueued_at,
                ..
            } = batch;
            let mut acknowledged = Vec::with_capacity(rows.len());
            for (row, delivery) in rows.iter().zip(deliveries) {
                match delivery.await {
                    Ok(_) => {
                        if failure.is_none() {
                            acknowledged.push(row);
                        }
                    }
                    Err(error) => {
                        self.metrics.relay_errors.inc();
                        if failure.is_none() {
                            failure = Some((Some(row.seq), error.into()));
                        }
                    }
                }
            }
            let delivered = enqueued_at.elapsed();
            let marking = Instant::now();
            if !acknowledged.is_empty() {
                // Rows of this batch before a failure were acknowledged; a
                // failure in an earlier batch left `acknowledged` empty.
                self.crash_if_asked();
                let seqs: Vec<i64> = acknowledged.iter().map(|row| row.seq).collect();
                match self
                    .store
                    .mark_published(&seqs, taskstream_domain::now())
                    .await
                {
                    Ok(()) => {
                        self.count_published(&acknowledged);
                        published += acknowledged.len();
                    }
                    Err(error) => {
                        // Acknowledged but unmarked: published again, and
                        // so is every later batch (not marked either).
                        if failure.is_none() {
                            failure = Some((None, error.into()));
                        }
                    }
                }
            }
            tracing::debug!(
                rows = rows.len(),
                marked = acknowledged.len(),
                in_flight_behind,
                claim_us = claim.as_micros() as u64,
                enqueue_us = enqueue.as_micros() as u64,
                deliver_us = delivered.as_micros() as u64,
                mark_us = marking.elapsed().as_micros() as u64,
                "relay batch"
            );
            if let Some((seq, error)) = enqueue_error {
                // The rows before it were enqueued (and settled above).
                if failure.is_none() {
                    failure = Some((Some(seq), error));
                }
            }
        }
        match (failure, claim_error) {
            (None, None) => Ok(published),
            (None, Some(error)) => Err(error),
            (Some((seq, error)), _) => {
                if let Some(seq) = seq {
                    self.store.record_failure(seq, &error.to_string()).await?;
                }
                Err(error)
            }
        }
    }

    /// Hands `batch` to the producer in seq order, up to the first row that
    /// cannot be enqueued.
    async fn enqueue_batch(
        &self,
        producer: &EventProducer,
        batch: Vec<PendingMessage>,
        claim: Duration,
    ) -> InFlight {
        let started = Instant::now();
        let seqs = batch_seqs(&batch);
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut enqueue_error = None;
        for row in &batch {
            match self.enqueue(producer, row).await {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    self.metrics.relay_errors.inc();
                    enqueue_error = Some((row.seq, error));
                    break;
                }
            }
        }
        let mut rows = batch;
        rows.truncate(deliveries.len());
        InFlight {
            rows,
            deliveries,
            seqs,
            enqueue_error,
            claim,
            enqueue: started.elapsed(),
            enqueued_at: Instant::now(),
        }
    }

    /// Counts rows published (after their mark).
    fn count_published(&self, rows: &[&PendingMessage]) {
        for row in rows {
            self.metrics.relay_published.inc();
            let waited = taskstream_domain::now() - row.message.created_at;
            self.metrics
                .relay_latency
                .observe(waited.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
    }

    /// The next batch of pending rows, leaving out the seqs `in_flight`,
    /// under the held lease. A failure may have ended the lease: it is
    /// dropped, to be won again (or to stand by) before anything more is
    /// published.
    async fn claim_batch(
        &self,
        lease: &mut Option<Lease>,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, RelayError> {
        let held = lease.as_ref().expect("held by the caller");
        match self
            .store
            .claim(held, self.settings.batch_size, in_flight)
            .await
        {
            Ok(batch) => Ok(batch),
            Err(error) => {
                *lease = None;
                Err(error.into())
            }
        }
    }

    /// Test only: aborts the process once [`RelaySettings::crash_before_mark`]
    /// batches were published, before the last one is marked.
    fn crash_if_asked(&self) {
        let Some(limit) = self.settings.crash_before_mark else {
            return;
        };
        let published = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        if published >= limit {
            tracing::error!(
                batches = published,
                "fault injection: the relay dies between publishing a batch and marking it"
            );
            std::process::abort();
        }
    }

    /// The exactly-once relay, holding the lease: start the producer if
    /// there is none, mark what committed transactions left unmarked, then
    /// publish batch after batch, one transaction each, until a claim finds
    /// nothing (or [`ROUND_BATCHES`] were claimed). While a batch's
    /// transaction runs, the batch before it is marked and, if this one is
    /// full, the batch after it claimed; after a short one, the next is
    /// claimed once its commit is answered.
    async fn publish_transactionally(
        &self,
        lease: &mut Option<Lease>,
        state: &mut Transactional,
    ) -> Result<usize, RelayError> {
        if state.producer.is_none() {
            match TransactionalProducer::start(&state.kafka, COMPONENT, &state.settings).await {
                Ok(producer) => {
                    tracing::info!(
                        transactional_id = producer.transactional_id(),
                        "the relay's transactional producer started; older relays with this id are fenced"
                    );
                    state.producer = Some(producer);
                    state.recovered = false;
                }
                Err(error) => return Err(self.transaction_failed(lease, state, error).await),
            }
        }
        if !state.recovered {
            let marked = self.mark_committed_tail(&state.kafka).await?;
            if marked > 0 {
                tracing::info!(
                    marked,
                    "marked events a committed transaction published before the relay stopped; they are not published again"
                );
            }
            state.recovered = true;
        }
        let started = Instant::now();
        let mut next = self.claim_batch(lease, &[]).await?;
        let mut claim = started.elapsed();
        // The batch committed last, until it is marked.
        let mut unmarked: Option<Committed> = None;
        let mut published = 0;
        let mut claimed = 1;
        while !next.is_empty() {
            let batch = std::mem::take(&mut next);
            let more = claimed < ROUND_BATCHES;
            // A full batch says a backlog is waiting: the next one is
            // claimed while this one's transaction runs. After a short one,
            // what arrived meanwhile is claimed once the commit is answered,
            // so that it misses no row written during the transaction.
            let claim_early = more && batch.len() == self.settings.batch_size as usize;
            claimed += 1;
            let seqs = batch_seqs(&batch);
            let previous = unmarked.take();
            // The previous batch is marked (then, early, the next one
            // claimed) while this one's transaction runs.
            let (transaction, (mark, claimed_early)) =
                tokio::join!(self.transact(state, &batch), async {
                    let mark = match &previous {
                        Some(committed) => self.mark_committed(committed).await,
                        None => Ok(()),
                    };
                    if mark.is_err() || !claim_early {
                        return (mark, None);
                    }
                    let started = Instant::now();
                    let claimed = self.claim_batch(lease, &seqs).await;
                    (mark, Some((claimed, started.elapsed())))
                });
            if let Some(committed) = &previous {
                if mark.is_ok() {
                    published += committed.rows.len();
                }
            }
            let transaction = match transaction {
                Ok(transaction) => transaction,
                Err(error) => {
                    if mark.is_err() {
                        state.recovered = false;
                    }
                    return Err(self.transaction_failed(lease, state, error).await);
                }
            };
            let Transacted {
                enqueued,
                failure,
                enqueue,
                commit,
            } = transaction;
            if let Err(error) = mark {
                // The previous batch is committed but unmarked, and so may
                // be this one: both are read back from the topic before
                // anything more is published (this one is never marked
                // before the previous one is).
                state.recovered = false;
                return Err(error.into());
            }
            let mut rows = batch;
            rows.truncate(enqueued);
            if !rows.is_empty() {
                self.crash_if_asked();
                unmarked = Some(Committed {
                    rows,
                    claim,
                    enqueue,
                    commit,
                });
            }
            if let Some((seq, error)) = failure {
                // A row that cannot be encoded ends the batch: the rows
                // before it were committed; the next batch, claimed past
                // it, is dropped (claimed again after the failed row).
                if let Some(committed) = unmarked.take() {
                    if let Err(error) = self.mark_committed(&committed).await {
                        state.recovered = false;
                        return Err(error.into());
                    }
                }
                self.store.record_failure(seq, &error.to_string()).await?;
                return Err(error);
            }
            let claimed_now = match claimed_early {
                Some(claimed) => Some(claimed),
                // Rows written while the transaction ran go out in the
                // next one, its commit overlapping this batch's mark,
                // instead of waiting for the mark and a new round.
                // This batch (all of it committed: a failed row returned
                // above) is left out until marked.
                None if more => {
                    let started = Instant::now();
                    let claimed = self.claim_batch(lease, &seqs).await;
                    Some((claimed, started.elapsed()))
                }
                None => None,
            };
            match claimed_now {
                Some((Ok(batch), took)) => {
                    next = batch;
                    claim = took;
                }
                Some((Err(error), _)) => {
                    if let Some(committed) = unmarked.take() {
                        if let Err(error) = self.mark_committed(&committed).await {
                            state.recovered = false;
                            return Err(error.into());
                        }
                    }
                    return Err(error);
                }
                None => {}
            }
        }
        if let Some(committed) = unmarked.take() {
            if let Err(error) = self.mark_committed(&committed).await {
                // Committed but unmarked: read the tail back before the next batch.
                state.recovered = false;
                return Err(error.into());
            }
            published += committed.rows.len();
        }
        Ok(published)
    }

    /// One batch in one transaction: begin, enqueue (up to a row that
    /// cannot be encoded), commit — or abort, if not even the first row
    /// could be enqueued.
    async fn transact(
        &self,
        state: &mut Transactional,
        batch: &[PendingMessage],
    ) -> Result<Transacted, TransactionError> {
        let began = Instant::now();
        let producer = state.producer.as_ref().expect("started before");
        producer.begin()?;
        state.open = true;
        // Rows before one that cannot be encoded are published; it stays
        // pending with its error recorded.
        let mut enqueued = 0;
        let mut failure = None;
        for row in batch {
            match self.enqueue_transactional(producer, row).await {
                Ok(()) => enqueued += 1,
                Err(error) => {
                    self.metrics.relay_errors.inc();
                    failure = Some((row.seq, error));
                    break;
                }
            }
        }
        let enqueue = began.elapsed();
        let committed = if enqueued == 0 {
            Err(producer.abort().await.err())
        } else {
            self.commit(producer).await.map_err(Some)
        };
        state.open = false;
        match committed {
            Ok(()) => {
                self.metrics
                    .transaction(COMPONENT, "committed", began.elapsed().as_secs_f64());
            }
            Err(error) => {
                self.metrics
                    .transaction(COMPONENT, "aborted", began.elapsed().as_secs_f64());
                if let Some(error) = error {
                    self.metrics.relay_errors.inc();
                    return Err(error);
                }
            }
        }
        Ok(Transacted {
            enqueued,
            failure,
            enqueue,
            commit: began.elapsed() - enqueue,
        })
    }

    /// Marks a committed batch, then counts it and logs its timing.
    async fn mark_committed(&self, committed: &Committed) -> Result<(), StoreError> {
        let started = Instant::now();
        let seqs: Vec<i64> = committed.rows.iter().map(|row| row.seq).collect();
        self.store
            .mark_published(&seqs, taskstream_domain::now())
            .await?;
        tracing::debug!(
            rows = committed.rows.len(),
            claim_us = committed.claim.as_micros() as u64,
            enqueue_us = committed.enqueue.as_micros() as u64,
            commit_us = committed.commit.as_micros() as u64,
            mark_us = started.elapsed().as_micros() as u64,
            "relay transaction"
        );
        let rows: Vec<&PendingMessage> = committed.rows.iter().collect();
        self.count_published(&rows);
        Ok(())
    }

    /// Commits, making the call again while it fails retriably; aborts
    /// when it cannot (unless the producer is dead).
    async fn commit(&self, producer: &TransactionalProducer) -> Result<(), TransactionError> {
        let error = match producer.commit_retrying(COMMIT_ATTEMPTS).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if error.kind != TransactionErrorKind::Fatal {
            if let Err(abort) = producer.abort().await {
                tracing::warn!(error = %abort, "abort failed; the next producer aborts the transaction");
            }
        }
        Err(error)
    }

    /// Handles a failed transactional call: a fenced relay gives the
    /// lease up (a newer relay with the id is active) and stands by; any
    /// other failure drops the producer — dead (fatal), or left with a gap
    /// in its sequence numbers (abortable) — so the next round starts a
    /// new one, whose `init_transactions` aborts what this one left open.
    async fn transaction_failed(
        &self,
        lease: &mut Option<Lease>,
        state: &mut Transactional,
        error: TransactionError,
    ) -> RelayError {
        let fenced = error.fenced
            || state
                .producer
                .as_ref()
                .and_then(TransactionalProducer::fatal)
                .is_some_and(|fatal| fatal.fenced);
        if state.producer.take().is_some() {
            self.metrics.relay_producer_restarts.inc();
        }
        state.recovered = false;
        state.open = false;
        if fenced {
            tracing::error!(%error, "the relay was fenced: a newer relay uses its transactional id; giving the lease up and standing by");
            if let Some(held) = lease.take() {
                if let Err(release) = self.store.release_lease(held).await {
                    tracing::warn!(error = %release, "cannot release the outbox lease");
                }
            }
        }
        error.into()
    }

    /// Reads the committed tail of every partition the unpublished rows
    /// go to and marks each row found there (see the module docs);
    /// returns how many were marked.
    async fn mark_committed_tail(&self, kafka: &KafkaConfig) -> Result<usize, RelayError> {
        const PATIENCE: Duration = Duration::from_secs(30);
        let mut marked = 0;
        for topic in self.store.unpublished_topics().await? {
            let tail = CommittedTail::new(kafka, &topic, PATIENCE)?;
            let partitions = match tail.partitions().await {
                // Nothing was published to a topic that does not exist:
                // its rows are published (and the topic created) as usual.
                Err(KafkaError::UnknownTopic(_)) => continue,
                other => other?,
            };
            for bounds in partitions {
                let mut until = bounds.high;
                while until > bounds.low {
                    let from = (until - TAIL_CHUNK).max(bounds.low);
                    let records = tail.read(bounds.partition, from, until).await?;
                    let ids: Vec<uuid::Uuid> = records
                        .iter()
                        .filter_map(|r| r.header_str(headers::EVENT_ID)?.parse().ok())
                        .collect();
                    let unpublished = self.store.unpublished_among(&topic, &ids).await?;
                    let seqs: Vec<i64> = unpublished.iter().map(|(_, seq)| *seq).collect();
                    self.store
                        .mark_published(&seqs, taskstream_domain::now())
                        .await?;
                    marked += seqs.len();
                    // A record whose row is marked (or gone) ends the
                    // partition's unmarked tail.
                    if unpublished.len() < records.len() {
                        break;
                    }
                    until = from;
                }
            }
        }
        Ok(marked)
    }

    async fn enqueue_transactional(
        &self,
        producer: &TransactionalProducer,
        row: &PendingMessage,
    ) -> Result<(), RelayError> {
        let record = self.encoding.record(&row.message).await?;
        let headers = record.borrowed_headers();
        // The commit reports a refused record (as abortable).
        drop(producer.enqueue(record.outbound(&headers)).await?);
        Ok(())
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
