//! `task.triage_suggested`: the event the agent publishes to
//! `task-suggestions`, and the suggestion it records with it.
//!
//! The event travels as JSON (content type `application/json`) in an
//! envelope shaped like the task events' (`id`, `type`, `source`, `time`,
//! `subject`, `correlation_id`, `causation_id`, `data`), but it is not a
//! task event: it has its own topic and never enters `task-events`.
//!
//! - `causation_id` is the id of the `task.created` event that caused it;
//! - `correlation_id` is that event's `correlation_id` (the id of the
//!   request that created the task), or, when it has none, its event id:
//!   everything one request set off shares one correlation id.
//!
//! Ids are derived from the triggering event's id (UUID v5), so the same
//! event always names the same suggestion and the same suggestion event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskstream_domain::{headers, EventEnvelope};
use taskstream_store::{OutboxMessage, SuggestionRecord, SuggestionStatus};
use uuid::Uuid;

use super::model::Triage;

/// The event type, in the `type` header and the envelope.
pub const TRIAGE_SUGGESTED: &str = "task.triage_suggested";

/// The envelope's `source`.
pub const AGENT_SOURCE: &str = "taskstream/triage-agent";

/// The outbox's `aggregatetype` for suggestion events. Only `task` rows
/// are task events (converted to Avro when stored as JSON by older versions).
pub const SUGGESTION_AGGREGATE: &str = "suggestion";

/// The body of `task.triage_suggested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestionData {
    pub suggestion_id: Uuid,
    pub task_id: String,
    pub task_version: i64,
    pub priority: Option<String>,
    pub assignee: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub confidence: u8,
    pub model: String,
    pub rationale: String,
}

/// `task.triage_suggested`, as it goes on `task-suggestions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestionEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub time: DateTime<Utc>,
    /// The task's id; also the record key.
    pub subject: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub data: SuggestionData,
}

/// The correlation id of everything `event` sets off: its own, or its id.
pub fn correlation_of(event: &EventEnvelope) -> String {
    event
        .correlation_id
        .clone()
        .unwrap_or_else(|| event.id.to_string())
}

fn derived(event: &EventEnvelope, what: &str) -> Uuid {
    Uuid::new_v5(&event.id.as_uuid(), what.as_bytes())
}

/// The suggestion `model` made with `triage` for `event`'s task, pending.
pub fn suggestion(event: &EventEnvelope, model: &str, triage: &Triage) -> SuggestionRecord {
    SuggestionRecord {
        id: derived(event, "suggestion"),
        event_id: event.id.as_uuid(),
        task_id: event.subject.clone(),
        task_version: event.data.task.version,
        priority: triage.priority.map(|p| p.as_str().to_owned()),
        assignee: triage.assignee.clone(),
        due_at: triage.due_at,
        confidence: triage.confidence.min(100),
        model: model.to_owned(),
        rationale: triage.rationale.clone(),
        status: SuggestionStatus::Pending,
        created_at: taskstream_domain::now(),
        resolved_at: None,
    }
}

/// The event announcing `suggestion`, caused by `event`.
pub fn suggestion_event(event: &EventEnvelope, suggestion: &SuggestionRecord) -> SuggestionEvent {
    SuggestionEvent {
        id: derived(event, TRIAGE_SUGGESTED),
        event_type: TRIAGE_SUGGESTED.to_owned(),
        source: AGENT_SOURCE.to_owned(),
        time: suggestion.created_at,
        subject: suggestion.task_id.clone(),
        correlation_id: correlation_of(event),
        causation_id: event.id.to_string(),
        data: SuggestionData {
            suggestion_id: suggestion.id,
            task_id: suggestion.task_id.clone(),
            task_version: suggestion.task_version,
            priority: suggestion.priority.clone(),
            assignee: suggestion.assignee.clone(),
            due_at: suggestion.due_at,
            confidence: suggestion.confidence,
            model: suggestion.model.clone(),
            rationale: suggestion.rationale.clone(),
        },
    }
}

/// The outbox row publishing `announced` to `topic`, keyed by the task,
/// with the causing event's trace.
pub fn outbox_message(
    announced: &SuggestionEvent,
    topic: &str,
    traceparent: Option<String>,
) -> OutboxMessage {
    OutboxMessage {
        id: announced.id,
        aggregate_type: SUGGESTION_AGGREGATE.to_owned(),
        aggregate_id: announced.subject.clone(),
        event_type: TRIAGE_SUGGESTED.to_owned(),
        topic: topic.to_owned(),
        payload: serde_json::to_vec(announced).expect("a suggestion event serializes"),
        content_type: headers::JSON_CONTENT_TYPE.to_owned(),
        traceparent,
        created_at: announced.time,
    }
}
