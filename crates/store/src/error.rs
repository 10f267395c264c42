//! Store errors, classified by what a caller can do about them.

/// Why a store operation failed.
///
/// Errors from the database driver are classified when they are converted
/// (`From<sqlx::Error>`): a full disk becomes [`StoreError::StorageFull`], a
/// lost connection, an I/O error or a cancelled statement becomes
/// [`StoreError::Unavailable`]; whatever is left (a bug, a corrupt file)
/// stays [`StoreError::Database`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer changed the task first; re-read and try again.
    #[error("task {task_id} changed concurrently (expected version {expected})")]
    VersionConflict { task_id: String, expected: i64 },
    /// The suggestion was accepted or rejected already (or does not
    /// exist); nothing was written.
    #[error("suggestion {id} is not pending")]
    SuggestionNotPending { id: String },
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
    /// The database has no room for the write (a full disk, or a size cap);
    /// nothing was written. Writes succeed again once space is freed.
    #[error("the database has no space left: {0}")]
    StorageFull(String),
    /// The database could not be reached or gave up on the statement (a
    /// lost connection, an I/O error, a statement timeout, a lock held by
    /// another process); nothing was written. Usually passes.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The connection failed while the commit was in flight and the store
    /// could not find out afterwards whether it took effect. The write may
    /// or may not be there; read it back before trying again.
    #[error("the outcome of the commit is unknown: {0}")]
    OutcomeUnknown(String),
    /// The relay's outbox lease is no longer held (its session ended, or it
    /// was released); another relay may be publishing now.
    #[error("the outbox lease is no longer held")]
    LeaseLost,
    /// The database did not answer in time; the connection was given up.
    #[error("the database did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether the failure is the database's condition rather than the
    /// request's or the code's: worth answering "try again later" (503, 507)
    /// and reporting in readiness.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::StorageFull(_)
                | Self::Unavailable(_)
                | Self::OutcomeUnknown(_)
                | Self::CommitFailed(_)
                | Self::Timeout(_)
        )
    }
}

/// SQLite's primary result codes that describe the database's condition
/// (<https://sqlite.org/rescode.html>); the extended code's low byte is the
/// primary code.
mod sqlite_code {
    pub const BUSY: i64 = 5;
    pub const LOCKED: i64 = 6;
    pub const NOMEM: i64 = 7;
    pub const READONLY: i64 = 8;
    pub const IOERR: i64 = 10;
    pub const FULL: i64 = 13;
    pub const CANTOPEN: i64 = 14;
}

/// How a driver error should be seen by callers.
enum Class {
    Full,
    Unavailable,
    Other,
}

fn classify(error: &sqlx::Error) -> Class {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Class::Unavailable,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return Class::Other;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite reports its extended result code, whose low byte
                // is the primary code.
                let extended = code.parse::<i64>().unwrap_or(0);
                return match extended & 0xff {
                    sqlite_code::FULL => Class::Full,
                    sqlite_code::BUSY
                    | sqlite_code::LOCKED
                    | sqlite_code::NOMEM
                    | sqlite_code::READONLY
                    | sqlite_code::IOERR
                    | sqlite_code::CANTOPEN => Class::Unavailable,
                    _ => Class::Other,
                };
            }
            // PostgreSQL's SQLSTATE (which may be all digits, as 57014 is).
            match code.as_ref() {
                // disk_full
                "53100" => Class::Full,
                // insufficient resources, connection exceptions, operator
                // intervention (statement timeout, terminated backend, shut
                // down), and serialization failures that a retry resolves.
                c if c.starts_with("53")
                    || c.starts_with("08")
                    || c.starts_with("57")
                    || c == "40001"
                    || c == "40P01"
                    || c == "25P03" =>
                {
                    Class::Unavailable
                }
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Class::Full => Self::StorageFull(error.to_string()),
            Class::Unavailable => Self::Unavailable(error.to_string()),
            Class::Other => Self::Database(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_level_driver_errors_are_unavailable() {
        for error in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert!(matches!(
                StoreError::from(error),
                StoreError::Unavailable(_)
            ));
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(StoreError::from(sqlx::Error::Io(io)).is_transient());
    }

    #[test]
    fn a_missing_row_is_not_transient() {
        let error = StoreError::from(sqlx::Error::RowNotFound);
        assert!(matches!(error, StoreError::Database(_)));
        assert!(!error.is_transient());
    }
}
