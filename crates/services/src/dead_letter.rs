//! Dead letters: records a consumer group gives up on, parked on a topic of
//! their own so the partition can move on and nothing is lost.
//!
//! Convention: the dead-letter topic of `T` is `T.dlq`, shared by every
//! group consuming `T` (the `dlq.consumer.group` header says whose it is).
//! The record keeps the original key, value and headers, and adds the
//! headers named in [`headers`].

use std::time::SystemTime;

use taskstream_kafka::{EventProducer, InboundRecord, KafkaError, OutboundRecord};

/// Header names added to dead letters.
pub mod headers {
    pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
    pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
    pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
    pub const ORIGINAL_KEY: &str = "dlq.original.key";
    pub const CONSUMER_GROUP: &str = "dlq.consumer.group";
    /// One of [`super::ErrorClass`]'s names.
    pub const ERROR_CLASS: &str = "dlq.error.class";
    pub const ERROR_MESSAGE: &str = "dlq.error.message";
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// RFC 3339.
    pub const FAILED_AT: &str = "dlq.failed_at";
    /// Set on records re-driven by `taskstream dlq replay`: the dead letter's `partition:offset`.
    pub const REPLAYED_FROM: &str = "dlq.replayed_from";
    /// Every dead-letter header starts with this.
    pub const PREFIX: &str = "dlq.";
}

/// The dead-letter topic for `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The bytes are not an event this build can read.
    Undecodable,
    /// The handler said retrying cannot help.
    Permanent,
    /// A transient failure outlasted the retry policy.
    RetriesExhausted,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Permanent => "permanent",
            Self::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// Publishes dead letters (idempotent producer, `acks=all`).
#[derive(Clone)]
pub struct DeadLetterPublisher {
    producer: EventProducer,
}

impl DeadLetterPublisher {
    pub fn new(producer: EventProducer) -> Self {
        Self { producer }
    }

    /// Parks `record` on its dead-letter topic and waits for the broker's
    /// acknowledgement; only then may the consumer move past it.
    pub async fn publish(
        &self,
        record: &InboundRecord,
        group: &str,
        class: ErrorClass,
        error: &str,
        attempts: u32,
    ) -> Result<(), KafkaError> {
        let topic = dead_letter_topic(&record.topic);
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let attempts = attempts.to_string();
        let failed_at = chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339();
        let key = record.key.as_deref().unwrap_or_default();
        let mut headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(headers::PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.extend([
            (headers::ORIGINAL_TOPIC, record.topic.as_bytes()),
            (headers::ORIGINAL_PARTITION, partition.as_bytes()),
            (headers::ORIGINAL_OFFSET, offset.as_bytes()),
            (headers::ORIGINAL_KEY, key),
            (headers::CONSUMER_GROUP, group.as_bytes()),
            (headers::ERROR_CLASS, class.as_str().as_bytes()),
            (headers::ERROR_MESSAGE, error.as_bytes()),
            (headers::ATTEMPTS, attempts.as_bytes()),
            (headers::FAILED_AT, failed_at.as_bytes()),
        ]);
        let delivery = self
            .producer
            .enqueue(OutboundRecord {
                topic: &topic,
                key,
                payload: record.payload.as_deref().unwrap_or_default(),
                headers: &headers,
            })
            .await?;
        delivery.await.map(|_| ())
    }
}
