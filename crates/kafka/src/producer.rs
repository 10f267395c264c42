//! The idempotent producer the outbox relay publishes with.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError};

/// Producer tuning. Durability settings (`acks=all`, idempotence) are fixed:
/// they are what the relay's guarantees rest on.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// How long librdkafka may wait to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// How long a record may wait for acknowledgement, retries included,
    /// before its delivery fails (`message.timeout.ms`); zero waits forever.
    pub message_timeout: Duration,
}

impl ProducerSettings {
    /// For a producer that must never give up on one record while a later
    /// one of the same partition succeeds: librdkafka's idempotence keeps a
    /// partition in order only while no record fails, so records wait (and
    /// are retried) as long as the broker is away.
    pub fn ordered() -> Self {
        Self {
            message_timeout: Duration::ZERO,
            ..Self::default()
        }
    }
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(2),
            message_timeout: Duration::from_secs(15),
        }
    }
}

/// One record to publish. `headers` values are raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct OutboundRecord<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Where the broker stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent (`enable.idempotence=true`, `acks=all`) producer: retries
/// inside librdkafka never duplicate or reorder records of a partition.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer<TracingContext>,
}

/// Resolves when the broker acknowledged (or finally refused) one record.
pub struct DeliveryFuture {
    topic: String,
    inner: rdkafka::producer::DeliveryFuture,
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, KafkaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let topic = self.topic.clone();
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|result| match result {
                Ok(Ok(d)) => Ok(Delivery {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((error, _message))) => Err(delivery_error(&topic, &error)),
                Err(_canceled) => Err(KafkaError::Delivery {
                    topic,
                    message: "the producer was shut down before the broker answered".into(),
                    retriable: true,
                }),
            })
    }
}

fn delivery_error(topic: &str, error: &RdError) -> KafkaError {
    // A fatal error (e.g. a fenced producer) leaves this producer unusable;
    // everything else, including timeouts, is worth another attempt.
    let retriable = !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal));
    KafkaError::Delivery {
        topic: topic.to_owned(),
        message: error.to_string(),
        retriable,
    }
}

impl EventProducer {
    /// Creates a producer; `client` names it in logs.
    pub fn new(
        config: &KafkaConfig,
        client: &str,
        settings: &ProducerSettings,
    ) -> Result<Self, KafkaError> {
        let mut rd = config.client_config();
        // ANCHOR: producer_settings
        rd.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .set("client.id", format!("taskstream-{client}"));
        // ANCHOR_END: producer_settings
        let inner = rd
            .create_with_context(TracingContext::of(client, config))
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Hands a record to librdkafka's queue and returns a future for its
    /// delivery report. Records enqueued one after another keep their order
    /// within a partition. Waits while the local queue is full.
    pub async fn enqueue(&self, record: OutboundRecord<'_>) -> Result<DeliveryFuture, KafkaError> {
        enqueue(&self.inner, record).await
    }

    /// Waits up to `timeout` for every queued record's delivery report.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|e| KafkaError::Consume(e.to_string()))?
            .map_err(|e| KafkaError::Delivery {
                topic: String::new(),
                message: format!("flush: {e}"),
                retriable: true,
            })
    }

    /// The fatal error that ended this producer, if one did. After a fatal
    /// error (with an idempotent producer: a broken sequence the broker
    /// cannot reconcile; with a transactional one: fencing) every record
    /// fails; only a new producer can publish again.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Raises a fatal error on this producer, as librdkafka would on a
    /// broken idempotence sequence; for fault-injection tests.
    pub fn inject_fatal_error(&self, reason: &str) {
        let reason = std::ffi::CString::new(reason.replace('\0', " ")).expect("no NUL left");
        // SAFETY: the client pointer is valid for the life of `self.inner`;
        // librdkafka copies the reason string.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                self.inner.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Asks the cluster for metadata; fails if no broker answers in `timeout`.
    pub async fn check_connection(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
        .map_err(|e| KafkaError::Admin {
            operation: "Metadata",
            message: e.to_string(),
        })
    }
}

/// Hands `record` to `producer`'s queue (waiting while it is full) and
/// returns the future of its delivery report.
pub(crate) async fn enqueue(
    producer: &FutureProducer<TracingContext>,
    record: OutboundRecord<'_>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in record.headers {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut future_record = FutureRecord::to(record.topic)
        .key(record.key)
        .payload(record.payload)
        .headers(headers);
    loop {
        match producer.send_result(future_record) {
            Ok(inner) => {
                return Ok(DeliveryFuture {
                    topic: record.topic.to_owned(),
                    inner,
                })
            }
            Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                future_record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(delivery_error(record.topic, &error)),
        }
    }
}
