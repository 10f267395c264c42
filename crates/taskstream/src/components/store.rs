//! The stores of a process's services (one database each, or one shared
//! PostgreSQL database), and the PostgreSQL notifications that wake the
//! relay.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_store::{Database, PgOptions, SqliteOptions, Store};
use tokio::sync::Notify;

use super::Component;

/// The Task API's database file inside a data directory: tasks, the
/// outbox, sagas and suggestions (and, before each service had a file of
/// its own, everything).
pub const DATABASE_FILE: &str = "taskstream.db";

/// A service that owns data, each in a database of its own: with SQLite
/// (the default) a file of its own in the data directory, so that the
/// Task API's writes, the audit log's and the notifier's never wait for
/// each other. An explicit `--database-url` is shared by every service
/// that is given it (PostgreSQL deployments keep one database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceData {
    /// The Task API and what writes with it: tasks, the outbox, sagas,
    /// suggestions.
    Tasks,
    /// The audit-log service's log.
    Audit,
    /// The notification service's records and its inbox.
    Notifications,
}

impl ServiceData {
    /// Its SQLite file inside a data directory.
    pub fn file(self) -> &'static str {
        match self {
            Self::Tasks => DATABASE_FILE,
            Self::Audit => "audit.db",
            Self::Notifications => "notifications.db",
        }
    }

    /// The tables it takes, once, from a data directory's shared
    /// `taskstream.db` of an earlier version.
    fn adopted_tables(self) -> &'static [&'static str] {
        match self {
            Self::Tasks => &[],
            // Each takes every group's inbox marks: it cannot tell which
            // group names are its own (`--group`), and a mark of another
            // group's is never read.
            Self::Audit => &["audit_log", "processed_events"],
            Self::Notifications => &["notifications", "processed_events"],
        }
    }
}

/// Opens (creating and migrating) the Task API's store: `database` when
/// given, else its SQLite file in `data_dir`.
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

/// Opens `service`'s store: `database` when given (shared; `tasks` is then
/// returned as it is, when it is that database), else the service's own
/// SQLite file in `data_dir`. A new file first takes the service's rows
/// from `tasks` when that is the data directory's `taskstream.db`, which
/// held every service's data before each had a file (once; the copies in
/// `taskstream.db` are left alone).
pub async fn open_service_store(
    service: ServiceData,
    data_dir: &Path,
    database: Option<&Database>,
    sqlite: &SqliteOptions,
    postgres: &PgOptions,
    tasks: Option<&Arc<Store>>,
) -> anyhow::Result<Arc<Store>> {
    if service == ServiceData::Tasks {
        return open_store(data_dir, database, sqlite, postgres).await;
    }
    if let Some(database) = database {
        return match tasks {
            Some(tasks) => Ok(Arc::clone(tasks)),
            None => open_store(data_dir, Some(database), sqlite, postgres).await,
        };
    }
    let path = data_dir.join(service.file());
    let store = Store::open(&Database::Sqlite(path.clone()), sqlite, postgres)
        .await
        .with_context(|| format!("cannot open the store at sqlite:{}", path.display()))?;
    if let (Some(own), Some(Store::Sqlite(shared))) = (store.sqlite(), tasks.map(|t| &**t)) {
        let adopted = own
            .adopt_rows_once(shared, service.adopted_tables())
            .await
            .with_context(|| {
                format!(
                    "cannot copy {}'s rows from {} to {}",
                    service.file(),
                    shared.path().display(),
                    path.display()
                )
            })?;
        if adopted > 0 {
            tracing::info!(
                adopted,
                from = %shared.path().display(),
                to = %path.display(),
                "copied this service's rows to its own database (the shared file keeps its copies)"
            );
        }
    }
    Ok(Arc::new(store))
}

/// The Task API's store in `data_dir` when a process that is not the Task
/// API needs its outbox (a consumer repairing a gap from it), and the
/// data directory has one. `None` with an explicit `database`: the
/// service's own store is that shared database.
pub async fn existing_tasks_store(
    data_dir: &Path,
    database: Option<&Database>,
    sqlite: &SqliteOptions,
    postgres: &PgOptions,
) -> anyhow::Result<Option<Arc<Store>>> {
    if database.is_some() || !data_dir.join(DATABASE_FILE).exists() {
        return Ok(None);
    }
    Ok(Some(open_store(data_dir, None, sqlite, postgres).await?))
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
