//! The taskstream domain: tasks, the events that record their changes, and the
//! envelope those events travel in. No I/O lives here; every other crate builds on it.
//!
//! Values are parsed at the edge into types that cannot hold invalid states
//! ([`TaskTitle`], [`Assignee`], ...), so code further in never re-checks them.

mod clock;
mod codec;
mod envelope;
mod event;
pub mod headers;
mod task;

pub use clock::now;
pub use codec::{CodecError, EventCodec, JsonCodec};
pub use envelope::{EventEnvelope, EventId, EVENT_SCHEMA_VERSION, EVENT_SOURCE};
pub use event::{EventType, TaskEventData, UnknownEventType};
pub use task::{
    Assignee, Cause, Description, FieldError, NewTask, Priority, Task, TaskChange, TaskId,
    TaskPatch, TaskStatus, TaskTitle, TransitionError,
};
