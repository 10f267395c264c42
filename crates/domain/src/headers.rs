//! The names of the Kafka record headers every task event travels with.
//!
//! The relay writes them, consumers and tools read them; both sides use these
//! constants so the names live in one place. They follow what Debezium's
//! outbox event router writes (`id`), plus the event type, the value's MIME
//! type and the W3C trace context, so a consumer can route, pick a decoder
//! and join the trace without decoding the value.

/// The event id (a UUID, as text); consumers de-duplicate by it.
pub const EVENT_ID: &str = "id";

/// The event type (`task.created`, ...), see [`crate::EventType::as_str`].
pub const EVENT_TYPE: &str = "type";

/// The MIME type of the record value ([`JSON_CONTENT_TYPE`], or Avro's).
pub const CONTENT_TYPE: &str = "content-type";

/// The W3C `traceparent` of the request that caused the event.
pub const TRACEPARENT: &str = "traceparent";

/// The `content-type` of events encoded as JSON.
pub const JSON_CONTENT_TYPE: &str = "application/json";
