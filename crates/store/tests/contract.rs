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
    OutboxStore, PgOptions, PgStore, SqliteOptions, SqliteStore, Store, StoreError,
    SuggestionRecord, SuggestionStatus, SuggestionStore, TaskQuery, TaskStore,
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

/// The relay's claim leaves out the rows it has in flight, by seq range,
/// oldest first as ever; a row in a range is claimed again once the range
/// is no longer given (the batch failed, or a late row sat in its gap),
/// and a marked row never is.
#[tokio::test]
async fn a_claim_leaves_out_the_rows_in_flight_and_only_those() {
    for backend in backends().await {
        let store = &backend.store;
        for i in 0..7 {
            let c = created(&format!("task {i}"));
            store.insert_task(&c.task, &message(&c)).await.unwrap();
        }
        let lease = store.acquire_lease("test").await.unwrap().unwrap();
        let seqs: Vec<i64> = store
            .pending(&lease, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect();
        let claimed = |rows: Vec<taskstream_store::PendingMessage>| -> Vec<i64> {
            rows.iter().map(|p| p.seq).collect()
        };

        let first = store.claim(&lease, 2, &[]).await.unwrap();
        assert_eq!(claimed(first), seqs[..2]);
        let second = store.claim(&lease, 2, &seqs[..2]).await.unwrap();
        assert_eq!(claimed(second), seqs[2..4], "the next rows, none in flight");
        let third = store.claim(&lease, 10, &seqs[..4]).await.unwrap();
        assert_eq!(claimed(third), seqs[4..], "to the end");

        // The first batch is marked, the second failed (its seqs are no
        // longer in flight): its rows come back, first.
        store
            .mark_published(&seqs[..2], taskstream_domain::now())
            .await
            .unwrap();
        let again = store.claim(&lease, 3, &seqs[4..]).await.unwrap();
        assert_eq!(claimed(again), seqs[2..4]);
        // A gap in the middle of what is in flight.
        let gap = store
            .claim(&lease, 10, &[seqs[2], seqs[4], seqs[5]])
            .await
            .unwrap();
        assert_eq!(claimed(gap), vec![seqs[3], seqs[6]]);
        backend.finish().await;
    }
}

/// On PostgreSQL a row with a lower seq can commit after rows with higher
/// ones, while those are in flight: the next claim must take it first,
/// before any row written after it (its task's next event among them).
#[tokio::test]
async fn on_postgres_a_row_committed_late_below_the_rows_in_flight_is_claimed_next_first() {
    let Some(db) = Scratch::new().await else {
        return;
    };
    let store = db.store().await;
    let row = |title: &str| {
        let c = created(title);
        (c.clone(), message(&c))
    };
    let (first, first_row) = row("first");
    store.insert_task(&first.task, &first_row).await.unwrap();
    // A writer holds the next seq in an open transaction.
    let mut late = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    let late_id = uuid::Uuid::now_v7();
    let late_seq: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, created_at)
         VALUES ($1, 'task', 'late', 'task.created', '\\x00', 'task-events', 'application/json', now())
         RETURNING seq",
    )
    .bind(late_id)
    .fetch_one(&mut late)
    .await
    .unwrap();
    let (third, third_row) = row("third");
    store.insert_task(&third.task, &third_row).await.unwrap();
    let lease = store.acquire_lease("test").await.unwrap().unwrap();
    let in_flight: Vec<i64> = store
        .claim(&lease, 10, &[])
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(
        in_flight.len(),
        2,
        "the open transaction's row is not visible yet"
    );
    assert!(in_flight[0] < late_seq && late_seq < in_flight[1]);
    // It commits, and a later row follows it.
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();
    let (fourth, fourth_row) = row("fourth");
    store.insert_task(&fourth.task, &fourth_row).await.unwrap();
    let next: Vec<uuid::Uuid> = store
        .claim(&lease, 10, &in_flight)
        .await
        .unwrap()
        .iter()
        .map(|p| p.message.id)
        .collect();
    assert_eq!(next, [late_id, fourth_row.id], "the late row first");
    late.close().await.unwrap();
    store.close().await;
    db.drop_database().await;
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
            .requeue_events_unhandled_by(HandledBy::AuditLog, store, "task-events")
            .await
            .unwrap();
        assert_eq!(requeued, 2);
        assert_eq!(pending_ids().await, ids(&[1, 2]));
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();

        let requeued = store
            .requeue_events_unhandled_by(HandledBy::Processed("notifier"), store, "task-events")
            .await
            .unwrap();
        assert_eq!(requeued, 2);
        assert_eq!(pending_ids().await, ids(&[0, 2]));
        assert_eq!(
            store
                .requeue_events_unhandled_by(HandledBy::Processed("notifier"), store, "task-events")
                .await
                .unwrap(),
            0,
            "pending events are not counted again"
        );
        backend.finish().await;
    }
}

mod sagas {
    //! The saga store: starts keyed by their trigger, capacity counted in
    //! the start's transaction, steps applied once from the states they
    //! expect, together with their outbox rows and task changes.

    use chrono::{DateTime, Utc};
    use taskstream_domain::{Assignee, Cause, TaskPatch};
    use taskstream_store::{
        InboxStore, NewSagaStep, OutboxMessage, SagaEffects, SagaStart, SagaStarted, SagaState,
        SagaStore, SagaTaskWrite, SagaTransition, StoreError, TaskStore,
    };
    use uuid::Uuid;

    use super::backends;
    use crate::common::{created, message, pending_rows};
    use taskstream_store::{HandledBy, OutboxStore};

    fn saga_event(saga: Uuid, step: &str, at: DateTime<Utc>) -> (NewSagaStep, OutboxMessage) {
        let id = Uuid::now_v7();
        (
            NewSagaStep {
                step: step.to_owned(),
                state: SagaState::AwaitingAcceptance,
                detail: Some(format!("{step} detail")),
                event_id: id,
                causation_id: Some("cause".to_owned()),
                at,
            },
            OutboxMessage {
                id,
                aggregate_type: "saga".into(),
                aggregate_id: saga.to_string(),
                event_type: format!("saga.{step}"),
                topic: "task-sagas".into(),
                payload: b"{}".to_vec(),
                content_type: "application/vnd.taskstream.saga+json".into(),
                traceparent: None,
                created_at: at,
            },
        )
    }

    fn effects(
        saga: Uuid,
        state: SagaState,
        holds: bool,
        deadline: Option<DateTime<Utc>>,
        names: &[&str],
    ) -> SagaEffects {
        let at = taskstream_domain::now();
        let (mut steps, mut outbox) = (Vec::new(), Vec::new());
        for name in names {
            let (mut step, message) = saga_event(saga, name, at);
            step.state = state;
            steps.push(step);
            outbox.push(message);
        }
        SagaEffects {
            state,
            outcome: None,
            holds_capacity: holds,
            deadline_at: deadline,
            steps,
            outbox,
        }
    }

    fn start(task_id: &str, assignee: &str, max_open: i64) -> SagaStart {
        let id = Uuid::now_v7();
        let at = taskstream_domain::now();
        SagaStart {
            group: "saga".into(),
            id,
            task_id: task_id.into(),
            assignee: assignee.into(),
            task_version: 1,
            trigger_event_id: Uuid::now_v7(),
            correlation_id: Some("req-1".into()),
            at,
            max_open,
            reserved: effects(
                id,
                SagaState::AwaitingAcceptance,
                true,
                Some(at + chrono::Duration::seconds(60)),
                &["started", "acceptance_requested"],
            ),
            full: SagaEffects {
                outcome: Some("capacity_exceeded".into()),
                ..effects(
                    id,
                    SagaState::Compensating,
                    false,
                    Some(at),
                    &["started", "capacity_exceeded"],
                )
            },
        }
    }

    #[tokio::test]
    async fn a_saga_starts_once_per_trigger_and_records_its_steps_and_events() {
        for backend in backends().await {
            let store = &backend.store;
            let s = start("task-1", "ana", 2);
            assert_eq!(store.start_saga(&s).await.unwrap(), SagaStarted::Reserved);
            // The same trigger again (a redelivery) writes nothing.
            let mut again = s.clone();
            again.id = Uuid::now_v7();
            assert_eq!(
                store.start_saga(&again).await.unwrap(),
                SagaStarted::Duplicate
            );
            assert!(store.saga(again.id).await.unwrap().is_none());

            let saga = store.saga(s.id).await.unwrap().unwrap();
            assert_eq!(saga.state, SagaState::AwaitingAcceptance);
            assert!(saga.holds_capacity);
            assert_eq!(saga.task_version, 1);
            assert_eq!(saga.correlation_id.as_deref(), Some("req-1"));
            assert_eq!(
                store.latest_saga_for_task("task-1").await.unwrap(),
                Some(saga.clone())
            );
            let history = store.saga_history(s.id).await.unwrap();
            assert_eq!(
                history
                    .iter()
                    .map(|h| (h.seq, h.step.as_str()))
                    .collect::<Vec<_>>(),
                vec![(1, "started"), (2, "acceptance_requested")]
            );
            assert_eq!(history[0].event_id, s.reserved.outbox[0].id);
            assert!(store
                .is_processed("saga", s.trigger_event_id)
                .await
                .unwrap());
            let pending = pending_rows(store, 10).await;
            assert_eq!(
                pending
                    .iter()
                    .map(|p| p.message.event_type.as_str())
                    .collect::<Vec<_>>(),
                vec!["saga.started", "saga.acceptance_requested"]
            );
            assert_eq!(store.held_capacity("ana").await.unwrap(), 1);
            backend.finish().await;
        }
    }

    #[tokio::test]
    async fn a_groups_repair_republishes_what_it_skipped_on_that_topic_only() {
        use taskstream_store::NotificationStore;
        for backend in backends().await {
            let store = &backend.store;
            let change = created("assigned");
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            store.start_saga(&start("t", "ana", 5)).await.unwrap();
            let rows = pending_rows(store, 10).await;
            let seqs: Vec<i64> = rows.iter().map(|p| p.seq).collect();
            assert_eq!(seqs.len(), 3);
            let saga_events: Vec<Uuid> = rows
                .iter()
                .filter(|p| p.message.topic == "task-sagas")
                .map(|p| p.message.id)
                .collect();
            assert_eq!(saga_events.len(), 2);
            let publish = || store.mark_published(&seqs, taskstream_domain::now());
            publish().await.unwrap();
            let requeued = |by, topic| store.requeue_events_unhandled_by(by, store, topic);
            let types = || async {
                pending_rows(store, 10)
                    .await
                    .iter()
                    .map(|p| p.message.event_type.clone())
                    .collect::<Vec<_>>()
            };
            // A gap on task-events: the task event, for either group.
            for by in [HandledBy::Processed("notifier"), HandledBy::AuditLog] {
                assert_eq!(requeued(by, "task-events").await.unwrap(), 1);
                assert_eq!(types().await, ["task.created"]);
                publish().await.unwrap();
            }
            // A gap on task-sagas: the saga events the notifier has not
            // handled; the auditor never reads them.
            assert_eq!(
                requeued(HandledBy::AuditLog, "task-sagas").await.unwrap(),
                0
            );
            store
                .record_notifications("notifier", saga_events[0], &[])
                .await
                .unwrap();
            assert_eq!(
                requeued(HandledBy::Processed("notifier"), "task-sagas")
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(types().await, ["saga.acceptance_requested"]);
            publish().await.unwrap();
            // A restart on the mock: the unaudited task event and the saga
            // event the notifier has not handled.
            assert_eq!(
                store
                    .requeue_unhandled_events("notifier", store, store)
                    .await
                    .unwrap(),
                2
            );
            backend.finish().await;
        }
    }

    /// Many sagas for one assignee started at once, each in its own
    /// transaction on its own connection where the backend has several
    /// (PostgreSQL), reserve exactly the assignee's capacity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_starts_for_one_assignee_never_hold_more_than_its_capacity() {
        const STARTS: usize = 20;
        const MAX_OPEN: i64 = 3;
        for backend in backends().await {
            let super::Backend {
                store,
                _dir,
                scratch,
            } = backend;
            let store = std::sync::Arc::new(store);
            let starts: Vec<SagaStart> = (0..STARTS)
                .map(|i| start(&format!("task-{i}"), "dee", MAX_OPEN))
                .collect();
            let gate = std::sync::Arc::new(tokio::sync::Barrier::new(STARTS));
            let running: Vec<_> = starts
                .iter()
                .cloned()
                .map(|s| {
                    let (store, gate) = (store.clone(), gate.clone());
                    tokio::spawn(async move {
                        gate.wait().await;
                        store.start_saga(&s).await.unwrap()
                    })
                })
                .collect();
            let mut reserved = 0;
            for r in running {
                match r.await.unwrap() {
                    SagaStarted::Reserved => reserved += 1,
                    SagaStarted::AtCapacity => {}
                    SagaStarted::Duplicate => panic!("each start has a trigger of its own"),
                }
            }
            assert_eq!(reserved, MAX_OPEN);
            assert_eq!(store.held_capacity("dee").await.unwrap(), MAX_OPEN);
            let mut holding = 0;
            for s in &starts {
                let saga = store.saga(s.id).await.unwrap().unwrap();
                holding += i64::from(saga.holds_capacity);
            }
            assert_eq!(holding, MAX_OPEN);
            let store = std::sync::Arc::into_inner(store).expect("the starts are done");
            super::Backend {
                store,
                _dir,
                scratch,
            }
            .finish()
            .await;
        }
    }

    #[tokio::test]
    async fn a_start_beyond_the_assignees_capacity_takes_the_full_branch() {
        for backend in backends().await {
            let store = &backend.store;
            assert_eq!(
                store.start_saga(&start("t1", "bo", 1)).await.unwrap(),
                SagaStarted::Reserved
            );
            let over = start("t2", "bo", 1);
            assert_eq!(
                store.start_saga(&over).await.unwrap(),
                SagaStarted::AtCapacity
            );
            let saga = store.saga(over.id).await.unwrap().unwrap();
            assert_eq!(saga.state, SagaState::Compensating);
            assert_eq!(saga.outcome.as_deref(), Some("capacity_exceeded"));
            assert!(!saga.holds_capacity);
            assert_eq!(store.held_capacity("bo").await.unwrap(), 1);
            // Someone else's capacity is their own.
            assert_eq!(
                store.start_saga(&start("t3", "cy", 1)).await.unwrap(),
                SagaStarted::Reserved
            );
            backend.finish().await;
        }
    }

    #[tokio::test]
    async fn a_transition_applies_once_from_the_states_it_expects() {
        for backend in backends().await {
            let store = &backend.store;
            let s = start("task-2", "ana", 5);
            store.start_saga(&s).await.unwrap();
            let accept = SagaTransition {
                saga_id: s.id,
                from: vec![SagaState::AwaitingAcceptance],
                only_while_holding: false,
                only_while_assigned: None,
                effects: SagaEffects {
                    outcome: Some("accepted".into()),
                    ..effects(s.id, SagaState::Completed, true, None, &["accepted"])
                },
                task_writes: Vec::new(),
                processed: Some(("saga".into(), Uuid::now_v7())),
            };
            let done = store.transition_saga(&accept).await.unwrap().unwrap();
            assert_eq!(done.state, SagaState::Completed);
            assert_eq!(done.version, 2);
            assert!(done.deadline_at.is_none());
            // The same step again, or a racing timeout, finds the saga moved on.
            let mut repeat = accept.clone();
            repeat.effects = effects(s.id, SagaState::Completed, true, None, &["accepted"]);
            assert!(store.transition_saga(&repeat).await.unwrap().is_none());
            assert_eq!(store.saga_history(s.id).await.unwrap().len(), 3);
            assert_eq!(pending_rows(store, 10).await.len(), 3);
            assert!(store
                .is_processed("saga", accept.processed.as_ref().unwrap().1)
                .await
                .unwrap());

            // A release applies only while the saga holds capacity.
            let release = SagaTransition {
                saga_id: s.id,
                from: vec![SagaState::Completed],
                only_while_holding: true,
                only_while_assigned: None,
                effects: effects(
                    s.id,
                    SagaState::Completed,
                    false,
                    None,
                    &["capacity_released"],
                ),
                task_writes: Vec::new(),
                processed: None,
            };
            assert!(store.transition_saga(&release).await.unwrap().is_some());
            let mut twice = release.clone();
            twice.effects = effects(
                s.id,
                SagaState::Completed,
                false,
                None,
                &["capacity_released"],
            );
            assert!(store.transition_saga(&twice).await.unwrap().is_none());
            assert_eq!(store.held_capacity("ana").await.unwrap(), 0);
            assert!(store
                .open_sagas_for_task("task-2")
                .await
                .unwrap()
                .is_empty());
            backend.finish().await;
        }
    }

    /// `task` with its assignee set to `assignee` (or cleared), saved.
    async fn reassign(
        store: &taskstream_store::Store,
        task: &taskstream_domain::Task,
        assignee: Option<&str>,
    ) -> taskstream_domain::Task {
        let change = task
            .update(
                TaskPatch {
                    assignee: Some(assignee.map(|a| Assignee::parse(a).unwrap())),
                    ..TaskPatch::default()
                },
                taskstream_domain::now(),
                Cause::default(),
            )
            .unwrap()
            .unwrap();
        store
            .save_task(&change.task, task.version, &message(&change))
            .await
            .unwrap();
        change.task
    }

    #[tokio::test]
    async fn a_task_remembers_the_version_its_assignment_dates_from_and_an_answer_needs_it() {
        for backend in backends().await {
            let store = &backend.store;
            let change = created("assigned to ana");
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            let task_id = change.task.id.to_string();
            let s = start(&task_id, "ana", 5);
            store.start_saga(&s).await.unwrap();
            let saga = store.saga(s.id).await.unwrap().unwrap();
            let read = store.saga_task(&task_id).await.unwrap().unwrap();
            assert_eq!(read.task, change.task);
            assert_eq!(read.assigned_version, None, "unchanged since created");
            assert!(read.is_assignment_of(&saga));
            assert!(store.saga_task("not-a-task").await.unwrap().is_none());

            // Other edits leave the assignment's version alone.
            let renamed = change
                .task
                .update(
                    TaskPatch {
                        title: Some(taskstream_domain::TaskTitle::parse("renamed").unwrap()),
                        ..TaskPatch::default()
                    },
                    taskstream_domain::now(),
                    Cause::default(),
                )
                .unwrap()
                .unwrap();
            store
                .save_task(&renamed.task, 1, &message(&renamed))
                .await
                .unwrap();
            let read = store.saga_task(&task_id).await.unwrap().unwrap();
            assert_eq!(read.assigned_version, None);
            assert!(read.is_assignment_of(&saga));

            // Unassigned, then assigned to ana again: a new assignment.
            let unassigned = reassign(store, &renamed.task, None).await;
            assert_eq!(
                store
                    .saga_task(&task_id)
                    .await
                    .unwrap()
                    .unwrap()
                    .assigned_version,
                Some(3)
            );
            let again = reassign(store, &unassigned, Some("ana")).await;
            let read = store.saga_task(&task_id).await.unwrap().unwrap();
            assert_eq!((read.assigned_version, read.task.version), (Some(4), 4));
            assert!(!read.is_assignment_of(&saga));

            // The old saga's answer finds the task no longer its own and
            // writes nothing; the task is not touched.
            let accept = SagaTransition {
                saga_id: s.id,
                from: vec![SagaState::AwaitingAcceptance],
                only_while_holding: false,
                only_while_assigned: taskstream_store::SagaAssignment::of(&saga),
                effects: effects(s.id, SagaState::Completed, true, None, &["accepted"]),
                task_writes: Vec::new(),
                processed: None,
            };
            assert!(store.transition_saga(&accept).await.unwrap().is_none());
            assert_eq!(store.saga(s.id).await.unwrap().unwrap(), saga);
            assert_eq!(store.saga_history(s.id).await.unwrap().len(), 2);
            assert_eq!(store.task(change.task.id).await.unwrap().unwrap(), again);

            // The answer of a saga that started from the current assignment applies.
            let mut current = start(&task_id, "ana", 5);
            current.task_version = 4;
            store.start_saga(&current).await.unwrap();
            let fresh = store.saga(current.id).await.unwrap().unwrap();
            let accept = SagaTransition {
                saga_id: current.id,
                only_while_assigned: taskstream_store::SagaAssignment::of(&fresh),
                effects: effects(current.id, SagaState::Completed, true, None, &["accepted"]),
                ..accept
            };
            let done = store.transition_saga(&accept).await.unwrap().unwrap();
            assert_eq!(done.state, SagaState::Completed);
            assert_eq!(store.task(change.task.id).await.unwrap().unwrap(), again);
            backend.finish().await;
        }
    }

    #[tokio::test]
    async fn deadlines_are_found_once_due_and_a_compensation_writes_the_task_with_it() {
        for backend in backends().await {
            let store = &backend.store;
            let change = created("assigned");
            store
                .insert_task(&change.task, &message(&change))
                .await
                .unwrap();
            let task_id = change.task.id.to_string();
            let s = start(&task_id, "ana", 5);
            store.start_saga(&s).await.unwrap();
            let now = taskstream_domain::now();
            assert!(store.due_sagas(now, 10).await.unwrap().is_empty());
            let due = store
                .due_sagas(now + chrono::Duration::seconds(61), 10)
                .await
                .unwrap();
            assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), vec![s.id]);

            let unassigned = change
                .task
                .update(
                    TaskPatch {
                        assignee: Some(None),
                        ..TaskPatch::default()
                    },
                    now,
                    Cause::default(),
                )
                .unwrap()
                .unwrap();
            let escalated = unassigned
                .task
                .update(
                    TaskPatch {
                        assignee: Some(Some(Assignee::parse("team-queue").unwrap())),
                        ..TaskPatch::default()
                    },
                    now,
                    Cause::default(),
                )
                .unwrap()
                .unwrap();
            let mut compensate = SagaTransition {
                saga_id: s.id,
                from: vec![SagaState::AwaitingAcceptance],
                only_while_holding: false,
                only_while_assigned: None,
                effects: effects(
                    s.id,
                    SagaState::Compensated,
                    false,
                    None,
                    &["unassigned", "escalated"],
                ),
                task_writes: vec![
                    SagaTaskWrite {
                        task: unassigned.task.clone(),
                        expected_version: 1,
                        event: message(&unassigned),
                    },
                    SagaTaskWrite {
                        task: escalated.task.clone(),
                        // Stale: the whole step rolls back.
                        expected_version: 1,
                        event: message(&escalated),
                    },
                ],
                processed: None,
            };
            let err = store.transition_saga(&compensate).await.unwrap_err();
            assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
            assert_eq!(
                store.saga(s.id).await.unwrap().unwrap().state,
                SagaState::AwaitingAcceptance
            );
            assert_eq!(
                store.task(change.task.id).await.unwrap().unwrap(),
                change.task
            );
            assert_eq!(store.saga_history(s.id).await.unwrap().len(), 2);

            compensate.task_writes[1].expected_version = 2;
            let done = store.transition_saga(&compensate).await.unwrap().unwrap();
            assert_eq!(done.state, SagaState::Compensated);
            assert!(!done.holds_capacity);
            assert_eq!(
                store.task(change.task.id).await.unwrap().unwrap(),
                escalated.task
            );
            let types: Vec<_> = pending_rows(store, 20)
                .await
                .into_iter()
                .map(|p| p.message.event_type)
                .collect();
            assert_eq!(
                types,
                vec![
                    "task.created",
                    "saga.started",
                    "saga.acceptance_requested",
                    "task.updated",
                    "task.updated",
                    "saga.unassigned",
                    "saga.escalated"
                ]
            );
            assert!(store
                .due_sagas(now + chrono::Duration::days(2), 10)
                .await
                .unwrap()
                .is_empty());
            backend.finish().await;
        }
    }
}

/// A pending suggestion for `change`'s task, answering its event.
fn suggestion_for(change: &taskstream_domain::TaskChange) -> SuggestionRecord {
    SuggestionRecord {
        id: Uuid::now_v7(),
        event_id: change.event.id.as_uuid(),
        task_id: change.task.id.to_string(),
        task_version: change.task.version,
        priority: Some("low".into()),
        assignee: Some("bo".into()),
        due_at: None,
        confidence: 70,
        model: "local".into(),
        rationale: "because".into(),
        status: SuggestionStatus::Pending,
        created_at: taskstream_domain::now(),
        resolved_at: None,
    }
}

/// The `task.triage_suggested` outbox row of `suggestion`.
fn suggested_row(suggestion: &SuggestionRecord) -> taskstream_store::OutboxMessage {
    taskstream_store::OutboxMessage {
        id: Uuid::now_v7(),
        aggregate_type: "suggestion".into(),
        aggregate_id: suggestion.task_id.clone(),
        event_type: "task.triage_suggested".into(),
        topic: "task-suggestions".into(),
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
        traceparent: None,
        created_at: suggestion.created_at,
    }
}

#[tokio::test]
async fn a_suggestion_is_recorded_once_per_task_event_with_its_outbox_row() {
    for backend in backends().await {
        let store = &backend.store;
        let change = created("triage me");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        let suggestion = suggestion_for(&change);
        let row = suggested_row(&suggestion);
        assert!(store
            .record_suggestion("triage-agent", &suggestion, &row)
            .await
            .unwrap());
        // The same event again, as a redelivery or from another group,
        // adds neither a suggestion nor an outbox row.
        let again = SuggestionRecord {
            id: Uuid::now_v7(),
            ..suggestion.clone()
        };
        assert!(!store
            .record_suggestion("triage-agent", &again, &suggested_row(&again))
            .await
            .unwrap());
        assert!(!store
            .record_suggestion("triage-agent-2", &again, &suggested_row(&again))
            .await
            .unwrap());
        assert!(store
            .is_processed("triage-agent", change.event.id.as_uuid())
            .await
            .unwrap());
        let listed = store
            .suggestions(&change.task.id.to_string())
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, suggestion.id);
        assert_eq!(listed[0].confidence, 70);
        assert_eq!(
            store.suggestion(suggestion.id).await.unwrap().unwrap(),
            listed[0]
        );
        let pending = pending_rows(store, 10).await;
        let suggested: Vec<_> = pending
            .iter()
            .filter(|p| p.message.topic == "task-suggestions")
            .collect();
        assert_eq!(suggested.len(), 1);
        assert_eq!(suggested[0].message, row);
        backend.finish().await;
    }
}

#[tokio::test]
async fn accepting_a_suggestion_writes_the_task_once_and_a_second_accept_or_a_stale_one_writes_nothing(
) {
    for backend in backends().await {
        let store = &backend.store;
        let change = created("accept me");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        let suggestion = suggestion_for(&change);
        store
            .record_suggestion("triage-agent", &suggestion, &suggested_row(&suggestion))
            .await
            .unwrap();
        let patch = taskstream_domain::TaskPatch {
            priority: Some(taskstream_domain::Priority::Low),
            ..Default::default()
        };
        let updated = change
            .task
            .update(patch, taskstream_domain::now(), Cause::default())
            .unwrap()
            .unwrap();
        // A stale version refuses the whole command: the suggestion stays pending.
        let stale = store
            .accept_suggestion(
                suggestion.id,
                Some((&updated.task, 7, &message(&updated))),
                taskstream_domain::now(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(stale, StoreError::VersionConflict { .. }),
            "{stale}"
        );
        let pending = store.suggestion(suggestion.id).await.unwrap().unwrap();
        assert_eq!(pending.status, SuggestionStatus::Pending);

        store
            .accept_suggestion(
                suggestion.id,
                Some((&updated.task, 1, &message(&updated))),
                taskstream_domain::now(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.task(change.task.id).await.unwrap().unwrap(),
            updated.task
        );
        let accepted = store.suggestion(suggestion.id).await.unwrap().unwrap();
        assert_eq!(accepted.status, SuggestionStatus::Accepted);
        assert!(accepted.resolved_at.is_some());

        let again = store
            .accept_suggestion(suggestion.id, None, taskstream_domain::now())
            .await
            .unwrap_err();
        assert!(
            matches!(again, StoreError::SuggestionNotPending { .. }),
            "{again}"
        );
        let rejected = store
            .reject_suggestion(suggestion.id, taskstream_domain::now())
            .await
            .unwrap_err();
        assert!(
            matches!(rejected, StoreError::SuggestionNotPending { .. }),
            "{rejected}"
        );
        backend.finish().await;
    }
}

#[tokio::test]
async fn a_repair_requeues_task_events_only_never_the_agents_suggestion_events() {
    for backend in backends().await {
        let store = &backend.store;
        let change = created("repair me");
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
        let suggestion = suggestion_for(&change);
        store
            .record_suggestion("triage-agent", &suggestion, &suggested_row(&suggestion))
            .await
            .unwrap();
        let seqs: Vec<i64> = pending_rows(store, 10)
            .await
            .iter()
            .map(|p| p.seq)
            .collect();
        assert_eq!(seqs.len(), 2);
        store
            .mark_published(&seqs, taskstream_domain::now())
            .await
            .unwrap();
        // Neither row is in the audit log: only the task event is the auditor's business.
        let requeued = store
            .requeue_events_unhandled_by(HandledBy::AuditLog, store, "task-events")
            .await
            .unwrap();
        assert_eq!(requeued, 1);
        let again = store
            .requeue_unhandled_events("notifier", store, store)
            .await
            .unwrap();
        assert_eq!(again, 0);
        let pending = pending_rows(store, 10).await;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message.topic, "task-events");
        backend.finish().await;
    }
}
