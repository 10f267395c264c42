//! The assignment saga, orchestrated: when a task gets an assignee, check
//! the assignee's capacity, ask them to accept, and wait for their answer
//! or a deadline; on a decline, a timeout or a full assignee, compensate
//! (unassign the task, release the capacity, escalate to the team queue).
//!
//! - [`events`]: the saga events published on `task-sagas`, and the step
//!   records they come with;
//! - [`orchestrator`]: the consumer of `task-events` that starts sagas and
//!   ends them when the task changes hands, and the compensation;
//! - [`timer`]: the loop that acts on persisted deadlines;
//! - [`commands`]: accept and decline, as the Task API calls them.
//!
//! Every step is one transaction of the saga store
//! ([`taskstream_store::SagaStore`]): the saga's new state, its history,
//! its saga events in the outbox and, for the compensation, the task
//! change and its `task.updated` event. A step applies only from the states
//! it expects, so a step repeated after a crash or raced by another
//! (a timeout against an accept) writes nothing the second time.

mod commands;
pub mod events;
mod orchestrator;
#[cfg(test)]
mod tests;
mod timer;

use std::time::Duration;

use taskstream_domain::Assignee;

pub use commands::{SagaCommandError, SagaCommands, SagaDecision};
pub use orchestrator::{Compensator, SagaOrchestrator};
pub use timer::SagaTimer;

/// The saga orchestrator's consumer group on `task-events`.
pub const SAGA_GROUP: &str = "saga";

/// How the saga behaves.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// The most sagas that may hold an assignee's capacity at once
    /// (waiting for acceptance or accepted and still open).
    pub max_open_per_assignee: u32,
    /// How long an assignee has to accept.
    pub accept_timeout: Duration,
    /// Who a compensated task is escalated to; never the subject of a saga.
    pub team_queue: Assignee,
    /// How often the timer looks for due deadlines.
    pub poll_interval: Duration,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            max_open_per_assignee: 5,
            accept_timeout: Duration::from_secs(24 * 60 * 60),
            team_queue: Assignee::parse("team-queue").expect("a valid assignee"),
            poll_interval: Duration::from_secs(1),
        }
    }
}
