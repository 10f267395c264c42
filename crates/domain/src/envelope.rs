//! The envelope every event travels in, whatever its encoding.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EventType, TaskEventData};

/// The `source` of events emitted by the Task API.
pub const EVENT_SOURCE: &str = "taskstream/task-api";

/// The version of the event body's schema that this build writes.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// An event's identity: a UUID v7. Consumers de-duplicate by it, so a
/// redelivered event never has a second effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = uuid::Uuid))]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

// ANCHOR: envelope
/// One task event with its metadata. Field names follow CloudEvents where
/// one exists (`id`, `type`, `source`, `time`, `subject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventEnvelope {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Which component emitted the event.
    pub source: String,
    /// When the change happened (the task's `updated_at`).
    pub time: DateTime<Utc>,
    /// The task the event is about; also the Kafka record key.
    pub subject: String,
    /// Ties together everything caused by one user request.
    pub correlation_id: Option<String>,
    /// The id of the command or event that directly caused this one.
    pub causation_id: Option<String>,
    pub schema_version: u32,
    pub data: TaskEventData,
    /// The W3C trace context of the request that caused the event (also sent
    /// as a record header); absent in events from older producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}
// ANCHOR_END: envelope
