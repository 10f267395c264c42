//! The one seam between stored events and Kafka records: an outbox row
//! becomes the record as it goes on the topic (key, value, headers), and a
//! record value becomes an event again.
//!
//! The outbox stores each event as JSON ([`taskstream_domain::JsonCodec`]),
//! the same in every deployment, so that the Task API never waits for a
//! Schema Registry. [`EventEncoding::record`] is the only place that turns a
//! stored row into a record: as stored (JSON), or as Avro in the Confluent
//! wire format with schema ids from a registry. [`EventDecoder::decode`] is
//! the only place that reads a record value back. Header names come from
//! [`taskstream_domain::headers`].

use std::sync::Arc;

use taskstream_avro::{AvroDecoder, AvroEncoder, RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE};
use taskstream_domain::{headers, EventCodec, EventEnvelope, JsonCodec};
use taskstream_kafka::OutboundRecord;
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

/// One event as it goes on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub topic: String,
    /// The task's id: one task's events share a partition, so stay ordered.
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Named by [`taskstream_domain::headers`], in the order they are sent.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl EventRecord {
    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The headers in the form [`OutboundRecord::headers`] takes.
    pub fn borrowed_headers(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .collect()
    }

    /// The record as the producer takes it; `headers` is
    /// [`EventRecord::borrowed_headers`].
    pub fn outbound<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> OutboundRecord<'a> {
        OutboundRecord {
            topic: &self.topic,
            key: &self.key,
            payload: &self.value,
            headers,
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

    /// The record for one outbox row. Fails (retriably while the registry is
    /// unreachable) when the row cannot be encoded; the row then stays pending.
    pub async fn record(&self, message: &OutboxMessage) -> Result<EventRecord, EncodingError> {
        let (value, content_type) = match self {
            Self::Json => (message.payload.clone(), message.content_type.clone()),
            Self::Avro(encoder) => {
                let event = JsonCodec.decode(&message.payload).map_err(|e| {
                    EncodingError::permanent(format!("outbox row {}: {e}", message.id))
                })?;
                (encoder.encode(&event).await?, AVRO_CONTENT_TYPE.to_owned())
            }
        };
        let mut headers = vec![
            (headers::EVENT_ID, message.id.to_string().into_bytes()),
            (headers::EVENT_TYPE, message.event_type.clone().into_bytes()),
            (headers::CONTENT_TYPE, content_type.into_bytes()),
        ];
        if let Some(traceparent) = &message.traceparent {
            headers.push((headers::TRACEPARENT, traceparent.clone().into_bytes()));
        }
        Ok(EventRecord {
            topic: message.topic.clone(),
            key: message.aggregate_id.clone().into_bytes(),
            value,
            headers,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use taskstream_domain::{Cause, NewTask, Priority, Task, TaskChange, TaskTitle};

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn change() -> TaskChange {
        let new = NewTask {
            title: TaskTitle::parse("write").unwrap(),
            description: None,
            priority: Priority::High,
            due_at: None,
            assignee: None,
        };
        Task::create(new, taskstream_domain::now(), Cause::default())
    }

    fn row(change: &TaskChange, traceparent: Option<&str>) -> OutboxMessage {
        OutboxMessage {
            id: change.event.id.as_uuid(),
            aggregate_type: "task".into(),
            aggregate_id: change.task.id.to_string(),
            event_type: change.event.event_type.to_string(),
            topic: "task-events".into(),
            payload: JsonCodec.encode(&change.event).unwrap(),
            content_type: JsonCodec.content_type().into(),
            traceparent: traceparent.map(str::to_owned),
            created_at: change.event.time,
        }
    }

    #[tokio::test]
    async fn a_json_record_carries_the_stored_payload_keyed_by_task_with_every_header() {
        let change = change();
        let row = row(&change, Some(TRACE));
        let record = EventEncoding::Json.record(&row).await.unwrap();
        assert_eq!(record.topic, "task-events");
        assert_eq!(record.key, change.task.id.to_string().into_bytes());
        assert_eq!(record.value, row.payload);
        let names: Vec<&str> = record.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["id", "type", "content-type", "traceparent"]);
        assert_eq!(
            record.header(headers::EVENT_ID),
            Some(change.event.id.to_string().as_bytes())
        );
        assert_eq!(
            record.header(headers::EVENT_TYPE),
            Some(b"task.created".as_slice())
        );
        assert_eq!(
            record.header(headers::CONTENT_TYPE),
            Some(b"application/json".as_slice())
        );
        assert_eq!(record.header(headers::TRACEPARENT), Some(TRACE.as_bytes()));
        let decoded = EventDecoder::new(None).decode(&record.value).await.unwrap();
        assert_eq!(decoded, change.event);
    }

    #[tokio::test]
    async fn a_row_without_a_trace_gets_no_traceparent_header() {
        let record = EventEncoding::Json
            .record(&row(&change(), None))
            .await
            .unwrap();
        assert_eq!(record.header(headers::TRACEPARENT), None);
        assert_eq!(record.headers.len(), 3);
    }

    #[tokio::test]
    async fn the_outbound_form_borrows_the_same_key_value_and_headers() {
        let record = EventEncoding::Json
            .record(&row(&change(), Some(TRACE)))
            .await
            .unwrap();
        let headers = record.borrowed_headers();
        let out = record.outbound(&headers);
        assert_eq!(out.topic, record.topic);
        assert_eq!(out.key, record.key.as_slice());
        assert_eq!(out.payload, record.value.as_slice());
        assert_eq!(out.headers.len(), record.headers.len());
        assert_eq!(out.headers[3], (headers::TRACEPARENT, TRACE.as_bytes()));
    }

    #[tokio::test]
    async fn an_unreadable_stored_payload_is_a_permanent_avro_encoding_error() {
        // Nothing listens on port 1: the registry is never reached, because
        // the stored row is refused first.
        let encoding = EventEncoding::avro(
            Arc::new(RegistryClient::new("http://127.0.0.1:1")),
            "task-events",
        );
        let mut broken = row(&change(), None);
        broken.payload = b"not json".to_vec();
        let err = encoding.record(&broken).await.unwrap_err();
        assert!(!err.retriable, "{err}");
        assert!(err.message.contains("outbox row"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_retriable_avro_encoding_error() {
        let encoding = EventEncoding::avro(
            Arc::new(RegistryClient::new("http://127.0.0.1:1")),
            "task-events",
        );
        let err = encoding.record(&row(&change(), None)).await.unwrap_err();
        assert!(err.retriable, "{err}");
    }

    #[tokio::test]
    async fn avro_bytes_without_a_registry_are_a_permanent_decode_error() {
        let err = EventDecoder::new(None)
            .decode(&[MAGIC_BYTE, 0, 0, 0, 1, 2])
            .await
            .unwrap_err();
        assert!(!err.retriable);
        assert!(err.message.contains("no schema registry"), "{err}");
    }
}
