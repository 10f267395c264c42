//! Capture confirmation: marking outbox rows published once Debezium has
//! captured them, so that the outbox retention deletes them as it deletes
//! the relay's ([`crate::OutboxStore::prune_published`]).
//!
//! Debezium never writes to the outbox, so without this the table grows
//! forever. It does tell PostgreSQL how far it got: the connector confirms
//! a WAL position to its replication slot (`confirmed_flush_lsn`) only
//! after Kafka Connect committed the source offsets up to it, which happens
//! only once the producer had every record before that offset acknowledged.
//! A row is captured once the slot's confirmed position is past the row's
//! commit record: PostgreSQL never decodes a transaction committed before
//! that position for the slot again (it skips any transaction whose commit
//! record starts before the point the client confirmed,
//! `SnapBuildXactNeedsSkip`), and Debezium confirmed it only after
//! publishing it.
//!
//! PostgreSQL does not tell where a given row's commit record is, so a
//! [`CaptureCheckpoint`] bounds it. In one `REPEATABLE READ` transaction the
//! first statement takes the snapshot and then reads the WAL insert position
//! `L` (`pg_current_wal_insert_lsn()`, evaluated after the snapshot was
//! taken); a second statement, in the same snapshot, reads the seqs of the
//! unpublished rows. A transaction is visible in a snapshot only if it was
//! no longer running when the snapshot was taken, and a committing
//! transaction leaves the running set (`ProcArrayEndTransaction`) only
//! after its commit record was inserted into the WAL
//! (`RecordTransactionCommit`); so the commit record of every row the
//! checkpoint holds ends at or before `L`. Once the slot's
//! `confirmed_flush_lsn >= L`, every one of those rows was published:
//! exactly those seqs are marked. A row whose transaction commits after the
//! snapshot is not in it, whatever its seq, and waits for a later
//! checkpoint.
//!
//! Two limits follow from the method. Rows committed before the slot
//! existed were never Debezium's (`snapshot.mode = no_data`) yet would be
//! marked as captured: switch from the relay to Debezium with the relay
//! drained, as the connector configuration already requires. And Debezium
//! confirms a position only when it commits offsets for a record after it,
//! so the rows written just before a quiet period stay unmarked until the
//! next write to the outbox; the outbox then holds at most what was written
//! since Debezium last confirmed, instead of everything.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{PgStore, StoreError};

/// Unpublished outbox rows seen in one snapshot, and a WAL position at or
/// after the end of every one of their commit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureCheckpoint {
    /// `L`: the WAL insert position read after the snapshot was taken, in
    /// bytes from `0/0`.
    pub wal_position: i64,
    /// The seqs of the unpublished rows visible in the snapshot, oldest
    /// first (at most the limit asked for).
    pub seqs: Vec<i64>,
}

/// What [`PgStore::confirm_capture`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureStatus {
    /// The slot confirmed the checkpoint: this many of its rows were
    /// marked published (fewer than it holds if some already were).
    Confirmed { marked: u64 },
    /// The slot has not confirmed the checkpoint yet; it confirmed up to
    /// this position (bytes from `0/0`; `None` if it never confirmed).
    Waiting { confirmed: Option<i64> },
    /// This database has no logical slot of that name.
    NoSlot,
}

const CHECKPOINT_POSITION: &str =
    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint";

const CHECKPOINT_SEQS: &str =
    "SELECT seq FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1";

const CONFIRMED_POSITION: &str =
    "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed
     FROM pg_replication_slots
     WHERE slot_name = $1 AND slot_type = 'logical' AND database = current_database()";

const MARK_CAPTURED: &str =
    "UPDATE outbox SET published_at = $1 WHERE seq = ANY($2) AND published_at IS NULL";

impl PgStore {
    /// Takes a [`CaptureCheckpoint`] of at most `limit` unpublished rows;
    /// see the module docs for why its position bounds their commits.
    /// `None` while this database has no logical slot `slot`: rows a slot
    /// created later never saw must not be confirmed by it.
    pub async fn capture_checkpoint(
        &self,
        slot: &str,
        limit: u32,
    ) -> Result<Option<CaptureCheckpoint>, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Before any query: the snapshot is taken by the first statement.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let wal_position: i64 = sqlx::query_scalar(CHECKPOINT_POSITION)
            .fetch_one(&mut *tx)
            .await?;
        // The slot view reads shared memory, not the snapshot: the slot
        // exists now, after the position was read.
        if sqlx::query(CONFIRMED_POSITION)
            .bind(slot)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            tx.commit().await?;
            return Ok(None);
        }
        let seqs: Vec<i64> = sqlx::query_scalar(CHECKPOINT_SEQS)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(CaptureCheckpoint { wal_position, seqs }))
    }

    /// The position logical slot `slot` of this database confirmed (bytes
    /// from `0/0`): `Ok(None)` without such a slot, `Ok(Some(None))` if it
    /// never confirmed anything.
    pub async fn slot_confirmed_position(
        &self,
        slot: &str,
    ) -> Result<Option<Option<i64>>, StoreError> {
        let row = sqlx::query(CONFIRMED_POSITION)
            .bind(slot)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get::<Option<i64>, _>("confirmed"))
            .transpose()
            .map_err(StoreError::from)
    }

    /// Marks the rows of `checkpoint` published at `at` if slot `slot`
    /// confirmed its position; otherwise changes nothing.
    pub async fn confirm_capture(
        &self,
        slot: &str,
        checkpoint: &CaptureCheckpoint,
        at: DateTime<Utc>,
    ) -> Result<CaptureStatus, StoreError> {
        let Some(confirmed) = self.slot_confirmed_position(slot).await? else {
            return Ok(CaptureStatus::NoSlot);
        };
        if confirmed.is_none_or(|c| c < checkpoint.wal_position) {
            return Ok(CaptureStatus::Waiting { confirmed });
        }
        if checkpoint.seqs.is_empty() {
            return Ok(CaptureStatus::Confirmed { marked: 0 });
        }
        let done = sqlx::query(MARK_CAPTURED)
            .bind(at)
            .bind(&checkpoint.seqs)
            .execute(self.pool())
            .await?;
        Ok(CaptureStatus::Confirmed {
            marked: done.rows_affected(),
        })
    }
}
