//! The statements both backends run, written once.
//!
//! Parameters are numbered (`$1`, `$2`, ...), which PostgreSQL and sqlx's
//! SQLite driver both read; each backend binds ids and times in its own
//! column types (see [`crate::rows`]). Statements only one dialect has (the
//! PostgreSQL commit check, SQLite's multi-row group insert) stay with
//! their backend.

/// Inserts a task; binds its columns in this order.
macro_rules! insert_task {
    () => {
        "INSERT INTO tasks (id, title, description, priority, status, due_at, assignee, version, created_at, updated_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    };
}

/// Replaces a task whose stored version is `$11`. A change of assignee
/// records the new version as the one the assignment dates from
/// (`assigned_version`, read by [`crate::SagaStore::saga_task`]).
macro_rules! update_task {
    () => {
        "UPDATE tasks SET title = $1, description = $2, priority = $3, status = $4, due_at = $5,
            assigned_version = CASE WHEN assignee IS DISTINCT FROM $6 THEN $7 ELSE assigned_version END,
            assignee = $6, version = $7, updated_at = $8, completed_at = $9
         WHERE id = $10 AND version = $11"
    };
}

pub(crate) use {insert_task, update_task};

pub(crate) const INSERT_TASK: &str = insert_task!();
pub(crate) const UPDATE_TASK: &str = update_task!();

pub(crate) const TASK_BY_ID: &str = "SELECT * FROM tasks WHERE id = $1";

pub(crate) const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Unpublished rows, read by [`crate::rows::pending`]; the claim adds
/// `AND seq NOT BETWEEN .. AND ..` per range in flight, then
/// `ORDER BY seq LIMIT ..`.
pub(crate) const SELECT_PENDING: &str =
    "SELECT seq, attempts, id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at
     FROM outbox WHERE published_at IS NULL";

pub(crate) const UNPUBLISHED_TOPICS: &str =
    "SELECT DISTINCT topic FROM outbox WHERE published_at IS NULL";

pub(crate) const RECORD_FAILURE: &str =
    "UPDATE outbox SET attempts = attempts + 1, last_error = $1 WHERE seq = $2";

pub(crate) const PRUNE_PUBLISHED: &str = "DELETE FROM outbox WHERE seq IN (
         SELECT seq FROM outbox
         WHERE published_at IS NOT NULL AND published_at < $1
         ORDER BY seq LIMIT $2)";

/// Read by [`crate::rows::outbox_stats`].
pub(crate) const OUTBOX_STATS: &str = "SELECT (SELECT COUNT(*) FROM outbox) AS total,
            COUNT(*) AS pending, MIN(created_at) AS oldest
     FROM outbox WHERE published_at IS NULL";

/// Unpublishes the published events a consumer has not handled, as their
/// own tables show: task events (`aggregatetype = 'task'`, on
/// `task-events`) without an audit-log entry or not processed by the
/// notifier group `$1`, and saga events (on `task-sagas`, which only the
/// notifier reads) not processed by `$1`. The triage agent's suggestions
/// go to a topic neither reads. `audit` and `notifier` prefix the tables
/// (`""`, or an attached SQLite file's `"alias."`).
pub(crate) fn requeue_unhandled(audit: &str, notifier: &str) -> String {
    format!(
        "UPDATE outbox SET published_at = NULL
     WHERE published_at IS NOT NULL
       AND ((aggregatetype = 'task'
             AND (NOT EXISTS (SELECT 1 FROM {audit}audit_log a WHERE a.event_id = outbox.id)
                  OR NOT EXISTS (SELECT 1 FROM {notifier}processed_events p
                                 WHERE p.consumer = $1 AND p.event_id = outbox.id)))
            OR (aggregatetype = 'saga'
                AND NOT EXISTS (SELECT 1 FROM {notifier}processed_events p
                                WHERE p.consumer = $1 AND p.event_id = outbox.id)))"
    )
}

/// Unpublishes the task events on topic `$1` without an audit-log entry
/// (the auditor reads task events only); `audit` prefixes the table.
pub(crate) fn requeue_unaudited(audit: &str) -> String {
    format!(
        "UPDATE outbox SET published_at = NULL
     WHERE published_at IS NOT NULL AND aggregatetype = 'task' AND topic = $1
       AND NOT EXISTS (SELECT 1 FROM {audit}audit_log a WHERE a.event_id = outbox.id)"
    )
}

/// Unpublishes the task and saga events on topic `$2` that consumer `$1`
/// has not processed; `handled` prefixes the table.
pub(crate) fn requeue_unprocessed(handled: &str) -> String {
    format!(
        "UPDATE outbox SET published_at = NULL
     WHERE published_at IS NOT NULL AND aggregatetype IN ('task', 'saga')
       AND NOT EXISTS (SELECT 1 FROM {handled}processed_events p
                       WHERE p.consumer = $1 AND p.event_id = outbox.id)
       AND topic = $2"
    )
}

/// Which files a SQLite database took its rows from, once each
/// ([`crate::SqliteStore::adopt_rows_once`]). Created on first use: it is
/// the bookkeeping of that one-time move, not part of any service's data.
pub(crate) const CREATE_ADOPTED_ROWS: &str = "CREATE TABLE IF NOT EXISTS adopted_rows (
       source TEXT PRIMARY KEY,
       tables TEXT NOT NULL,
       adopted_at TEXT NOT NULL)";

pub(crate) const ADOPTED_FROM: &str = "SELECT adopted_at FROM adopted_rows WHERE source = $1";

pub(crate) const RECORD_ADOPTION: &str =
    "INSERT OR IGNORE INTO adopted_rows (source, tables, adopted_at) VALUES ($1, $2, $3)";

/// Read by [`crate::rows::processed_time`].
pub(crate) const PROCESSED_TIMES: &str =
    "SELECT event_id, processed_at FROM processed_events WHERE consumer = $1";

pub(crate) const PUBLISHED_TIMES: &str =
    "SELECT published_at FROM outbox WHERE published_at IS NOT NULL ORDER BY published_at";

pub(crate) const INSERT_AUDIT_ENTRY: &str = r#"INSERT INTO audit_log (event_id, event_type, task_id, task_version, event_time, correlation_id,
        topic, partition, "offset", recorded_at, envelope)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (event_id) DO NOTHING"#;

pub(crate) const MARK_PROCESSED: &str =
    "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)
     ON CONFLICT DO NOTHING";

pub(crate) const IS_PROCESSED: &str =
    "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2";

/// A notification another group already recorded (the same event and
/// kind) is kept once; each group still marks the event processed.
pub(crate) const INSERT_NOTIFICATION: &str =
    "INSERT INTO notifications (id, event_id, event_type, task_id, kind, recipient, message, channel, sent_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT DO NOTHING";
