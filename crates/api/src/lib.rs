//! The HTTP face of taskstream: the Task API, plus read-only views of the
//! audit log and the notifications sent, and the OpenAPI document for all of
//! it, generated from the handlers themselves.
//!
//! Errors are RFC 7807 problem documents ([`Problem`]). Every write goes
//! through [`TaskService`], which stores the task and its event atomically.

mod audit;
mod body;
mod health;
mod notifications;
mod observability;
mod problem;
mod request_id;
mod router;
mod sagas;
pub mod server;
mod service;
mod suggestions;
mod tasks;

pub use observability::ReadinessCheck;
pub use problem::{FieldProblem, Problem};
pub use request_id::RequestContext;
pub use router::ApiBuilder;
pub use server::{serve, ErrorResponder, HttpLimits};
pub use service::{ServiceError, SuggestionError, TaskService};
