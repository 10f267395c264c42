//! The orchestrator: starts a saga when a task gets an assignee, ends the
//! task's open sagas when it changes hands, and runs compensations.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::{Cause, EventEnvelope, EventType, Task, TaskPatch, TaskStatus};
use taskstream_store::{
    Saga, SagaEffects, SagaStart, SagaStarted, SagaState, SagaStore, SagaTaskWrite, SagaTransition,
    StoreError, TaskStore,
};
use tokio::sync::Notify;
use uuid::Uuid;

use super::events::{Announcement, SagaRef, Steps};
use super::SagaSettings;
use crate::topics::TASK_EVENTS;
use crate::{Delivery, EncodingError, EventEncoding, EventHandler, HandleError, Handled};

/// The store a saga needs: its own tables, and the tasks it compensates.
pub trait SagaBackend: SagaStore + TaskStore {}
impl<T: SagaStore + TaskStore> SagaBackend for T {}

/// Why a saga step failed; retried by whoever drives it.
#[derive(Debug, thiserror::Error)]
pub enum SagaStepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode the task's event")]
    Encoding(#[from] EncodingError),
    #[error("the task {0} kept changing while the saga compensated; trying again later")]
    Contended(String),
}

impl From<SagaStepError> for HandleError {
    fn from(e: SagaStepError) -> Self {
        match e {
            SagaStepError::Store(e) => e.into(),
            SagaStepError::Encoding(e) => e.into(),
            e @ SagaStepError::Contended(_) => HandleError::transient(e.to_string()),
        }
    }
}

/// Runs the steps that are not answers of the assignee: time-outs and
/// compensations. Shared by the orchestrator and the timer.
pub struct Compensator {
    store: Arc<dyn SagaBackend>,
    encoding: EventEncoding,
    settings: SagaSettings,
    relay_wake: Arc<Notify>,
}

impl Compensator {
    /// Task events are written in `encoding`; `relay_wake` is notified after
    /// every commit.
    pub fn new(
        store: Arc<dyn SagaBackend>,
        encoding: EventEncoding,
        settings: SagaSettings,
        relay_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            encoding,
            settings,
            relay_wake,
        }
    }

    pub fn settings(&self) -> &SagaSettings {
        &self.settings
    }

    /// The event id of the saga's latest step (what the next is caused by).
    async fn last_step(&self, saga: &Saga) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .saga_history(saga.id)
            .await?
            .last()
            .map(|s| s.event_id.to_string()))
    }

    /// Acts on a saga whose deadline passed: times it out while it waits
    /// for acceptance, and compensates it. Returns whether anything changed.
    pub async fn act_on_due(&self, saga: &Saga) -> Result<bool, SagaStepError> {
        let mut changed = false;
        if saga.state == SagaState::AwaitingAcceptance {
            let r = SagaRef::from(saga);
            let now = taskstream_domain::now();
            let mut steps = Steps::new(&r, now, self.last_step(saga).await?);
            steps.push(
                "timed_out",
                SagaState::Compensating,
                Some(format!(
                    "{} did not answer within {}s",
                    saga.assignee,
                    self.settings.accept_timeout.as_secs()
                )),
            );
            let t = SagaTransition {
                saga_id: saga.id,
                from: vec![SagaState::AwaitingAcceptance],
                only_while_holding: false,
                only_while_assigned: None,
                effects: SagaEffects {
                    state: SagaState::Compensating,
                    outcome: Some("timed_out".to_owned()),
                    holds_capacity: saga.holds_capacity,
                    deadline_at: Some(now),
                    steps: steps.steps,
                    outbox: steps.outbox,
                },
                task_writes: Vec::new(),
                processed: None,
            };
            if self.store.transition_saga(&t).await?.is_none() {
                // Answered (or timed out by another process) meanwhile.
                return Ok(false);
            }
            self.relay_wake.notify_one();
            changed = true;
        }
        Ok(self.compensate(saga.id).await? || changed)
    }

    /// Compensates a saga in state `compensating`, in one transaction: the
    /// task is unassigned (`task.updated`), the capacity released, and the
    /// task escalated to the team queue (`task.updated` again, and
    /// `saga.escalated`, both of which the notifier announces to the queue).
    /// Returns `false` when the saga is not (or no longer) compensating: a
    /// compensation runs once.
    pub async fn compensate(&self, saga_id: Uuid) -> Result<bool, SagaStepError> {
        // Each conflict means someone else changed the task meanwhile; the
        // next attempt reads it again.
        for _ in 0..5 {
            let Some(saga) = self.store.saga(saga_id).await? else {
                return Ok(false);
            };
            if saga.state != SagaState::Compensating {
                return Ok(false);
            }
            let t = self.compensation(&saga).await?;
            match self.store.transition_saga(&t).await {
                Ok(Some(_)) => {
                    self.relay_wake.notify_one();
                    tracing::info!(saga_id = %saga.id, task_id = saga.task_id, outcome = saga.outcome.as_deref().unwrap_or_default(), "saga compensated");
                    return Ok(true);
                }
                Ok(None) => return Ok(false),
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SagaStepError::Contended(
            self.store
                .saga(saga_id)
                .await?
                .map(|s| s.task_id)
                .unwrap_or_default(),
        ))
    }

    /// The compensating step of `saga`, against the task as it is now.
    async fn compensation(&self, saga: &Saga) -> Result<SagaTransition, SagaStepError> {
        let r = SagaRef::from(saga);
        let now = taskstream_domain::now();
        let mut steps = Steps::new(&r, now, self.last_step(saga).await?);
        let current = self.store.saga_task(&saga.task_id).await?;
        let team = &self.settings.team_queue;
        let mut task_writes = Vec::new();
        match current {
            // Only the assignment this saga started from is undone: not one
            // made after it, even to the same person (that one has its own
            // saga).
            Some(current) if current.is_assignment_of(saga) => {
                let task = current.task;
                let unassigned = steps.push(
                    "unassigned",
                    SagaState::Compensating,
                    Some(format!(
                        "unassigned from {} at version {}",
                        saga.assignee,
                        task.version + 1
                    )),
                );
                let first = self.task_write(&task, None, saga, unassigned, now)?;
                // Only a saga that held a slot gives one back: one refused
                // for capacity never took it.
                if saga.holds_capacity {
                    steps.push(
                        "capacity_released",
                        SagaState::Compensating,
                        Some(format!("{} holds one assignment less", saga.assignee)),
                    );
                }
                let escalated = steps.announce(
                    "escalated",
                    SagaState::Compensated,
                    Some(format!(
                        "escalated to {team} at version {}",
                        task.version + 2
                    )),
                    Announcement {
                        recipient: team.to_string(),
                        title: task.title.as_str().to_owned(),
                        deadline_at: None,
                        outcome: saga.outcome.clone(),
                    },
                );
                let second =
                    self.task_write(&first.task, Some(team.clone()), saga, escalated, now)?;
                task_writes.extend([first, second]);
            }
            _ => {
                // Someone else reassigned, completed or deleted the task
                // meanwhile, or assigned it again after this saga started:
                // there is nothing of this saga's to take back or escalate.
                let detail = format!(
                    "the task is no longer the open task {} was assigned at version {}; not unassigned or escalated",
                    saga.assignee, saga.task_version
                );
                let step = match saga.holds_capacity {
                    true => "capacity_released",
                    false => "nothing_to_undo",
                };
                steps.push(step, SagaState::Compensated, Some(detail));
            }
        }
        Ok(SagaTransition {
            saga_id: saga.id,
            from: vec![SagaState::Compensating],
            only_while_holding: false,
            only_while_assigned: None,
            effects: SagaEffects {
                state: SagaState::Compensated,
                outcome: saga.outcome.clone(),
                holds_capacity: false,
                deadline_at: None,
                steps: steps.steps,
                outbox: steps.outbox,
            },
            task_writes,
            processed: None,
        })
    }

    /// `task` with its assignee set to `assignee`, caused by saga event
    /// `cause`, as the Task API would write it: the domain's transition and
    /// its `task.updated` event in the deployment's encoding.
    fn task_write(
        &self,
        task: &Task,
        assignee: Option<taskstream_domain::Assignee>,
        saga: &Saga,
        cause: Uuid,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<SagaTaskWrite, SagaStepError> {
        let patch = TaskPatch {
            assignee: Some(assignee),
            ..TaskPatch::default()
        };
        let cause_of = Cause {
            correlation_id: saga.correlation_id.as_deref(),
            traceparent: None,
        };
        let mut change = task
            .update(patch, now, cause_of)
            .map_err(|_| SagaStepError::Contended(task.id.to_string()))?
            .expect("the assignee changes");
        change.event.causation_id = Some(cause.to_string());
        let event = self.encoding.outbox_message(
            &change.event,
            "task",
            change.task.id.to_string(),
            TASK_EVENTS,
            None,
        )?;
        Ok(SagaTaskWrite {
            task: change.task,
            expected_version: task.version,
            event,
        })
    }
}

/// The saga's consumer of `task-events` (run it behind the group's inbox,
/// like the other consumers).
///
/// - A task that gets an assignee (`task.created` with one, `task.updated`
///   changing it to someone other than the team queue) starts a saga:
///   `started`, then `acceptance_requested` (which the notifier announces
///   to the assignee) when the assignee has capacity, or `capacity_exceeded` and
///   the compensation when not.
/// - A task that changes hands, is completed or deleted ends its sagas
///   from before that change: one still waiting is `superseded`; an
///   accepted one releases its capacity.
pub struct SagaOrchestrator {
    store: Arc<dyn SagaBackend>,
    compensator: Arc<Compensator>,
}

impl SagaOrchestrator {
    pub fn new(store: Arc<dyn SagaBackend>, compensator: Arc<Compensator>) -> Self {
        Self { store, compensator }
    }

    /// Ends the task's sagas started before `event`.
    async fn release_earlier(&self, event: &EventEnvelope, why: &str) -> Result<(), SagaStepError> {
        let task = &event.data.task;
        let task_id = task.id.to_string();
        for mut saga in self.store.open_sagas_for_task(&task_id).await? {
            // An answer or the timer may move the saga between the read and
            // the step (an accept racing the task's deletion): then look at
            // it again, so that an accepted saga still gives its slot back.
            for _ in 0..3 {
                if saga.task_version >= task.version {
                    break;
                }
                let Some(t) = release_step(&saga, event, why) else {
                    break;
                };
                if self.store.transition_saga(&t).await?.is_some() {
                    break;
                }
                match self.store.saga(saga.id).await? {
                    Some(now) => saga = now,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Starts a saga for `assignee` of the event's task.
    async fn start(&self, group: &str, event: &EventEnvelope) -> Result<Handled, SagaStepError> {
        let task = &event.data.task;
        let Some(assignee) = task.assignee.as_ref() else {
            return Ok(Handled::Applied);
        };
        let settings = self.compensator.settings();
        let now = taskstream_domain::now();
        let r = SagaRef {
            id: Uuid::now_v7(),
            task_id: task.id.to_string(),
            assignee: assignee.to_string(),
            correlation_id: event.correlation_id.clone(),
        };
        let deadline = now
            + chrono::Duration::from_std(settings.accept_timeout).unwrap_or(chrono::Duration::MAX);
        let cause = Some(event.id.to_string());
        let reserved = {
            let mut steps = Steps::new(&r, now, cause.clone());
            steps.push(
                "started",
                SagaState::AwaitingAcceptance,
                Some(format!("{} holds capacity", r.assignee)),
            );
            steps.announce(
                "acceptance_requested",
                SagaState::AwaitingAcceptance,
                Some(format!("answer by {}", deadline.to_rfc3339())),
                Announcement {
                    recipient: r.assignee.clone(),
                    title: task.title.as_str().to_owned(),
                    deadline_at: Some(deadline),
                    outcome: None,
                },
            );
            SagaEffects {
                state: SagaState::AwaitingAcceptance,
                outcome: None,
                holds_capacity: true,
                deadline_at: Some(deadline),
                steps: steps.steps,
                outbox: steps.outbox,
            }
        };
        let full = {
            let mut steps = Steps::new(&r, now, cause);
            steps.push("started", SagaState::AwaitingAcceptance, None);
            steps.push(
                "capacity_exceeded",
                SagaState::Compensating,
                Some(format!(
                    "{} already holds {} open assignments",
                    r.assignee, settings.max_open_per_assignee
                )),
            );
            SagaEffects {
                state: SagaState::Compensating,
                outcome: Some("capacity_exceeded".to_owned()),
                holds_capacity: false,
                deadline_at: Some(now),
                steps: steps.steps,
                outbox: steps.outbox,
            }
        };
        let start = SagaStart {
            group: group.to_owned(),
            id: r.id,
            task_id: r.task_id.clone(),
            assignee: r.assignee.clone(),
            task_version: task.version,
            trigger_event_id: event.id.as_uuid(),
            correlation_id: r.correlation_id.clone(),
            at: now,
            max_open: i64::from(settings.max_open_per_assignee),
            reserved,
            full,
        };
        let started = self.store.start_saga(&start).await?;
        tracing::info!(saga_id = %r.id, task_id = r.task_id, assignee = r.assignee, outcome = ?started, "saga started");
        match started {
            SagaStarted::Duplicate => return Ok(Handled::Duplicate),
            SagaStarted::Reserved => {}
            SagaStarted::AtCapacity => {
                // The timer would find it too; compensating now is sooner.
                if let Err(e) = self.compensator.compensate(r.id).await {
                    tracing::warn!(saga_id = %r.id, error = %e, "compensation failed; the timer retries it");
                }
            }
        }
        self.compensator.relay_wake.notify_one();
        Ok(Handled::Applied)
    }
}

#[async_trait]
impl EventHandler for SagaOrchestrator {
    async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
        let event = d.event;
        let task = &event.data.task;
        let assignee_changed = match event.event_type {
            EventType::TaskCreated => task.assignee.is_some(),
            EventType::TaskUpdated => event.data.changed_fields.iter().any(|f| f == "assignee"),
            EventType::TaskCompleted | EventType::TaskDeleted => false,
        };
        let why = match event.event_type {
            EventType::TaskCompleted => "the task was completed".to_owned(),
            EventType::TaskDeleted => "the task was deleted".to_owned(),
            _ => match &task.assignee {
                Some(a) => format!("the task was reassigned to {a}"),
                None => "the task was unassigned".to_owned(),
            },
        };
        if assignee_changed
            || matches!(
                event.event_type,
                EventType::TaskCompleted | EventType::TaskDeleted
            )
        {
            self.release_earlier(event, &why).await?;
        }
        let team = &self.compensator.settings().team_queue;
        let assigned_to_person = task.assignee.as_ref().is_some_and(|a| a != team);
        if assignee_changed && assigned_to_person && task.status == TaskStatus::Open {
            return Ok(self.start(d.group, event).await?);
        }
        Ok(Handled::Applied)
    }
}

/// The step that ends `saga` because of `event` (its task changed hands, was
/// completed or deleted): a waiting saga is superseded, an accepted one
/// releases its capacity. `None` for a saga in another state (a
/// compensation in progress finds the task as it is).
fn release_step(saga: &Saga, event: &EventEnvelope, why: &str) -> Option<SagaTransition> {
    let r = SagaRef::from(saga);
    let now = taskstream_domain::now();
    let mut steps = Steps::new(&r, now, Some(event.id.to_string()));
    let (from, state, outcome, only_while_holding) = match saga.state {
        SagaState::AwaitingAcceptance => {
            steps.push("superseded", SagaState::Superseded, Some(why.to_owned()));
            (
                vec![SagaState::AwaitingAcceptance],
                SagaState::Superseded,
                Some("superseded".to_owned()),
                false,
            )
        }
        SagaState::Completed if saga.holds_capacity => {
            steps.push(
                "capacity_released",
                SagaState::Completed,
                Some(why.to_owned()),
            );
            (
                vec![SagaState::Completed],
                SagaState::Completed,
                saga.outcome.clone(),
                true,
            )
        }
        _ => return None,
    };
    Some(SagaTransition {
        saga_id: saga.id,
        from,
        only_while_holding,
        only_while_assigned: None,
        effects: SagaEffects {
            state,
            outcome,
            holds_capacity: false,
            deadline_at: None,
            steps: steps.steps,
            outbox: steps.outbox,
        },
        task_writes: Vec::new(),
        processed: None,
    })
}
