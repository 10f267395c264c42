//! Tasks and the rules for changing them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::EventId;
use crate::event::{EventType, TaskEventData};
use crate::EventEnvelope;

/// A task's identity: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = uuid::Uuid))]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID (read back from storage or a URL).
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Why a field's value was refused; `field` names it as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON field name, e.g. `title`.
    pub field: &'static str,
    /// A sentence a person can act on.
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Characters that show nothing by themselves: Unicode's
/// Default_Ignorable_Code_Point set (zero-width space and joiners, the word
/// joiner, the byte-order mark, soft hyphen, variation selectors, Hangul
/// fillers, tags...). Trimmed like whitespace, so a value made only of them
/// counts as empty.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Trims the characters `trim` names from both ends of `raw` and checks it
/// holds between `min` and `max` characters and no control character.
fn bounded_text(
    field: &'static str,
    raw: &str,
    min: usize,
    max: usize,
    trim: fn(char) -> bool,
) -> Result<String, FieldError> {
    let trimmed = raw.trim_matches(trim);
    let len = trimmed.chars().count();
    if len < min {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if len > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted, in characters.
            pub const MAX_CHARS: usize = $max;

            /// Trims surrounding whitespace and invisible characters, and
            /// checks the length (in characters).
            pub fn parse(raw: &str) -> Result<Self, FieldError> {
                bounded_text($field, raw, $min, $max, |c| c.is_whitespace() || is_invisible(c))
                    .map(Self)
            }

            /// Reads back a value stored or published earlier, under the
            /// rules it was accepted by: invisible characters are not
            /// trimmed, so a value accepted before [`Self::parse`] refused
            /// them stays readable, unchanged.
            pub fn from_stored(raw: &str) -> Result<Self, FieldError> {
                bounded_text($field, raw, $min, $max, char::is_whitespace).map(Self)
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Events and stored rows: values accepted earlier.
                let raw = String::deserialize(d)?;
                Self::from_stored(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A task's title: 1 to 200 characters after trimming.
    TaskTitle, "title", 1, 200
);
text_newtype!(
    /// A task's free-text description: at most 5000 characters after trimming.
    Description, "description", 0, 5000
);
text_newtype!(
    /// Who a task is assigned to (a user name or e-mail): 1 to 100 characters.
    Assignee, "assignee", 1, 100
);

/// How urgent a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
}

impl Priority {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// Parses the wire and storage name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

/// Where a task is in its life: `open` → `completed`; either → `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    Open,
    Completed,
    Deleted,
}

impl TaskStatus {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Completed => "completed",
            Self::Deleted => "deleted",
        }
    }

    /// Parses the wire and storage name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "completed" => Some(Self::Completed),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// A task as stored and as carried in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub id: TaskId,
    pub title: TaskTitle,
    pub description: Option<Description>,
    pub priority: Priority,
    pub status: TaskStatus,
    pub due_at: Option<DateTime<Utc>>,
    pub assignee: Option<Assignee>,
    /// Starts at 1 and grows by one with every change; events carry it so
    /// consumers can tell an old state from a newer one.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A validated request to create a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub title: TaskTitle,
    pub description: Option<Description>,
    pub priority: Priority,
    pub due_at: Option<DateTime<Utc>>,
    pub assignee: Option<Assignee>,
}

/// A validated partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPatch {
    pub title: Option<TaskTitle>,
    pub description: Option<Option<Description>>,
    pub priority: Option<Priority>,
    pub due_at: Option<Option<DateTime<Utc>>>,
    pub assignee: Option<Option<Assignee>>,
}

/// Why a state transition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the task is already completed")]
    AlreadyCompleted,
    #[error("the task is deleted")]
    Deleted,
}

/// The outcome of a change: the task's new state and the event that records it.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub task: Task,
    pub event: EventEnvelope,
}

/// What caused a change, copied into the envelope of the event that records it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cause<'a> {
    /// Ties together everything caused by one request (its `X-Request-Id`).
    pub correlation_id: Option<&'a str>,
    /// The W3C `traceparent` of the request.
    pub traceparent: Option<&'a str>,
}

impl Task {
    /// Creates a task and its `task.created` event.
    ///
    /// `cause` ties the event to the request that caused it.
    pub fn create(new: NewTask, now: DateTime<Utc>, cause: Cause<'_>) -> TaskChange {
        let task = Task {
            id: TaskId::new(),
            title: new.title,
            description: new.description,
            priority: new.priority,
            status: TaskStatus::Open,
            due_at: new.due_at,
            assignee: new.assignee,
            version: 1,
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        task.changed(EventType::TaskCreated, Vec::new(), cause)
    }

    /// Applies a partial update. Returns `Ok(None)` when nothing would change,
    /// so a no-op request emits no event.
    pub fn update(
        &self,
        patch: TaskPatch,
        now: DateTime<Utc>,
        cause: Cause<'_>,
    ) -> Result<Option<TaskChange>, TransitionError> {
        if self.status == TaskStatus::Deleted {
            return Err(TransitionError::Deleted);
        }
        let mut next = self.clone();
        let mut changed = Vec::new();
        if let Some(title) = patch.title {
            if title != next.title {
                next.title = title;
                changed.push("title".to_owned());
            }
        }
        if let Some(description) = patch.description {
            if description != next.description {
                next.description = description;
                changed.push("description".to_owned());
            }
        }
        if let Some(priority) = patch.priority {
            if priority != next.priority {
                next.priority = priority;
                changed.push("priority".to_owned());
            }
        }
        if let Some(due_at) = patch.due_at {
            if due_at != next.due_at {
                next.due_at = due_at;
                changed.push("due_at".to_owned());
            }
        }
        if let Some(assignee) = patch.assignee {
            if assignee != next.assignee {
                next.assignee = assignee;
                changed.push("assignee".to_owned());
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        next.touch(now);
        Ok(Some(next.changed(EventType::TaskUpdated, changed, cause)))
    }

    /// Marks an open task completed.
    pub fn complete(
        &self,
        now: DateTime<Utc>,
        cause: Cause<'_>,
    ) -> Result<TaskChange, TransitionError> {
        match self.status {
            TaskStatus::Completed => return Err(TransitionError::AlreadyCompleted),
            TaskStatus::Deleted => return Err(TransitionError::Deleted),
            TaskStatus::Open => {}
        }
        let mut next = self.clone();
        next.status = TaskStatus::Completed;
        next.completed_at = Some(now);
        next.touch(now);
        Ok(next.changed(EventType::TaskCompleted, vec!["status".to_owned()], cause))
    }

    /// Deletes a task. The row stays as a tombstone (status `deleted`) so that
    /// later commands on it answer "conflict" rather than "not found".
    pub fn delete(
        &self,
        now: DateTime<Utc>,
        cause: Cause<'_>,
    ) -> Result<TaskChange, TransitionError> {
        if self.status == TaskStatus::Deleted {
            return Err(TransitionError::Deleted);
        }
        let mut next = self.clone();
        next.status = TaskStatus::Deleted;
        next.touch(now);
        Ok(next.changed(EventType::TaskDeleted, vec!["status".to_owned()], cause))
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        self.version += 1;
        // Clocks can step backwards; a task's timestamps never do.
        self.updated_at = now.max(self.updated_at);
    }

    fn changed(
        self,
        event_type: EventType,
        changed_fields: Vec<String>,
        cause: Cause<'_>,
    ) -> TaskChange {
        let event = EventEnvelope {
            id: EventId::new(),
            event_type,
            source: crate::EVENT_SOURCE.to_owned(),
            time: self.updated_at,
            subject: self.id.to_string(),
            correlation_id: cause.correlation_id.map(str::to_owned),
            // The request is the command that caused the change.
            causation_id: cause.correlation_id.map(str::to_owned),
            schema_version: crate::EVENT_SCHEMA_VERSION,
            data: TaskEventData {
                task: self.clone(),
                changed_fields,
            },
            traceparent: cause.traceparent.map(str::to_owned),
        };
        TaskChange { task: self, event }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_task(title: &str) -> NewTask {
        NewTask {
            title: TaskTitle::parse(title).unwrap(),
            description: None,
            priority: Priority::default(),
            due_at: None,
            assignee: None,
        }
    }

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(
            TaskTitle::parse("  Write docs ").unwrap().as_str(),
            "Write docs"
        );
        assert_eq!(TaskTitle::parse("   ").unwrap_err().field, "title");
        assert!(TaskTitle::parse(&"x".repeat(200)).is_ok());
        assert!(TaskTitle::parse(&"x".repeat(201)).is_err());
        // Characters, not bytes.
        assert!(TaskTitle::parse(&"é".repeat(200)).is_ok());
        assert!(TaskTitle::parse("bad\u{0}title").is_err());
    }

    #[test]
    fn invisible_characters_alone_are_empty_like_spaces() {
        for invisible in [
            "\u{200B}",
            "\u{200C}\u{200D}",
            "\u{2060}",
            "\u{FEFF}",
            " \u{200B} \u{FEFF} ",
            "\u{00AD}\u{3164}\u{E0020}",
        ] {
            assert_eq!(
                TaskTitle::parse(invisible).unwrap_err().message,
                "must not be empty",
                "{invisible:?}"
            );
            assert!(Assignee::parse(invisible).is_err(), "{invisible:?}");
            assert_eq!(Description::parse(invisible).unwrap().as_str(), "");
        }
        // What was accepted before this rule is still read back as it was.
        assert_eq!(
            TaskTitle::from_stored("\u{200B}").unwrap().as_str(),
            "\u{200B}"
        );
        let stored: TaskTitle = serde_json::from_str("\"\u{200B}\"").unwrap();
        assert_eq!(stored.as_str(), "\u{200B}");
        // Trimmed at the ends only: a joiner inside an emoji sequence stays.
        let family = "\u{1F468}\u{200D}\u{1F469}";
        assert_eq!(
            TaskTitle::parse(&format!("\u{200B}{family}\u{FEFF}"))
                .unwrap()
                .as_str(),
            family
        );
    }

    #[test]
    fn create_emits_created_event_for_the_new_task() {
        let change = Task::create(
            new_task("a"),
            Utc::now(),
            Cause {
                correlation_id: Some("req-1"),
                traceparent: None,
            },
        );
        assert_eq!(change.task.version, 1);
        assert_eq!(change.task.status, TaskStatus::Open);
        assert_eq!(change.event.event_type, EventType::TaskCreated);
        assert_eq!(change.event.subject, change.task.id.to_string());
        assert_eq!(change.event.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(change.event.data.task, change.task);
    }

    #[test]
    fn update_without_changes_emits_nothing() {
        let created = Task::create(new_task("a"), Utc::now(), Cause::default()).task;
        let patch = TaskPatch {
            title: Some(TaskTitle::parse("a").unwrap()),
            ..TaskPatch::default()
        };
        assert!(created
            .update(patch, Utc::now(), Cause::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn update_lists_changed_fields_and_bumps_version() {
        let created = Task::create(new_task("a"), Utc::now(), Cause::default()).task;
        let patch = TaskPatch {
            title: Some(TaskTitle::parse("b").unwrap()),
            assignee: Some(Some(Assignee::parse("ana").unwrap())),
            ..TaskPatch::default()
        };
        let change = created
            .update(patch, Utc::now(), Cause::default())
            .unwrap()
            .unwrap();
        assert_eq!(change.task.version, 2);
        assert_eq!(change.event.data.changed_fields, ["title", "assignee"]);
    }

    #[test]
    fn completed_and_deleted_tasks_refuse_completion() {
        let created = Task::create(new_task("a"), Utc::now(), Cause::default()).task;
        let done = created.complete(Utc::now(), Cause::default()).unwrap().task;
        assert_eq!(
            done.complete(Utc::now(), Cause::default()).unwrap_err(),
            TransitionError::AlreadyCompleted
        );
        let deleted = done.delete(Utc::now(), Cause::default()).unwrap().task;
        assert_eq!(
            deleted.complete(Utc::now(), Cause::default()).unwrap_err(),
            TransitionError::Deleted
        );
        assert_eq!(
            deleted.delete(Utc::now(), Cause::default()).unwrap_err(),
            TransitionError::Deleted
        );
        assert_eq!(
            deleted
                .update(TaskPatch::default(), Utc::now(), Cause::default())
                .unwrap_err(),
            TransitionError::Deleted
        );
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let now = Utc::now();
        let created = Task::create(new_task("a"), now, Cause::default()).task;
        let earlier = now - chrono::Duration::seconds(5);
        let done = created.complete(earlier, Cause::default()).unwrap().task;
        assert_eq!(done.updated_at, now);
    }
}
