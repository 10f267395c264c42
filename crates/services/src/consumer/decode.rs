//! Decoding: a record's value into the event it carries, with the failure
//! classified (a registry outage may pass; bytes that are not an event
//! never will).

use async_trait::async_trait;
use taskstream_domain::{headers, EventEnvelope};
use taskstream_kafka::InboundRecord;

use super::{ConsumedEvent, HandleError};
use crate::EventDecoder;

/// Reads a record into the event a group's handler takes: task events
/// ([`EventDecoder`]), or whatever a group reads besides them. A
/// permanent failure dead-letters the record; a retriable one holds its
/// partition.
#[async_trait]
pub trait RecordDecoder: Send + Sync + 'static {
    type Event: ConsumedEvent;
    async fn decode(&self, record: &InboundRecord) -> Result<Self::Event, HandleError>;
}

#[async_trait]
impl RecordDecoder for EventDecoder {
    type Event = EventEnvelope;

    async fn decode(&self, record: &InboundRecord) -> Result<EventEnvelope, HandleError> {
        Ok(EventDecoder::decode(self, value(record)?).await?)
    }
}

/// `record`'s value; a record without one is no event.
pub fn value(record: &InboundRecord) -> Result<&[u8], HandleError> {
    record
        .payload
        .as_deref()
        .ok_or_else(|| HandleError::permanent("record has no value"))
}

/// The event type a record's `type` header names, for metrics and dead
/// letters of records that do not decode.
pub(crate) fn declared_type(record: &InboundRecord) -> &str {
    record.header_str(headers::EVENT_TYPE).unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use taskstream_domain::{Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskTitle};

    use super::*;

    fn record(payload: Option<Vec<u8>>, headers: Vec<(String, Vec<u8>)>) -> InboundRecord {
        InboundRecord {
            topic: "task-events".into(),
            partition: 1,
            offset: 42,
            key: None,
            payload,
            headers,
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn a_json_event_decodes() {
        let new = NewTask {
            title: TaskTitle::parse("decode me").unwrap(),
            description: None,
            priority: Priority::Medium,
            due_at: None,
            assignee: None,
        };
        let event = Task::create(new, taskstream_domain::now(), Cause::default()).event;
        let bytes = JsonCodec.encode(&event).unwrap();
        let decoded =
            RecordDecoder::decode(&EventDecoder::new(None), &record(Some(bytes), Vec::new()))
                .await
                .unwrap();
        assert_eq!(decoded.id, event.id);
    }

    #[tokio::test]
    async fn a_record_without_a_value_or_with_garbage_is_permanently_undecodable() {
        let decoder = EventDecoder::new(None);
        let empty = RecordDecoder::decode(&decoder, &record(None, Vec::new()))
            .await
            .unwrap_err();
        assert!(!empty.is_retriable());
        assert_eq!(empty.to_string(), "record has no value");
        let garbage = RecordDecoder::decode(&decoder, &record(Some(b"{oops".to_vec()), Vec::new()))
            .await
            .unwrap_err();
        assert!(!garbage.is_retriable());
    }

    #[tokio::test]
    async fn an_avro_record_without_a_registry_says_so() {
        let bytes = vec![taskstream_avro::MAGIC_BYTE, 0, 0, 0, 1, 2];
        let error =
            RecordDecoder::decode(&EventDecoder::new(None), &record(Some(bytes), Vec::new()))
                .await
                .unwrap_err();
        assert!(!error.is_retriable());
        assert!(error.to_string().contains("--schema-registry"), "{error}");
    }

    #[test]
    fn the_declared_type_comes_from_the_type_header() {
        let typed = record(None, vec![("type".into(), b"task.completed".to_vec())]);
        assert_eq!(declared_type(&typed), "task.completed");
        assert_eq!(declared_type(&record(None, Vec::new())), "unknown");
    }
}
