//! The kinds of task event and the data they carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Task;

// ANCHOR: event_type
/// What happened to a task. The string forms (`task.created`, ...) are the
/// public contract: they appear in envelopes, in the `type` Kafka header and
/// in the outbox's `type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    #[serde(rename = "task.created")]
    TaskCreated,
    #[serde(rename = "task.updated")]
    TaskUpdated,
    #[serde(rename = "task.completed")]
    TaskCompleted,
    #[serde(rename = "task.deleted")]
    TaskDeleted,
}
// ANCHOR_END: event_type

impl EventType {
    /// Every event type, in lifecycle order.
    pub const ALL: [EventType; 4] = [
        Self::TaskCreated,
        Self::TaskUpdated,
        Self::TaskCompleted,
        Self::TaskDeleted,
    ];

    /// The wire name, e.g. `task.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCreated => "task.created",
            Self::TaskUpdated => "task.updated",
            Self::TaskCompleted => "task.completed",
            Self::TaskDeleted => "task.deleted",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no known event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// The body of every task event: the task's state *after* the change, so a
/// consumer never has to call back into the API, plus which fields changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEventData {
    pub task: Task,
    /// Fields whose value differs from the previous version (empty for `task.created`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_fields: Vec<String>,
}
