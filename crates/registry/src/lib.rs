//! An embedded, Confluent-compatible Schema Registry: the REST API subset
//! every Kafka client speaks (subjects, versions, ids, lookup, soft and
//! permanent delete, compatibility checks, global and per-subject config),
//! with all seven compatibility levels, persisted in SQLite.
//!
//! Error bodies follow Confluent's shape, `{"error_code": 40401, "message": ...}`.

mod api;
mod error;
mod names;
mod store;

pub use api::router;
pub use error::{error_response, RegistryApiError};
pub use store::{RegistryStore, SubjectVersion};
