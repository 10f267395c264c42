//! Task events as framed Avro records.

use std::sync::Arc;

use apache_avro::{from_avro_datum, to_avro_datum};
use taskstream_domain::EventEnvelope;

use crate::{frame, from_avro, subject, to_avro, unframe, EventSchemas, RegistryClient};

/// The `content-type` header of Avro records.
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.taskstream.avro";

/// Why an event could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AvroError {
    pub message: String,
    /// The registry was unavailable: the same call may work later.
    pub retriable: bool,
}

impl AvroError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: false,
        }
    }
}

impl From<crate::RegistryError> for AvroError {
    fn from(e: crate::RegistryError) -> Self {
        Self {
            retriable: e.is_retriable(),
            message: e.to_string(),
        }
    }
}

/// Writes events for one topic: registers each event type's schema once
/// (then uses the cached id) and frames the Avro body with it.
pub struct AvroEncoder {
    registry: Arc<RegistryClient>,
    schemas: &'static EventSchemas,
    topic: String,
}

impl AvroEncoder {
    pub fn new(registry: Arc<RegistryClient>, topic: impl Into<String>) -> Self {
        Self {
            registry,
            schemas: EventSchemas::embedded(),
            topic: topic.into(),
        }
    }

    /// The framed Avro record for `event`.
    pub async fn encode(&self, event: &EventEnvelope) -> Result<Vec<u8>, AvroError> {
        let schema = self.schemas.for_type(event.event_type);
        let id = self
            .registry
            .register(&subject(&self.topic, &schema.record_name), &schema.text)
            .await?;
        let value = to_avro(event, &schema.schema).map_err(AvroError::permanent)?;
        let body = to_avro_datum(&schema.schema, value)
            .map_err(|e| AvroError::permanent(e.to_string()))?;
        Ok(frame(id, &body))
    }
}

/// Reads framed Avro records written with any registered version of our
/// event schemas, resolving them to the versions this build knows.
pub struct AvroDecoder {
    registry: Arc<RegistryClient>,
    schemas: &'static EventSchemas,
}

impl AvroDecoder {
    pub fn new(registry: Arc<RegistryClient>) -> Self {
        Self {
            registry,
            schemas: EventSchemas::embedded(),
        }
    }

    /// The event in a framed record.
    pub async fn decode(&self, bytes: &[u8]) -> Result<EventEnvelope, AvroError> {
        let (id, mut body) = unframe(bytes).map_err(|e| AvroError::permanent(e.to_string()))?;
        let writer = self.registry.schema(id).await?;
        let record = writer
            .name()
            .map(|n| n.fullname(None))
            .ok_or_else(|| AvroError::permanent(format!("schema {id} is not a named record")))?;
        let reader = self.schemas.by_record_name(&record).ok_or_else(|| {
            AvroError::permanent(format!(
                "schema {id} is {record}, which is no task event this build knows"
            ))
        })?;
        let value = from_avro_datum(&writer, &mut body, Some(&reader.schema)).map_err(|e| {
            AvroError::permanent(format!("cannot read {record} (schema {id}): {e}"))
        })?;
        from_avro(value).map_err(|e| AvroError::permanent(format!("{record} (schema {id}): {e}")))
    }
}
