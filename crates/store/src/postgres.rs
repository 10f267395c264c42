//! PostgreSQL implementation of every store trait, for running the
//! components as separate processes (and replicas) that share one database.
//!
//! Writes are ordinary transactions; PostgreSQL's row locks serialise two
//! writes to one task, so one task's outbox rows get increasing `seq` in
//! commit order, which is what the relay's per-task ordering needs. Rows of
//! different tasks may commit out of `seq` order; the relay then publishes a
//! late-committing row in its next round, which reorders only across tasks
//! (different record keys), never within one.
//!
//! Only one relay publishes at a time: it holds a session-level advisory lock
//! on the connection it reads and marks the outbox through. A second replica
//! finds the lock taken and stands by, and takes over when the first one's
//! session ends.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Row};
use taskstream_domain::{Assignee, Description, Priority, Task, TaskId, TaskStatus, TaskTitle};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::health::WriteHealth;
use crate::{
    AuditEntry, AuditStore, HandledBy, NotificationRecord, NotificationStore, OutboxMessage,
    OutboxStats, OutboxStore, PendingMessage, StoreError, TaskQuery, TaskStore,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_postgres");

/// The advisory lock key that elects the publishing relay ("taskstream" in ASCII, truncated).
const RELAY_LOCK_KEY: i64 = 0x7461_736b_7374_7265;

/// The fewest pooled connections a process runs with.
pub const MIN_CONNECTIONS: u32 = 4;

/// How long the relay's own session may take to answer before it is
/// given up (and the lock with it): a half-open connection must not hang
/// the relay for the kernel's retransmission timeout.
const RELAY_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The channel the API notifies after each commit that enqueued events.
pub const OUTBOX_CHANNEL: &str = "taskstream_outbox";

/// Settings for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub max_connections: u32,
    /// How long to wait for a free connection (and for the server at start).
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// All taskstream state in one PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Where the database is, with the password left out (for messages).
    display: String,
    /// The relay's connection while it holds the publishing lock: taken
    /// out of the pool for good, so a session holding the lock can never be
    /// handed to other work (closing it releases the lock).
    relay: Mutex<Option<PgConnection>>,
    /// The outcome of the latest task write, for readiness.
    health: WriteHealth,
}

/// `url` with any password replaced, for logs and errors: the one in the
/// user information and a `password` query parameter.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
                None => format!("{scheme}://{credentials}@{host}"),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    match query {
        None => base,
        Some(query) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=<redacted>")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
    }
}

fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

impl PgStore {
    /// Connects to the database at `url` and brings its schema up to date.
    /// Several processes may do this at once: migrations run under a lock.
    pub async fn connect(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let display = redact_url(url);
        let open_err = |source| StoreError::Open {
            path: display.clone(),
            source,
        };
        let connect: PgConnectOptions = url.parse().map_err(open_err)?;
        // The server probes idle sessions, so a client that vanished (a
        // killed node, a lost network) ends its session — and releases the
        // relay lock — within about a minute, not the kernel's two hours.
        let connect = connect.options([
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
        ]);
        let pool = PgPoolOptions::new()
            // The relay keeps one connection for LISTEN; the rest serve work.
            .max_connections(options.max_connections.max(MIN_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(open_err)?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            display,
            relay: Mutex::new(None),
            health: WriteHealth::default(),
        })
    }

    /// The connection pool (for `LISTEN`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks the database answers; used by readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// See [`crate::SqliteStore::requeue_unhandled_events`].
    pub async fn requeue_unhandled_events(&self, notifier: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET published_at = NULL
             WHERE published_at IS NOT NULL
               AND (NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.event_id = outbox.id)
                    OR NOT EXISTS (SELECT 1 FROM processed_events p
                                   WHERE p.consumer = $1 AND p.event_id = outbox.id))",
        )
        .bind(notifier)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// See [`crate::SqliteStore::requeue_events_unhandled_by`].
    pub async fn requeue_events_unhandled_by(&self, by: HandledBy<'_>) -> Result<u64, StoreError> {
        let done = match by {
            HandledBy::AuditLog => {
                sqlx::query(
                    "UPDATE outbox SET published_at = NULL
                     WHERE published_at IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.event_id = outbox.id)",
                )
                .execute(&self.pool)
                .await?
            }
            HandledBy::Processed(consumer) => {
                sqlx::query(
                    "UPDATE outbox SET published_at = NULL
                     WHERE published_at IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM processed_events p
                                       WHERE p.consumer = $1 AND p.event_id = outbox.id)",
                )
                .bind(consumer)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// When `consumer` finished each event it processed.
    pub async fn processed_times(
        &self,
        consumer: &str,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        let rows =
            sqlx::query("SELECT event_id, processed_at FROM processed_events WHERE consumer = $1")
                .bind(consumer)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("event_id")?, r.try_get("processed_at")?)))
            .collect()
    }

    /// When each published outbox row was acknowledged by the broker, in order.
    pub async fn published_times(&self) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let rows = sqlx::query(
            "SELECT published_at FROM outbox WHERE published_at IS NOT NULL ORDER BY published_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get("published_at")?))
            .collect()
    }

    /// Notifies `wake` after every commit that enqueued events, in any
    /// process (`LISTEN`); returns only when the connection fails.
    pub async fn listen_for_commits(
        &self,
        wake: &tokio::sync::Notify,
    ) -> Result<std::convert::Infallible, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        tracing::debug!("listening for outbox commits");
        // Commits while no listener was connected went unheard: look once.
        wake.notify_one();
        loop {
            listener.recv().await?;
            wake.notify_one();
        }
    }

    /// Whether this process holds the relay's publishing lock (taking it if free).
    pub async fn is_publishing_relay(&self) -> Result<bool, StoreError> {
        let mut slot = self.relay.lock().await;
        Ok(self.relay_connection(&mut slot).await?.is_some())
    }

    /// The connection holding the publishing lock, acquiring both if the
    /// lock is free; `None` while another relay holds it.
    async fn relay_connection<'a>(
        &self,
        slot: &'a mut Option<PgConnection>,
    ) -> Result<Option<&'a mut PgConnection>, StoreError> {
        if slot.is_none() {
            // Detached at once: if this future is dropped mid-query, the
            // connection closes instead of returning to the pool locked.
            let mut conn = self.pool.acquire().await?.detach();
            let locked = tokio::time::timeout(
                RELAY_QUERY_TIMEOUT,
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(RELAY_LOCK_KEY)
                    .fetch_one(&mut conn),
            )
            .await
            .map_err(|_| StoreError::Timeout("the relay's lock request"))??;
            if !locked {
                return Ok(None);
            }
            tracing::info!(database = %self.display, "this relay now publishes the outbox");
            *slot = Some(conn);
        }
        Ok(slot.as_mut())
    }

    /// Closes the pool (ending the relay's session releases its lock).
    pub async fn close(&self) {
        if let Some(conn) = self.relay.lock().await.take() {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }
}

fn task_from_row(row: &PgRow) -> Result<Task, StoreError> {
    const T: &str = "tasks";
    let title: String = row.try_get("title")?;
    let description: Option<String> = row.try_get("description")?;
    let priority: String = row.try_get("priority")?;
    let status: String = row.try_get("status")?;
    let assignee: Option<String> = row.try_get("assignee")?;
    Ok(Task {
        id: TaskId::from_uuid(row.try_get("id")?),
        title: TaskTitle::from_stored(&title).map_err(|e| corrupt(T, e.to_string()))?,
        description: description
            .map(|d| Description::from_stored(&d))
            .transpose()
            .map_err(|e| corrupt(T, e.to_string()))?,
        priority: Priority::parse(&priority)
            .ok_or_else(|| corrupt(T, format!("bad priority {priority:?}")))?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| corrupt(T, format!("bad status {status:?}")))?,
        due_at: row.try_get("due_at")?,
        assignee: assignee
            .map(|a| Assignee::from_stored(&a))
            .transpose()
            .map_err(|e| corrupt(T, e.to_string()))?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

/// Inserts the outbox row and tells listening relays, both inside `tx`
/// (PostgreSQL delivers the notification only if the transaction commits).
async fn enqueue(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    m: &OutboxMessage,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(m.id)
    .bind(&m.aggregate_type)
    .bind(&m.aggregate_id)
    .bind(&m.event_type)
    .bind(&m.payload)
    .bind(&m.topic)
    .bind(&m.content_type)
    .bind(&m.traceparent)
    .bind(m.created_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How long a commit whose connection failed may stay "in progress" on the
/// server before its outcome is declared unknown.
const IN_DOUBT_WAIT: Duration = Duration::from_secs(10);

impl PgStore {
    /// Commits a task write's transaction, whose id is `xid`
    /// (`pg_current_xact_id()`, taken by its first statement).
    ///
    /// A `COMMIT` can fail after the server made it durable (the connection
    /// dropped before the answer arrived) or while the server is still
    /// finishing it. Reporting such a write as failed would be a lie either
    /// way, so the outcome is asked of the server on another connection
    /// (`pg_xact_status`), waiting while the transaction is still in
    /// progress; only when that is impossible is it
    /// [`StoreError::OutcomeUnknown`].
    async fn commit_task_write(
        &self,
        tx: sqlx::Transaction<'_, Postgres>,
        xid: &str,
    ) -> Result<(), StoreError> {
        let Err(error) = tx.commit().await else {
            return Ok(());
        };
        let error = StoreError::from(error);
        let deadline = tokio::time::Instant::now() + IN_DOUBT_WAIT;
        loop {
            let status: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_xact_status($1::text::xid8)")
                    .bind(xid)
                    .fetch_one(&self.pool)
                    .await;
            match status.as_ref().map(|s| s.as_deref()) {
                Ok(Some("committed")) => {
                    tracing::warn!(%error, "the commit reported an error but took effect");
                    return Ok(());
                }
                Ok(Some("aborted")) => return Err(error),
                Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => {
                    let seen = match other {
                        Ok(status) => format!("the server says {status:?}"),
                        Err(check) => format!("checking failed: {check}"),
                    };
                    tracing::error!(%error, seen, "a commit failed and its outcome cannot be checked");
                    return Err(StoreError::OutcomeUnknown(format!("{error}; {seen}")));
                }
            }
        }
    }

    async fn insert_task_once(&self, task: &Task, event: &OutboxMessage) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let xid: String = sqlx::query_scalar(
            "INSERT INTO tasks (id, title, description, priority, status, due_at, assignee, version, created_at, updated_at, completed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING pg_current_xact_id()::text",
        )
        .bind(task.id.as_uuid())
        .bind(task.title.as_str())
        .bind(task.description.as_ref().map(|d| d.as_str()))
        .bind(task.priority.as_str())
        .bind(task.status.as_str())
        .bind(task.due_at)
        .bind(task.assignee.as_ref().map(|a| a.as_str()))
        .bind(task.version)
        .bind(task.created_at)
        .bind(task.updated_at)
        .bind(task.completed_at)
        .fetch_one(&mut *tx)
        .await?;
        enqueue(&mut tx, event).await?;
        self.commit_task_write(tx, &xid).await
    }

    async fn save_task_once(
        &self,
        task: &Task,
        expected_version: i64,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let xid: Option<String> = sqlx::query_scalar(
            "UPDATE tasks SET title = $1, description = $2, priority = $3, status = $4, due_at = $5,
                assignee = $6, version = $7, updated_at = $8, completed_at = $9
             WHERE id = $10 AND version = $11
             RETURNING pg_current_xact_id()::text",
        )
        .bind(task.title.as_str())
        .bind(task.description.as_ref().map(|d| d.as_str()))
        .bind(task.priority.as_str())
        .bind(task.status.as_str())
        .bind(task.due_at)
        .bind(task.assignee.as_ref().map(|a| a.as_str()))
        .bind(task.version)
        .bind(task.updated_at)
        .bind(task.completed_at)
        .bind(task.id.as_uuid())
        .bind(expected_version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(xid) = xid else {
            // Dropping the transaction rolls it back.
            return Err(StoreError::VersionConflict {
                task_id: task.id.to_string(),
                expected: expected_version,
            });
        };
        enqueue(&mut tx, event).await?;
        self.commit_task_write(tx, &xid).await
    }

    /// The outcome of the latest task write.
    pub fn write_health(&self) -> &WriteHealth {
        &self.health
    }

    /// Tries a small write and records its outcome in
    /// [`PgStore::write_health`]: readiness calls it while task writes are
    /// failing, to notice when the database takes writes again.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let outcome = sqlx::query(
            "INSERT INTO write_probe (id, probed_at) VALUES (1, now())
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
        )
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(StoreError::from);
        self.health.record(&outcome);
        outcome
    }
}

#[async_trait]
impl TaskStore for PgStore {
    async fn insert_task(&self, task: &Task, event: &OutboxMessage) -> Result<(), StoreError> {
        let outcome = self.insert_task_once(task, event).await;
        self.health.record(&outcome);
        outcome
    }

    async fn save_task(
        &self,
        task: &Task,
        expected_version: i64,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let outcome = self.save_task_once(task, expected_version, event).await;
        self.health.record(&outcome);
        outcome
    }

    async fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new("SELECT * FROM tasks WHERE ");
        match query.status {
            Some(status) => sql.push("status = ").push_bind(status.as_str()),
            None => sql.push("status <> 'deleted'"),
        };
        if let Some(after) = query.after {
            sql.push(" AND id > ").push_bind(after.as_uuid());
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(task_from_row).collect()
    }
}

fn pending_from_row(row: &PgRow) -> Result<PendingMessage, StoreError> {
    Ok(PendingMessage {
        seq: row.try_get("seq")?,
        attempts: row.try_get("attempts")?,
        message: OutboxMessage {
            id: row.try_get("id")?,
            aggregate_type: row.try_get("aggregatetype")?,
            aggregate_id: row.try_get("aggregateid")?,
            event_type: row.try_get("type")?,
            topic: row.try_get("topic")?,
            payload: row.try_get("payload")?,
            content_type: row.try_get("content_type")?,
            traceparent: row.try_get("traceparent")?,
            created_at: row.try_get("created_at")?,
        },
    })
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn pending(&self, limit: u32) -> Result<Vec<PendingMessage>, StoreError> {
        let mut slot = self.relay.lock().await;
        // A relay that does not hold the lock sees nothing to publish.
        let Some(conn) = self.relay_connection(&mut slot).await? else {
            return Ok(Vec::new());
        };
        let rows = tokio::time::timeout(
            RELAY_QUERY_TIMEOUT,
            sqlx::query(
                "SELECT seq, attempts, id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at
                 FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&mut *conn),
        )
        .await;
        match rows {
            Ok(Ok(rows)) => rows.iter().map(pending_from_row).collect(),
            failed => {
                // The session may be gone, and the lock with it: drop it and
                // win the lock again next time.
                *slot = None;
                Err(match failed {
                    Ok(Err(e)) => e.into(),
                    _ => StoreError::Timeout("the relay's outbox query"),
                })
            }
        }
    }

    async fn mark_published(&self, seqs: &[i64], at: DateTime<Utc>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        // Marked through the pool, not the lock's session: a relay that lost
        // the lock after publishing must still record what the broker took.
        sqlx::query("UPDATE outbox SET published_at = $1 WHERE seq = ANY($2)")
            .bind(at)
            .bind(&seqs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $1 WHERE seq = $2")
            .bind(error)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE seq IN (
                 SELECT seq FROM outbox
                 WHERE published_at IS NOT NULL AND published_at < $1
                 ORDER BY seq LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox) AS total,
                    COUNT(*) AS pending, MIN(created_at) AS oldest
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxStats {
            total: row.try_get("total")?,
            pending: row.try_get("pending")?,
            oldest_pending_at: row.try_get("oldest")?,
        })
    }
}

async fn append_entry(conn: &mut sqlx::PgConnection, e: &AuditEntry) -> Result<bool, StoreError> {
    let done = sqlx::query(
        r#"INSERT INTO audit_log (event_id, event_type, task_id, task_version, event_time, correlation_id,
            topic, partition, "offset", recorded_at, envelope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (event_id) DO NOTHING"#,
    )
    .bind(e.event_id)
    .bind(&e.event_type)
    .bind(&e.task_id)
    .bind(e.task_version)
    .bind(e.event_time)
    .bind(&e.correlation_id)
    .bind(&e.topic)
    .bind(e.partition)
    .bind(e.offset)
    .bind(e.recorded_at)
    .bind(&e.envelope)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks `event_id` processed by `consumer` and stores its notifications;
/// `false` (writing nothing) if it was processed already.
async fn record_event(
    conn: &mut sqlx::PgConnection,
    consumer: &str,
    event_id: Uuid,
    sent: &[NotificationRecord],
) -> Result<bool, StoreError> {
    let marked = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(taskstream_domain::now())
    .execute(&mut *conn)
    .await?;
    if marked.rows_affected() == 0 {
        return Ok(false);
    }
    for n in sent {
        sqlx::query(
            "INSERT INTO notifications (id, event_id, event_type, task_id, kind, recipient, message, channel, sent_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING",
        )
        .bind(n.id)
        .bind(n.event_id)
        .bind(&n.event_type)
        .bind(&n.task_id)
        .bind(&n.kind)
        .bind(&n.recipient)
        .bind(&n.message)
        .bind(&n.channel)
        .bind(n.sent_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append(&self, e: &AuditEntry) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        append_entry(&mut conn, e).await
    }

    async fn append_batch(&self, entries: &[AuditEntry]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut fresh = Vec::with_capacity(entries.len());
        for e in entries {
            fresh.push(append_entry(&mut tx, e).await?);
        }
        tx.commit().await?;
        Ok(fresh)
    }

    async fn audit_entries(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new("SELECT * FROM audit_log");
        if let Some(task_id) = task_id {
            sql.push(" WHERE task_id = ").push_bind(task_id);
        }
        sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    task_id: row.try_get("task_id")?,
                    task_version: row.try_get("task_version")?,
                    event_time: row.try_get("event_time")?,
                    correlation_id: row.try_get("correlation_id")?,
                    topic: row.try_get("topic")?,
                    partition: row.try_get("partition")?,
                    offset: row.try_get("offset")?,
                    recorded_at: row.try_get("recorded_at")?,
                    envelope: row.try_get("envelope")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl NotificationStore for PgStore {
    async fn is_processed(&self, consumer: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2")
                .bind(consumer)
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn record_notifications(
        &self,
        consumer: &str,
        event_id: Uuid,
        sent: &[NotificationRecord],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let fresh = record_event(&mut tx, consumer, event_id, sent).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    async fn record_notifications_batch(
        &self,
        consumer: &str,
        events: &[(Uuid, Vec<NotificationRecord>)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut fresh = Vec::with_capacity(events.len());
        for (event_id, sent) in events {
            fresh.push(record_event(&mut tx, consumer, *event_id, sent).await?);
        }
        tx.commit().await?;
        Ok(fresh)
    }

    async fn notifications(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new("SELECT * FROM notifications");
        if let Some(task_id) = task_id {
            sql.push(" WHERE task_id = ").push_bind(task_id);
        }
        sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(NotificationRecord {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    task_id: row.try_get("task_id")?,
                    kind: row.try_get("kind")?,
                    recipient: row.try_get("recipient")?,
                    message: row.try_get("message")?,
                    channel: row.try_get("channel")?,
                    sent_at: row.try_get("sent_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/tasks"),
            "postgres://app:<redacted>@db:5432/tasks"
        );
        assert_eq!(
            redact_url("postgres://app@db/tasks"),
            "postgres://app@db/tasks"
        );
        assert_eq!(redact_url("postgres://db/tasks"), "postgres://db/tasks");
    }
}
