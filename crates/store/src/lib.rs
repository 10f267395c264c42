//! Durable state for every taskstream component, behind traits that a
//! PostgreSQL implementation can fill.
//!
//! The Task API writes a task row and its outbox row in one transaction
//! ([`TaskStore`]); the relay drains the outbox ([`OutboxStore`]); the
//! consumers record their effects together with the id of the event that
//! caused them ([`AuditStore`], [`NotificationStore`]), which is what makes
//! redelivery harmless. [`SqliteStore`] implements all four.

mod error;
mod records;
mod sqlite;
mod traits;

pub use error::StoreError;
pub use records::{
    AuditEntry, NotificationRecord, OutboxMessage, OutboxStats, PendingMessage, TaskQuery,
};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
pub use traits::{AuditStore, NotificationStore, OutboxStore, TaskStore};
