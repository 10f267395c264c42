//! Rows the store reads and writes, other than tasks.

use chrono::{DateTime, Utc};
use taskstream_domain::{TaskId, TaskStatus};
use uuid::Uuid;

/// An event to be published, written in the same transaction as the change
/// it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The event id; travels as the `id` record header.
    pub id: Uuid,
    /// The kind of entity that changed (`task`).
    pub aggregate_type: String,
    /// The entity's id; becomes the record key, so one entity's events stay ordered.
    pub aggregate_id: String,
    /// The event type (`task.created`, ...); travels as the `type` header.
    pub event_type: String,
    /// The topic the relay publishes to.
    pub topic: String,
    /// The encoded event (the record value).
    pub payload: Vec<u8>,
    /// The payload's MIME type.
    pub content_type: String,
    /// The W3C `traceparent` of the request that caused the event.
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The right to publish the outbox, held by one relay at a time; see
/// [`crate::OutboxStore::acquire_lease`].
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    holder: String,
    /// Which grant this is: a lease lost and won again is a new grant, and
    /// the old one no longer reads the outbox.
    grant: u64,
}

impl Lease {
    pub(crate) fn new(holder: &str, grant: u64) -> Self {
        Self {
            holder: holder.to_owned(),
            grant,
        }
    }

    /// Who asked for the lease (for logs).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub(crate) fn grant(&self) -> u64 {
        self.grant
    }
}

/// An outbox row not yet published, with its position in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// Commit order; the relay publishes in this order.
    pub seq: i64,
    /// Failed publish attempts so far.
    pub attempts: i64,
    pub message: OutboxMessage,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Every message ever enqueued, published or not.
    pub total: i64,
    pub pending: i64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// A page request over tasks, ordered by id (creation order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks in this status; `None` means every task that is not deleted.
    pub status: Option<TaskStatus>,
    /// Only tasks with an id greater than this (the previous page's last id).
    pub after: Option<TaskId>,
    pub limit: u32,
}

/// One consumed event, as the audit-log service records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub event_id: Uuid,
    pub event_type: String,
    pub task_id: String,
    pub task_version: i64,
    pub event_time: DateTime<Utc>,
    pub correlation_id: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub recorded_at: DateTime<Utc>,
    /// The whole envelope as JSON.
    pub envelope: String,
}

/// One notification the notification service sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Stable per (event, kind): sinks can use it as an idempotency key.
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub task_id: String,
    /// What the notification says happened (`task_assigned`, `task_completed`).
    pub kind: String,
    pub recipient: String,
    pub message: String,
    /// The sink that delivered it (`log`, `webhook`).
    pub channel: String,
    pub sent_at: DateTime<Utc>,
}

/// Whose progress decides that a published event still needs delivering,
/// for [`crate::Store::requeue_events_unhandled_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandledBy<'a> {
    /// The audit log: an event is handled once it has an entry.
    AuditLog,
    /// A consumer that marks events in `processed_events` under this name.
    Processed(&'a str),
}

/// Where a triage suggestion is in its life: `pending` until a person (or a
/// configured rule) accepts or rejects it; then final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuggestionStatus {
    Pending,
    Accepted,
    Rejected,
}

impl SuggestionStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the stored and wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "accepted" => Some(Self::Accepted),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// A suggestion the triage agent made for a task, from one task event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestionRecord {
    /// Derived from `event_id`, so the same event always names the same suggestion.
    pub id: Uuid,
    /// The task event the suggestion answers (its causation).
    pub event_id: Uuid,
    pub task_id: String,
    /// The task's version the suggestion was made for: accepting it once
    /// the task has moved on is refused as stale.
    pub task_version: i64,
    /// `low`, `medium` or `high`, when the model suggests one.
    pub priority: Option<String>,
    pub assignee: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// How sure the model is, 0 to 100.
    pub confidence: u8,
    /// Which model made it (`local`, or the remote model's name).
    pub model: String,
    /// Why, in a sentence or two.
    pub rationale: String,
    pub status: SuggestionStatus,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}
