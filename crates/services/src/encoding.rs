//! The one seam between events and Kafka records, used by every side: the
//! Task API encodes each event into its outbox row, the relay turns a row
//! into the record as it goes on the topic (key, value, headers), and
//! consumers read a record value back into an event.
//!
//! The outbox row holds the record exactly as it is published: the value
//! bytes in the deployment's format (JSON, or Avro in the Confluent wire
//! format with its schema id), the key (`aggregateid`) and the columns the
//! headers come from (`id`, `type`, `content_type`, `traceparent`). So the
//! relay publishes the stored bytes untouched, and Debezium's outbox event
//! router, reading the same columns, publishes the same record.
//!
//! With Avro, [`EventEncoding::register_schemas`] registers every event
//! type's schema when the API starts, and the ids are cached: a write
//! encodes with them and never calls the registry. Until registration
//! succeeded (the registry was down at start-up), a write fails with a
//! retriable [`EncodingError`] and stores nothing; the API answers 503.
//!
//! Rows written by earlier versions hold JSON whatever the format; a relay
//! publishing Avro converts such a row when it publishes it (the only case
//! where the relay encodes). [`EventDecoder::decode`] is the only place
//! that reads a record value back. Header names come from
//! [`taskstream_domain::headers`].

use std::sync::Arc;
use std::time::Duration;

use taskstream_avro::{
    AvroDecoder, AvroEncoder, AvroError, RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE,
};
use taskstream_domain::{headers, CodecError, EventCodec, EventEnvelope, JsonCodec};
use taskstream_kafka::OutboundRecord;
use taskstream_store::OutboxMessage;
use uuid::Uuid;

use crate::{Backoff, Shutdown};

/// Why an event could not be encoded or decoded.
///
/// [`EncodingError::is_retriable`] is the one classification: only a
/// registry that is (or was) unreachable may pass; everything else repeats
/// on every attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// Avro encoding or decoding failed.
    #[error(transparent)]
    Avro(#[from] AvroError),
    /// A record value is neither Avro nor a JSON task event.
    #[error("the record value is not a task event")]
    Json(#[source] CodecError),
    /// A record value on the saga topic is not a saga event.
    #[error("the record value is not a saga event")]
    Saga(#[source] serde_json::Error),
    /// An event could not be written as JSON.
    #[error("cannot write the event as JSON")]
    JsonEncode(#[source] CodecError),
    /// A stored outbox row (written as JSON) does not read back as an event.
    #[error("outbox row {id} holds no readable event")]
    StoredRow {
        id: Uuid,
        #[source]
        source: CodecError,
    },
    /// The record is Avro, but this process has no registry to read it with.
    #[error("the record is Avro, but no schema registry is configured (--schema-registry)")]
    NoRegistry,
}

impl EncodingError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Avro(e) => e.is_retriable(),
            _ => false,
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

/// The deployment's event format; cheap to clone, so the API and the
/// relay of one process share the registered schema ids.
#[derive(Clone)]
pub enum EventEncoding {
    /// UTF-8 JSON ([`JsonCodec`]).
    Json,
    /// Avro, framed with the schema id registered for the event's type.
    Avro(Arc<AvroEncoder>),
}

impl EventEncoding {
    /// Avro against the registry at `registry`, for `topic`. Call
    /// [`EventEncoding::register_schemas`] before encoding events.
    pub fn avro(registry: Arc<RegistryClient>, topic: &str) -> Self {
        Self::Avro(Arc::new(AvroEncoder::new(registry, topic)))
    }

    /// Avro with schema ids from `registry` when there is one, else JSON.
    pub fn for_registry(registry: Option<&Arc<RegistryClient>>, topic: &str) -> Self {
        match registry {
            Some(client) => Self::avro(Arc::clone(client), topic),
            None => Self::Json,
        }
    }

    /// The `content-type` header of the records this format writes.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json => JsonCodec.content_type(),
            Self::Avro(_) => AVRO_CONTENT_TYPE,
        }
    }

    /// Registers every event type's schema (Avro; nothing to do for JSON)
    /// and caches the ids, so that [`EventEncoding::encode`] never calls the
    /// registry. Retriable while the registry is unreachable.
    pub async fn register_schemas(&self) -> Result<(), EncodingError> {
        match self {
            Self::Json => Ok(()),
            Self::Avro(encoder) => Ok(encoder.register_all().await?),
        }
    }

    /// Whether [`EventEncoding::encode`] can encode every event type.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Json => true,
            Self::Avro(encoder) => encoder.is_registered(),
        }
    }

    /// Registers the schemas, trying again with backoff (up to `max_pause`
    /// apart) until it succeeds or `shutdown` comes. For a registry that was
    /// down when the API started: writes succeed again once this returns.
    pub async fn register_schemas_until_done(&self, mut shutdown: Shutdown, max_pause: Duration) {
        let mut backoff = Backoff::new(Duration::from_millis(100), max_pause);
        loop {
            match self.register_schemas().await {
                Ok(()) => {
                    if let Self::Avro(encoder) = self {
                        tracing::info!(
                            registry = encoder.registry().url(),
                            "event schemas registered; task writes are accepted"
                        );
                    }
                    return;
                }
                Err(error) if error.is_retriable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = &error as &dyn std::error::Error, retry_in_ms = delay.as_millis() as u64,
                        "cannot register the event schemas; task writes are refused (503) until they are");
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => {
                    tracing::error!(error = &error as &dyn std::error::Error,
                        "the schema registry refused the event schemas; task writes are refused until it accepts them and taskstream restarts");
                    return;
                }
            }
        }
    }

    /// The record value for `event`, as the outbox stores it. Never calls
    /// the registry: with Avro, fails (retriably) while the schemas are not
    /// registered yet.
    pub fn encode(&self, event: &EventEnvelope) -> Result<Vec<u8>, EncodingError> {
        match self {
            Self::Json => JsonCodec.encode(event).map_err(EncodingError::JsonEncode),
            Self::Avro(encoder) => Ok(encoder.encode_registered(event)?),
        }
    }

    /// The outbox row recording `event` of aggregate `aggregate_id`, to be
    /// published to `topic`: the record's value, key and header columns.
    pub fn outbox_message(
        &self,
        event: &EventEnvelope,
        aggregate_type: &str,
        aggregate_id: String,
        topic: &str,
        traceparent: Option<String>,
    ) -> Result<OutboxMessage, EncodingError> {
        Ok(OutboxMessage {
            id: event.id.as_uuid(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            event_type: event.event_type.to_string(),
            topic: topic.to_owned(),
            payload: self.encode(event)?,
            content_type: self.content_type().to_owned(),
            traceparent,
            created_at: event.time,
        })
    }

    /// The record for one outbox row: its stored bytes and columns, as they
    /// are. Only a JSON row (written before the outbox stored Avro) meets
    /// an Avro relay: it is converted, registering its schema if needed.
    /// Fails (retriably while the registry is unreachable) when that row
    /// cannot be converted; it then stays pending.
    pub async fn record(&self, message: &OutboxMessage) -> Result<EventRecord, EncodingError> {
        // Only task events were ever stored as JSON by earlier versions;
        // other rows (the agent's suggestions) are JSON by design.
        let legacy_json =
            message.content_type == headers::JSON_CONTENT_TYPE && message.aggregate_type == "task";
        let (value, content_type) = match self {
            Self::Avro(encoder) if legacy_json => {
                let event = JsonCodec.decode(&message.payload).map_err(|source| {
                    EncodingError::StoredRow {
                        id: message.id,
                        source,
                    }
                })?;
                (encoder.encode(&event).await?, AVRO_CONTENT_TYPE)
            }
            _ => (message.payload.clone(), message.content_type.as_str()),
        };
        let mut headers = vec![
            (headers::EVENT_ID, message.id.to_string().into_bytes()),
            (headers::EVENT_TYPE, message.event_type.clone().into_bytes()),
            (headers::CONTENT_TYPE, content_type.as_bytes().to_vec()),
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
                None => Err(EncodingError::NoRegistry),
            };
        }
        JsonCodec.decode(bytes).map_err(EncodingError::Json)
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
        assert!(!err.is_retriable(), "{err}");
        assert!(err.to_string().contains("outbox row"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_retriable_avro_encoding_error() {
        let encoding = EventEncoding::avro(
            Arc::new(RegistryClient::new("http://127.0.0.1:1")),
            "task-events",
        );
        let err = encoding.record(&row(&change(), None)).await.unwrap_err();
        assert!(err.is_retriable(), "{err}");
    }

    #[tokio::test]
    async fn avro_bytes_without_a_registry_are_a_permanent_decode_error() {
        let err = EventDecoder::new(None)
            .decode(&[MAGIC_BYTE, 0, 0, 0, 1, 2])
            .await
            .unwrap_err();
        assert!(!err.is_retriable());
        assert!(err.to_string().contains("no schema registry"), "{err}");
    }

    fn offline_avro() -> EventEncoding {
        // Nothing listens on port 1: these calls must not need the registry.
        EventEncoding::avro(
            Arc::new(RegistryClient::new("http://127.0.0.1:1")),
            "task-events",
        )
    }

    #[tokio::test]
    async fn an_avro_row_is_published_as_stored_without_calling_the_registry() {
        let mut stored = row(&change(), Some(TRACE));
        stored.payload = vec![MAGIC_BYTE, 0, 0, 0, 7, 2, 4, 6];
        stored.content_type = AVRO_CONTENT_TYPE.into();
        let record = offline_avro().record(&stored).await.unwrap();
        assert_eq!(record.value, stored.payload);
        assert_eq!(
            record.header(headers::CONTENT_TYPE),
            Some(AVRO_CONTENT_TYPE.as_bytes())
        );
        // A JSON relay publishes it untouched too.
        let record = EventEncoding::Json.record(&stored).await.unwrap();
        assert_eq!(record.value, stored.payload);
    }

    #[test]
    fn an_avro_write_before_the_schemas_are_registered_is_refused_retriably() {
        let encoding = offline_avro();
        assert!(!encoding.is_ready());
        let change = change();
        let err = encoding
            .outbox_message(&change.event, "task", change.task.id.to_string(), "t", None)
            .unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert!(err.to_string().contains("not registered"), "{err}");
    }

    #[test]
    fn a_json_outbox_row_holds_the_record_value_key_and_header_columns() {
        let change = change();
        let message = EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                "task-events",
                Some(TRACE.into()),
            )
            .unwrap();
        assert_eq!(message, row(&change, Some(TRACE)));
    }
}
