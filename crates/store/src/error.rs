//! Store errors.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer changed the task first; re-read and try again.
    #[error("task {task_id} changed concurrently (expected version {expected})")]
    VersionConflict { task_id: String, expected: i64 },
    /// A stored value could not be read back into a domain type.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The database could not be opened or migrated.
    #[error("cannot open the database at {path}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    /// The transaction holding the write did not commit; nothing was written.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The database did not answer in time; the connection was given up.
    #[error("the database did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}
