//! Task events as framed Avro records.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::{from_avro_datum, to_avro_datum};
use taskstream_domain::{EventEnvelope, EventType};

use crate::{frame, from_avro, subject, to_avro, unframe, EventSchemas, RegistryClient};
use crate::{RegistryError, WireError};

/// The `content-type` header of Avro records.
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.taskstream.avro";

/// Why an event could not be encoded or decoded as Avro.
///
/// [`AvroError::is_retriable`] is the one classification callers act on:
/// only an unreachable registry, or a schema not registered yet because it
/// was, may pass; everything else repeats on every attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AvroError {
    /// A registry call failed (registering a schema, or fetching one by id).
    #[error("schema registry call failed")]
    Registry(#[source] RegistryError),
    /// The schema of this event type has not been registered yet (see
    /// [`AvroEncoder::register_all`]), so the event cannot be framed
    /// without calling the registry.
    #[error("the {0} schema is not registered yet")]
    NotRegistered(EventType),
    /// The event does not fit its schema.
    #[error("cannot write {event_type} as Avro")]
    Encode {
        event_type: EventType,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bytes are not in the Confluent wire format.
    #[error("not a framed Avro record")]
    Wire(#[source] WireError),
    /// The writer schema is not one of our event records.
    #[error("schema {id} is {record}, which is no task event this build knows")]
    UnknownRecord { id: u32, record: String },
    /// The body does not read with its writer schema, or is no valid event.
    #[error("cannot read {record} (schema {id})")]
    Decode {
        id: u32,
        record: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AvroError {
    /// Whether the same call may succeed later: the registry was
    /// unreachable, or has not been reached yet.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Registry(e) => e.is_retriable(),
            Self::NotRegistered(_) => true,
            _ => false,
        }
    }
}

impl From<RegistryError> for AvroError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

/// A cause that is only a message (from [`to_avro`] and [`from_avro`]).
fn cause(message: String) -> Box<dyn std::error::Error + Send + Sync> {
    message.into()
}

/// Writes events for one topic: registers each event type's schema once
/// and frames the Avro body with its id.
///
/// [`AvroEncoder::register_all`] registers every type at once, ahead of the
/// first event; [`AvroEncoder::encode_registered`] then frames events
/// without ever calling the registry.
pub struct AvroEncoder {
    registry: Arc<RegistryClient>,
    schemas: &'static EventSchemas,
    topic: String,
    /// The registered schema id of each event type.
    ids: RwLock<HashMap<EventType, u32>>,
}

impl AvroEncoder {
    pub fn new(registry: Arc<RegistryClient>, topic: impl Into<String>) -> Self {
        Self {
            registry,
            schemas: EventSchemas::embedded(),
            topic: topic.into(),
            ids: RwLock::new(HashMap::new()),
        }
    }

    /// The registry the schemas are registered with.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Registers (or finds) every event type's schema and keeps the ids.
    pub async fn register_all(&self) -> Result<(), AvroError> {
        for schema in self.schemas.iter() {
            self.register(schema.event_type).await?;
        }
        Ok(())
    }

    /// Whether every event type's schema id is known.
    pub fn is_registered(&self) -> bool {
        self.ids.read().expect("id map poisoned").len() == self.schemas.iter().count()
    }

    async fn register(&self, event_type: EventType) -> Result<u32, AvroError> {
        if let Some(id) = self.registered_id(event_type) {
            return Ok(id);
        }
        let schema = self.schemas.for_type(event_type);
        let id = self
            .registry
            .register(&subject(&self.topic, &schema.record_name), &schema.text)
            .await?;
        self.ids
            .write()
            .expect("id map poisoned")
            .insert(event_type, id);
        Ok(id)
    }

    fn registered_id(&self, event_type: EventType) -> Option<u32> {
        self.ids
            .read()
            .expect("id map poisoned")
            .get(&event_type)
            .copied()
    }

    /// The framed Avro record for `event`, registering its schema first if
    /// needed.
    pub async fn encode(&self, event: &EventEnvelope) -> Result<Vec<u8>, AvroError> {
        let id = self.register(event.event_type).await?;
        self.frame(id, event)
    }

    /// The framed Avro record for `event`, with the schema id registered
    /// earlier; never calls the registry. Fails with
    /// [`AvroError::NotRegistered`] (retriable) before registration.
    pub fn encode_registered(&self, event: &EventEnvelope) -> Result<Vec<u8>, AvroError> {
        let id = self
            .registered_id(event.event_type)
            .ok_or(AvroError::NotRegistered(event.event_type))?;
        self.frame(id, event)
    }

    fn frame(&self, id: u32, event: &EventEnvelope) -> Result<Vec<u8>, AvroError> {
        let schema = self.schemas.for_type(event.event_type);
        let encode = |source| AvroError::Encode {
            event_type: event.event_type,
            source,
        };
        let value = to_avro(event, &schema.schema).map_err(|e| encode(cause(e)))?;
        let body = to_avro_datum(&schema.schema, value).map_err(|e| encode(Box::new(e)))?;
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
        let (id, mut body) = unframe(bytes).map_err(AvroError::Wire)?;
        let writer = self.registry.schema(id).await?;
        let record = writer
            .name()
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| "an unnamed schema".to_owned());
        let reader =
            self.schemas
                .by_record_name(&record)
                .ok_or_else(|| AvroError::UnknownRecord {
                    id,
                    record: record.clone(),
                })?;
        let decode = |source| AvroError::Decode {
            id,
            record: record.clone(),
            source,
        };
        let value = from_avro_datum(&writer, &mut body, Some(&reader.schema))
            .map_err(|e| decode(Box::new(e)))?;
        from_avro(value).map_err(|e| decode(cause(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    fn offline_encoder() -> AvroEncoder {
        // Nothing listens on port 1.
        AvroEncoder::new(
            Arc::new(RegistryClient::new("http://127.0.0.1:1")),
            "task-events",
        )
    }

    fn event() -> EventEnvelope {
        let new = taskstream_domain::NewTask {
            title: taskstream_domain::TaskTitle::parse("write").unwrap(),
            description: None,
            priority: taskstream_domain::Priority::Low,
            due_at: None,
            assignee: None,
        };
        taskstream_domain::Task::create(
            new,
            taskstream_domain::now(),
            taskstream_domain::Cause::default(),
        )
        .event
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retriable_and_keeps_the_registry_error_as_cause() {
        let error = offline_encoder().register_all().await.unwrap_err();
        assert!(error.is_retriable(), "{error}");
        let cause = error.source().expect("a cause");
        assert!(cause.to_string().contains("unavailable"), "{cause}");
    }

    #[test]
    fn an_unregistered_type_is_refused_without_calling_the_registry_and_may_pass() {
        let encoder = offline_encoder();
        assert!(!encoder.is_registered());
        let error = encoder.encode_registered(&event()).unwrap_err();
        assert!(matches!(
            error,
            AvroError::NotRegistered(EventType::TaskCreated)
        ));
        assert!(error.is_retriable());
        assert_eq!(
            error.to_string(),
            "the task.created schema is not registered yet"
        );
    }

    #[tokio::test]
    async fn bytes_outside_the_wire_format_are_permanent_with_the_wire_error_as_cause() {
        let decoder = AvroDecoder::new(Arc::new(RegistryClient::new("http://127.0.0.1:1")));
        let error = decoder.decode(b"{}").await.unwrap_err();
        assert!(!error.is_retriable());
        assert!(matches!(error, AvroError::Wire(WireError::TooShort(2))));
        assert!(error.source().is_some());
    }
}
