//! Logical replication slots on the PostgreSQL that holds the outbox: how
//! far behind each slot's reader (Debezium, when it publishes in place of
//! the relay) is, and how much WAL the slot makes the server keep.
//!
//! A slot whose reader stops keeps every WAL segment from its restart point
//! on, so a stalled Debezium fills the database's disk. That is the classic
//! outage of a CDC pipeline, and these figures are how it is seen coming
//! (`taskstream lag --database-url`, the API's `/metrics`).

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use crate::{PgStore, StoreError};

/// One logical replication slot of the current database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlot {
    pub name: String,
    /// The output plugin (`pgoutput` for Debezium).
    pub plugin: Option<String>,
    /// Whether a reader is connected to it now.
    pub active: bool,
    /// WAL the server keeps for this slot: from its restart point to the
    /// current position.
    pub retained_bytes: i64,
    /// WAL written since the reader last confirmed: the changes it has not
    /// yet acknowledged (for Debezium, outbox rows not yet published, plus
    /// whatever else the server wrote since).
    pub unconfirmed_bytes: i64,
    /// PostgreSQL's `wal_status`: `reserved`, `extended`, `unreserved`, or
    /// `lost` once `max_slot_wal_keep_size` let WAL go that the slot needed.
    pub wal_status: Option<String>,
}

impl ReplicationSlot {
    /// Whether the slot is broken (its WAL is gone) or has no reader.
    pub fn is_stalled(&self) -> bool {
        !self.active || self.wal_status.as_deref() == Some("lost")
    }
}

const SLOTS: &str = "\
SELECT slot_name::text AS name, plugin::text AS plugin, active, wal_status,
       COALESCE(pg_wal_lsn_diff(here.lsn, restart_lsn), 0)::bigint AS retained,
       COALESCE(pg_wal_lsn_diff(here.lsn, confirmed_flush_lsn), 0)::bigint AS unconfirmed
FROM pg_replication_slots,
     LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                          ELSE pg_current_wal_lsn() END AS lsn) AS here
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name";

async fn query<'c, E>(executor: E) -> Result<Vec<ReplicationSlot>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let rows = sqlx::query(SLOTS).fetch_all(executor).await?;
    rows.into_iter()
        .map(|row| {
            Ok(ReplicationSlot {
                name: row.try_get("name")?,
                plugin: row.try_get("plugin")?,
                active: row.try_get("active")?,
                retained_bytes: row.try_get("retained")?,
                unconfirmed_bytes: row.try_get("unconfirmed")?,
                wal_status: row.try_get("wal_status")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

impl PgStore {
    /// The logical replication slots of this database, by name.
    pub async fn replication_slots(&self) -> Result<Vec<ReplicationSlot>, StoreError> {
        query(self.pool()).await
    }
}

/// The logical replication slots of the database at `url`, read over one
/// short-lived connection; unlike [`PgStore::connect`] it changes nothing
/// (no migration), so an operator's tool may point it at any database.
pub async fn replication_slots_at(url: &str) -> Result<Vec<ReplicationSlot>, StoreError> {
    let open_err = |source| StoreError::Open {
        path: crate::redact_url(url),
        source,
    };
    let options: PgConnectOptions = url.parse().map_err(open_err)?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(open_err)?;
    let slots = query(&mut conn).await;
    let _ = conn.close().await;
    slots
}
