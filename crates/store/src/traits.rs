//! The seams between components and their storage.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskstream_domain::{Task, TaskId};
use uuid::Uuid;

use crate::{
    AuditEntry, Lease, NotificationRecord, OutboxMessage, OutboxStats, PendingMessage, StoreError,
    SuggestionRecord, TaskQuery,
};

/// Tasks, written only together with the event that records the change.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts a new task and its outbox message atomically.
    async fn insert_task(&self, task: &Task, event: &OutboxMessage) -> Result<(), StoreError>;

    /// Replaces a task whose stored version is `expected_version`, and enqueues
    /// its outbox message, atomically. Fails with
    /// [`StoreError::VersionConflict`] (writing nothing) if the version moved.
    async fn save_task(
        &self,
        task: &Task,
        expected_version: i64,
        event: &OutboxMessage,
    ) -> Result<(), StoreError>;

    /// One task, tombstones included.
    async fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// A page of tasks in id order.
    async fn tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;
}

/// The outbox, as the relay sees it.
///
/// Only one relay publishes at a time: the one holding the outbox's
/// [`Lease`]. Two relays publishing at once would interleave their copies of
/// one task's events on the topic; with one publisher, a task's events go out
/// in commit order, and a standby relay takes over when the holder is gone.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Makes `holder` the relay that publishes, if no other holds the lease;
    /// `None` while another one does (the caller stands by and asks again
    /// later). Asking again while holding it returns the lease again.
    ///
    /// How long a lease lasts depends on the backend. PostgreSQL: as long
    /// as the holder's database session (a session-level advisory lock);
    /// a killed or cut-off holder's session ends within about a minute
    /// (TCP keepalives), and a standby then wins the lease. SQLite: an
    /// exclusive lock on the file `<database>-relay.lock`, held until
    /// released or until the holding process ends (so `up` and a
    /// `taskstream relay` on one data directory never publish at once).
    async fn acquire_lease(&self, holder: &str) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease up, so that a standby can take over at once.
    async fn release_lease(&self, lease: Lease) -> Result<(), StoreError>;

    /// Up to `limit` unpublished messages, oldest first, read under `lease`.
    /// Fails with [`StoreError::LeaseLost`] once the lease is no longer
    /// held; the caller then acquires it again before publishing more.
    async fn pending(&self, lease: &Lease, limit: u32) -> Result<Vec<PendingMessage>, StoreError> {
        self.claim(lease, limit, &[]).await
    }

    /// As [`OutboxStore::pending`], leaving out the messages whose seqs
    /// are `in_flight`: the rows a relay has handed to the producer and not
    /// yet marked. The exact seqs, not a cursor ("after the last one
    /// claimed") nor their span: on PostgreSQL a row with a lower seq can
    /// commit after higher ones, and it must be claimed in the very next
    /// batch, before any row with a higher seq (the same task's next event
    /// among them), so that a task's events keep their order on the topic.
    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, StoreError>;

    /// Marks messages published; call only after the broker acknowledged them.
    async fn mark_published(&self, seqs: &[i64], at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Of the messages for `topic` with ids `ids`, those still
    /// unpublished, as `(id, seq)`. Ids of published or pruned messages,
    /// of messages for another topic (or unknown ones) are left out. The
    /// exactly-once relay asks this of the records it finds on `topic`
    /// after a restart: a record there says nothing of a row that goes
    /// elsewhere.
    async fn unpublished_among(
        &self,
        topic: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError>;

    /// The topics that unpublished messages go to.
    async fn unpublished_topics(&self) -> Result<Vec<String>, StoreError>;

    /// Counts a failed attempt and remembers why; the message stays pending.
    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError>;

    /// Pending count and the age of the oldest pending message.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Deletes up to `limit` messages published before `before`, oldest
    /// first; returns how many. Pending messages are never deleted.
    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// The database's logical replication slots, the way Debezium reads the
    /// outbox; none where the database has no such thing (SQLite).
    async fn replication_slots(&self) -> Result<Vec<crate::ReplicationSlot>, StoreError> {
        Ok(Vec::new())
    }
}

/// The processed-events table: which events each consumer group has
/// handled. A consumer's effect marks its event for the group it runs in,
/// in the effect's own transaction; the group's inbox reads it back.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Whether consumer group `group` already fully handled `event_id`.
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, StoreError>;

    /// Which of `event_ids` consumer group `group` already fully handled,
    /// asked at once (a consumer's batch).
    async fn processed_among(
        &self,
        group: &str,
        event_ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, StoreError>;
}

/// The audit log: one entry per distinct event, whichever group read it.
#[async_trait]
pub trait AuditStore: InboxStore {
    /// Appends an entry (nothing if the event is already in the log) and
    /// marks the event processed by `group`, atomically. Returns whether
    /// the entry is new.
    async fn append(&self, group: &str, entry: &AuditEntry) -> Result<bool, StoreError>;

    /// [`AuditStore::append`] for several entries in one transaction; for
    /// each, whether it is new.
    async fn append_batch(
        &self,
        group: &str,
        entries: &[AuditEntry],
    ) -> Result<Vec<bool>, StoreError>;

    /// Entries in the order they were recorded, optionally for one task.
    async fn audit_entries(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The notification service's memory.
#[async_trait]
pub trait NotificationStore: InboxStore {
    /// Records the notifications sent for an event and marks the event
    /// processed by `consumer`, atomically. Returns `false` if it already was.
    /// A notification another consumer already recorded (the same event
    /// and kind) stays as it is.
    async fn record_notifications(
        &self,
        consumer: &str,
        event_id: Uuid,
        sent: &[NotificationRecord],
    ) -> Result<bool, StoreError>;

    /// [`NotificationStore::record_notifications`] for several events in one
    /// transaction; for each, whether it was new.
    async fn record_notifications_batch(
        &self,
        consumer: &str,
        events: &[(Uuid, Vec<NotificationRecord>)],
    ) -> Result<Vec<bool>, StoreError>;

    /// Sent notifications in order, optionally for one task.
    async fn notifications(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
}

/// The triage agent's suggestions, and the command that applies one.
#[async_trait]
pub trait SuggestionStore: InboxStore {
    /// Stores `suggestion`, enqueues its `task.triage_suggested` outbox
    /// row `event` and marks the triggering event (`suggestion.event_id`)
    /// processed by `group`, atomically. Returns `false`, writing nothing,
    /// when the group had processed that event already or a suggestion for
    /// it exists: one suggestion per task event, however often it comes.
    async fn record_suggestion(
        &self,
        group: &str,
        suggestion: &SuggestionRecord,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError>;

    /// One suggestion.
    async fn suggestion(&self, id: Uuid) -> Result<Option<SuggestionRecord>, StoreError>;

    /// A task's suggestions, oldest first.
    async fn suggestions(&self, task_id: &str) -> Result<Vec<SuggestionRecord>, StoreError>;

    /// Accepts pending suggestion `id`: marks it accepted and writes the
    /// changed `task` (if its stored version is `expected_version`) with
    /// its outbox row `event`, atomically. `task` and `event` are `None`
    /// when accepting changes nothing. Fails with
    /// [`StoreError::SuggestionNotPending`] or
    /// [`StoreError::VersionConflict`], writing nothing.
    async fn accept_suggestion(
        &self,
        id: Uuid,
        change: Option<(&Task, i64, &OutboxMessage)>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Rejects pending suggestion `id`; fails with
    /// [`StoreError::SuggestionNotPending`] otherwise.
    async fn reject_suggestion(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;
}
