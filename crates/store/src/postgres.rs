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
//! Only one relay publishes at a time: its outbox [`Lease`] is a
//! session-level advisory lock, held by the connection it reads the outbox
//! through. A second replica finds the lock taken and stands by, and takes
//! over when the first one releases the lease or its session ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder};
use taskstream_domain::{Task, TaskId};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::consumer_stores::consumer_stores;
use crate::health::WriteHealth;
use crate::rows::{self, StoredRow};
use crate::suggestion_stores::suggestion_store;
use crate::{
    sql, HandledBy, Lease, OutboxMessage, OutboxStats, OutboxStore, PendingMessage, StoreError,
    TaskQuery, TaskStore,
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
    /// The relay's connection while it holds the outbox lease: taken out
    /// of the pool for good, so a session holding the lock can never be
    /// handed to other work (closing it releases the lock).
    relay: Mutex<Option<LeaseSession>>,
    /// A standby's connection for asking for the lock, kept between
    /// attempts (a standby asks every poll and on every commit it hears
    /// of); it becomes the relay's session when the lock is won.
    standby: Mutex<Option<PgConnection>>,
    /// The grant number of the next lease won.
    grants: AtomicU64,
    /// The outcome of the latest task write, for readiness.
    health: WriteHealth,
}

/// The session holding the outbox lease, and which grant it is.
#[derive(Debug)]
struct LeaseSession {
    conn: PgConnection,
    grant: u64,
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

/// How PostgreSQL binds a UUID: as one.
fn id(u: Uuid) -> Uuid {
    u
}

/// How PostgreSQL binds a time: as a `timestamptz`.
fn at(t: &DateTime<Utc>) -> DateTime<Utc> {
    *t
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
            standby: Mutex::new(None),
            grants: AtomicU64::new(1),
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
        let done = sqlx::query(&sql::requeue_unhandled("", ""))
            .bind(notifier)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// See [`crate::SqliteStore::requeue_events_unhandled_by`].
    pub async fn requeue_events_unhandled_by(
        &self,
        by: HandledBy<'_>,
        topic: &str,
    ) -> Result<u64, StoreError> {
        let done = match by {
            HandledBy::AuditLog => {
                sqlx::query(&sql::requeue_unaudited(""))
                    .bind(topic)
                    .execute(&self.pool)
                    .await?
            }
            HandledBy::Processed(consumer) => {
                sqlx::query(&sql::requeue_unprocessed(""))
                    .bind(consumer)
                    .bind(topic)
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
        let rows = sqlx::query(sql::PROCESSED_TIMES)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::processed_time).collect()
    }

    /// When each published outbox row was acknowledged by the broker, in order.
    pub async fn published_times(&self) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let rows = sqlx::query(sql::PUBLISHED_TIMES)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.time("outbox", "published_at"))
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

    /// Wins the advisory lock on a connection of its own; `None` while
    /// another session holds it.
    async fn lock_session(&self) -> Result<Option<PgConnection>, StoreError> {
        // Out of the pool for good (detached), and out of `standby` while
        // asking: if this future is dropped mid-query, or the query fails,
        // the connection closes instead of being used again, perhaps locked.
        let spare = self.standby.lock().await.take();
        let mut conn = match spare {
            Some(conn) => conn,
            None => self.pool.acquire().await?.detach(),
        };
        let locked = tokio::time::timeout(
            RELAY_QUERY_TIMEOUT,
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout("the relay's lock request"))??;
        if locked {
            return Ok(Some(conn));
        }
        *self.standby.lock().await = Some(conn);
        Ok(None)
    }

    /// Closes the pool (ending the relay's session releases its lock).
    pub async fn close(&self) {
        if let Some(session) = self.relay.lock().await.take() {
            let _ = session.conn.close().await;
        }
        if let Some(conn) = self.standby.lock().await.take() {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }
}

/// Inserts the outbox row and tells listening relays, both inside `tx`
/// (PostgreSQL delivers the notification only if the transaction commits).
async fn enqueue(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    m: &OutboxMessage,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_OUTBOX)
        .bind(id(m.id))
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
        let xid: String = sqlx::query_scalar(concat!(
            sql::insert_task!(),
            " RETURNING pg_current_xact_id()::text"
        ))
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
        let xid: Option<String> = sqlx::query_scalar(concat!(
            sql::update_task!(),
            " RETURNING pg_current_xact_id()::text"
        ))
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

    async fn task(&self, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(sql::TASK_BY_ID)
            .bind(id(task_id.as_uuid()))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::task).transpose()
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
        rows.iter().map(rows::task).collect()
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn acquire_lease(&self, holder: &str) -> Result<Option<Lease>, StoreError> {
        let mut slot = self.relay.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(Some(Lease::new(holder, session.grant)));
        }
        let Some(conn) = self.lock_session().await? else {
            return Ok(None);
        };
        let grant = self.grants.fetch_add(1, Ordering::Relaxed);
        tracing::info!(database = %self.display, holder, "this relay holds the outbox lease and publishes");
        *slot = Some(LeaseSession { conn, grant });
        Ok(Some(Lease::new(holder, grant)))
    }

    async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        let mut slot = self.relay.lock().await;
        if slot.as_ref().is_some_and(|s| s.grant == lease.grant()) {
            let session = slot.take().expect("checked above");
            // Ending the session releases the lock; if the goodbye gets no
            // answer, dropping the connection closes its socket all the same.
            let _ = tokio::time::timeout(RELAY_QUERY_TIMEOUT, session.conn.close()).await;
            tracing::info!(database = %self.display, holder = lease.holder(), "this relay released the outbox lease");
        }
        Ok(())
    }

    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, StoreError> {
        let mut slot = self.relay.lock().await;
        let Some(session) = slot.as_mut().filter(|s| s.grant == lease.grant()) else {
            return Err(StoreError::LeaseLost);
        };
        let mut query = QueryBuilder::<Postgres>::new(sql::SELECT_PENDING);
        if !in_flight.is_empty() {
            query
                .push(" AND seq <> ALL(")
                .push_bind(in_flight.to_vec())
                .push(")");
        }
        query
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit));
        let rows = tokio::time::timeout(
            RELAY_QUERY_TIMEOUT,
            query.build().fetch_all(&mut session.conn),
        )
        .await;
        match rows {
            Ok(Ok(rows)) => rows.iter().map(rows::pending).collect(),
            failed => {
                // The session may be gone, and the lock with it: the lease
                // ends here, and the relay must win it again.
                *slot = None;
                tracing::warn!(database = %self.display, holder = lease.holder(), "the relay's session failed; it no longer holds the outbox lease");
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
        // Only rows not marked yet: a relay that lost the lease may mark
        // rows a standby marked already, and must not move their time.
        sqlx::query(
            "UPDATE outbox SET published_at = $1 WHERE seq = ANY($2) AND published_at IS NULL",
        )
        .bind(at)
        .bind(&seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unpublished_among(
        &self,
        topic: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, seq FROM outbox WHERE published_at IS NULL AND topic = $1 AND id = ANY($2)",
        )
        .bind(topic)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.uuid("outbox", "id")?, row.int("seq")?)))
            .collect()
    }

    async fn unpublished_topics(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(sql::UNPUBLISHED_TOPICS)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| row.text("topic")).collect()
    }

    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(sql::RECORD_FAILURE)
            .bind(error)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::PRUNE_PUBLISHED)
            .bind(before)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(sql::OUTBOX_STATS).fetch_one(&self.pool).await?;
        rows::outbox_stats(&row)
    }

    async fn replication_slots(&self) -> Result<Vec<crate::ReplicationSlot>, StoreError> {
        PgStore::replication_slots(self).await
    }
}

consumer_stores!(PgStore, Postgres, writer = pool, reader = pool);
suggestion_store!(PgStore, Postgres, writer = pool, reader = pool);

/// Serialises the capacity checks of one assignee's sagas across processes
/// until the transaction ends, so two starts cannot both see the last free
/// slot.
async fn lock_assignee(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    assignee: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('taskstream-saga:' || $1, 0))")
        .bind(assignee)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

crate::sagas::saga_stores!(
    PgStore,
    Postgres,
    writer = pool,
    reader = pool,
    lock = lock_assignee
);

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
