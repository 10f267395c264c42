//! Migrations that rewrite existing rows, run on a database built with the
//! migrations before them: SQLite in a temporary directory, and PostgreSQL
//! in a database of its own (see `common::Scratch`; without a server the
//! PostgreSQL run skips loudly, or fails when `TASKSTREAM_REQUIRE_POSTGRES=1`).

use std::path::Path;

use sqlx::migrate::Migrator;
use taskstream_store::{PgOptions, PgStore, SqliteOptions, SqliteStore};

mod common;
use common::Scratch;

/// The migrator of `dir` (under the crate), stopped after version `last`.
async fn migrations_up_to(dir: &str, last: i64) -> Migrator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut migrator = Migrator::new(path).await.unwrap();
    let kept: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= last)
        .cloned()
        .collect();
    assert_eq!(kept.len() as i64, last, "{dir} numbers its migrations 1..");
    migrator.migrations = kept.into();
    migrator
}

fn uuid(n: u8) -> String {
    format!("00000000-0000-7000-8000-0000000000{n:02x}")
}

/// A task (id `n`) as the database had it before `assigned_version` was
/// backfilled, with its sagas `(assignee, task version at start)`, and the
/// `assigned_version` it must have afterwards.
struct Case {
    n: u8,
    assignee: Option<&'static str>,
    version: i64,
    assigned_version: Option<i64>,
    sagas: &'static [(&'static str, i64)],
    expected: Option<i64>,
}

const CASES: &[Case] = &[
    // Assigned once, with its saga: the version the saga started from.
    Case {
        n: 1,
        assignee: Some("ana"),
        version: 5,
        assigned_version: None,
        sagas: &[("ana", 2)],
        expected: Some(2),
    },
    // Unassigned and assigned to the same person again: the later saga's.
    Case {
        n: 2,
        assignee: Some("ana"),
        version: 6,
        assigned_version: None,
        sagas: &[("ana", 1), ("ana", 4)],
        expected: Some(4),
    },
    // Handed from ana to bo, then back to ana: bo's saga proves ana's
    // assignment came after version 6, so her saga from 3 no longer speaks
    // for the task (its saga for the new assignment is not started yet).
    Case {
        n: 3,
        assignee: Some("ana"),
        version: 7,
        assigned_version: None,
        sagas: &[("bo", 6), ("ana", 3)],
        expected: Some(7),
    },
    // Handed from bo to ana, whose saga started: ana's, never bo's.
    Case {
        n: 9,
        assignee: Some("ana"),
        version: 8,
        assigned_version: None,
        sagas: &[("ana", 3), ("bo", 5), ("ana", 6)],
        expected: Some(6),
    },
    // No saga of the current assignee: the current version.
    Case {
        n: 4,
        assignee: Some("bo"),
        version: 3,
        assigned_version: None,
        sagas: &[("ana", 1)],
        expected: Some(3),
    },
    Case {
        n: 5,
        assignee: Some("cy"),
        version: 2,
        assigned_version: None,
        sagas: &[],
        expected: Some(2),
    },
    // Unassigned tasks keep NULL.
    Case {
        n: 6,
        assignee: None,
        version: 4,
        assigned_version: None,
        sagas: &[("ana", 2)],
        expected: None,
    },
    // Values written since the column exists are kept.
    Case {
        n: 7,
        assignee: Some("ana"),
        version: 9,
        assigned_version: Some(8),
        sagas: &[("ana", 8)],
        expected: Some(8),
    },
    Case {
        n: 8,
        assignee: None,
        version: 3,
        assigned_version: Some(3),
        sagas: &[],
        expected: Some(3),
    },
];

/// The rows of [`CASES`], as SQL both backends read.
fn inserts() -> Vec<String> {
    let at = "'2026-01-01T00:00:00Z'";
    let text = |v: Option<&str>| v.map_or("NULL".to_owned(), |v| format!("'{v}'"));
    let int = |v: Option<i64>| v.map_or("NULL".to_owned(), |v| v.to_string());
    let mut sql = Vec::new();
    let mut saga = 0x80;
    for c in CASES {
        sql.push(format!(
            "INSERT INTO tasks (id, title, priority, status, assignee, version, created_at, updated_at, assigned_version)
             VALUES ('{}', 'task {}', 'high', 'open', {}, {}, {at}, {at}, {})",
            uuid(c.n),
            c.n,
            text(c.assignee),
            c.version,
            int(c.assigned_version)
        ));
        for (assignee, version) in c.sagas {
            saga += 1;
            sql.push(format!(
                "INSERT INTO sagas (id, task_id, assignee, state, holds_capacity, task_version, trigger_event_id, version, created_at, updated_at)
                 VALUES ('{}', '{}', '{assignee}', 'superseded', 0, {version}, '{}', 1, {at}, {at})",
                uuid(saga),
                uuid(c.n),
                uuid(saga + 0x40),
            ));
        }
    }
    sql
}

fn check(found: Vec<(String, Option<i64>)>) {
    for c in CASES {
        let id = uuid(c.n);
        let got = found.iter().find(|(t, _)| *t == id).map(|(_, v)| *v);
        assert_eq!(got, Some(c.expected), "task {} (case {})", id, c.n);
    }
}

#[tokio::test]
async fn sqlite_backfills_assigned_version_of_tasks_assigned_before_0006() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options.clone()).await.unwrap();
    migrations_up_to("migrations", 6)
        .await
        .run(&pool)
        .await
        .unwrap();
    for sql in inserts() {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = SqliteStore::open(&path, &SqliteOptions::default())
        .await
        .unwrap();
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let found: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT id, assigned_version FROM tasks")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    store.close().await;
    check(found);
}

#[tokio::test]
async fn postgres_backfills_assigned_version_of_tasks_assigned_before_0005() {
    use sqlx::postgres::PgPool;
    let Some(scratch) = Scratch::new().await else {
        return;
    };
    let pool = PgPool::connect(&scratch.url).await.unwrap();
    migrations_up_to("migrations_postgres", 5)
        .await
        .run(&pool)
        .await
        .unwrap();
    for sql in inserts() {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }

    let store = PgStore::connect(&scratch.url, &PgOptions::default())
        .await
        .unwrap();
    let found: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT id::text, assigned_version FROM tasks")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    store.close().await;
    scratch.drop_database().await;
    check(found);
}
