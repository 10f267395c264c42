//! Rows read back into records, once for both backends.
//!
//! The two schemas have the same tables and columns; they differ only in how
//! ids and times are stored. SQLite keeps them as text (hyphenated UUIDs,
//! RFC 3339 with microseconds, which sorts in time order); PostgreSQL as
//! `uuid` and `timestamptz`. [`StoredRow`] hides that difference, so each
//! record is mapped in one place, and a value that cannot be read back is
//! [`StoreError::Corrupt`] on either backend.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use taskstream_domain::{Assignee, Description, Priority, Task, TaskId, TaskStatus, TaskTitle};
use uuid::Uuid;

use crate::{
    AuditEntry, NotificationRecord, OutboxMessage, OutboxStats, PendingMessage, StoreError,
    SuggestionRecord, SuggestionStatus,
};

/// A stored value that cannot be read back.
pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

/// A time as SQLite stores it.
pub(crate) fn sqlite_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One result row of either backend, read column by column.
pub(crate) trait StoredRow {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn int32(&self, column: &str) -> Result<i32, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    fn uuid(&self, table: &'static str, column: &str) -> Result<Uuid, StoreError>;
    fn time(&self, table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(
        &self,
        table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}

/// The columns both drivers decode alike.
macro_rules! plain_columns {
    () => {
        fn text(&self, column: &str) -> Result<String, StoreError> {
            Ok(self.try_get(column)?)
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
            Ok(self.try_get(column)?)
        }
        fn int(&self, column: &str) -> Result<i64, StoreError> {
            Ok(self.try_get(column)?)
        }
        fn int32(&self, column: &str) -> Result<i32, StoreError> {
            Ok(self.try_get(column)?)
        }
        fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
            Ok(self.try_get(column)?)
        }
        fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
            Ok(self.try_get(column)?)
        }
    };
}

fn parse_time(table: &'static str, raw: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(table, format!("bad timestamp {raw:?}: {e}")))
}

impl StoredRow for SqliteRow {
    plain_columns!();

    fn uuid(&self, table: &'static str, column: &str) -> Result<Uuid, StoreError> {
        let raw: String = self.try_get(column)?;
        Uuid::parse_str(&raw).map_err(|e| corrupt(table, format!("bad id {raw:?}: {e}")))
    }

    fn time(&self, table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError> {
        parse_time(table, &self.try_get::<String, _>(column)?)
    }

    fn opt_time(
        &self,
        table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get::<Option<String>, _>(column)?
            .map(|raw| parse_time(table, &raw))
            .transpose()
    }
}

impl StoredRow for PgRow {
    plain_columns!();

    fn uuid(&self, _table: &'static str, column: &str) -> Result<Uuid, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn time(&self, _table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_time(
        &self,
        _table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// A `tasks` row.
pub(crate) fn task(row: &impl StoredRow) -> Result<Task, StoreError> {
    const T: &str = "tasks";
    let title = row.text("title")?;
    let priority = row.text("priority")?;
    let status = row.text("status")?;
    Ok(Task {
        id: TaskId::from_uuid(row.uuid(T, "id")?),
        title: TaskTitle::from_stored(&title).map_err(|e| corrupt(T, e.to_string()))?,
        description: row
            .opt_text("description")?
            .map(|d| Description::from_stored(&d))
            .transpose()
            .map_err(|e| corrupt(T, e.to_string()))?,
        priority: Priority::parse(&priority)
            .ok_or_else(|| corrupt(T, format!("bad priority {priority:?}")))?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| corrupt(T, format!("bad status {status:?}")))?,
        due_at: row.opt_time(T, "due_at")?,
        assignee: row
            .opt_text("assignee")?
            .map(|a| Assignee::from_stored(&a))
            .transpose()
            .map_err(|e| corrupt(T, e.to_string()))?,
        version: row.int("version")?,
        created_at: row.time(T, "created_at")?,
        updated_at: row.time(T, "updated_at")?,
        completed_at: row.opt_time(T, "completed_at")?,
    })
}

/// An unpublished `outbox` row (see [`crate::sql::SELECT_PENDING`]).
pub(crate) fn pending(row: &impl StoredRow) -> Result<PendingMessage, StoreError> {
    const T: &str = "outbox";
    Ok(PendingMessage {
        seq: row.int("seq")?,
        attempts: row.int("attempts")?,
        message: OutboxMessage {
            id: row.uuid(T, "id")?,
            aggregate_type: row.text("aggregatetype")?,
            aggregate_id: row.text("aggregateid")?,
            event_type: row.text("type")?,
            topic: row.text("topic")?,
            payload: row.bytes("payload")?,
            content_type: row.text("content_type")?,
            traceparent: row.opt_text("traceparent")?,
            created_at: row.time(T, "created_at")?,
        },
    })
}

/// The answer to [`crate::sql::OUTBOX_STATS`].
pub(crate) fn outbox_stats(row: &impl StoredRow) -> Result<OutboxStats, StoreError> {
    Ok(OutboxStats {
        total: row.int("total")?,
        pending: row.int("pending")?,
        oldest_pending_at: row.opt_time("outbox", "oldest")?,
    })
}

/// An `audit_log` row.
pub(crate) fn audit_entry(row: &impl StoredRow) -> Result<AuditEntry, StoreError> {
    const T: &str = "audit_log";
    Ok(AuditEntry {
        event_id: row.uuid(T, "event_id")?,
        event_type: row.text("event_type")?,
        task_id: row.text("task_id")?,
        task_version: row.int("task_version")?,
        event_time: row.time(T, "event_time")?,
        correlation_id: row.opt_text("correlation_id")?,
        topic: row.text("topic")?,
        partition: row.int32("partition")?,
        offset: row.int("offset")?,
        recorded_at: row.time(T, "recorded_at")?,
        envelope: row.text("envelope")?,
    })
}

/// A `notifications` row.
pub(crate) fn notification(row: &impl StoredRow) -> Result<NotificationRecord, StoreError> {
    const T: &str = "notifications";
    Ok(NotificationRecord {
        id: row.uuid(T, "id")?,
        event_id: row.uuid(T, "event_id")?,
        event_type: row.text("event_type")?,
        task_id: row.text("task_id")?,
        kind: row.text("kind")?,
        recipient: row.text("recipient")?,
        message: row.text("message")?,
        channel: row.text("channel")?,
        sent_at: row.time(T, "sent_at")?,
    })
}

/// A `processed_events` row's event and when it was processed.
pub(crate) fn processed_time(row: &impl StoredRow) -> Result<(Uuid, DateTime<Utc>), StoreError> {
    const T: &str = "processed_events";
    Ok((row.uuid(T, "event_id")?, row.time(T, "processed_at")?))
}

/// A `suggestions` row.
pub(crate) fn suggestion(row: &impl StoredRow) -> Result<SuggestionRecord, StoreError> {
    const T: &str = "suggestions";
    let status = row.text("status")?;
    let confidence = row.int("confidence")?;
    Ok(SuggestionRecord {
        id: row.uuid(T, "id")?,
        event_id: row.uuid(T, "event_id")?,
        task_id: row.text("task_id")?,
        task_version: row.int("task_version")?,
        priority: row.opt_text("priority")?,
        assignee: row.opt_text("assignee")?,
        due_at: row.opt_time(T, "due_at")?,
        confidence: u8::try_from(confidence)
            .ok()
            .filter(|c| *c <= 100)
            .ok_or_else(|| corrupt(T, format!("confidence {confidence}")))?,
        model: row.text("model")?,
        rationale: row.text("rationale")?,
        status: SuggestionStatus::parse(&status)
            .ok_or_else(|| corrupt(T, format!("status {status:?}")))?,
        created_at: row.time(T, "created_at")?,
        resolved_at: row.opt_time(T, "resolved_at")?,
    })
}
