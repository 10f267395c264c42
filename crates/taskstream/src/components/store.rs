//! The store every component of a process shares, and the PostgreSQL
//! notifications that wake the relay.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_store::{Database, PgOptions, SqliteOptions, Store};
use tokio::sync::Notify;

use super::Component;

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "taskstream.db";

/// Opens (creating and migrating) the store: `database` when given, else
/// the SQLite file in `data_dir`.
pub async fn open_store(
    data_dir: &Path,
    database: Option<&Database>,
    sqlite: &SqliteOptions,
    postgres: &PgOptions,
) -> anyhow::Result<Arc<Store>> {
    let database = database
        .cloned()
        .unwrap_or_else(|| Database::Sqlite(data_dir.join(DATABASE_FILE)));
    let store = Store::open(&database, sqlite, postgres)
        .await
        .with_context(|| format!("cannot open the store at {database}"))?;
    Ok(Arc::new(store))
}

/// With PostgreSQL, wakes the relay whenever another process commits an
/// event (`LISTEN`), instead of waiting for its next poll. Reconnects after
/// a lost connection; the relay's poll covers the gap.
pub fn outbox_listener(store: &Arc<Store>, wake: Arc<Notify>) -> Option<Component> {
    let Store::Postgres(_) = &**store else {
        return None;
    };
    let store = Arc::clone(store);
    Some(Component::spawn(
        "outbox-listener",
        move |mut shutdown| async move {
            let mut backoff = taskstream_services::Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(10),
            );
            loop {
                let listened = store
                    .postgres()
                    .expect("checked above")
                    .listen_for_commits(&wake);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    Err(error) = listened => {
                        tracing::warn!(%error, "lost the outbox notification channel; reconnecting");
                    }
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        },
    ))
}
