//! The store contract, run against each backend: SQLite in a temporary
//! directory, and PostgreSQL on a real server, where each test gets a
//! database of its own on the server named by `TASKSTREAM_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). Without a server
//! the PostgreSQL runs skip loudly, or fail when `TASKSTREAM_REQUIRE_POSTGRES=1`.
//! The relay election and `LISTEN` are PostgreSQL's alone.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use taskstream_domain::Cause;
use taskstream_store::{
    AuditEntry, AuditStore, HandledBy, InboxStore, NotificationRecord, NotificationStore,
    OutboxStore, PgOptions, PgStore, SqliteOptions, SqliteStore, Store, StoreError, TaskQuery,
    TaskStore,
};
use uuid::Uuid;

mod common;
use common::{created, message, pending_rows, Scratch};

/// One backend's store, and what to clean up after it.
struct Backend {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    scratch: Option<Scratch>,
}

impl Backend {
    async fn finish(self) {
        self.store.close().await;
        if let Some(scratch) = self.scratch {
            scratch.drop_database().await;
        }
    }
}

/// A fresh store of each kind available.
async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("t.db"), &SqliteOptions::default())
        .await
        .unwrap();
    let mut all = vec![Backend {
        store: Store::Sqlite(sqlite),
        _dir: Some(dir),
        scratch: None,
    }];
    if let Some(scratch) = Scratch::new().await {
        all.push(Backend {
            store: Store::Postgres(scratch.store().await),
            _dir: None,
            scratch: Some(scratch),
        });
    }
    all
}

#[tokio::test]
async fn tasks_round_trip_with_their_events_and_stale_writes_change_nothing() {
    for backend in backends().await {
        let store = &backend.store;
        let change = created("write");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        assert_eq!(
            store.task(change.task.id).await.unwrap().unwrap(),
            change.task
        );
        let pending = pending_rows(store, 10).await;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, message(&change));

        let done = change
            .task
            .complete(taskstream_domain::now(), Cause::default())
            .unwrap();
        store
            .save_task(&done.task, 1, &message(&done))
            .await
            .unwrap();
        // A second writer that read version 1 loses, and writes nothing.
        let stale = change
            .task
            .complete(taskstream_domain::now(), Cause::default())
            .unwrap();
        let err = store
            .save_task(&stale.task, 1, &message(&stale))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
        assert_eq!(
            store.task(change.task.id).await.unwrap().unwrap(),
            done.task
        );
        let pending = pending_rows(store, 10).await;
        assert_eq!(
            pending.iter().map(|p| p.message.id).collect::<Vec<_>>(),
            vec![message(&change).id, message(&done).id],
            "one event per accepted write, in commit order"
        );
        // The database enforces the outbox id's uniqueness, as Debezium expects.
        let again = created("again");
        let mut dup = message(&again);
        dup.id = message(&change).id;
        assert!(store.insert_task(&again.task, &dup).await.is_err());
        assert!(
            store.task(again.task.id).await.unwrap().is_none(),
            "rolled back with its event"
        );

        backend.finish().await;
    }
}

#[tokio::test]
async fn pages_follow_ids_and_hide_tombstones() {
    for backend in backends().await {
        let store = &backend.store;
        let mut ids = Vec::new();
        for i in 0..5 {
            let c = created(&format!("task {i}"));
            store.insert_task(&c.task, &message(&c)).await.unwrap();
            ids.push(c.task.id);
        }
        let gone = store.task(ids[2]).await.unwrap().unwrap();
        let deleted = gone
            .delete(taskstream_domain::now(), Cause::default())
            .unwrap();
        store
            .save_task(&deleted.task, 1, &message(&deleted))
            .await
            .unwrap();
        let first = store
            .tasks(&TaskQuery {
                status: None,
                after: None,
                limit: 2,
            })
            .await
            .unwrap();
        let rest = store
            .tasks(&TaskQuery {
                status: None,
                after: Some(first[1].id),
                limit: 10,
            })
            .await
            .unwrap();
        let seen: Vec<_> = first.iter().chain(&rest).map(|t| t.id).collect();
        let expected: Vec<_> = ids.iter().copied().filter(|id| *id != ids[2]).collect();
        assert_eq!(seen, expected);
        backend.finish().await;
    }
}

#[tokio::test]
async fn one_relay_holds_the_outbox_lease_and_another_wins_it_when_released_or_gone() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let first = db.store().await;
    let second = db.store().await;
    let c = created("publish me");
    first.insert_task(&c.task, &message(&c)).await.unwrap();

    let lease = first.acquire_lease("first").await.unwrap().expect("free");
    assert_eq!(lease.holder(), "first");
    assert_eq!(first.pending(&lease, 10).await.unwrap().len(), 1);
    assert!(
        second.acquire_lease("second").await.unwrap().is_none(),
        "the standby does not get the lease"
    );

    // Released: the standby wins it at once, and the old lease reads nothing.
    let again = first.acquire_lease("first").await.unwrap().unwrap();
    first.release_lease(lease).await.unwrap();
    assert!(matches!(
        first.pending(&again, 10).await,
        Err(StoreError::LeaseLost)
    ));
    let standby = second.acquire_lease("second").await.unwrap().expect("won");
    assert_eq!(second.pending(&standby, 10).await.unwrap().len(), 1);
    assert!(first.acquire_lease("first").await.unwrap().is_none());

    // Gone (its session ended): the other one wins it.
    second.close().await;
    let took_over = async {
        loop {
            if let Some(lease) = first.acquire_lease("first").await.unwrap() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let lease = tokio::time::timeout(Duration::from_secs(10), took_over)
        .await
        .expect("the standby relay took over");
    let seq = first.pending(&lease, 10).await.unwrap()[0].seq;
    first
        .mark_published(&[seq], taskstream_domain::now())
        .await
        .unwrap();
    assert!(first.pending(&lease, 10).await.unwrap().is_empty());
    let stats = first.outbox_stats().await.unwrap();
    assert_eq!((stats.total, stats.pending), (1, 0));
    first.close().await;
    db.drop_database().await;
}

/// How many sessions were ever established to database `name`.
async fn sessions_established(stats: &mut sqlx::PgConnection, name: &str) -> i64 {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *stats)
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT sessions FROM pg_stat_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut *stats)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn a_standby_relay_asks_for_the_lease_on_one_connection_not_a_new_one_each_time() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let holder = db.store().await;
    let standby = db.store().await;
    let _lease = holder.acquire_lease("holder").await.unwrap().expect("free");
    let mut stats = sqlx::PgConnection::connect(&db.admin).await.unwrap();
    // Sessions that ended are counted by now (a backend reports at exit).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = sessions_established(&mut stats, &db.name).await;
    for _ in 0..30 {
        assert!(standby.acquire_lease("standby").await.unwrap().is_none());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let opened = sessions_established(&mut stats, &db.name).await - before;
    assert!(
        opened <= 3,
        "30 refused attempts opened {opened} sessions: a standby must not connect per attempt"
    );
    drop(stats);
    holder.close().await;
    standby.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn on_sqlite_one_relay_holds_the_outbox_lease_and_another_wins_it_when_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let first = SqliteStore::open(&path, &SqliteOptions::default())
        .await
        .unwrap();
    let second = SqliteStore::open(&path, &SqliteOptions::default())
        .await
        .unwrap();
    let c = created("publish me");
    first.insert_task(&c.task, &message(&c)).await.unwrap();
    let lease = first
        .acquire_lease("relay")
        .await
        .unwrap()
        .expect("granted");
    assert_eq!(first.pending(&lease, 10).await.unwrap().len(), 1);
    assert!(
        second.acquire_lease("second").await.unwrap().is_none(),
        "a second relay on the same file does not get the lease"
    );
    first.release_lease(lease).await.unwrap();
    let standby = second.acquire_lease("second").await.unwrap().expect("won");
    assert_eq!(second.pending(&standby, 10).await.unwrap().len(), 1);
    let stale = first.acquire_lease("relay").await.unwrap();
    assert!(stale.is_none(), "the lease is the standby's now");
    // A store that is gone (its file closed, as when its process dies)
    // lets go of the lease.
    second.close().await;
    drop(second);
    let back = first
        .acquire_lease("relay")
        .await
        .unwrap()
        .expect("won back");
    assert_eq!(first.pending(&back, 10).await.unwrap().len(), 1);
    first.close().await;
}

#[tokio::test]
async fn a_commit_in_another_process_wakes_the_relay() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let relay = Arc::new(db.store().await);
    let api = db.store().await;
    let wake = Arc::new(tokio::sync::Notify::new());
    let listening = {
        let (relay, wake) = (Arc::clone(&relay), Arc::clone(&wake));
        tokio::spawn(async move { relay.listen_for_commits(&wake).await })
    };
    // The listener looks once when it connects.
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .unwrap();
    let c = created("wake up");
    api.insert_task(&c.task, &message(&c)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("the commit was announced");
    listening.abort();
    relay.close().await;
    api.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn consumer_effects_happen_once_per_event() {
    for backend in backends().await {
        let store = &backend.store;
        let event_id = Uuid::now_v7();
        let entry = AuditEntry {
            event_id,
            event_type: "task.created".into(),
            task_id: "t1".into(),
            task_version: 1,
            event_time: taskstream_domain::now(),
            correlation_id: Some("req-1".into()),
            topic: "task-events".into(),
            partition: 3,
            offset: 42,
            recorded_at: taskstream_domain::now(),
            envelope: "{}".into(),
        };
        assert!(!store.is_processed("auditor", event_id).await.unwrap());
        assert_eq!(
            store
                .append_batch("auditor", &[entry.clone(), entry.clone()])
                .await
                .unwrap(),
            vec![true, false]
        );
        assert!(store.is_processed("auditor", event_id).await.unwrap());
        assert!(!store.append("auditor", &entry).await.unwrap());
        // Another group's auditor adds no second entry, and its group now
        // knows the event too.
        assert!(!store
            .is_processed("auditor-replay", event_id)
            .await
            .unwrap());
        assert!(!store.append("auditor-replay", &entry).await.unwrap());
        assert!(store
            .is_processed("auditor-replay", event_id)
            .await
            .unwrap());
        let unseen = Uuid::now_v7();
        assert_eq!(
            store
                .processed_among("auditor", &[unseen, event_id])
                .await
                .unwrap(),
            [event_id].into()
        );
        assert!(store
            .processed_among("auditor", &[])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.audit_entries(Some("t1"), 10).await.unwrap(),
            vec![entry]
        );

        let sent = NotificationRecord {
            id: Uuid::new_v4(),
            event_id,
            event_type: "task.completed".into(),
            task_id: "t1".into(),
            kind: "task_completed".into(),
            recipient: "ana".into(),
            message: "done".into(),
            channel: "log".into(),
            sent_at: taskstream_domain::now(),
        };
        assert!(!store.is_processed("notifier", event_id).await.unwrap());
        let batch = vec![(event_id, vec![sent.clone()])];
        assert_eq!(
            store
                .record_notifications_batch("notifier", &batch)
                .await
                .unwrap(),
            vec![true]
        );
        assert!(!store
            .record_notifications("notifier", event_id, std::slice::from_ref(&sent))
            .await
            .unwrap());
        assert!(store.is_processed("notifier", event_id).await.unwrap());
        assert!(!store.is_processed("other-group", event_id).await.unwrap());
        assert_eq!(store.notifications(None, 10).await.unwrap(), vec![sent]);
        assert_eq!(store.processed_times("notifier").await.unwrap().len(), 1);
        backend.finish().await;
    }
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let plain = db.store().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(plain.pool())
        .await
        .unwrap();
    plain.close().await;
    if ssl != "on" {
        eprintln!("SKIPPED: this PostgreSQL server has ssl = {ssl}");
        db.drop_database().await;
        return;
    }
    let url = format!("{}?sslmode=require", db.url);
    let store = PgStore::connect(&url, &PgOptions::default()).await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(encrypted, "the session is not encrypted");
    store.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn pruning_deletes_only_published_messages_older_than_the_cutoff() {
    for backend in backends().await {
        let store = &backend.store;
        for i in 0..4 {
            let c = created(&format!("task {i}"));
            store.insert_task(&c.task, &message(&c)).await.unwrap();
        }
        let seqs: Vec<i64> = pending_rows(store, 10)
            .await
            .iter()
            .map(|p| p.seq)
            .collect();
        let now = taskstream_domain::now();
        let long_ago = now - chrono::Duration::days(10);
        store.mark_published(&seqs[..2], long_ago).await.unwrap();
        store.mark_published(&seqs[2..3], now).await.unwrap();
        let cutoff = now - chrono::Duration::days(7);

        assert_eq!(
            store.prune_published(cutoff, 1).await.unwrap(),
            1,
            "the limit holds"
        );
        assert_eq!(store.prune_published(cutoff, 100).await.unwrap(), 1);
        assert_eq!(store.prune_published(cutoff, 100).await.unwrap(), 0);
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(
            (stats.total, stats.pending),
            (2, 1),
            "recent and pending ones stay"
        );
        assert_eq!(pending_rows(store, 10).await[0].seq, seqs[3]);
        backend.finish().await;
    }
}

#[tokio::test]
async fn unpublished_among_names_exactly_the_unmarked_rows_of_the_ids_asked_about_for_their_topic()
{
    const TOPIC: &str = "task-events";
    for backend in backends().await {
        let store = &backend.store;
        let mut ids = Vec::new();
        for i in 0..4 {
            let c = created(&format!("task {i}"));
            let m = message(&c);
            ids.push(m.id);
            store.insert_task(&c.task, &m).await.unwrap();
        }
        let rows = pending_rows(store, 10).await;
        let seq_of = |id: Uuid| rows.iter().find(|r| r.message.id == id).unwrap().seq;
        store
            .mark_published(&[seq_of(ids[1])], taskstream_domain::now())
            .await
            .unwrap();
        // Marked, unknown and unasked rows are left out.
        let asked = [ids[0], ids[1], ids[2], Uuid::new_v4()];
        let mut found = store.unpublished_among(TOPIC, &asked).await.unwrap();
        found.sort_unstable();
        let mut expected = vec![(ids[0], seq_of(ids[0])), (ids[2], seq_of(ids[2]))];
        expected.sort_unstable();
        assert_eq!(found, expected);
        assert!(store
            .unpublished_among(TOPIC, &[])
            .await
            .unwrap()
            .is_empty());
        // A record with a row's id found on another topic says nothing
        // of that row.
        assert!(
            store
                .unpublished_among("another-topic", &asked)
                .await
                .unwrap()
                .is_empty(),
            "rows for one topic were named for another"
        );
        assert_eq!(
            store.unpublished_topics().await.unwrap(),
            vec![rows[0].message.topic.clone()]
        );
        let all: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        store
            .mark_published(&all, taskstream_domain::now())
            .await
            .unwrap();
        assert!(store.unpublished_topics().await.unwrap().is_empty());
        backend.finish().await;
    }
}

#[tokio::test]
async fn a_groups_repair_requeues_only_the_published_events_it_has_not_handled() {
    for backend in backends().await {
        let store = &backend.store;
        let changes: Vec<_> = (0..3).map(|i| created(&format!("task {i}"))).collect();
        for c in &changes {
            store.insert_task(&c.task, &message(c)).await.unwrap();
        }
        let seqs: Vec<i64> = pending_rows(store, 10)
            .await
            .iter()
            .map(|p| p.seq)
            .collect();
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();
        // Event 0 is audited; event 1 is processed by the notifier.
        let audited = AuditEntry {
            event_id: changes[0].event.id.as_uuid(),
            event_type: "task.created".into(),
            task_id: changes[0].task.id.to_string(),
            task_version: 1,
            event_time: taskstream_domain::now(),
            correlation_id: None,
            topic: "task-events".into(),
            partition: 0,
            offset: 0,
            recorded_at: taskstream_domain::now(),
            envelope: "{}".into(),
        };
        store.append("auditor", &audited).await.unwrap();
        store
            .record_notifications("notifier", changes[1].event.id.as_uuid(), &[])
            .await
            .unwrap();
        let pending_ids = || async {
            let mut ids: Vec<Uuid> = pending_rows(store, 10)
                .await
                .iter()
                .map(|p| p.message.id)
                .collect();
            ids.sort();
            ids
        };
        let ids = |picked: &[usize]| {
            let mut ids: Vec<Uuid> = picked
                .iter()
                .map(|&i| changes[i].event.id.as_uuid())
                .collect();
            ids.sort();
            ids
        };

        let requeued = store
            .requeue_events_unhandled_by(HandledBy::AuditLog)
            .await
            .unwrap();
        assert_eq!(requeued, 2);
        assert_eq!(pending_ids().await, ids(&[1, 2]));
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();

        let requeued = store
            .requeue_events_unhandled_by(HandledBy::Processed("notifier"))
            .await
            .unwrap();
        assert_eq!(requeued, 2);
        assert_eq!(pending_ids().await, ids(&[0, 2]));
        assert_eq!(
            store
                .requeue_events_unhandled_by(HandledBy::Processed("notifier"))
                .await
                .unwrap(),
            0,
            "pending events are not counted again"
        );
        backend.finish().await;
    }
}
