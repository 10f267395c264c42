//! How events are written to Kafka (by the relay) and read back (by
//! consumers): JSON as stored in the outbox, or Avro in the Confluent wire
//! format with schema ids from a Schema Registry.

use std::sync::Arc;

use taskstream_avro::{AvroDecoder, AvroEncoder, RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE};
use taskstream_domain::{EventCodec, EventEnvelope, JsonCodec};
use taskstream_store::OutboxMessage;

/// Why an event could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EncodingError {
    pub message: String,
    /// The Schema Registry was unreachable: the same call may work later.
    pub retriable: bool,
}

impl EncodingError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: false,
        }
    }
}

impl From<taskstream_avro::AvroError> for EncodingError {
    fn from(e: taskstream_avro::AvroError) -> Self {
        Self {
            message: e.message,
            retriable: e.retriable,
        }
    }
}

/// The relay's record format.
pub enum EventEncoding {
    /// The outbox payload as stored (JSON).
    Json,
    /// Avro, framed with the schema id (registered on first use per event type).
    Avro(AvroEncoder),
}

impl EventEncoding {
    /// Avro against the registry at `registry`, for `topic`.
    pub fn avro(registry: Arc<RegistryClient>, topic: &str) -> Self {
        Self::Avro(AvroEncoder::new(registry, topic))
    }

    /// The record value and its `content-type` for one outbox message.
    pub async fn encode(
        &self,
        message: &OutboxMessage,
    ) -> Result<(Vec<u8>, String), EncodingError> {
        match self {
            Self::Json => Ok((message.payload.clone(), message.content_type.clone())),
            Self::Avro(encoder) => {
                let event = JsonCodec.decode(&message.payload).map_err(|e| {
                    EncodingError::permanent(format!("outbox row {}: {e}", message.id))
                })?;
                Ok((encoder.encode(&event).await?, AVRO_CONTENT_TYPE.to_owned()))
            }
        }
    }
}

/// Reads both formats: a record starting with the wire format's magic byte
/// is Avro, anything else is taken for JSON.
pub struct EventDecoder {
    avro: Option<AvroDecoder>,
}

impl EventDecoder {
    /// `registry` resolves Avro schema ids; without one, Avro records are
    /// refused (and dead-lettered) with a message saying so.
    pub fn new(registry: Option<Arc<RegistryClient>>) -> Self {
        Self {
            avro: registry.map(AvroDecoder::new),
        }
    }

    /// The event in a record value.
    pub async fn decode(&self, bytes: &[u8]) -> Result<EventEnvelope, EncodingError> {
        if bytes.first() == Some(&MAGIC_BYTE) {
            return match &self.avro {
                Some(avro) => Ok(avro.decode(bytes).await?),
                None => Err(EncodingError::permanent(
                    "the record is Avro, but no schema registry is configured (--schema-registry)",
                )),
            };
        }
        JsonCodec
            .decode(bytes)
            .map_err(|e| EncodingError::permanent(e.to_string()))
    }
}
