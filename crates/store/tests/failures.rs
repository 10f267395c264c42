//! The store under failure: whatever goes wrong while task writes commit (a
//! full disk, a database locked by another process, a backend killed in the
//! middle of a commit, a statement timeout), a write reported as stored is
//! stored with its outbox row, and a write reported as failed left neither.
//!
//! The SQLite cases fill the "disk" on demand with `max_page_count`; the
//! PostgreSQL cases run on the server named by `TASKSTREAM_TEST_POSTGRES`
//! (skipped loudly without one, failing when `TASKSTREAM_REQUIRE_POSTGRES=1`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sqlx::{ConnectOptions, Connection};
use taskstream_domain::{Cause, Task, TaskChange, TaskId};
use taskstream_store::{OutboxStore, SqliteOptions, SqliteStore, Store, StoreError, TaskStore};
use uuid::Uuid;

mod common;
use common::{created, message, Scratch};

/// A new task with a description of 2,000 characters, so a burst needs
/// fresh pages.
fn large(i: usize) -> TaskChange {
    Task::create(
        taskstream_domain::NewTask {
            title: taskstream_domain::TaskTitle::parse(&format!("task {i}")).unwrap(),
            description: Some(taskstream_domain::Description::parse(&"x".repeat(2000)).unwrap()),
            priority: taskstream_domain::Priority::Low,
            due_at: None,
            assignee: None,
        },
        taskstream_domain::now(),
        Cause::default(),
    )
}

/// What a caller was told about one write.
#[derive(Debug)]
struct Told {
    task: TaskId,
    version: i64,
    event: Uuid,
    stored: bool,
}

/// Writes `n` changes concurrently: new tasks, and updates of existing ones
/// at their latest acknowledged version (some of which conflict with each
/// other, as they would under real load).
async fn burst(store: &Arc<Store>, latest: &BTreeMap<TaskId, Task>, n: usize) -> Vec<Told> {
    burst_expecting(store, latest, n, true).await
}

/// [`burst`]; `transient` says whether every failure must read as the
/// database's condition (not so for a rollback a test injects).
async fn burst_expecting(
    store: &Arc<Store>,
    latest: &BTreeMap<TaskId, Task>,
    n: usize,
    transient: bool,
) -> Vec<Told> {
    let mut writes = Vec::new();
    for i in 0..n {
        let store = Arc::clone(store);
        let existing = latest.values().nth(i % latest.len().max(1)).cloned();
        writes.push(tokio::spawn(async move {
            let (change, expected): (TaskChange, Option<i64>) = match existing {
                Some(task) if i % 3 == 1 => {
                    let patch = taskstream_domain::TaskPatch {
                        title: Some(taskstream_domain::TaskTitle::parse(&format!("v{i}")).unwrap()),
                        description: None,
                        priority: None,
                        due_at: None,
                        assignee: None,
                    };
                    match task.update(patch, taskstream_domain::now(), Cause::default()) {
                        Ok(Some(change)) => (change, Some(task.version)),
                        _ => (created(&format!("task {i}")), None),
                    }
                }
                _ => (large(i), None),
            };
            let outcome = match expected {
                Some(version) => {
                    store
                        .save_task(&change.task, version, &message(&change))
                        .await
                }
                None => store.insert_task(&change.task, &message(&change)).await,
            };
            match &outcome {
                Ok(()) => {}
                Err(StoreError::VersionConflict { .. }) => {}
                Err(e) => assert!(
                    e.is_transient() || !transient,
                    "a failure of the database must read as one: {e:?}"
                ),
            }
            (change, outcome.is_ok())
        }));
    }
    let mut told = Vec::new();
    for write in writes {
        let (change, stored) = write.await.unwrap();
        told.push(Told {
            task: change.task.id,
            version: change.task.version,
            event: change.event.id.as_uuid(),
            stored,
        });
    }
    told
}

/// Checks that the store holds exactly what its callers were told: every
/// acknowledged write's outbox row and task version, no refused write's
/// row, and each task's rows in version order.
async fn assert_told_the_truth(store: &Store, told: &[Told]) {
    let rows = {
        let lease = store.acquire_lease("test").await.unwrap().unwrap();
        store.pending(&lease, 1_000_000).await.unwrap()
    };
    let in_outbox: BTreeMap<Uuid, (i64, String)> = rows
        .iter()
        .map(|p| (p.message.id, (p.seq, p.message.aggregate_id.clone())))
        .collect();
    let acknowledged = told.iter().filter(|t| t.stored).count();
    assert_eq!(
        rows.len(),
        acknowledged,
        "one outbox row per acknowledged write, none for a refused one"
    );
    for t in told {
        assert_eq!(
            in_outbox.contains_key(&t.event),
            t.stored,
            "write {t:?}: the outbox disagrees with what the caller was told"
        );
        let task = store.task(t.task).await.unwrap();
        if t.stored {
            let task = task.unwrap_or_else(|| panic!("acknowledged task {} is missing", t.task));
            assert!(task.version >= t.version, "{t:?} vs {}", task.version);
        } else if t.version == 1 {
            assert!(task.is_none(), "refused task {} was stored", t.task);
        }
    }
    // Per task, outbox order follows version order.
    let mut last: BTreeMap<TaskId, i64> = BTreeMap::new();
    let mut acked: Vec<&Told> = told.iter().filter(|t| t.stored).collect();
    acked.sort_by_key(|t| in_outbox[&t.event].0);
    for t in acked {
        if let Some(previous) = last.insert(t.task, t.version) {
            assert!(previous < t.version, "task {} out of order", t.task);
        }
    }
}

/// Latest acknowledged state of each task, for the next burst's updates.
async fn latest(store: &Store, told: &[Told]) -> BTreeMap<TaskId, Task> {
    let mut tasks = BTreeMap::new();
    for t in told.iter().filter(|t| t.stored) {
        if let Some(task) = store.task(t.task).await.unwrap() {
            tasks.insert(task.id, task);
        }
    }
    tasks
}

/// A step of a failure schedule for SQLite.
#[derive(Debug, Clone)]
enum Step {
    /// Leave room for about this many pages, then the disk is full.
    Fill(u32),
    /// Free the space again.
    Free,
    /// Another process holds the write lock during the next burst.
    LockDuring(usize),
    /// The database rolls back every transaction that writes an outbox row
    /// during the next burst, behind the driver's back.
    RollbackDuring(usize),
    /// Concurrent writes.
    Burst(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..24).prop_map(Step::Fill),
        Just(Step::Free),
        (1usize..24).prop_map(Step::LockDuring),
        (1usize..24).prop_map(Step::RollbackDuring),
        (1usize..40).prop_map(Step::Burst),
    ]
}

async fn run_sqlite_schedule(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(20),
        ..SqliteOptions::default()
    };
    let sqlite = SqliteStore::open(&path, &options).await.unwrap();
    let store = Arc::new(Store::Sqlite(sqlite.clone()));
    install_rollback_fault(&path).await;
    let mut told = Vec::new();
    for step in steps {
        let current = latest(&store, &told).await;
        match step {
            Step::Fill(room) => {
                let pages = sqlite.page_count().await.unwrap();
                sqlite.limit_size(Some(pages + room)).await.unwrap();
            }
            Step::Free => sqlite.limit_size(None).await.unwrap(),
            Step::Burst(n) => told.extend(burst(&store, &current, n).await),
            Step::RollbackDuring(n) => {
                set_rollback_fault(&path, true).await;
                let round = burst_expecting(&store, &current, n, false).await;
                assert!(round.iter().all(|t| !t.stored), "{round:?}");
                told.extend(round);
                set_rollback_fault(&path, false).await;
            }
            Step::LockDuring(n) => {
                let mut other = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .connect()
                    .await
                    .unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut other)
                    .await
                    .unwrap();
                told.extend(burst(&store, &current, n).await);
                sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
                other.close().await.unwrap();
            }
        }
    }
    sqlite.limit_size(None).await.unwrap();
    assert_told_the_truth(&store, &told).await;
    // A write after the failures is stored, and clears the failure.
    let after = created("after");
    store
        .insert_task(&after.task, &message(&after))
        .await
        .unwrap();
    assert_eq!(store.write_health().failing(), None);
    told.push(Told {
        task: after.task.id,
        version: 1,
        event: after.event.id.as_uuid(),
        stored: true,
    });
    // And it all survives a restart.
    store.close().await;
    let reopened = Store::Sqlite(SqliteStore::open(&path, &options).await.unwrap());
    assert_told_the_truth(&reopened, &told).await;
    reopened.close().await;
}

/// Adds a switchable fault to the SQLite database at `path`: while on,
/// inserting an outbox row rolls back the whole transaction from inside
/// SQLite (`RAISE(ROLLBACK)`), as a full disk or an I/O error can. The
/// driver's own rollback then fails, and a connection whose bookkeeping
/// still counts the transaction as open must never be reused.
async fn install_rollback_fault(path: &std::path::Path) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    for statement in [
        "CREATE TABLE fault (id INTEGER PRIMARY KEY CHECK (id = 1), rollback INTEGER NOT NULL)",
        "INSERT INTO fault VALUES (1, 0)",
        "CREATE TRIGGER injected_rollback BEFORE INSERT ON outbox
         WHEN (SELECT rollback FROM fault WHERE id = 1) = 1
         BEGIN SELECT RAISE(ROLLBACK, 'injected fault: the transaction is rolled back'); END",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

async fn set_rollback_fault(path: &std::path::Path, on: bool) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE fault SET rollback = ? WHERE id = 1")
        .bind(i64::from(on))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_database_rolled_back_never_poisons_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(20),
        ..SqliteOptions::default()
    };
    let sqlite = SqliteStore::open(&path, &options).await.unwrap();
    let store = Arc::new(Store::Sqlite(sqlite));
    install_rollback_fault(&path).await;
    let mut told = Vec::new();
    for size in [1, 16] {
        // The database rolls a write's transaction back by itself...
        set_rollback_fault(&path, true).await;
        let round = burst_expecting(&store, &BTreeMap::new(), size, false).await;
        assert!(round.iter().all(|t| !t.stored), "{round:?}");
        told.extend(round);
        set_rollback_fault(&path, false).await;
        // ...then another process holds the write lock for a moment...
        let mut other = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        told.extend(burst(&store, &BTreeMap::new(), size).await);
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
        // ...and later writes go through.
        let current = latest(&store, &told).await;
        told.extend(burst(&store, &current, size).await);
    }
    assert!(told.iter().any(|t| t.stored));
    assert_told_the_truth(&store, &told).await;
    store.close().await;
    // What the callers were told holds for the file itself, after a restart.
    let reopened = Store::Sqlite(SqliteStore::open(&path, &options).await.unwrap());
    assert_told_the_truth(&reopened, &told).await;
    reopened.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sqlite_failures_never_acknowledge_an_unstored_write(
        steps in prop::collection::vec(step(), 3..10)
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_sqlite_schedule(steps));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_a_whole_group_and_the_next_group_commits_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let sqlite = SqliteStore::open(&path, &SqliteOptions::default())
        .await
        .unwrap();
    let store = Arc::new(Store::Sqlite(sqlite.clone()));
    let pages = sqlite.page_count().await.unwrap();
    sqlite.limit_size(Some(pages + 8)).await.unwrap();
    let mut told = Vec::new();
    for _ in 0..6 {
        told.extend(burst(&store, &BTreeMap::new(), 16).await);
    }
    let refused = told.iter().filter(|t| !t.stored).count();
    assert!(refused > 0, "the disk filled up");
    assert!(
        store
            .write_health()
            .failing()
            .is_some_and(|f| f.storage_full),
        "readiness learns why"
    );
    // Writes after the failure: each one is stored or refused, truthfully.
    told.extend(burst(&store, &BTreeMap::new(), 16).await);
    assert_told_the_truth(&store, &told).await;
    store.close().await;
    let reopened = Store::Sqlite(
        SqliteStore::open(&path, &SqliteOptions::default())
            .await
            .unwrap(),
    );
    assert_told_the_truth(&reopened, &told).await;
    reopened.close().await;
}

/// Makes every write of the scratch database take `delay` longer: inside
/// `COMMIT` when `at_commit` (a deferred constraint trigger runs there), so a
/// failure can land in the middle of one; else inside the outbox `INSERT`.
async fn slow_writes(db: &Scratch, delay: &str, at_commit: bool) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(&format!(
        "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep({delay}); RETURN NULL; END $$"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let trigger = if at_commit {
        "CREATE CONSTRAINT TRIGGER slow_write AFTER INSERT ON outbox
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_write()"
    } else {
        "CREATE TRIGGER slow_write AFTER INSERT ON outbox
         FOR EACH ROW EXECUTE FUNCTION slow_write()"
    };
    sqlx::query(trigger).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Terminates every session of the scratch database but the caller's.
async fn terminate_sessions(db: &Scratch) -> u64 {
    let mut admin = sqlx::PgConnection::connect(&db.admin).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    killed.into_iter().filter(|k| *k).count() as u64
}

/// Makes every commit of the scratch database wait, inside `COMMIT` (a
/// deferred constraint trigger runs there), for the advisory lock that
/// [`CommitGate::close`] holds.
async fn gate_commits(db: &Scratch) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "CREATE FUNCTION commit_gate() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "CREATE CONSTRAINT TRIGGER commit_gate AFTER INSERT ON outbox
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_gate()",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// Holds commits at the gate, so a test can kill them in the middle.
struct CommitGate(sqlx::PgConnection);

impl CommitGate {
    async fn close(db: &Scratch) -> Self {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock(4242)")
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    /// Waits until `n` sessions wait at the gate (inside their `COMMIT`),
    /// then terminates them.
    async fn kill_waiting(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: Vec<i32> = sqlx::query_scalar(
                "SELECT l.pid FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objid = 4242",
            )
            .fetch_all(&mut self.0)
            .await
            .unwrap();
            if waiting.len() >= n {
                for pid in waiting {
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&mut self.0)
                        .await
                        .unwrap();
                }
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} commits reached the gate",
                waiting.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn open(mut self) {
        sqlx::query("SELECT pg_advisory_unlock(4242)")
            .execute(&mut self.0)
            .await
            .unwrap();
        self.0.close().await.unwrap();
    }
}

/// Retries one new task for up to 2 s until the store takes it again, and
/// checks that the success cleared the store's write failure.
async fn writes_work_again(store: &Store) -> Told {
    let after = created("after");
    let mut stored = false;
    for _ in 0..20 {
        if store
            .insert_task(&after.task, &message(&after))
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "writes work again");
    assert_eq!(store.write_health().failing(), None);
    Told {
        task: after.task.id,
        version: 1,
        event: after.event.id.as_uuid(),
        stored: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_commit_never_turns_into_an_acknowledged_write() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let store = Arc::new(Store::Postgres(db.store().await));
    gate_commits(&db).await;
    let mut told = Vec::new();
    for round in 0..3 {
        let current = latest(&store, &told).await;
        let mut gate = CommitGate::close(&db).await;
        let writes = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { burst(&store, &current, 6).await })
        };
        // Every write of the round waits inside its COMMIT; kill them all.
        gate.kill_waiting(6).await;
        let round_told = writes.await.unwrap();
        gate.open().await;
        assert!(
            round_told.iter().all(|t| !t.stored),
            "round {round}: a write killed inside its commit was acknowledged: {round_told:?}"
        );
        told.extend(round_told);
    }
    assert!(store.write_health().failing().is_some());
    // The database is back (the pool reconnects): writes work again.
    told.push(writes_work_again(&store).await);
    assert_told_the_truth(&store, &told).await;
    store.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_refuses_the_write_and_leaves_nothing() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let store = Arc::new(Store::Postgres(db.store().await));
    // Inserts take 500 ms; statements may take 200 ms: every write times
    // out. (PostgreSQL does not time `COMMIT` itself.)
    slow_writes(&db, "0.5", false).await;
    let mut admin = sqlx::PgConnection::connect(&db.admin).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {} SET statement_timeout = '200ms'",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    // Sessions read the setting when they start.
    terminate_sessions(&db).await;
    let told = burst(&store, &BTreeMap::new(), 5).await;
    assert!(told.iter().all(|t| !t.stored), "{told:?}");
    let failure = store.write_health().failing().expect("failing");
    assert!(failure.error.contains("unavailable"), "{failure:?}");
    assert_told_the_truth(&store, &told).await;
    // Without the timeout, the same database takes writes again.
    sqlx::query(&format!(
        "ALTER DATABASE {} RESET statement_timeout",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    terminate_sessions(&db).await;
    writes_work_again(&store).await;
    admin.close().await.unwrap();
    store.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_postgres_session_kills_never_acknowledge_an_unstored_write() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let store = Arc::new(Store::Postgres(db.store().await));
    slow_writes(&db, "0.02", true).await;
    let mut told = Vec::new();
    // A fixed schedule of kills at varying points of the bursts.
    for (round, delay_ms) in [5u64, 17, 29, 3, 41, 11, 23, 37].into_iter().enumerate() {
        let current = latest(&store, &told).await;
        let writes = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { burst(&store, &current, 12).await })
        };
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            terminate_sessions(&db).await;
        }
        told.extend(writes.await.unwrap());
    }
    assert_told_the_truth(&store, &told).await;
    store.close().await;
    db.drop_database().await;
}
