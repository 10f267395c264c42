//! The one seam through which events become bytes and back.

use crate::EventEnvelope;

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode event: {0}")]
    Encode(String),
    #[error("cannot decode event: {0}")]
    Decode(String),
}

/// Turns envelopes into record values and back, without I/O. The services'
/// `EventEncoding` (the seam the API, the relay and consumers share) uses
/// [`JsonCodec`] for JSON; Avro, which needs a schema registry, lives there.
pub trait EventCodec: Send + Sync + 'static {
    /// The MIME type written to the [`crate::headers::CONTENT_TYPE`] record header.
    fn content_type(&self) -> &'static str;
    /// Encodes one envelope as a record value.
    fn encode(&self, event: &EventEnvelope) -> Result<Vec<u8>, CodecError>;
    /// Decodes a record value; fails on bytes this codec did not produce.
    fn decode(&self, bytes: &[u8]) -> Result<EventEnvelope, CodecError>;
}

/// Envelopes as UTF-8 JSON objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl EventCodec for JsonCodec {
    fn content_type(&self) -> &'static str {
        crate::headers::JSON_CONTENT_TYPE
    }

    fn encode(&self, event: &EventEnvelope) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(event).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<EventEnvelope, CodecError> {
        let event: EventEnvelope =
            serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
        if event.schema_version > crate::EVENT_SCHEMA_VERSION {
            return Err(CodecError::Decode(format!(
                "event {} has schema version {}; this build reads up to {}",
                event.id,
                event.schema_version,
                crate::EVENT_SCHEMA_VERSION
            )));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewTask, Priority, Task, TaskTitle};

    #[test]
    fn json_round_trips_every_event_type() {
        let now = chrono::Utc::now();
        let new = NewTask {
            title: TaskTitle::parse("write").unwrap(),
            description: None,
            priority: Priority::High,
            due_at: Some(now),
            assignee: None,
        };
        let created = Task::create(
            new,
            now,
            crate::Cause {
                correlation_id: Some("c"),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            },
        );
        let completed = created.task.complete(now, crate::Cause::default()).unwrap();
        let deleted = completed.task.delete(now, crate::Cause::default()).unwrap();
        for event in [created.event, completed.event, deleted.event] {
            let bytes = JsonCodec.encode(&event).unwrap();
            assert_eq!(JsonCodec.decode(&bytes).unwrap(), event);
        }
    }

    #[test]
    fn json_wire_names_are_stable() {
        let new = NewTask {
            title: TaskTitle::parse("t").unwrap(),
            description: None,
            priority: Priority::Low,
            due_at: None,
            assignee: None,
        };
        let event = Task::create(new, chrono::Utc::now(), crate::Cause::default()).event;
        let value: serde_json::Value =
            serde_json::from_slice(&JsonCodec.encode(&event).unwrap()).unwrap();
        assert_eq!(value["type"], "task.created");
        assert_eq!(value["data"]["task"]["priority"], "low");
        assert_eq!(value["data"]["task"]["status"], "open");
        assert_eq!(value["schema_version"], 1);
    }

    #[test]
    fn a_newer_schema_version_is_a_decode_error() {
        let new = NewTask {
            title: TaskTitle::parse("t").unwrap(),
            description: None,
            priority: Priority::Low,
            due_at: None,
            assignee: None,
        };
        let mut event = Task::create(new, chrono::Utc::now(), crate::Cause::default()).event;
        event.schema_version = crate::EVENT_SCHEMA_VERSION + 1;
        let bytes = JsonCodec.encode(&event).unwrap();
        let err = JsonCodec.decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("schema version"), "{err}");
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            JsonCodec.decode(b"\x00\x01garbage"),
            Err(CodecError::Decode(_))
        ));
    }
}
