//! Each service owns its data: under `taskstream up` the Task API, the
//! audit-log service and the notifier write SQLite files of their own, and
//! a data directory from when they shared one file keeps its history.

use std::path::Path;

use sqlx::Connection;
use taskstream_store::Database;

use crate::helpers::{spawn_app_in, TestApp};

/// How many rows `table` of the SQLite file `file` in `dir` holds.
async fn rows(dir: &Path, file: &str, table: &str) -> i64 {
    let url = format!("sqlite://{}?mode=ro", dir.join(file).display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    n
}

/// Creates a task assigned to ana and waits until both consumers handled it.
async fn assigned_and_handled(app: &TestApp, title: &str, audited: usize, notified: usize) {
    app.created(title, Some("ana")).await;
    app.audit_when(audited).await;
    app.notifications_when(notified).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_each_services_rows_in_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), |_| {}).await;
    assigned_and_handled(&app, "own files", 1, 1).await;
    app.system.shutdown().await;

    let d = dir.path();
    assert_eq!(rows(d, "taskstream.db", "tasks").await, 1);
    assert_eq!(rows(d, "audit.db", "audit_log").await, 1);
    assert_eq!(rows(d, "notifications.db", "notifications").await, 1);
    // Nobody else's rows in any of them.
    assert_eq!(rows(d, "taskstream.db", "audit_log").await, 0);
    assert_eq!(rows(d, "taskstream.db", "notifications").await, 0);
    assert_eq!(rows(d, "audit.db", "tasks").await, 0);
    assert_eq!(rows(d, "audit.db", "outbox").await, 0);
    assert_eq!(rows(d, "notifications.db", "tasks").await, 0);
    assert_eq!(rows(d, "notifications.db", "audit_log").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_whose_services_shared_one_file_keeps_its_history_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The layout of earlier versions: every service in taskstream.db.
    let shared = Database::Sqlite(d.join("taskstream.db"));
    let app = spawn_app_in(d, |config| config.database = Some(shared)).await;
    assigned_and_handled(&app, "before the move", 1, 1).await;
    app.system.shutdown().await;
    assert!(!d.join("audit.db").exists());
    assert_eq!(rows(d, "taskstream.db", "audit_log").await, 1);

    // Started with the default layout, the services take their rows.
    let app = spawn_app_in(d, |_| {}).await;
    assert_eq!(app.items("/audit").await.len(), 1, "the old audit entry");
    assert_eq!(app.items("/notifications").await.len(), 1);
    assigned_and_handled(&app, "after the move", 2, 2).await;
    app.system.shutdown().await;

    // Once: a restart copies nothing again — not even a row the shared file
    // gained since — and the shared file's copies are left as they were.
    {
        let url = format!("sqlite://{}", d.join("taskstream.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO audit_log (event_id, event_type, task_id, task_version, event_time, topic, partition, \"offset\", recorded_at, envelope)
             SELECT 'late-' || event_id, event_type, task_id, task_version, event_time, topic, partition, \"offset\", recorded_at, envelope FROM audit_log",
        )
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let app = spawn_app_in(d, |_| {}).await;
    assert_eq!(app.items("/audit").await.len(), 2);
    assert_eq!(app.items("/notifications").await.len(), 2);
    app.system.shutdown().await;
    assert_eq!(rows(d, "audit.db", "audit_log").await, 2);
    assert_eq!(rows(d, "notifications.db", "notifications").await, 2);
    assert_eq!(rows(d, "taskstream.db", "audit_log").await, 2);
}

/// librdkafka's mock forgets everything when `up` stops, so `up` on it
/// republishes at start the events a consumer had not handled — which it
/// tells from the auditor's and the notifier's own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_the_mock_republishes_only_what_a_services_own_file_lacks() {
    use taskstream_store::{NotificationStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let on_mock = |config: &mut taskstream::system::SystemConfig| {
        config.dev_broker = taskstream::components::DevBrokerKind::Mock;
        config.relay.delivery = taskstream_services::RelayDelivery::AtLeastOnce;
    };
    let app = spawn_app_in(d, on_mock).await;
    for i in 0..3 {
        app.created(&format!("task {i}"), Some("ana")).await;
    }
    app.audit_when(3).await;
    app.notifications_when(3).await;
    let published = app.system.store().published_times().await.unwrap();
    let first = app
        .system
        .notifier_store()
        .notifications(None, 10)
        .await
        .unwrap()[0]
        .clone();
    app.system.shutdown().await;

    // The notifier "lost" its record of one event (as if it never handled it).
    {
        let url = format!("sqlite://{}", d.join("notifications.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for table in ["notifications", "processed_events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE event_id = ?"))
                .bind(first.event_id.to_string())
                .execute(&mut db)
                .await
                .unwrap();
        }
        db.close().await.unwrap();
    }

    let app = spawn_app_in(d, on_mock).await;
    // That one event is published again and notified again; the others,
    // handled by both services as their own files show, are not.
    let notes = app.notifications_when(3).await;
    assert_eq!(notes.len(), 3);
    let store: &Store = app.system.store();
    let again = store.published_times().await.unwrap();
    let changed = again.iter().filter(|t| !published.contains(t)).count();
    assert_eq!(changed, 1, "only the unhandled event is republished");
    assert_eq!(
        app.items("/audit").await.len(),
        3,
        "the auditor had it: no second entry"
    );
    app.system.shutdown().await;
}
