//! Durable state for every taskstream component, behind traits that a
//! PostgreSQL implementation can fill.
//!
//! The Task API writes a task row and its outbox row in one transaction
//! ([`TaskStore`]); the relay drains the outbox ([`OutboxStore`]); the
//! consumers record their effects together with the id of the event that
//! caused them ([`AuditStore`], [`NotificationStore`]), which is what makes
//! redelivery harmless. [`SqliteStore`] (one machine) and [`PgStore`] (separate
//! processes sharing a database) implement all four; [`Store`] is either.

mod any;
mod capture;
mod consumer_stores;
mod error;
mod health;
mod postgres;
mod records;
mod replication;
mod rows;
mod sagas;
mod sql;
mod sqlite;
mod suggestion_stores;
mod traits;

pub use any::{Database, Store};
pub use capture::{CaptureCheckpoint, CaptureStatus};
pub use error::StoreError;
pub use health::{WriteFailure, WriteHealth};
pub use postgres::{redact_url, PgOptions, PgStore, OUTBOX_CHANNEL};
pub use records::{
    AuditEntry, HandledBy, Lease, NotificationRecord, OutboxMessage, OutboxStats, PendingMessage,
    SuggestionRecord, SuggestionStatus, TaskQuery,
};
pub use replication::{replication_slots_at, ReplicationSlot};
pub use sagas::{
    NewSagaStep, Saga, SagaAssignment, SagaEffects, SagaStart, SagaStarted, SagaState, SagaStep,
    SagaStore, SagaTask, SagaTaskWrite, SagaTransition,
};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
pub use traits::{
    AuditStore, InboxStore, NotificationStore, OutboxStore, SuggestionStore, TaskStore,
};
