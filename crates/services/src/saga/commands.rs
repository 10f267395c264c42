//! Accept and decline: the assignee's answers, as commands on the task's
//! current saga. Both are idempotent: repeating the answer that ended the
//! wait changes nothing and says so; any other answer to a saga that no
//! longer waits is refused, and so is an answer to a saga whose assignment
//! is no longer the task's (reassigned, unassigned, assigned again,
//! completed or deleted before the orchestrator ended that saga).

use std::sync::Arc;

use taskstream_store::{
    Saga, SagaAssignment, SagaEffects, SagaState, SagaStore, SagaTask, SagaTransition, StoreError,
};
use tokio::sync::Notify;

use super::events::{SagaRef, Steps};

/// The assignee's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaDecision {
    Accept,
    Decline,
}

impl SagaDecision {
    /// The saga's outcome this answer leads to.
    fn outcome(self) -> &'static str {
        match self {
            Self::Accept => "accepted",
            Self::Decline => "declined",
        }
    }
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum SagaCommandError {
    /// No such task.
    #[error("no task with id {0}")]
    NoTask(String),
    /// The task exists, but no saga ever asked about it.
    #[error("task {0} has no saga")]
    NoSaga(String),
    /// The saga ended otherwise, or no longer waits for an answer.
    #[error("the task's saga {} is {} ({}), not waiting for an answer", .0.id, .0.state, .0.outcome.as_deref().unwrap_or("no outcome yet"))]
    NotWaiting(Box<Saga>),
    /// The saga's deadline passed before the answer came: the timer times
    /// it out (and compensates) instead.
    #[error("the task's saga {} stopped waiting for an answer at {}; it is timing out", .0.id, .0.deadline_at.map(|d| d.to_rfc3339()).unwrap_or_default())]
    DeadlinePassed(Box<Saga>),
    /// The task changed hands (or ended) after the saga asked its
    /// assignee: the saga no longer decides the task, and the orchestrator
    /// supersedes it when it reads the change.
    #[error("the task's saga {} asked {} to accept the assignment of version {}, but {}; that saga no longer decides the task", .saga.id, .saga.assignee, .saga.task_version, .now)]
    NotAssigned { saga: Box<Saga>, now: String },
    /// Other answers or the timer kept winning the race for the saga.
    #[error("the task's saga kept changing; try again")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies answers to sagas.
#[derive(Clone)]
pub struct SagaCommands {
    store: Arc<dyn SagaStore>,
    timer_wake: Arc<Notify>,
    relay_wake: Arc<Notify>,
}

impl SagaCommands {
    /// `timer_wake` makes a timer in this process compensate a decline at
    /// once (in another process the timer finds it on its next scan);
    /// `relay_wake` is notified after every commit.
    pub fn new(
        store: Arc<dyn SagaStore>,
        timer_wake: Arc<Notify>,
        relay_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            timer_wake,
            relay_wake,
        }
    }

    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.store
    }

    /// Answers the task's current saga. Returns the saga after the answer
    /// and whether this call changed it (`false`: the same answer had
    /// already been given). `request_id` becomes the step's causation.
    pub async fn decide(
        &self,
        task_id: &str,
        decision: SagaDecision,
        request_id: Option<&str>,
    ) -> Result<(Saga, bool), SagaCommandError> {
        // A second round only when another answer or the timer won a race.
        for _ in 0..3 {
            let Some(saga) = self.store.latest_saga_for_task(task_id).await? else {
                return Err(match self.store.saga_task(task_id).await? {
                    Some(_) => SagaCommandError::NoSaga(task_id.to_owned()),
                    None => SagaCommandError::NoTask(task_id.to_owned()),
                });
            };
            if saga.state != SagaState::AwaitingAcceptance {
                let same = saga.outcome.as_deref() == Some(decision.outcome())
                    && match decision {
                        SagaDecision::Accept => saga.state == SagaState::Completed,
                        SagaDecision::Decline => {
                            matches!(saga.state, SagaState::Compensating | SagaState::Compensated)
                        }
                    };
                return if same {
                    Ok((saga, false))
                } else {
                    Err(SagaCommandError::NotWaiting(Box::new(saga)))
                };
            }
            let now = taskstream_domain::now();
            if saga.deadline_at.is_some_and(|deadline| deadline <= now) {
                // The timer has not got to it yet (it runs every poll
                // interval, or not at all while the saga process is down),
                // but the answer is late: the saga times out.
                return Err(SagaCommandError::DeadlinePassed(Box::new(saga)));
            }
            let current = self.store.saga_task(task_id).await?;
            if !current.as_ref().is_some_and(|c| c.is_assignment_of(&saga)) {
                return Err(SagaCommandError::NotAssigned {
                    now: describe(current.as_ref(), &saga),
                    saga: Box::new(saga),
                });
            }
            let r = SagaRef::from(&saga);
            let mut steps = Steps::new(&r, now, request_id.map(str::to_owned));
            let (state, deadline) = match decision {
                SagaDecision::Accept => (SagaState::Completed, None),
                SagaDecision::Decline => (SagaState::Compensating, Some(now)),
            };
            steps.push(
                decision.outcome(),
                state,
                Some(format!("{} by {}", decision.outcome(), saga.assignee)),
            );
            let t = SagaTransition {
                saga_id: saga.id,
                from: vec![SagaState::AwaitingAcceptance],
                only_while_holding: false,
                // A reassignment racing this answer is seen by the next
                // round's check.
                only_while_assigned: SagaAssignment::of(&saga),
                effects: SagaEffects {
                    state,
                    outcome: Some(decision.outcome().to_owned()),
                    holds_capacity: saga.holds_capacity,
                    deadline_at: deadline,
                    steps: steps.steps,
                    outbox: steps.outbox,
                },
                task_writes: Vec::new(),
                processed: None,
            };
            if let Some(saga) = self.store.transition_saga(&t).await? {
                self.relay_wake.notify_one();
                if decision == SagaDecision::Decline {
                    self.timer_wake.notify_one();
                }
                return Ok((saga, true));
            }
        }
        Err(SagaCommandError::Contended)
    }
}

/// What became of the task `saga` asked about, for the refusal.
fn describe(current: Option<&SagaTask>, saga: &Saga) -> String {
    use taskstream_domain::TaskStatus;
    let Some(current) = current else {
        return "the task no longer exists".to_owned();
    };
    let task = &current.task;
    match (task.status, &task.assignee) {
        (TaskStatus::Deleted, _) => format!("the task was deleted (version {})", task.version),
        (TaskStatus::Completed, _) => {
            format!("the task was completed (version {})", task.version)
        }
        (TaskStatus::Open, None) => format!(
            "the task was unassigned (version {})",
            current.assigned_version.unwrap_or(task.version)
        ),
        // A new assignment, whose own saga starts when the orchestrator
        // reads it (it may not have yet): no claim either way.
        (TaskStatus::Open, Some(a)) if a.as_str() == saga.assignee => format!(
            "the task was assigned to {a} again at version {}",
            current.assigned_version.unwrap_or(task.version)
        ),
        (TaskStatus::Open, Some(a)) => format!(
            "the task was reassigned to {a} (version {})",
            current.assigned_version.unwrap_or(task.version)
        ),
    }
}

#[cfg(test)]
mod tests {
    use taskstream_domain::{Assignee, Cause, NewTask, Priority, Task, TaskTitle};

    use super::*;

    #[test]
    fn an_assignment_made_again_is_described_without_claiming_a_saga_asks_about_it() {
        let now = taskstream_domain::now();
        let task = Task::create(
            NewTask {
                title: TaskTitle::parse("ship it").unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: Some(Assignee::parse("bo").unwrap()),
            },
            now,
            Cause::default(),
        )
        .task;
        let saga = Saga {
            id: uuid::Uuid::now_v7(),
            task_id: task.id.to_string(),
            assignee: "bo".into(),
            state: SagaState::AwaitingAcceptance,
            outcome: None,
            holds_capacity: true,
            deadline_at: None,
            task_version: 1,
            trigger_event_id: uuid::Uuid::now_v7(),
            correlation_id: None,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let current = SagaTask {
            task: Task { version: 3, ..task },
            assigned_version: Some(3),
        };
        assert_eq!(
            describe(Some(&current), &saga),
            "the task was assigned to bo again at version 3"
        );
    }
}
