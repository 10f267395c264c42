//! Capture confirmation, the outbox's cleanup when Debezium publishes it
//! (`--publisher debezium`): marks rows published once Debezium's
//! replication slot confirmed them (see `taskstream_store`'s capture
//! module for the method and why it is exact), and deletes published rows
//! past the outbox retention with the same store query the relay prunes
//! with. Marking is idempotent, so several API replicas may each run it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use taskstream_store::{CaptureCheckpoint, CaptureStatus, OutboxStore, PgStore, Store};

use super::Component;

/// Published rows deleted per statement when pruning.
const PRUNE_BATCH: u32 = 1000;

/// How the capture confirmation runs.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// Debezium's replication slot (the connector's `slot.name`).
    pub slot: String,
    /// How often the slot is asked whether it confirmed the checkpoint.
    pub poll_interval: Duration,
    /// Rows one checkpoint holds at most; the rest wait for the next one.
    pub batch_size: u32,
    /// Published rows older than this are deleted (the topic keeps them);
    /// `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often expired rows are looked for.
    pub prune_interval: Duration,
}

impl CaptureSettings {
    /// Slot `slot`, asked every 5 s, 10,000 rows per checkpoint, with the
    /// relay's retention defaults (7 days, pruned every 10 minutes).
    pub fn for_slot(slot: &str) -> Self {
        let relay = taskstream_services::RelaySettings::default();
        Self {
            slot: slot.to_owned(),
            poll_interval: Duration::from_secs(5),
            batch_size: 10_000,
            retention: relay.retention,
            prune_interval: relay.prune_interval,
        }
    }
}

/// Starts the capture confirmation on `store`, which must be PostgreSQL
/// (Debezium reads its logical decoding).
pub fn capture_confirmation(
    store: Arc<Store>,
    settings: CaptureSettings,
) -> anyhow::Result<Component> {
    if store.postgres().is_none() {
        bail!(
            "--publisher debezium needs the outbox in PostgreSQL (--database-url postgres://...): \
             Debezium reads PostgreSQL's logical decoding"
        );
    }
    Ok(Component::spawn(
        "capture",
        move |mut shutdown| async move {
            tracing::info!(slot = %settings.slot, "marking outbox rows published as Debezium's slot confirms them");
            let mut checkpoint: Option<CaptureCheckpoint> = None;
            let mut next_prune = tokio::time::Instant::now();
            loop {
                let pg = store.postgres().expect("checked above");
                if let Err(error) = confirm(pg, &settings, &mut checkpoint).await {
                    tracing::warn!(%error, "cannot confirm captured outbox rows; trying again later");
                }
                if tokio::time::Instant::now() >= next_prune {
                    next_prune = tokio::time::Instant::now() + settings.prune_interval;
                    if let Err(error) = prune(&store, settings.retention).await {
                        tracing::warn!(%error, "cannot prune the outbox; trying again later");
                    }
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        },
    ))
}

/// One round: takes a checkpoint if none is held, or marks the held one's
/// rows once the slot confirmed it and takes the next.
async fn confirm(
    pg: &PgStore,
    settings: &CaptureSettings,
    checkpoint: &mut Option<CaptureCheckpoint>,
) -> Result<(), taskstream_store::StoreError> {
    if let Some(held) = checkpoint.as_ref() {
        match pg
            .confirm_capture(&settings.slot, held, taskstream_domain::now())
            .await?
        {
            CaptureStatus::Confirmed { marked } => {
                if marked > 0 {
                    tracing::debug!(marked, "outbox rows captured by Debezium marked published");
                }
            }
            CaptureStatus::Waiting { .. } => return Ok(()),
            CaptureStatus::NoSlot => {
                tracing::warn!(slot = %settings.slot, "no such replication slot in the outbox's database: is the Debezium connector running with this slot.name?");
                // A checkpoint taken before the slot existed must not be
                // confirmed by it: start again once it exists.
                *checkpoint = None;
                return Ok(());
            }
        }
    }
    // None while the slot does not exist: nothing is confirmed by a slot
    // created after the rows were written.
    let next = pg
        .capture_checkpoint(&settings.slot, settings.batch_size)
        .await?;
    *checkpoint = next.filter(|next| !next.seqs.is_empty());
    Ok(())
}

/// Deletes published rows older than `retention`, a batch at a time.
async fn prune(
    store: &Store,
    retention: Option<Duration>,
) -> Result<u64, taskstream_store::StoreError> {
    let Some(retention) = retention.and_then(|r| chrono::Duration::from_std(r).ok()) else {
        return Ok(0);
    };
    let before = taskstream_domain::now() - retention;
    let mut pruned = 0;
    loop {
        let n = store.prune_published(before, PRUNE_BATCH).await?;
        pruned += n;
        if n < u64::from(PRUNE_BATCH) {
            break;
        }
    }
    if pruned > 0 {
        tracing::info!(pruned, "deleted captured events past the outbox retention");
    }
    Ok(pruned)
}
