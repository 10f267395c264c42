//! A transactional producer: records to several topics, and the input
//! offsets they were computed from, become visible to `read_committed`
//! readers together or not at all (Kafka's exactly-once, KIP-98/KIP-447).
//!
//! The producer carries a stable `transactional.id`. Starting one
//! (`init_transactions`) fences every older producer with the same id —
//! their next request fails with a fatal error — and aborts whatever
//! transaction the last one left open, so a crashed instance's half-written
//! output never becomes visible.
//!
//! Every failure is classified the way librdkafka documents it, into one
//! [`TransactionErrorKind`]:
//! - **retriable**: the same call may succeed if made again (a commit that
//!   timed out while the coordinator moved);
//! - **abortable**: the current transaction cannot commit; abort it and do
//!   its work again (a record the broker refused). After a refused record
//!   librdkafka 2.12 leaves a gap in the producer's sequence numbers that
//!   fails the next commit too ("skipped sequence numbers"), so the work is
//!   best done again on a new producer;
//! - **fatal**: this producer can never be used again. When it was fenced
//!   ([`TransactionError::fenced`]) a newer producer owns the id, and the
//!   owner of this one must stop; otherwise it may build a new producer
//!   (whose `init_transactions` aborts what this one left open). A fatal
//!   producer is never retried.

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::context::TracingContext;
use crate::producer::enqueue;
use crate::{DeliveryFuture, KafkaConfig, KafkaError, OutboundRecord};

/// How a transactional failure is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionErrorKind {
    /// Make the same call again.
    Retriable,
    /// Abort the transaction and do its work again.
    Abortable,
    /// Drop the producer; build a new one unless it was fenced.
    Fatal,
}

impl std::fmt::Display for TransactionErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Retriable => "retriable",
            Self::Abortable => "abortable",
            Self::Fatal => "fatal",
        })
    }
}

/// A failed transactional operation, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({kind}{}): {message}", if *.fenced { ", fenced" } else { "" })]
pub struct TransactionError {
    /// `init_transactions`, `begin_transaction`, ...
    pub operation: &'static str,
    pub kind: TransactionErrorKind,
    /// A newer producer with the same `transactional.id` took over; this
    /// one's owner must stop rather than build another (which would fence
    /// the newer one in turn).
    pub fenced: bool,
    pub message: String,
}

impl TransactionError {
    /// Classifies `error` from `operation` on `producer`.
    fn classify(
        operation: &'static str,
        error: &RdError,
        producer: &FutureProducer<TracingContext>,
    ) -> Self {
        let fatal = producer.client().fatal_error();
        let code = error.rdkafka_error_code();
        let kind = match error {
            RdError::Transaction(e) if e.is_fatal() => TransactionErrorKind::Fatal,
            RdError::Transaction(e) if e.txn_requires_abort() => TransactionErrorKind::Abortable,
            RdError::Transaction(e) if e.is_retriable() => TransactionErrorKind::Retriable,
            _ if fatal.is_some() => TransactionErrorKind::Fatal,
            // Records not all acknowledged in time: the transaction is
            // still open, and the same call may succeed.
            RdError::Flush(RDKafkaErrorCode::OperationTimedOut) => TransactionErrorKind::Retriable,
            // Anything librdkafka does not call retriable or abortable
            // (an unexpected state): a new producer starts clean, and its
            // `init_transactions` aborts what this one left open.
            _ => TransactionErrorKind::Fatal,
        };
        let fenced = is_fencing(code) || fatal.as_ref().is_some_and(|(c, _)| is_fencing(Some(*c)));
        let mut message = error.to_string();
        if let Some((code, reason)) = fatal {
            message = format!("{message} (fatal: {code}: {reason})");
        }
        Self {
            operation,
            kind,
            fenced,
            message,
        }
    }
}

fn is_fencing(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// The longest a failed `init_transactions` waits for the cluster to say
/// why (its metadata and a broker's configuration).
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(10);

/// Transactional producer settings.
#[derive(Debug, Clone)]
pub struct TransactionSettings {
    /// The stable id that fences older producers (`transactional.id`).
    pub transactional_id: String,
    /// How long the coordinator lets a transaction stay open before it
    /// aborts it (`transaction.timeout.ms`).
    pub transaction_timeout: Duration,
    /// How long one call (`init_transactions`, commit, ...) may block.
    pub operation_timeout: Duration,
    /// How long librdkafka may wait to fill a batch (`linger.ms`).
    pub linger: Duration,
}

impl TransactionSettings {
    /// Defaults for `transactional_id`.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        Self {
            transactional_id: transactional_id.into(),
            transaction_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(2),
        }
    }
}

/// A producer whose records and input offsets commit atomically.
pub struct TransactionalProducer {
    inner: FutureProducer<TracingContext>,
    transactional_id: String,
    operation_timeout: Duration,
    /// Who uses it, in logs.
    client: String,
}

impl TransactionalProducer {
    /// Creates the producer and runs `init_transactions`: from then on
    /// every older producer with the same id is fenced, and the transaction
    /// the last one left open is aborted. `client` names it in logs.
    pub async fn start(
        config: &KafkaConfig,
        client: &str,
        settings: &TransactionSettings,
    ) -> Result<Self, TransactionError> {
        let mut rd = config.client_config();
        rd.set("transactional.id", &settings.transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "transaction.timeout.ms",
                settings.transaction_timeout.as_millis().to_string(),
            )
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("client.id", format!("taskstream-{client}"));
        let inner: FutureProducer<TracingContext> = rd
            .create_with_context(TracingContext::of(client, config))
            .map_err(|e| TransactionError {
                operation: "create producer",
                kind: TransactionErrorKind::Fatal,
                fenced: false,
                message: e.to_string(),
            })?;
        let producer = Self {
            inner,
            transactional_id: settings.transactional_id.clone(),
            operation_timeout: settings.operation_timeout,
            client: client.to_owned(),
        };
        let started = producer
            .blocking("init_transactions", |p, timeout| {
                p.init_transactions(timeout)
            })
            .await;
        match started {
            Ok(()) => Ok(producer),
            Err(mut error) if !error.fenced => {
                // Most often no coordinator answered in time: a cluster
                // whose transaction log cannot exist (more replicas asked
                // for than it has brokers) never gets one, however often
                // this is tried. Say so, and how to fix it.
                let patience = settings.operation_timeout.min(DIAGNOSIS_TIMEOUT);
                match crate::admin::diagnose_transaction_log(config, patience).await {
                    // The caller logs the error (and may try again).
                    Ok(Some(why)) => error.message = format!("{}; {why}", error.message),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(client, error = %e, "cannot tell why init_transactions failed")
                    }
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// The producer's `transactional.id`.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Starts a transaction (a local step: nothing is sent yet).
    pub fn begin(&self) -> Result<(), TransactionError> {
        self.inner
            .begin_transaction()
            .map_err(|e| TransactionError::classify("begin_transaction", &e, &self.inner))
    }

    /// Queues a record in the current transaction. Its delivery report
    /// says whether the broker took it; a refused record makes the
    /// transaction abortable, which [`TransactionalProducer::commit`]
    /// reports too, so callers may drop the future.
    pub async fn enqueue(&self, record: OutboundRecord<'_>) -> Result<DeliveryFuture, KafkaError> {
        enqueue(&self.inner, record).await
    }

    /// Adds the input positions `offsets` — `(topic, partition, next
    /// offset to read)` — to the transaction, as commits of `input`'s
    /// group: they are committed if and only if the transaction is.
    pub async fn send_offsets(
        &self,
        input: &GroupMetadata,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), TransactionError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| {
                    TransactionError::classify("send_offsets_to_transaction", &e, &self.inner)
                })?;
        }
        let metadata = std::sync::Arc::clone(&input.0);
        self.blocking("send_offsets_to_transaction", move |p, timeout| {
            p.send_offsets_to_transaction(&tpl, &metadata, timeout)
        })
        .await
    }

    /// Commits the current transaction (flushing its records first).
    pub async fn commit(&self) -> Result<(), TransactionError> {
        self.blocking("commit_transaction", |p, timeout| {
            flush_promptly(p, timeout)?;
            p.commit_transaction(timeout)
        })
        .await
    }

    /// Commits the current transaction, making the call again while it
    /// fails retriably, `attempts` calls at most. The last error is
    /// returned as it came: the caller aborts (unless it is fatal).
    pub async fn commit_retrying(&self, attempts: u32) -> Result<(), TransactionError> {
        let mut attempt = 1;
        loop {
            match self.commit().await {
                Err(error)
                    if error.kind == TransactionErrorKind::Retriable && attempt < attempts =>
                {
                    tracing::warn!(component = self.client.as_str(), %error, attempt, "commit failed retriably; committing again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Aborts the current transaction: none of its records or offsets
    /// become visible to `read_committed` readers.
    pub async fn abort(&self) -> Result<(), TransactionError> {
        self.blocking("abort_transaction", |p, timeout| {
            p.abort_transaction(timeout)
        })
        .await
    }

    /// The fatal error that ended this producer, if one did, as text.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal().map(|e| e.message)
    }

    /// The fatal error that ended this producer, classified (fenced or
    /// not), if one did: for failures seen outside a transactional call,
    /// such as a record refused because the producer was fenced.
    pub fn fatal(&self) -> Option<TransactionError> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| TransactionError {
                operation: "produce",
                kind: TransactionErrorKind::Fatal,
                fenced: is_fencing(Some(code)),
                message: format!("{code}: {reason}"),
            })
    }

    /// Runs a blocking transactional call off the async threads.
    async fn blocking<F>(&self, operation: &'static str, call: F) -> Result<(), TransactionError>
    where
        F: FnOnce(&FutureProducer<TracingContext>, Duration) -> rdkafka::error::KafkaResult<()>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        let timeout = self.operation_timeout;
        tokio::task::spawn_blocking(move || {
            call(&inner, timeout).map_err(|e| TransactionError::classify(operation, &e, &inner))
        })
        .await
        .unwrap_or_else(|e| {
            Err(TransactionError {
                operation,
                kind: TransactionErrorKind::Fatal,
                fenced: false,
                message: format!("the call did not finish: {e}"),
            })
        })
    }
}

/// Waits until the delivery report of every queued record was served,
/// with librdkafka's own flush (which the producer's polling thread
/// answers at once). rust-rdkafka's `commit_transaction` flushes first
/// too, but between its checks it polls the event queue for up to 100 ms,
/// a queue that the producer's polling thread serves: every commit waited
/// about 100 ms longer than its records took. After this, its flush finds
/// nothing left and the commit is sent at once. A flush that times out
/// fails the commit retriably (the transaction is still open).
fn flush_promptly(
    producer: &FutureProducer<TracingContext>,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client pointer is valid for the life of `producer`, and
    // `rd_kafka_flush` may be called from any thread.
    let flushed =
        unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), timeout_ms) };
    match flushed {
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
        code => Err(RdError::Flush(code.into())),
    }
}

/// The consumer-group identity that offsets sent with a transaction are
/// committed under (from [`crate::CommittedInput::group_metadata`]).
#[derive(Clone)]
pub struct GroupMetadata(pub(crate) std::sync::Arc<ConsumerGroupMetadata>);

/// The offsets of one partition: the log start and the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    pub partition: i32,
    /// The first offset still in the log.
    pub low: i64,
    /// The offset the next record will get.
    pub high: i64,
}

/// Reads back what committed transactions left on a topic: each
/// partition's bounds, then committed records of an offset range, with
/// `isolation.level=read_committed` and outside any group (it never
/// commits). One client serves every read, so a publisher reading its
/// committed tail back after a restart pays for one connection.
pub struct CommittedTail {
    consumer: std::sync::Arc<rdkafka::consumer::BaseConsumer<TracingContext>>,
    topic: String,
    timeout: Duration,
}

impl CommittedTail {
    /// A reader of `topic`; a request the cluster does not answer within
    /// `timeout`, or a range that brings nothing for that long, fails.
    pub fn new(config: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        // The end of a range is often only known from the end of the
        // partition: do not let the broker hold that last fetch.
        let consumer = crate::reader::outside_group_reader(
            config,
            "tail-reader",
            crate::reader::Isolation::ReadCommitted,
            Some(Duration::from_millis(10)),
        )?;
        Ok(Self {
            consumer: std::sync::Arc::new(consumer),
            topic: topic.to_owned(),
            timeout,
        })
    }

    /// Every partition of the topic with its bounds.
    pub async fn partitions(&self) -> Result<Vec<PartitionBounds>, KafkaError> {
        use rdkafka::consumer::Consumer;

        let consumer = std::sync::Arc::clone(&self.consumer);
        let (topic, timeout) = (self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let ids = crate::committed_input::partitions(consumer.client(), &topic, timeout)?;
            ids.into_iter()
                .map(|partition| {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map_err(|e| KafkaError::Admin {
                            operation: "ListOffsets",
                            message: e.to_string(),
                        })?;
                    Ok(PartitionBounds {
                        partition,
                        low,
                        high,
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
    }

    /// The committed records of `partition` with offsets in `from..until`,
    /// in offset order: records of aborted transactions are left out, and
    /// reading stops at the last stable offset if that comes first.
    pub async fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
    ) -> Result<Vec<crate::InboundRecord>, KafkaError> {
        use rdkafka::consumer::Consumer;
        use rdkafka::message::Message;

        let consumer = std::sync::Arc::clone(&self.consumer);
        let (topic, timeout) = (self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            if from >= until {
                return Ok(records);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(from))
                .map_err(|e| KafkaError::Consume(e.to_string()))?;
            consumer
                .assign(&tpl)
                .map_err(|e| KafkaError::Consume(format!("assign: {e}")))?;
            let mut deadline = std::time::Instant::now() + timeout;
            loop {
                if std::time::Instant::now() > deadline {
                    return Err(KafkaError::Consume(format!(
                        "timed out reading {topic}/{partition} from {from}: nothing for {timeout:?}"
                    )));
                }
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) if m.partition() != partition => {}
                    Some(Ok(m)) if m.offset() >= until => return Ok(records),
                    Some(Ok(m)) => {
                        deadline = std::time::Instant::now() + timeout;
                        let last = m.offset() + 1 >= until;
                        records.push(crate::InboundRecord::from_message(&m));
                        if last {
                            return Ok(records);
                        }
                    }
                    Some(Err(RdError::PartitionEOF(p))) if p == partition => return Ok(records),
                    Some(Err(RdError::PartitionEOF(_))) => {}
                    Some(Err(e)) if crate::error::lost_brokers(&e) => {}
                    Some(Err(e)) => return Err(KafkaError::Consume(e.to_string())),
                    None => {}
                }
            }
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
    }
}
