//! The workload processor: a consume-transform-produce component that keeps
//! each assignee's open and overdue task counts in a compacted topic and
//! alerts when an assignee is overloaded, exactly once per input event.
//!
//! - [`workload`]: the counting itself, free of Kafka.
//! - [`run`]: the transactional loop around it.

mod run;
mod workload;

pub use run::{
    ProcessorError, ProcessorSettings, WorkloadProcessor, CAUSATION_ID, PROCESSOR_GROUP,
    PROCESSOR_TRANSACTIONAL_ID,
};
pub use workload::{AssigneeWorkload, Changes, OverloadAlert, TrackedTask, Workload};
