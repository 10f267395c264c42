//! Runs an [`EventHandler`] over a consumer group with at-least-once delivery.
//!
//! Each record is decoded, handed to the handler, and acknowledged only after
//! the handler returns `Ok` — i.e. after its effect is durable. A handler
//! failure is retried with backoff (the record is not skipped); handlers are
//! idempotent by event id, so redelivery after a crash or rebalance is harmless.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use taskstream_domain::{EventCodec, EventEnvelope};
use taskstream_kafka::{EventConsumer, InboundRecord};

use crate::{Backoff, Shutdown};

/// Why a handler could not finish; the record will be offered again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl From<taskstream_store::StoreError> for HandlerError {
    fn from(e: taskstream_store::StoreError) -> Self {
        Self(format!("store: {e}"))
    }
}

/// Reacts to one event. Must be idempotent by `event.id`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies the event's effect durably; `record` says where it came from.
    async fn handle(
        &self,
        record: &InboundRecord,
        event: &EventEnvelope,
    ) -> Result<(), HandlerError>;
}

/// A consumer-group member driving one handler.
pub struct ConsumerService<H> {
    consumer: EventConsumer,
    codec: Arc<dyn EventCodec>,
    handler: H,
}

impl<H: EventHandler> ConsumerService<H> {
    pub fn new(consumer: EventConsumer, codec: Arc<dyn EventCodec>, handler: H) -> Self {
        Self {
            consumer,
            codec,
            handler,
        }
    }

    /// Consumes until `shutdown`; the record in hand is finished first, then
    /// acknowledged offsets are committed and the group is left.
    pub async fn run(self, mut shutdown: Shutdown) {
        let group = self.consumer.group().to_owned();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let record = tokio::select! {
                _ = shutdown.wait() => break,
                received = self.consumer.recv() => received,
            };
            match record {
                Ok(record) => {
                    backoff.reset();
                    if !self.process(&record, &mut shutdown).await {
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
        match self.consumer.close(Duration::from_secs(5)).await {
            Ok(()) => tracing::info!(group, "consumer stopped; offsets committed"),
            Err(error) => {
                tracing::warn!(group, %error, "consumer stopped; final commit failed (unacknowledged events are redelivered)")
            }
        }
    }

    /// Handles one record until it succeeds; returns `false` if shutdown
    /// interrupted the retries (the record stays unacknowledged).
    async fn process(&self, record: &InboundRecord, shutdown: &mut Shutdown) -> bool {
        let group = self.consumer.group();
        let event = match record
            .payload
            .as_deref()
            .map(|bytes| self.codec.decode(bytes))
        {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                tracing::error!(group, topic = record.topic, partition = record.partition, offset = record.offset, %error, "skipping undecodable record");
                self.ack(record);
                return true;
            }
            None => {
                tracing::error!(
                    group,
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    "skipping record without a value"
                );
                self.ack(record);
                return true;
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self.handler.handle(record, &event).await {
                Ok(()) => {
                    self.ack(record);
                    return true;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group, event_id = %event.id, %error, retry_in_ms = delay.as_millis() as u64, "handler failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn ack(&self, record: &InboundRecord) {
        if let Err(error) = self.consumer.ack(record) {
            // The partition was revoked meanwhile: its new owner redelivers
            // the record and the handler's idempotence absorbs it.
            tracing::debug!(group = self.consumer.group(), %error, "could not store offset");
        }
    }
}
