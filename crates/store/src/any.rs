//! One type for whichever database a deployment uses: SQLite on one machine,
//! PostgreSQL when components run as separate processes.

use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskstream_domain::{Task, TaskId};
use uuid::Uuid;

use crate::{
    AuditEntry, AuditStore, HandledBy, InboxStore, Lease, NotificationRecord, NotificationStore,
    OutboxMessage, OutboxStats, OutboxStore, PendingMessage, PgOptions, PgStore, SqliteOptions,
    SqliteStore, StoreError, SuggestionRecord, SuggestionStore, TaskQuery, TaskStore, WriteHealth,
};

/// Where the state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user:password@host/db`).
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Database {
    /// The location with any password left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => f.write_str(&crate::postgres::redact_url(url)),
        }
    }
}

impl std::str::FromStr for Database {
    type Err = String;

    /// `postgres://...` / `postgresql://...`, or `sqlite:PATH` / `sqlite://PATH`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        if let Some(path) = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(
                    "a sqlite: URL needs a file path, e.g. sqlite:.taskstream/taskstream.db".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        // The value is not repeated: it may hold a password.
        Err("expected postgres://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:PATH".to_owned())
    }
}

/// The store of either kind; every component takes this.
#[derive(Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

impl Store {
    /// Opens (creating or migrating as needed) the database.
    pub async fn open(
        database: &Database,
        sqlite: &SqliteOptions,
        postgres: &PgOptions,
    ) -> Result<Self, StoreError> {
        Ok(match database {
            Database::Sqlite(path) => Self::Sqlite(SqliteStore::open(path, sqlite).await?),
            Database::Postgres(url) => Self::Postgres(PgStore::connect(url, postgres).await?),
        })
    }

    /// The SQLite store, if that is what this is.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Self::Sqlite(s) => Some(s),
            Self::Postgres(_) => None,
        }
    }

    /// The PostgreSQL store, if that is what this is.
    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            Self::Postgres(pg) => Some(pg),
            Self::Sqlite(_) => None,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await)
    }

    /// The outcome of the latest task write: failing while the database
    /// refuses writes (full, unreachable), clear once one commits again.
    pub fn write_health(&self) -> &WriteHealth {
        each!(self, s => s.write_health())
    }

    /// Tries a small write that needs fresh space and records the outcome
    /// in [`Store::write_health`].
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        each!(self, s => s.probe_write().await)
    }

    /// Marks published events unpublished again when a consumer has not
    /// handled them: task events with no entry in `audit`'s audit log or
    /// not processed by `notifier` in `notifications`, saga events not
    /// processed by `notifier` (see [`SqliteStore::requeue_unhandled_events`]).
    /// With SQLite each may be a file of its own (`taskstream up` gives every
    /// service one); with PostgreSQL the components share one database.
    pub async fn requeue_unhandled_events(
        &self,
        notifier: &str,
        audit: &Store,
        notifications: &Store,
    ) -> Result<u64, StoreError> {
        match (self, audit, notifications) {
            (Self::Sqlite(s), Self::Sqlite(a), Self::Sqlite(n)) => {
                s.requeue_unhandled_events_in(notifier, a.path(), n.path())
                    .await
            }
            (Self::Postgres(s), Self::Postgres(_), Self::Postgres(_)) => {
                s.requeue_unhandled_events(notifier).await
            }
            _ => Err(mixed_backends()),
        }
    }

    /// Marks the published events on `topic` unpublished again when `by`
    /// has not handled them (see [`SqliteStore::requeue_events_unhandled_by`]).
    /// `handled_in` is the consumer's own database: with SQLite possibly
    /// another file than this outbox's; with PostgreSQL the same database.
    pub async fn requeue_events_unhandled_by(
        &self,
        by: HandledBy<'_>,
        handled_in: &Store,
        topic: &str,
    ) -> Result<u64, StoreError> {
        match (self, handled_in) {
            (Self::Sqlite(s), Self::Sqlite(h)) => {
                s.requeue_events_unhandled_in(by, h.path(), topic).await
            }
            (Self::Postgres(s), Self::Postgres(_)) => {
                s.requeue_events_unhandled_by(by, topic).await
            }
            _ => Err(mixed_backends()),
        }
    }

    pub async fn processed_times(
        &self,
        consumer: &str,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        each!(self, s => s.processed_times(consumer).await)
    }

    pub async fn published_times(&self) -> Result<Vec<DateTime<Utc>>, StoreError> {
        each!(self, s => s.published_times().await)
    }

    pub async fn close(&self) {
        each!(self, s => s.close().await)
    }
}

#[async_trait]
impl TaskStore for Store {
    async fn insert_task(&self, task: &Task, event: &OutboxMessage) -> Result<(), StoreError> {
        each!(self, s => s.insert_task(task, event).await)
    }

    async fn save_task(
        &self,
        task: &Task,
        expected_version: i64,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        each!(self, s => s.save_task(task, expected_version, event).await)
    }

    async fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        each!(self, s => s.task(id).await)
    }

    async fn tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        each!(self, s => s.tasks(query).await)
    }
}

#[async_trait]
impl OutboxStore for Store {
    async fn acquire_lease(&self, holder: &str) -> Result<Option<Lease>, StoreError> {
        each!(self, s => s.acquire_lease(holder).await)
    }

    async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        each!(self, s => s.release_lease(lease).await)
    }

    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, StoreError> {
        each!(self, s => s.claim(lease, limit, in_flight).await)
    }

    async fn mark_published(&self, seqs: &[i64], at: DateTime<Utc>) -> Result<(), StoreError> {
        each!(self, s => s.mark_published(seqs, at).await)
    }

    async fn unpublished_among(
        &self,
        topic: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        each!(self, s => s.unpublished_among(topic, ids).await)
    }

    async fn unpublished_topics(&self) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.unpublished_topics().await)
    }

    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        each!(self, s => s.record_failure(seq, error).await)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        each!(self, s => s.outbox_stats().await)
    }

    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        each!(self, s => s.prune_published(before, limit).await)
    }

    async fn replication_slots(&self) -> Result<Vec<crate::ReplicationSlot>, StoreError> {
        each!(self, s => OutboxStore::replication_slots(s).await)
    }
}

#[async_trait]
impl InboxStore for Store {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, StoreError> {
        each!(self, s => s.is_processed(group, event_id).await)
    }

    async fn processed_among(
        &self,
        group: &str,
        event_ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        each!(self, s => s.processed_among(group, event_ids).await)
    }
}

#[async_trait]
impl AuditStore for Store {
    async fn append(&self, group: &str, entry: &AuditEntry) -> Result<bool, StoreError> {
        each!(self, s => s.append(group, entry).await)
    }

    async fn append_batch(
        &self,
        group: &str,
        entries: &[AuditEntry],
    ) -> Result<Vec<bool>, StoreError> {
        each!(self, s => s.append_batch(group, entries).await)
    }

    async fn audit_entries(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        each!(self, s => s.audit_entries(task_id, limit).await)
    }
}

#[async_trait]
impl NotificationStore for Store {
    async fn record_notifications(
        &self,
        consumer: &str,
        event_id: Uuid,
        sent: &[NotificationRecord],
    ) -> Result<bool, StoreError> {
        each!(self, s => s.record_notifications(consumer, event_id, sent).await)
    }

    async fn record_notifications_batch(
        &self,
        consumer: &str,
        events: &[(Uuid, Vec<NotificationRecord>)],
    ) -> Result<Vec<bool>, StoreError> {
        each!(self, s => s.record_notifications_batch(consumer, events).await)
    }

    async fn notifications(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        each!(self, s => s.notifications(task_id, limit).await)
    }
}

#[async_trait]
impl crate::SagaStore for Store {
    async fn start_saga(&self, start: &crate::SagaStart) -> Result<crate::SagaStarted, StoreError> {
        each!(self, s => s.start_saga(start).await)
    }

    async fn transition_saga(
        &self,
        t: &crate::SagaTransition,
    ) -> Result<Option<crate::Saga>, StoreError> {
        each!(self, s => s.transition_saga(t).await)
    }

    async fn saga_task(&self, task_id: &str) -> Result<Option<crate::SagaTask>, StoreError> {
        each!(self, s => s.saga_task(task_id).await)
    }

    async fn saga(&self, id: Uuid) -> Result<Option<crate::Saga>, StoreError> {
        each!(self, s => s.saga(id).await)
    }

    async fn saga_history(&self, id: Uuid) -> Result<Vec<crate::SagaStep>, StoreError> {
        each!(self, s => s.saga_history(id).await)
    }

    async fn latest_saga_for_task(&self, task_id: &str) -> Result<Option<crate::Saga>, StoreError> {
        each!(self, s => s.latest_saga_for_task(task_id).await)
    }

    async fn open_sagas_for_task(&self, task_id: &str) -> Result<Vec<crate::Saga>, StoreError> {
        each!(self, s => s.open_sagas_for_task(task_id).await)
    }

    async fn due_sagas(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<crate::Saga>, StoreError> {
        each!(self, s => s.due_sagas(now, limit).await)
    }

    async fn held_capacity(&self, assignee: &str) -> Result<i64, StoreError> {
        each!(self, s => s.held_capacity(assignee).await)
    }
}

#[async_trait]
impl SuggestionStore for Store {
    async fn record_suggestion(
        &self,
        group: &str,
        suggestion: &SuggestionRecord,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.record_suggestion(group, suggestion, event).await)
    }

    async fn suggestion(&self, id: Uuid) -> Result<Option<SuggestionRecord>, StoreError> {
        each!(self, s => s.suggestion(id).await)
    }

    async fn suggestions(&self, task_id: &str) -> Result<Vec<SuggestionRecord>, StoreError> {
        each!(self, s => s.suggestions(task_id).await)
    }

    async fn accept_suggestion(
        &self,
        id: Uuid,
        change: Option<(&Task, i64, &OutboxMessage)>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.accept_suggestion(id, change, at).await)
    }

    async fn reject_suggestion(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        each!(self, s => s.reject_suggestion(id, at).await)
    }
}

/// An outbox and a consumer's store of different kinds cannot be compared.
fn mixed_backends() -> StoreError {
    StoreError::Unavailable(
        "the outbox and the consumer's own database are of different kinds (SQLite and PostgreSQL); give every component the same --database-url".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::Database;

    #[test]
    fn database_urls_parse_and_print_without_passwords() {
        let pg: Database = "postgres://app:hunter2@db:5432/tasks".parse().unwrap();
        assert_eq!(pg.to_string(), "postgres://app:<redacted>@db:5432/tasks");
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert_eq!(
            "sqlite:data/t.db".parse::<Database>().unwrap(),
            Database::Sqlite("data/t.db".into())
        );
        for bad in [
            "mysql://root:pw@db/x",
            "host=db password=pw",
            "jdbc:postgresql://u:pw@db/x",
        ] {
            let err = bad.parse::<Database>().unwrap_err();
            assert!(err.contains("postgres://") && !err.contains("pw"), "{err}");
        }
        let query: Database = "postgres://app@db/tasks?sslmode=require&password=hunter2"
            .parse()
            .unwrap();
        assert_eq!(
            query.to_string(),
            "postgres://app@db/tasks?sslmode=require&password=<redacted>"
        );
    }
}
