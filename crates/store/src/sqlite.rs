//! SQLite implementation of every store trait.
//!
//! One process writes through a single connection (SQLite serialises writers
//! anyway; one connection avoids lock upgrades and `SQLITE_BUSY` inside the
//! process) and reads through a small pool, in WAL mode so reads never wait
//! for the writer.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use taskstream_domain::{Task, TaskId};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::consumer_stores::consumer_stores;

use crate::health::WriteHealth;
use crate::rows::{self, StoredRow};
use crate::suggestion_stores::suggestion_store;
use crate::{
    sql, HandledBy, Lease, OutboxMessage, OutboxStats, OutboxStore, PendingMessage, StoreError,
    TaskQuery, TaskStore,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How hard SQLite works to make a commit durable.
///
/// In WAL mode `Normal` survives a crash of the process but may lose the last
/// commits on power loss; `Full` also survives power loss, at one more
/// `fsync` per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    Normal,
    #[default]
    Full,
}

impl FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            other => Err(format!("expected `normal` or `full`, got `{other}`")),
        }
    }
}

/// Settings for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// How long a writer waits for another process's lock before failing.
    pub busy_timeout: Duration,
    pub read_connections: u32,
    /// Caps the database at this many pages (SQLite's `max_page_count`):
    /// a write that would grow the file further fails exactly as on a full
    /// disk. `None` (the default) leaves the size to the file system.
    pub max_page_count: Option<u32>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            max_page_count: None,
        }
    }
}

/// All taskstream state in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// Task writes, committed in groups by a background task.
    task_writes: mpsc::Sender<QueuedWrite>,
    /// The cap on the file's size in pages (0: none), applied to every
    /// writer connection.
    size_limit: Arc<AtomicU32>,
    /// The outcome of the latest task write, for readiness.
    health: WriteHealth,
    /// The relay lease: an exclusive lock on `<database>-relay.lock`, held
    /// while a relay of this store publishes, and which grant it is.
    relay_lock: Arc<std::sync::Mutex<(Option<std::fs::File>, u64)>>,
}

/// How SQLite stores a UUID: hyphenated text.
fn id(u: Uuid) -> String {
    u.to_string()
}

/// How SQLite stores a time: see [`rows::sqlite_time`].
fn at(t: &DateTime<Utc>) -> String {
    rows::sqlite_time(t)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema
    /// up to date.
    pub async fn open(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    source: sqlx::Error::Io(e),
                })?;
            }
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let size_limit = Arc::new(AtomicU32::new(options.max_page_count.unwrap_or(0)));
        let limit = Arc::clone(&size_limit);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .after_connect(move |conn, _| {
                let pages = limit.load(Ordering::Acquire);
                Box::pin(async move {
                    if pages != 0 {
                        apply_page_limit(conn, pages).await?;
                    }
                    Ok(())
                })
            })
            // A writer connection goes back to the pool only when it is
            // outside any transaction, as sqlx's bookkeeping sees it after
            // every queued command (the rollback of a dropped transaction
            // included) has run. A rollback that failed because SQLite had
            // already ended the transaction leaves that bookkeeping wrong,
            // and the next `begin` would silently open a savepoint inside a
            // transaction that never commits; such a connection is closed and
            // replaced instead.
            .after_release(|conn, _| {
                Box::pin(async move {
                    sqlx::Connection::ping(&mut *conn).await?;
                    let clean = !sqlx::Connection::is_in_transaction(&*conn);
                    if !clean {
                        tracing::warn!("closing a database connection left inside a transaction");
                    }
                    Ok(clean)
                })
            })
            .connect_with(connect.clone())
            .await
            .map_err(open_err)?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(open_err)?;
        let (task_writes, queue) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(group_commit_loop(writer.clone(), reader.clone(), queue));
        Ok(Self {
            writer,
            reader,
            path: path.to_owned(),
            task_writes,
            size_limit,
            health: WriteHealth::default(),
            relay_lock: Arc::new(std::sync::Mutex::new((None, 0))),
        })
    }

    /// The file whose exclusive lock is the relay lease.
    fn relay_lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push("-relay.lock");
        PathBuf::from(name)
    }

    /// The outcome of the latest task write.
    pub fn write_health(&self) -> &WriteHealth {
        &self.health
    }

    /// Tries a small write that needs fresh space (a few pages of ballast,
    /// cleared in the same transaction) and records its outcome in
    /// [`SqliteStore::write_health`]: readiness calls it while task writes
    /// are failing, to notice when the database takes writes again.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let outcome = async {
            let mut tx = self.writer.begin().await?;
            sqlx::query(
                "INSERT INTO write_probe (id, probed_at, ballast) VALUES (1, ?, zeroblob(16384))
                 ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at, ballast = excluded.ballast",
            )
            .bind(at(&taskstream_domain::now()))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE write_probe SET ballast = NULL WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await;
        self.health.record(&outcome);
        outcome
    }

    /// Caps the database at `pages` pages from now on (`None` lifts the
    /// cap): writes that would grow it further fail with
    /// [`StoreError::StorageFull`], as on a full disk. Lets tests and drills
    /// fill the "disk" on demand, and free it again, without special mounts.
    pub async fn limit_size(&self, pages: Option<u32>) -> Result<(), StoreError> {
        self.size_limit.store(pages.unwrap_or(0), Ordering::Release);
        let mut conn = self.writer.acquire().await?;
        apply_page_limit(&mut conn, pages.unwrap_or(u32::MAX)).await?;
        Ok(())
    }

    /// How many pages the database file has now.
    pub async fn page_count(&self) -> Result<u32, StoreError> {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&self.reader)
            .await?;
        Ok(u32::try_from(pages).unwrap_or(u32::MAX))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the database answers; used by readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Marks published events unpublished again when this database shows
    /// that a consumer has not handled them yet: no audit-log entry, or not
    /// processed by `notifier`. Returns how many were requeued.
    ///
    /// For `taskstream up` on the dev broker, whose memory dies with the
    /// process: events published to it but not yet consumed would otherwise
    /// never arrive. Both consumers keep their state in this same database
    /// there, so the outbox can tell; the relay then publishes the events
    /// again, in their original order, and the consumers' de-duplication by
    /// event id absorbs any that were in fact handled.
    pub async fn requeue_unhandled_events(&self, notifier: &str) -> Result<u64, StoreError> {
        self.requeue_unhandled_events_in(notifier, &self.path, &self.path)
            .await
    }

    /// Marks the published events on `topic` unpublished again when `by`
    /// has not handled them; returns how many. Repairs a consumer group
    /// that skipped events deleted from the topic before it read them: the
    /// relay publishes them again, in their original order, and the group's
    /// de-duplication by event id absorbs any it did handle.
    pub async fn requeue_events_unhandled_by(
        &self,
        by: HandledBy<'_>,
        topic: &str,
    ) -> Result<u64, StoreError> {
        self.requeue_events_unhandled_in(by, &self.path, topic)
            .await
    }

    /// [`SqliteStore::requeue_unhandled_events`] where each consumer keeps
    /// its state in a database of its own (`taskstream up`: one file per
    /// service): the audit log in the SQLite file `audit`, the notifier's
    /// processed events in `notifications`. Either may be this store's own
    /// file.
    pub async fn requeue_unhandled_events_in(
        &self,
        notifier: &str,
        audit: &Path,
        notifications: &Path,
    ) -> Result<u64, StoreError> {
        let attached = Attached::new(
            &self.path,
            [("audit_db", audit), ("notifier_db", notifications)],
        );
        let statement = sql::requeue_unhandled(&attached.prefix(0), &attached.prefix(1));
        Ok(self
            .run_attached(&attached, &[(statement, vec![notifier])])
            .await?[0])
    }

    /// [`SqliteStore::requeue_events_unhandled_by`] where the consumer keeps
    /// its state in the SQLite file `handled_in` (its own database), which
    /// may be this store's own file.
    pub async fn requeue_events_unhandled_in(
        &self,
        by: HandledBy<'_>,
        handled_in: &Path,
        topic: &str,
    ) -> Result<u64, StoreError> {
        let attached = Attached::new(&self.path, [("handled_db", handled_in)]);
        let prefix = attached.prefix(0);
        let statement = match by {
            HandledBy::AuditLog => (sql::requeue_unaudited(&prefix), vec![topic]),
            HandledBy::Processed(consumer) => {
                (sql::requeue_unprocessed(&prefix), vec![consumer, topic])
            }
        };
        Ok(self.run_attached(&attached, &[statement]).await?[0])
    }

    /// Copies, once, the rows of `tables` from the database `from` into
    /// this one, and remembers in the same transaction that it did (table
    /// `adopted_rows`): a data directory written when every service shared
    /// one file gives each service's database its own history when the
    /// service moves to a file of its own. Rows already here are kept; the
    /// rows in `from` are left as they are. `from` is an open store, so its
    /// schema is the same as this one's. Returns how many rows were copied
    /// (0 when done before, or when `from` is this very file).
    pub async fn adopt_rows_once(
        &self,
        from: &SqliteStore,
        tables: &[&str],
    ) -> Result<u64, StoreError> {
        if same_file(&from.path, &self.path) {
            return Ok(0);
        }
        let source = from
            .path
            .canonicalize()
            .unwrap_or_else(|_| from.path.clone());
        let source = source.display().to_string();
        sqlx::query(sql::CREATE_ADOPTED_ROWS)
            .execute(&self.writer)
            .await?;
        let done: Option<String> = sqlx::query_scalar(sql::ADOPTED_FROM)
            .bind(&source)
            .fetch_optional(&self.writer)
            .await?;
        if done.is_some() {
            return Ok(0);
        }
        let attached = Attached::new(&self.path, [("legacy_db", from.path.as_path())]);
        let tables_list = tables.join(",");
        let now = at(&taskstream_domain::now());
        let mut statements: Vec<(String, Vec<&str>)> = Vec::new();
        for table in tables {
            // Every column but the local sequence number, which this file
            // hands out itself (in the old rows' order): a row already here
            // keeps its number, and an old one never collides with it. The
            // tables' unique keys (event id, notification id) drop a row
            // that is already here.
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                    .bind(*table)
                    .fetch_all(&self.writer)
                    .await?;
            let order = match columns.iter().any(|c| c == "seq") {
                true => " ORDER BY seq",
                false => "",
            };
            let columns = columns
                .iter()
                .filter(|c| *c != "seq")
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            statements.push((
                format!(
                    "INSERT OR IGNORE INTO main.{table} ({columns}) SELECT {columns} FROM legacy_db.{table}{order}"
                ),
                Vec::new(),
            ));
        }
        // Another process may have copied meanwhile: its rows are ignored
        // above, and so is its record here.
        statements.push((
            sql::RECORD_ADOPTION.to_owned(),
            vec![source.as_str(), tables_list.as_str(), now.as_str()],
        ));
        let changed = self.run_attached(&attached, &statements).await?;
        Ok(changed[..tables.len()].iter().sum())
    }

    /// Runs `statements` (each with its text parameters) in one
    /// transaction on the writer connection, with the other files of
    /// `attached` attached for their duration; returns the rows each
    /// changed. A connection left in doubt (a failed DETACH) is closed, not
    /// returned to the pool; a file left attached by a call that was
    /// cancelled midway is detached first.
    async fn run_attached(
        &self,
        attached: &Attached<'_>,
        statements: &[(String, Vec<&str>)],
    ) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp')",
        )
        .fetch_all(&mut *conn)
        .await?;
        for alias in left {
            sqlx::query(&format!("DETACH DATABASE \"{alias}\""))
                .execute(&mut *conn)
                .await?;
        }
        let mut names = Vec::new();
        let outcome = async {
            for (alias, path) in attached.others() {
                sqlx::query(&format!("ATTACH DATABASE ? AS {alias}"))
                    .bind(path.to_string_lossy().into_owned())
                    .execute(&mut *conn)
                    .await?;
                names.push(alias);
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let mut changed = Vec::with_capacity(statements.len());
            for (statement, parameters) in statements {
                let mut query = sqlx::query(statement);
                for p in parameters {
                    query = query.bind(*p);
                }
                changed.push(query.execute(&mut *tx).await?.rows_affected());
            }
            tx.commit().await?;
            Ok::<Vec<u64>, StoreError>(changed)
        }
        .await;
        for alias in names {
            if let Err(error) = sqlx::query(&format!("DETACH DATABASE {alias}"))
                .execute(&mut *conn)
                .await
            {
                tracing::warn!(%error, "could not detach {alias}; closing the connection");
                conn.close_on_drop();
                break;
            }
        }
        outcome
    }

    /// When `consumer` finished each event it processed.
    pub async fn processed_times(
        &self,
        consumer: &str,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(sql::PROCESSED_TIMES)
            .bind(consumer)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::processed_time).collect()
    }

    /// When each published outbox row was acknowledged by the broker, in order.
    pub async fn published_times(&self) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let rows = sqlx::query(sql::PUBLISHED_TIMES)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| r.time("outbox", "published_at"))
            .collect()
    }

    /// Closes both pools, waiting for in-flight statements.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        // A closed store publishes nothing: let a standby relay have the lease.
        self.relay_lock.lock().expect("never poisoned").0 = None;
    }
}

/// Other SQLite files a statement reads, each under an alias, or as `main`
/// when it is the store's own file.
struct Attached<'p> {
    files: Vec<(&'static str, &'p Path, bool)>,
}

impl<'p> Attached<'p> {
    fn new<const N: usize>(own: &Path, files: [(&'static str, &'p Path); N]) -> Self {
        Self {
            files: files
                .into_iter()
                .map(|(alias, path)| (alias, path, same_file(path, own)))
                .collect(),
        }
    }

    /// How the statement names the tables of the `i`th file: `main.`, or
    /// its alias.
    fn prefix(&self, i: usize) -> String {
        match self.files[i] {
            (_, _, true) => "main.".to_owned(),
            (alias, _, false) => format!("{alias}."),
        }
    }

    /// The files to attach (the ones that are not the store's own).
    fn others(&self) -> impl Iterator<Item = (&'static str, &'p Path)> + '_ {
        self.files
            .iter()
            .filter(|(_, _, own)| !own)
            .map(|&(alias, path, _)| (alias, path))
    }
}

/// Whether two paths name the same file (compared canonically when both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Sets `max_page_count` on one connection (SQLite keeps it per connection;
/// a value above its ceiling is clamped to the ceiling).
async fn apply_page_limit(
    conn: &mut sqlx::SqliteConnection,
    pages: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
        .execute(conn)
        .await?;
    Ok(())
}

async fn enqueue(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
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
        .bind(at(&m.created_at))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A task change waiting for the next group commit.
enum TaskWrite {
    Insert {
        task: Task,
        event: OutboxMessage,
    },
    Save {
        task: Task,
        expected_version: i64,
        event: OutboxMessage,
    },
}

impl TaskWrite {
    /// The event the write enqueues.
    fn event(&self) -> &OutboxMessage {
        match self {
            Self::Insert { event, .. } | Self::Save { event, .. } => event,
        }
    }
}

/// A write and the caller waiting for its commit.
struct QueuedWrite {
    write: TaskWrite,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The most task writes one transaction commits together.
const MAX_GROUP: usize = 256;

/// Writes one task change and its outbox row inside `tx`.
async fn apply(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    write: &TaskWrite,
) -> Result<(), StoreError> {
    match write {
        TaskWrite::Insert { task, event } => {
            sqlx::query(sql::INSERT_TASK)
                .bind(id(task.id.as_uuid()))
                .bind(task.title.as_str())
                .bind(task.description.as_ref().map(|d| d.as_str()))
                .bind(task.priority.as_str())
                .bind(task.status.as_str())
                .bind(task.due_at.as_ref().map(at))
                .bind(task.assignee.as_ref().map(|a| a.as_str()))
                .bind(task.version)
                .bind(at(&task.created_at))
                .bind(at(&task.updated_at))
                .bind(task.completed_at.as_ref().map(at))
                .execute(&mut **tx)
                .await?;
            enqueue(tx, event).await
        }
        TaskWrite::Save {
            task,
            expected_version,
            event,
        } => {
            let updated = sqlx::query(sql::UPDATE_TASK)
                .bind(task.title.as_str())
                .bind(task.description.as_ref().map(|d| d.as_str()))
                .bind(task.priority.as_str())
                .bind(task.status.as_str())
                .bind(task.due_at.as_ref().map(at))
                .bind(task.assignee.as_ref().map(|a| a.as_str()))
                .bind(task.version)
                .bind(at(&task.updated_at))
                .bind(task.completed_at.as_ref().map(at))
                .bind(id(task.id.as_uuid()))
                .bind(expected_version)
                .execute(&mut **tx)
                .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::VersionConflict {
                    task_id: task.id.to_string(),
                    expected: *expected_version,
                });
            }
            enqueue(tx, event).await
        }
    }
}

/// Commits task writes in groups: while one transaction commits (and
/// fsyncs), the writes that arrive queue up and go together in the next,
/// each under its own savepoint so that one refused write (a version
/// conflict) leaves the others in. A caller is answered only after the
/// transaction holding its write committed, so an acknowledged write is as
/// durable as with one transaction per write, at a fraction of the syncs.
async fn group_commit_loop(
    writer: SqlitePool,
    reader: SqlitePool,
    mut queue: mpsc::Receiver<QueuedWrite>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let outcomes = commit_group(&writer, &reader, &group).await;
        for (queued, outcome) in group.into_iter().zip(outcomes) {
            // The caller may have gone away (request cancelled); the write stands.
            let _ = queued.done.send(outcome);
        }
    }
}

// ANCHOR: insert_all
/// Inserts every new task of the group, and their outbox rows, with one
/// statement per table: SQLite work per statement is small, but each
/// statement is a round trip to the database thread.
async fn insert_all(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    inserts: &[(&Task, &OutboxMessage)],
) -> Result<(), StoreError> {
    let mut tasks = QueryBuilder::<Sqlite>::new(
        "INSERT INTO tasks (id, title, description, priority, status, due_at, assignee, version, created_at, updated_at, completed_at) ",
    );
    tasks.push_values(inserts, |mut row, (task, _)| {
        row.push_bind(id(task.id.as_uuid()))
            .push_bind(task.title.as_str())
            .push_bind(task.description.as_ref().map(|d| d.as_str()))
            .push_bind(task.priority.as_str())
            .push_bind(task.status.as_str())
            .push_bind(task.due_at.as_ref().map(at))
            .push_bind(task.assignee.as_ref().map(|a| a.as_str()))
            .push_bind(task.version)
            .push_bind(at(&task.created_at))
            .push_bind(at(&task.updated_at))
            .push_bind(task.completed_at.as_ref().map(at));
    });
    tasks.build().execute(&mut **tx).await?;
    let mut outbox = QueryBuilder::<Sqlite>::new(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, traceparent, created_at) ",
    );
    // Rows keep the group's order, so `seq` follows it.
    outbox.push_values(inserts, |mut row, (_, m)| {
        row.push_bind(id(m.id))
            .push_bind(&m.aggregate_type)
            .push_bind(&m.aggregate_id)
            .push_bind(&m.event_type)
            .push_bind(&m.payload)
            .push_bind(&m.topic)
            .push_bind(&m.content_type)
            .push_bind(&m.traceparent)
            .push_bind(at(&m.created_at));
    });
    outbox.build().execute(&mut **tx).await?;
    Ok(())
}
// ANCHOR_END: insert_all

/// Whether a write's error leaves the surrounding transaction intact.
fn fails_alone(error: &StoreError) -> bool {
    match error {
        StoreError::VersionConflict { .. } => true,
        StoreError::Database(sqlx::Error::Database(db)) => {
            !matches!(db.kind(), sqlx::error::ErrorKind::Other)
        }
        _ => false,
    }
}

/// The error each write of a failed group is answered with: the same kind
/// as the group's, so a full disk reads as a full disk to every caller.
fn group_failure(error: &StoreError) -> StoreError {
    match error {
        StoreError::StorageFull(detail) => StoreError::StorageFull(detail.clone()),
        StoreError::Unavailable(detail) => StoreError::Unavailable(detail.clone()),
        StoreError::OutcomeUnknown(detail) => StoreError::OutcomeUnknown(detail.clone()),
        other => StoreError::CommitFailed(other.to_string()),
    }
}

/// How a group's transaction ended.
enum GroupEnd {
    /// It committed; each write's own outcome (a conflict fails alone).
    Committed(Vec<Result<(), StoreError>>),
    /// It failed before the commit was attempted: nothing was written.
    Refused(StoreError),
    /// The commit itself failed. SQLite then normally leaves nothing
    /// written, but an I/O error during the commit leaves it in doubt, so
    /// the outcomes the commit would have given are kept for the check.
    CommitFailed {
        error: StoreError,
        if_committed: Vec<Result<(), StoreError>>,
    },
}

/// Commits one group and answers every write in it.
///
/// Any failure other than a write's own conflict may have ended the
/// transaction behind sqlx's back (SQLite rolls back by itself on a full
/// disk or an I/O error, after which sqlx's own rollback fails and its
/// transaction bookkeeping no longer matches the connection). Such a
/// connection is never reused: it is closed, and the next group gets a
/// fresh one from the pool. Without that, later groups ran inside a
/// transaction that never committed while their writes were acknowledged.
async fn commit_group(
    writer: &SqlitePool,
    reader: &SqlitePool,
    group: &[QueuedWrite],
) -> Vec<Result<(), StoreError>> {
    let failed_all = |error: &StoreError| group.iter().map(|_| Err(group_failure(error))).collect();
    let mut conn = match writer.acquire().await {
        Ok(conn) => conn,
        Err(e) => return failed_all(&e.into()),
    };
    let end = run_group(&mut conn, group).await;
    match end {
        GroupEnd::Committed(outcomes) => outcomes,
        GroupEnd::Refused(error) => {
            conn.close_on_drop();
            tracing::warn!(%error, writes = group.len(), "a group of task writes failed; none was stored");
            failed_all(&error)
        }
        GroupEnd::CommitFailed {
            error,
            if_committed,
        } => {
            conn.close_on_drop();
            drop(conn);
            resolve_failed_commit(reader, group, error, if_committed).await
        }
    }
}

/// Runs the group's transaction on `conn`.
async fn run_group(conn: &mut sqlx::SqliteConnection, group: &[QueuedWrite]) -> GroupEnd {
    let mut tx = match sqlx::Connection::begin(&mut *conn).await {
        Ok(tx) => tx,
        Err(e) => return GroupEnd::Refused(e.into()),
    };
    let mut outcomes: Vec<Option<Result<(), StoreError>>> = group.iter().map(|_| None).collect();
    // New tasks, all at once under one savepoint; if that fails with a
    // write's own error (it should not: ids are fresh), they are retried one
    // by one below.
    let inserts: Vec<(usize, (&Task, &OutboxMessage))> = group
        .iter()
        .enumerate()
        .filter_map(|(i, q)| match &q.write {
            TaskWrite::Insert { task, event } => Some((i, (task, event))),
            TaskWrite::Save { .. } => None,
        })
        .collect();
    if inserts.len() > 1 {
        let mut savepoint = match sqlx::Connection::begin(&mut *tx).await {
            Ok(sp) => sp,
            Err(e) => return GroupEnd::Refused(e.into()),
        };
        let rows: Vec<(&Task, &OutboxMessage)> = inserts.iter().map(|(_, row)| *row).collect();
        match insert_all(&mut savepoint, &rows).await {
            Ok(()) => match savepoint.commit().await {
                Ok(()) => {
                    for (i, _) in &inserts {
                        outcomes[*i] = Some(Ok(()));
                    }
                }
                Err(e) => return GroupEnd::Refused(e.into()),
            },
            Err(e) if fails_alone(&e) => {}
            Err(e) => return GroupEnd::Refused(e),
        }
    }
    for (queued, outcome) in group.iter().zip(outcomes.iter_mut()) {
        if outcome.is_some() {
            continue;
        }
        let mut savepoint = match sqlx::Connection::begin(&mut *tx).await {
            Ok(sp) => sp,
            Err(e) => return GroupEnd::Refused(e.into()),
        };
        let result = match apply(&mut savepoint, &queued.write).await {
            Ok(()) => match savepoint.commit().await {
                Ok(()) => Ok(()),
                Err(e) => return GroupEnd::Refused(e.into()),
            },
            // A version conflict or a violated constraint is this write's
            // alone (SQLite undoes just the statement): dropping the
            // savepoint rolls the write back and the group goes on.
            Err(e) if fails_alone(&e) => Err(e),
            // Anything else may have ended the whole transaction (SQLite
            // rolls back by itself on a full disk or an I/O error), and
            // statements after it would run outside it: stop here and fail
            // the group.
            Err(e) => return GroupEnd::Refused(e),
        };
        *outcome = Some(result);
    }
    let outcomes: Vec<Result<(), StoreError>> = outcomes
        .into_iter()
        .map(|o| o.expect("every write has an outcome"))
        .collect();
    match tx.commit().await {
        Ok(()) => GroupEnd::Committed(outcomes),
        Err(e) => GroupEnd::CommitFailed {
            error: e.into(),
            if_committed: outcomes,
        },
    }
}

/// After a failed `COMMIT`, finds out from the database whether the group
/// is there: a commit is atomic, so one of its outbox rows decides for all.
/// Answers the group's outcomes if it is, its failure if it is not, and
/// [`StoreError::OutcomeUnknown`] when the database cannot tell.
async fn resolve_failed_commit(
    reader: &SqlitePool,
    group: &[QueuedWrite],
    error: StoreError,
    if_committed: Vec<Result<(), StoreError>>,
) -> Vec<Result<(), StoreError>> {
    let probe = group
        .iter()
        .zip(&if_committed)
        .find(|(_, outcome)| outcome.is_ok())
        .map(|(queued, _)| queued.write.event().id);
    let Some(event_id) = probe else {
        // Every write had failed on its own; nothing was to be committed.
        return if_committed;
    };
    let committed = sqlx::query("SELECT 1 FROM outbox WHERE id = $1")
        .bind(id(event_id))
        .fetch_optional(reader)
        .await;
    match committed {
        Ok(Some(_)) => {
            tracing::warn!(%error, "the commit reported an error but took effect");
            if_committed
        }
        Ok(None) => {
            tracing::warn!(%error, writes = group.len(), "a group of task writes failed to commit; none was stored");
            if_committed
                .into_iter()
                .map(|outcome| outcome.and(Err(group_failure(&error))))
                .collect()
        }
        Err(check) => {
            tracing::error!(%error, %check, "a commit failed and its outcome cannot be checked");
            let unknown = StoreError::OutcomeUnknown(format!("{error}; checking failed: {check}"));
            if_committed
                .into_iter()
                .map(|outcome| outcome.and(Err(group_failure(&unknown))))
                .collect()
        }
    }
}

impl SqliteStore {
    async fn group_commit(&self, write: TaskWrite) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.task_writes
            .send(QueuedWrite { write, done })
            .await
            .map_err(|_| StoreError::CommitFailed("the store is closed".into()))?;
        let outcome = answer
            .await
            .map_err(|_| StoreError::CommitFailed("the store closed before the commit".into()))?;
        self.health.record(&outcome);
        outcome
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert_task(&self, task: &Task, event: &OutboxMessage) -> Result<(), StoreError> {
        self.group_commit(TaskWrite::Insert {
            task: task.clone(),
            event: event.clone(),
        })
        .await
    }

    async fn save_task(
        &self,
        task: &Task,
        expected_version: i64,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        self.group_commit(TaskWrite::Save {
            task: task.clone(),
            expected_version,
            event: event.clone(),
        })
        .await
    }

    async fn task(&self, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(sql::TASK_BY_ID)
            .bind(id(task_id.as_uuid()))
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::task).transpose()
    }

    async fn tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM tasks WHERE ");
        match query.status {
            Some(status) => sql.push("status = ").push_bind(status.as_str()),
            None => sql.push("status <> 'deleted'"),
        };
        if let Some(after) = query.after {
            sql.push(" AND id > ").push_bind(id(after.as_uuid()));
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(rows::task).collect()
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    /// An exclusive lock on `<database>-relay.lock` (`flock`), so two relays
    /// on one SQLite file — `up` and a `taskstream relay`, or two relays —
    /// never publish at once. The kernel releases it when the holding
    /// process dies. Asking again from the same store returns the lease.
    async fn acquire_lease(&self, holder: &str) -> Result<Option<Lease>, StoreError> {
        let mut lock = self.relay_lock.lock().expect("never poisoned");
        if lock.0.is_some() {
            return Ok(Some(Lease::new(holder, lock.1)));
        }
        let path = self.relay_lock_path();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                lock.1 += 1;
                lock.0 = Some(file);
                Ok(Some(Lease::new(holder, lock.1)))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StoreError::Unavailable(format!("{}: {e}", path.display())))
            }
        }
    }

    async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        let mut lock = self.relay_lock.lock().expect("never poisoned");
        if lock.0.is_some() && lease.grant() == lock.1 {
            // Closing the file releases the lock.
            lock.0 = None;
        }
        Ok(())
    }

    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, StoreError> {
        {
            let lock = self.relay_lock.lock().expect("never poisoned");
            if lock.0.is_none() || lease.grant() != lock.1 {
                return Err(StoreError::LeaseLost);
            }
        }
        // Read through the writer: the relay must never see an older snapshot
        // than the commit that woke it.
        let mut query = QueryBuilder::<Sqlite>::new(sql::SELECT_PENDING);
        if !in_flight.is_empty() {
            // A few batches' seqs: far below SQLite's 32,766 parameters.
            query.push(" AND seq NOT IN (");
            let mut seqs = query.separated(", ");
            for seq in in_flight {
                seqs.push_bind(*seq);
            }
            query.push(")");
        }
        query
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.writer).await?;
        rows.iter().map(rows::pending).collect()
    }

    async fn mark_published(
        &self,
        seqs: &[i64],
        published_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut sql = QueryBuilder::<Sqlite>::new("UPDATE outbox SET published_at = ");
        sql.push_bind(at(&published_at)).push(" WHERE seq IN (");
        let mut list = sql.separated(", ");
        for seq in seqs {
            list.push_bind(*seq);
        }
        sql.push(")");
        sql.build().execute(&self.writer).await?;
        Ok(())
    }

    async fn unpublished_among(
        &self,
        topic: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let mut found = Vec::new();
        // SQLite's default limit on bound parameters is 32766.
        for chunk in ids.chunks(1000) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT id, seq FROM outbox WHERE published_at IS NULL AND topic = ",
            );
            sql.push_bind(topic);
            sql.push(" AND id IN (");
            let mut list = sql.separated(", ");
            for one in chunk {
                list.push_bind(id(*one));
            }
            sql.push(")");
            let rows = sql.build().fetch_all(&self.writer).await?;
            for row in &rows {
                found.push((row.uuid("outbox", "id")?, row.int("seq")?));
            }
        }
        Ok(found)
    }

    async fn unpublished_topics(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(sql::UNPUBLISHED_TOPICS)
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(|row| row.text("topic")).collect()
    }

    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(sql::RECORD_FAILURE)
            .bind(error)
            .bind(seq)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::PRUNE_PUBLISHED)
            .bind(at(&before))
            .bind(i64::from(limit))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(sql::OUTBOX_STATS)
            .fetch_one(&self.reader)
            .await?;
        rows::outbox_stats(&row)
    }
}

consumer_stores!(SqliteStore, Sqlite, writer = writer, reader = reader);
suggestion_store!(SqliteStore, Sqlite, writer = writer, reader = reader);

/// Capacity checks need no lock of their own on SQLite: its one writer
/// connection per process, and the database's write lock across processes,
/// already serialise the transactions that count and reserve.
async fn no_assignee_lock(
    _tx: &mut sqlx::Transaction<'_, Sqlite>,
    _assignee: &str,
) -> Result<(), StoreError> {
    Ok(())
}

crate::sagas::saga_stores!(
    SqliteStore,
    Sqlite,
    writer = writer,
    reader = reader,
    lock = no_assignee_lock
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay lease, as a relay would hold it.
    async fn lease(store: &SqliteStore) -> Lease {
        store.acquire_lease("test").await.unwrap().expect("free")
    }
    use crate::{AuditEntry, AuditStore, InboxStore, NotificationRecord, NotificationStore};
    use taskstream_domain::{
        Assignee, EventCodec, JsonCodec, NewTask, Priority, TaskChange, TaskStatus, TaskTitle,
    };

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), &SqliteOptions::default())
            .await
            .unwrap();
        (dir, store)
    }

    fn message(change: &TaskChange) -> OutboxMessage {
        OutboxMessage {
            id: change.event.id.as_uuid(),
            aggregate_type: "task".into(),
            aggregate_id: change.task.id.to_string(),
            event_type: change.event.event_type.to_string(),
            topic: "task-events".into(),
            payload: JsonCodec.encode(&change.event).unwrap(),
            content_type: taskstream_domain::headers::JSON_CONTENT_TYPE.into(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            created_at: change.event.time,
        }
    }

    fn created(title: &str) -> TaskChange {
        Task::create(
            NewTask {
                title: TaskTitle::parse(title).unwrap(),
                description: None,
                priority: Priority::High,
                due_at: Some(taskstream_domain::now()),
                assignee: Some(Assignee::parse("ana").unwrap()),
            },
            taskstream_domain::now(),
            taskstream_domain::Cause::default(),
        )
    }

    #[tokio::test]
    async fn task_round_trips_and_enqueues_its_event() {
        let (_dir, store) = store().await;
        let change = created("write");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        assert_eq!(
            store.task(change.task.id).await.unwrap().unwrap(),
            change.task
        );
        let pending = store.pending(&lease(&store).await, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, message(&change));
    }

    #[tokio::test]
    async fn stale_version_writes_nothing() {
        let (_dir, store) = store().await;
        let change = created("write");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        let done = change
            .task
            .complete(
                taskstream_domain::now(),
                taskstream_domain::Cause::default(),
            )
            .unwrap();
        let err = store
            .save_task(&done.task, 7, &message(&done))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict { .. }));
        assert_eq!(
            store.pending(&lease(&store).await, 10).await.unwrap().len(),
            1
        );
        assert_eq!(
            store.task(change.task.id).await.unwrap().unwrap(),
            change.task
        );
        store
            .save_task(&done.task, 1, &message(&done))
            .await
            .unwrap();
        assert_eq!(
            store.pending(&lease(&store).await, 10).await.unwrap().len(),
            2
        );
    }

    #[tokio::test]
    async fn published_messages_leave_the_pending_set() {
        let (_dir, store) = store().await;
        for i in 0..3 {
            let change = created(&format!("t{i}"));
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
        }
        let pending = store.pending(&lease(&store).await, 10).await.unwrap();
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        store
            .mark_published(&[pending[0].seq], taskstream_domain::now())
            .await
            .unwrap();
        store
            .record_failure(pending[1].seq, "broker down")
            .await
            .unwrap();
        let left = store.pending(&lease(&store).await, 10).await.unwrap();
        assert_eq!(left.len(), 2);
        assert_eq!(left[0].attempts, 1);
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!((stats.total, stats.pending), (3, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_together_and_a_conflict_fails_alone() {
        let (_dir, store) = store().await;
        let store = std::sync::Arc::new(store);
        let first = created("first");
        store
            .insert_task(&first.task, &message(&first))
            .await
            .unwrap();
        let done = first
            .task
            .complete(
                taskstream_domain::now(),
                taskstream_domain::Cause::default(),
            )
            .unwrap();
        let mut writers = Vec::new();
        for i in 0..100 {
            let store = std::sync::Arc::clone(&store);
            let change = created(&format!("t{i}"));
            writers.push(tokio::spawn(async move {
                store.insert_task(&change.task, &message(&change)).await
            }));
        }
        // A stale version among them: refused, without taking the others down.
        let stale = {
            let store = std::sync::Arc::clone(&store);
            let done = done.clone();
            tokio::spawn(async move { store.save_task(&done.task, 5, &message(&done)).await })
        };
        for w in writers {
            w.await.unwrap().unwrap();
        }
        assert!(matches!(
            stale.await.unwrap(),
            Err(StoreError::VersionConflict { .. })
        ));
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(stats.total, 101);
        assert_eq!(store.task(first.task.id).await.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn a_failing_insert_in_a_group_falls_back_to_one_by_one_and_fails_alone() {
        let (_dir, store) = store().await;
        let a = created("a");
        let b = created("b");
        let queued = |change: &TaskChange| QueuedWrite {
            write: TaskWrite::Insert {
                task: change.task.clone(),
                event: message(change),
            },
            done: oneshot::channel().0,
        };
        // `a` twice: the multi-row insert fails on the primary key.
        let group = [queued(&a), queued(&b), queued(&a)];
        let outcomes = commit_group(&store.writer, &store.reader, &group).await;
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
        assert!(outcomes[2].is_err());
        assert_eq!(store.outbox_stats().await.unwrap().total, 2);
        assert!(store.task(b.task.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn tasks_page_by_id_and_hide_tombstones() {
        let (_dir, store) = store().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let change = created(&format!("t{i}"));
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            ids.push(change.task);
        }
        let gone = ids[0]
            .delete(
                taskstream_domain::now(),
                taskstream_domain::Cause::default(),
            )
            .unwrap();
        store
            .save_task(&gone.task, 1, &message(&gone))
            .await
            .unwrap();
        let page = |after, status| TaskQuery {
            status,
            after,
            limit: 2,
        };
        let first = store.tasks(&page(None, None)).await.unwrap();
        assert_eq!(
            first.iter().map(|t| t.id).collect::<Vec<_>>(),
            [ids[1].id, ids[2].id]
        );
        let second = store.tasks(&page(Some(ids[2].id), None)).await.unwrap();
        assert_eq!(
            second.iter().map(|t| t.id).collect::<Vec<_>>(),
            [ids[3].id, ids[4].id]
        );
        let deleted = store
            .tasks(&page(None, Some(TaskStatus::Deleted)))
            .await
            .unwrap();
        assert_eq!(deleted.len(), 1);
    }

    #[tokio::test]
    async fn published_events_that_a_consumer_missed_are_requeued() {
        let (_dir, store) = store().await;
        let mut changes = Vec::new();
        for i in 0..3 {
            let change = created(&format!("t{i}"));
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            changes.push(change);
        }
        let seqs: Vec<i64> = store
            .pending(&lease(&store).await, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect();
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();
        // Event 0: handled by both. Event 1: only audited. Event 2: by neither.
        for change in &changes[..2] {
            let entry = audit_entry(change.event.id.as_uuid(), &change.task.id.to_string());
            store.append("auditor", &entry).await.unwrap();
        }
        store
            .record_notifications("notifier", changes[0].event.id.as_uuid(), &[])
            .await
            .unwrap();
        assert_eq!(store.requeue_unhandled_events("notifier").await.unwrap(), 2);
        let pending: Vec<Uuid> = store
            .pending(&lease(&store).await, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.message.id)
            .collect();
        assert_eq!(
            pending,
            [changes[1].event.id.as_uuid(), changes[2].event.id.as_uuid()]
        );

        // Repairing one group requeues only what that group has not handled.
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();
        assert_eq!(
            store
                .requeue_events_unhandled_by(HandledBy::AuditLog, "task-events")
                .await
                .unwrap(),
            1
        );
        let pending = store.pending(&lease(&store).await, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message.id, changes[2].event.id.as_uuid());
        store
            .mark_published(&[pending[0].seq], taskstream_domain::now())
            .await
            .unwrap();
        assert_eq!(
            store
                .requeue_events_unhandled_by(HandledBy::Processed("notifier"), "task-events")
                .await
                .unwrap(),
            2
        );
    }

    /// `taskstream up` keeps the outbox, the audit log and the notifier's
    /// processed events in three files: a requeue reads the other two.
    #[tokio::test]
    async fn a_requeue_reads_the_consumers_own_files() {
        let (dir, outbox) = store().await;
        let options = SqliteOptions::default();
        let (audit_path, notifier_path) = (dir.path().join("audit.db"), dir.path().join("n.db"));
        let audit = SqliteStore::open(&audit_path, &options).await.unwrap();
        let notifier = SqliteStore::open(&notifier_path, &options).await.unwrap();
        let mut changes = Vec::new();
        for i in 0..3 {
            let change = created(&format!("t{i}"));
            outbox
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            changes.push(change);
        }
        let seqs: Vec<i64> = outbox
            .pending(&lease(&outbox).await, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect();
        let publish = || outbox.mark_published(&seqs, taskstream_domain::now());
        publish().await.unwrap();
        // Event 0: handled by both. Event 1: only audited. Event 2: by neither.
        for change in &changes[..2] {
            let entry = audit_entry(change.event.id.as_uuid(), &change.task.id.to_string());
            audit.append("auditor", &entry).await.unwrap();
        }
        notifier
            .record_notifications("notifier", changes[0].event.id.as_uuid(), &[])
            .await
            .unwrap();
        let pending = || async {
            let rows = outbox.pending(&lease(&outbox).await, 10).await.unwrap();
            rows.iter().map(|p| p.message.id).collect::<Vec<_>>()
        };
        let id = |i: usize| changes[i].event.id.as_uuid();

        // The outbox's own file knows nothing of either consumer: all three.
        assert_eq!(
            outbox.requeue_unhandled_events("notifier").await.unwrap(),
            3
        );
        publish().await.unwrap();
        assert_eq!(
            outbox
                .requeue_unhandled_events_in("notifier", audit.path(), notifier.path())
                .await
                .unwrap(),
            2
        );
        assert_eq!(pending().await, [id(1), id(2)]);
        publish().await.unwrap();
        assert_eq!(
            outbox
                .requeue_events_unhandled_in(HandledBy::AuditLog, audit.path(), "task-events")
                .await
                .unwrap(),
            1
        );
        assert_eq!(pending().await, [id(2)]);
        publish().await.unwrap();
        assert_eq!(
            outbox
                .requeue_events_unhandled_in(
                    HandledBy::Processed("notifier"),
                    notifier.path(),
                    "task-events"
                )
                .await
                .unwrap(),
            2
        );
        publish().await.unwrap();
        // The outbox's own file, named as the consumer's, reads it as `main`.
        assert_eq!(
            outbox
                .requeue_events_unhandled_in(HandledBy::AuditLog, outbox.path(), "task-events")
                .await
                .unwrap(),
            3
        );
        // Nothing stays attached to the writer: the next statements run as before.
        publish().await.unwrap();
        assert_eq!(
            outbox
                .requeue_events_unhandled_in(HandledBy::AuditLog, audit.path(), "task-events")
                .await
                .unwrap(),
            1
        );
    }

    /// A data directory from when every service shared one file: each
    /// service's new file takes its rows once, and the shared file keeps them.
    #[tokio::test]
    async fn a_service_file_adopts_its_rows_from_the_shared_file_once() {
        let (dir, shared) = store().await;
        let change = created("old");
        let entry = audit_entry(change.event.id.as_uuid(), &change.task.id.to_string());
        shared.append("auditor", &entry).await.unwrap();
        shared
            .record_notifications("notifier", change.event.id.as_uuid(), &[])
            .await
            .unwrap();
        let audit = SqliteStore::open(&dir.path().join("audit.db"), &SqliteOptions::default())
            .await
            .unwrap();
        assert_eq!(
            audit
                .adopt_rows_once(&shared, &["audit_log"])
                .await
                .unwrap(),
            1
        );
        let entries = audit.audit_entries(None, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].event_id, change.event.id.as_uuid());
        // Once: a row the shared file gains later is not copied again, nor
        // is anything copied twice.
        let later = created("later");
        let entry = audit_entry(later.event.id.as_uuid(), &later.task.id.to_string());
        shared.append("auditor", &entry).await.unwrap();
        assert_eq!(
            audit
                .adopt_rows_once(&shared, &["audit_log"])
                .await
                .unwrap(),
            0
        );
        assert_eq!(audit.audit_entries(None, 10).await.unwrap().len(), 1);
        assert_eq!(shared.audit_entries(None, 10).await.unwrap().len(), 2);
        // A store never adopts from its own file.
        assert_eq!(
            shared
                .adopt_rows_once(&shared, &["audit_log"])
                .await
                .unwrap(),
            0
        );
        // The notifier's inbox comes along (every group's marks: the two
        // audited events' and the notified one's): an event it handled
        // stays handled.
        let notifier =
            SqliteStore::open(&dir.path().join("notifier.db"), &SqliteOptions::default())
                .await
                .unwrap();
        assert_eq!(
            notifier
                .adopt_rows_once(&shared, &["notifications", "processed_events"])
                .await
                .unwrap(),
            3
        );
        assert!(notifier
            .processed_times("notifier")
            .await
            .unwrap()
            .iter()
            .any(|(id, _)| *id == change.event.id.as_uuid()));
    }

    /// A `task.created` audit entry for `event_id` about `task_id`.
    fn audit_entry(event_id: Uuid, task_id: &str) -> AuditEntry {
        AuditEntry {
            event_id,
            event_type: "task.created".into(),
            task_id: task_id.into(),
            task_version: 1,
            event_time: taskstream_domain::now(),
            correlation_id: None,
            topic: "task-events".into(),
            partition: 0,
            offset: 0,
            recorded_at: taskstream_domain::now(),
            envelope: "{}".into(),
        }
    }

    #[tokio::test]
    async fn audit_append_is_idempotent_by_event_id() {
        let (_dir, store) = store().await;
        let entry = AuditEntry {
            offset: 4,
            ..audit_entry(Uuid::now_v7(), "t")
        };
        assert!(store.append("auditor", &entry).await.unwrap());
        assert!(!store
            .append(
                "auditor",
                &AuditEntry {
                    offset: 9,
                    ..entry.clone()
                }
            )
            .await
            .unwrap());
        assert_eq!(store.audit_entries(Some("t"), 10).await.unwrap(), [entry]);
    }

    #[tokio::test]
    async fn notifications_are_recorded_once_per_event() {
        let (_dir, store) = store().await;
        let event_id = Uuid::now_v7();
        let n = NotificationRecord {
            id: Uuid::now_v7(),
            event_id,
            event_type: "task.completed".into(),
            task_id: "t".into(),
            kind: "task_completed".into(),
            recipient: "ana".into(),
            message: "done".into(),
            channel: "log".into(),
            sent_at: taskstream_domain::now(),
        };
        assert!(!store.is_processed("notifier", event_id).await.unwrap());
        assert!(store
            .record_notifications("notifier", event_id, std::slice::from_ref(&n))
            .await
            .unwrap());
        assert!(store.is_processed("notifier", event_id).await.unwrap());
        assert!(!store
            .record_notifications("notifier", event_id, std::slice::from_ref(&n))
            .await
            .unwrap());
        assert_eq!(store.notifications(Some("t"), 10).await.unwrap(), [n]);
    }
}
