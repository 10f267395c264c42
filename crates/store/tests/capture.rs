//! Capture confirmation on a real PostgreSQL (`TASKSTREAM_TEST_POSTGRES`,
//! `wal_level=logical`; skipped loudly without one, failing when
//! `TASKSTREAM_REQUIRE_POSTGRES=1`). The slot is advanced here the way
//! Debezium's confirmations advance it, so each step is deterministic; the
//! system suite runs the same job against Debezium itself.

mod common;

use std::time::Duration;

use common::{created, message, pending_rows, Scratch};
use sqlx::Connection;
use taskstream_store::{CaptureStatus, OutboxStore, PgStore, TaskStore};

/// A store on a fresh database with a logical slot of its own, or `None`
/// (skipped) without PostgreSQL.
async fn store_with_slot() -> Option<(Scratch, PgStore, String)> {
    let scratch = Scratch::new().await?;
    let store = scratch.store().await;
    let level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        level, "logical",
        "capture confirmation reads a logical slot: set wal_level = logical (.ci/run does)"
    );
    let slot = format!("c_{}", &scratch.name["taskstream_test_".len()..]);
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(store.pool())
        .await
        .unwrap();
    Some((scratch, store, slot))
}

/// Drops the slot (a leftover one keeps WAL forever) and the database.
async fn finish(scratch: Scratch, store: PgStore, slot: &str) {
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(store.pool())
        .await
        .unwrap();
    drop(store);
    scratch.drop_database().await;
}

/// Moves the slot's confirmed position to the end of the WAL written so
/// far, as a reader confirming everything it received would.
async fn confirm_everything(store: &PgStore, slot: &str) {
    sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_insert_lsn())")
        .bind(slot)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn write_tasks(store: &PgStore, n: usize) {
    for i in 0..n {
        let change = created(&format!("capture {i}"));
        store
            .insert_task(&change.task, &message(&change))
            .await
            .unwrap();
    }
}

/// Asks until the slot confirmed `checkpoint` (advancing the slot each
/// time: the WAL's flushed end may trail the insert position briefly).
async fn confirm_when_advanced(
    store: &PgStore,
    slot: &str,
    checkpoint: &taskstream_store::CaptureCheckpoint,
) -> CaptureStatus {
    for _ in 0..50 {
        confirm_everything(store, slot).await;
        let status = store
            .confirm_capture(slot, checkpoint, taskstream_domain::now())
            .await
            .unwrap();
        if matches!(status, CaptureStatus::Confirmed { .. }) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the slot never confirmed the checkpoint");
}

#[tokio::test]
async fn rows_are_marked_published_only_once_the_slot_confirmed_them_and_are_then_pruned() {
    let Some((scratch, store, slot)) = store_with_slot().await else {
        return;
    };
    write_tasks(&store, 3).await;
    assert!(
        store
            .capture_checkpoint("no_such_slot", 100)
            .await
            .unwrap()
            .is_none(),
        "no checkpoint is taken for a slot that does not exist"
    );
    let checkpoint = store.capture_checkpoint(&slot, 100).await.unwrap().unwrap();
    assert_eq!(checkpoint.seqs.len(), 3, "{checkpoint:?}");

    let unknown = store
        .confirm_capture("no_such_slot", &checkpoint, taskstream_domain::now())
        .await
        .unwrap();
    let waiting = store
        .confirm_capture(&slot, &checkpoint, taskstream_domain::now())
        .await
        .unwrap();
    let still_pending = store.outbox_stats().await.unwrap().pending;
    let confirmed = confirm_when_advanced(&store, &slot, &checkpoint).await;
    let after = store.outbox_stats().await.unwrap();
    let pruned = store
        .prune_published(taskstream_domain::now() + chrono::Duration::seconds(1), 100)
        .await
        .unwrap();
    let left = store.outbox_stats().await.unwrap();
    finish(scratch, store, &slot).await;

    assert_eq!(unknown, CaptureStatus::NoSlot);
    assert!(
        matches!(waiting, CaptureStatus::Waiting { confirmed: Some(c) } if c < checkpoint.wal_position),
        "the slot confirmed nothing since it was created: {waiting:?}"
    );
    assert_eq!(
        still_pending, 3,
        "nothing is marked before the slot confirms"
    );
    assert_eq!(confirmed, CaptureStatus::Confirmed { marked: 3 });
    assert_eq!((after.total, after.pending), (3, 0));
    assert_eq!(pruned, 3, "the retention deletes captured rows");
    assert_eq!(left.total, 0);
}

#[tokio::test]
async fn a_row_whose_transaction_commits_after_the_checkpoint_is_not_marked_by_it() {
    let Some((scratch, store, slot)) = store_with_slot().await else {
        return;
    };
    write_tasks(&store, 2).await;
    // A transaction that inserted its row (taking a seq) but has not
    // committed when the checkpoint is taken.
    let late = created("late");
    let late_message = message(&late);
    let mut open = sqlx::PgConnection::connect(&scratch.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut open).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, created_at)
         VALUES ($1, 'task', $2, $3, $4, 'task-events', 'application/json', now())",
    )
    .bind(late_message.id)
    .bind(&late_message.aggregate_id)
    .bind(&late_message.event_type)
    .bind(&late_message.payload)
    .execute(&mut open)
    .await
    .unwrap();
    write_tasks(&store, 1).await;
    let checkpoint = store.capture_checkpoint(&slot, 100).await.unwrap().unwrap();
    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    let late_seq: i64 = sqlx::query_scalar("SELECT seq FROM outbox WHERE id = $1")
        .bind(late_message.id)
        .fetch_one(store.pool())
        .await
        .unwrap();

    let confirmed = confirm_when_advanced(&store, &slot, &checkpoint).await;
    let pending = pending_rows(&store, 100).await;
    finish(scratch, store, &slot).await;

    assert_eq!(checkpoint.seqs.len(), 3, "{checkpoint:?}");
    assert!(
        !checkpoint.seqs.contains(&late_seq),
        "the late row is not in the snapshot"
    );
    assert!(
        checkpoint.seqs.iter().any(|&s| s > late_seq),
        "a row with a later seq committed before the checkpoint is in it: {checkpoint:?}, late {late_seq}"
    );
    assert_eq!(confirmed, CaptureStatus::Confirmed { marked: 3 });
    assert_eq!(pending.len(), 1, "only the late row is still pending");
    assert_eq!(pending[0].message.id, late_message.id);
}
