//! Task commands: validate the transition, then store the new state and its
//! event in one transaction, then wake the relay.
//!
//! A change to an existing task reads it, applies the transition and writes
//! it back only if nobody wrote in between (optimistic concurrency on
//! `version`). Inside one process, changes to one task take turns (a
//! per-task lock), so they never collide with each other; a collision with
//! another process (API replicas on one PostgreSQL) is retried after a short,
//! jittered pause. Without `If-Match` the last writer wins, so such a change
//! succeeds however busy the task is; with `If-Match` a stale version is
//! refused (412) and never retried.
//!
//! The event is encoded into its outbox row here, through the one
//! [`EventEncoding`], exactly as it goes on the topic. With Avro the schema
//! ids were registered at start-up; until they are (the registry was down),
//! a write fails with [`ServiceError::Encoding`], retriable, storing nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskstream_domain::{
    Assignee, NewTask, Priority, Task, TaskChange, TaskId, TaskPatch, TransitionError,
};
use taskstream_services::{EncodingError, EventEncoding};
use taskstream_store::{
    OutboxMessage, Saga, SagaStore, StoreError, SuggestionRecord, SuggestionStatus,
    SuggestionStore, TaskQuery, TaskStore,
};
use tokio::sync::{Notify, OwnedMutexGuard};
use uuid::Uuid;

use crate::RequestContext;

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no task with id {0}")]
    NotFound(TaskId),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the task is at version {actual}, not {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// Other processes kept winning the race for the task for longer than
    /// [`CONTENTION_BUDGET`]; practically unreachable.
    #[error("the task kept changing concurrently; try again")]
    Contended,
    /// The store lost its connection while committing task `0`'s change and
    /// could not find out whether it took effect.
    #[error("the outcome of the change to task {0} is unknown")]
    OutcomeUnknown(TaskId),
    /// The event could not be encoded into its outbox row; retriable while
    /// the Avro schemas are not registered yet. Nothing was stored.
    #[error("cannot encode the task's event")]
    Encoding(#[from] EncodingError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a suggestion was not accepted or rejected.
#[derive(Debug, thiserror::Error)]
pub enum SuggestionError {
    #[error("task {task} has no suggestion {suggestion}")]
    NotFound { task: TaskId, suggestion: Uuid },
    /// Accepted or rejected already: a suggestion is resolved once.
    #[error("suggestion {suggestion} is already {}", status.as_str())]
    Resolved {
        suggestion: Uuid,
        status: SuggestionStatus,
    },
    /// The task changed since the suggestion was made for it.
    #[error("suggestion {suggestion} was made for version {suggested_for} of the task, which is now at version {current}")]
    Stale {
        suggestion: Uuid,
        suggested_for: i64,
        current: i64,
    },
    /// The stored suggestion holds a value the task cannot take.
    #[error("suggestion {suggestion} cannot be applied: {detail}")]
    Unusable { suggestion: Uuid, detail: String },
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<StoreError> for SuggestionError {
    fn from(e: StoreError) -> Self {
        Self::Service(ServiceError::Store(e))
    }
}

/// Executes task commands against a [`TaskStore`].
#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    encoding: EventEncoding,
    relay_wake: Arc<Notify>,
    topic: String,
    locks: Arc<TaskLocks>,
    /// Where `get` finds a task's saga, when sagas run.
    sagas: Option<Arc<dyn SagaStore>>,
}

/// How long a change keeps retrying while writers in other processes get
/// there first. Each collision means another write succeeded, so with a
/// handful of replicas a change wins within a few attempts; the budget only
/// bounds pathological cases.
pub const CONTENTION_BUDGET: Duration = Duration::from_secs(10);

/// The longest pause between two attempts after a collision (the first is
/// about a millisecond; each doubles, with jitter).
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);

impl TaskService {
    /// `relay_wake` is notified after every commit; events go to `topic`,
    /// stored in `encoding`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        encoding: EventEncoding,
        relay_wake: Arc<Notify>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            store,
            encoding,
            relay_wake,
            topic: topic.into(),
            locks: Arc::default(),
            sagas: None,
        }
    }

    /// The same service, linking each task to its saga in `sagas`.
    pub fn with_sagas(mut self, sagas: Arc<dyn SagaStore>) -> Self {
        self.sagas = Some(sagas);
        self
    }

    /// The task's current or last saga, when sagas run.
    pub async fn saga_of(&self, id: TaskId) -> Result<Option<Saga>, ServiceError> {
        match &self.sagas {
            Some(sagas) => Ok(sagas.latest_saga_for_task(&id.to_string()).await?),
            None => Ok(None),
        }
    }

    fn outbox_message(
        &self,
        change: &TaskChange,
        context: &RequestContext,
    ) -> Result<OutboxMessage, ServiceError> {
        Ok(self.encoding.outbox_message(
            &change.event,
            "task",
            change.task.id.to_string(),
            &self.topic,
            Some(context.traceparent.clone()),
        )?)
    }

    /// Creates a task; the request's id and trace are copied into its event.
    pub async fn create(
        &self,
        new: NewTask,
        context: &RequestContext,
    ) -> Result<Task, ServiceError> {
        let change = Task::create(new, taskstream_domain::now(), context.cause());
        let message = self.outbox_message(&change, context)?;
        self.store
            .insert_task(&change.task, &message)
            .await
            .map_err(|e| store_failure(e, change.task.id))?;
        self.relay_wake.notify_one();
        log_change(&change);
        Ok(change.task)
    }

    pub async fn get(&self, id: TaskId) -> Result<Task, ServiceError> {
        self.store.task(id).await?.ok_or(ServiceError::NotFound(id))
    }

    pub async fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, ServiceError> {
        Ok(self.store.tasks(query).await?)
    }

    /// Applies `patch`; with no effective change, returns the task unchanged
    /// and emits nothing.
    pub async fn update(
        &self,
        id: TaskId,
        patch: TaskPatch,
        if_version: Option<i64>,
        context: &RequestContext,
    ) -> Result<Task, ServiceError> {
        self.modify(id, if_version, context, |task| {
            task.update(patch.clone(), taskstream_domain::now(), context.cause())
        })
        .await
    }

    pub async fn complete(
        &self,
        id: TaskId,
        if_version: Option<i64>,
        context: &RequestContext,
    ) -> Result<Task, ServiceError> {
        self.modify(id, if_version, context, |task| {
            task.complete(taskstream_domain::now(), context.cause())
                .map(Some)
        })
        .await
    }

    pub async fn delete(
        &self,
        id: TaskId,
        if_version: Option<i64>,
        context: &RequestContext,
    ) -> Result<Task, ServiceError> {
        self.modify(id, if_version, context, |task| {
            task.delete(taskstream_domain::now(), context.cause())
                .map(Some)
        })
        .await
    }

    /// Accepts suggestion `suggestion_id` of task `id`: applies its
    /// priority, assignee and due date through the normal write path (the
    /// task and its `task.updated` event in one transaction), and marks it
    /// accepted in that same transaction. Refused, changing nothing, when
    /// it was accepted or rejected already, or when the task changed since
    /// the suggestion was made (stale).
    pub async fn accept_suggestion(
        &self,
        suggestions: &dyn SuggestionStore,
        id: TaskId,
        suggestion_id: Uuid,
        context: &RequestContext,
    ) -> Result<Task, SuggestionError> {
        let _turn = self.locks.lock(id).await;
        let suggestion = pending_suggestion(suggestions, id, suggestion_id).await?;
        let current = self.get(id).await?;
        if current.version != suggestion.task_version {
            return Err(SuggestionError::Stale {
                suggestion: suggestion_id,
                suggested_for: suggestion.task_version,
                current: current.version,
            });
        }
        let patch = patch_of(&suggestion)?;
        let now = taskstream_domain::now();
        let change = current
            .update(patch, now, context.cause())
            .map_err(ServiceError::from)?;
        let outcome = match &change {
            Some(next) => {
                let message = self.outbox_message(next, context)?;
                suggestions
                    .accept_suggestion(
                        suggestion_id,
                        Some((&next.task, current.version, &message)),
                        now,
                    )
                    .await
            }
            None => {
                suggestions
                    .accept_suggestion(suggestion_id, None, now)
                    .await
            }
        };
        match outcome {
            Ok(()) => {}
            Err(StoreError::SuggestionNotPending { .. }) => {
                return Err(resolved(suggestions, suggestion_id).await)
            }
            Err(StoreError::VersionConflict { .. }) => {
                let now_at = self.get(id).await?.version;
                return Err(SuggestionError::Stale {
                    suggestion: suggestion_id,
                    suggested_for: suggestion.task_version,
                    current: now_at,
                });
            }
            Err(e) => return Err(store_failure(e, id).into()),
        }
        let Some(next) = change else {
            return Ok(current);
        };
        self.relay_wake.notify_one();
        log_change(&next);
        Ok(next.task)
    }

    /// Rejects suggestion `suggestion_id` of task `id`; the task is not touched.
    pub async fn reject_suggestion(
        &self,
        suggestions: &dyn SuggestionStore,
        id: TaskId,
        suggestion_id: Uuid,
    ) -> Result<SuggestionRecord, SuggestionError> {
        pending_suggestion(suggestions, id, suggestion_id).await?;
        match suggestions
            .reject_suggestion(suggestion_id, taskstream_domain::now())
            .await
        {
            Ok(()) => {}
            Err(StoreError::SuggestionNotPending { .. }) => {
                return Err(resolved(suggestions, suggestion_id).await)
            }
            Err(e) => return Err(e.into()),
        }
        suggestions
            .suggestion(suggestion_id)
            .await?
            .ok_or(SuggestionError::NotFound {
                task: id,
                suggestion: suggestion_id,
            })
    }

    /// Read, change, and write back if nobody wrote in between (optimistic
    /// concurrency on `version`). Changes to one task take turns inside this
    /// process; a collision with another process is retried for up to
    /// [`CONTENTION_BUDGET`].
    async fn modify<F>(
        &self,
        id: TaskId,
        if_version: Option<i64>,
        context: &RequestContext,
        change: F,
    ) -> Result<Task, ServiceError>
    where
        F: Fn(&Task) -> Result<Option<TaskChange>, TransitionError>,
    {
        let _turn = self.locks.lock(id).await;
        let deadline = tokio::time::Instant::now() + CONTENTION_BUDGET;
        let mut pause = Duration::from_millis(1);
        loop {
            let current = self.get(id).await?;
            if let Some(expected) = if_version {
                if expected != current.version {
                    return Err(ServiceError::VersionMismatch {
                        expected,
                        actual: current.version,
                    });
                }
            }
            let Some(next) = change(&current)? else {
                return Ok(current);
            };
            let message = self.outbox_message(&next, context)?;
            match self
                .store
                .save_task(&next.task, current.version, &message)
                .await
            {
                Ok(()) => {
                    self.relay_wake.notify_one();
                    log_change(&next);
                    return Ok(next.task);
                }
                Err(StoreError::VersionConflict { .. }) => {
                    // Another process wrote the task in between: read it
                    // again after a pause that keeps competing replicas
                    // from retrying in lockstep.
                    let wait = jittered(pause);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(ServiceError::Contended);
                    }
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Err(e) => return Err(store_failure(e, id)),
            }
        }
    }
}

/// Suggestion `suggestion_id` of task `id`, if it is still pending.
async fn pending_suggestion(
    suggestions: &dyn SuggestionStore,
    id: TaskId,
    suggestion_id: Uuid,
) -> Result<SuggestionRecord, SuggestionError> {
    let suggestion = suggestions
        .suggestion(suggestion_id)
        .await?
        .filter(|s| s.task_id == id.to_string())
        .ok_or(SuggestionError::NotFound {
            task: id,
            suggestion: suggestion_id,
        })?;
    if suggestion.status != SuggestionStatus::Pending {
        return Err(SuggestionError::Resolved {
            suggestion: suggestion_id,
            status: suggestion.status,
        });
    }
    Ok(suggestion)
}

/// The refusal for a suggestion that a concurrent command resolved first.
async fn resolved(suggestions: &dyn SuggestionStore, suggestion_id: Uuid) -> SuggestionError {
    match suggestions.suggestion(suggestion_id).await {
        Ok(Some(s)) => SuggestionError::Resolved {
            suggestion: suggestion_id,
            status: s.status,
        },
        Ok(None) | Err(_) => SuggestionError::Resolved {
            suggestion: suggestion_id,
            status: SuggestionStatus::Accepted,
        },
    }
}

/// The change a suggestion asks for: only the fields it has an opinion on.
fn patch_of(s: &SuggestionRecord) -> Result<TaskPatch, SuggestionError> {
    let unusable = |detail: String| SuggestionError::Unusable {
        suggestion: s.id,
        detail,
    };
    let priority = s
        .priority
        .as_deref()
        .map(|p| Priority::parse(p).ok_or_else(|| unusable(format!("priority {p:?}"))))
        .transpose()?;
    let assignee = s
        .assignee
        .as_deref()
        .map(|a| Assignee::parse(a).map_err(|e| unusable(e.message)))
        .transpose()?;
    Ok(TaskPatch {
        priority,
        assignee: assignee.map(Some),
        due_at: s.due_at.map(Some),
        ..TaskPatch::default()
    })
}

/// A random duration between half of `pause` and `pause`.
fn jittered(pause: Duration) -> Duration {
    let random = RandomState::new().hash_one(std::time::Instant::now());
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    pause / 2 + (pause / 2).mul_f64(fraction)
}

/// One async lock per task with a change in progress, so that changes to a
/// task take turns within the process. An entry lives only while someone
/// holds or waits for it, so the map stays as small as the number of tasks
/// being changed at once.
#[derive(Default)]
struct TaskLocks {
    entries: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A claim on a task's lock: held (`guard`) or waited for. Dropping it — a
/// finished change, or a request abandoned while waiting — removes the
/// task's entry when nobody else claims it.
struct TaskTurn {
    guard: Option<OwnedMutexGuard<()>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    locks: Arc<TaskLocks>,
    id: TaskId,
}

impl TaskLocks {
    /// Waits for `id`'s turn.
    async fn lock(self: &Arc<Self>, id: TaskId) -> TaskTurn {
        let lock = Arc::clone(
            self.entries
                .lock()
                .expect("task lock map poisoned")
                .entry(id)
                .or_default(),
        );
        let mut turn = TaskTurn {
            guard: None,
            lock: Arc::clone(&lock),
            locks: Arc::clone(self),
            id,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("task lock map poisoned").len()
    }
}

impl Drop for TaskTurn {
    fn drop(&mut self) {
        let mut entries = self.locks.entries.lock().expect("task lock map poisoned");
        self.guard = None;
        // Claims are only made under the map's lock, so the count cannot
        // grow while it is held: two references (the map's and this one)
        // mean nobody else holds or waits for the lock.
        if Arc::strong_count(&self.lock) == 2 {
            entries.remove(&self.id);
        }
    }
}

/// A store failure while writing task `id`'s change, with an unknown
/// outcome named as such (the client must read the task back).
fn store_failure(error: StoreError, id: TaskId) -> ServiceError {
    match error {
        StoreError::OutcomeUnknown(detail) => {
            tracing::error!(task_id = %id, detail, "a task change may or may not have been stored");
            ServiceError::OutcomeUnknown(id)
        }
        other => other.into(),
    }
}

/// One line per change, at DEBUG: per-request detail belongs to metrics
/// and traces (`RUST_LOG=taskstream_api=debug` shows it).
fn log_change(change: &TaskChange) {
    tracing::debug!(
        task_id = %change.task.id,
        event_id = %change.event.id,
        event_type = %change.event.event_type,
        "task changed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_lock_is_exclusive_and_forgotten_once_nobody_holds_or_awaits_it() {
        let locks = Arc::new(TaskLocks::default());
        let (a, b) = (TaskId::new(), TaskId::new());
        let first = locks.lock(a).await;
        // Another task's turn does not wait for this one.
        let other = locks.lock(b).await;
        assert_eq!(locks.len(), 2);
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { drop(locks.lock(a).await) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a second turn waits for the first");
        drop(other);
        drop(first);
        waiting.await.unwrap();
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_lock_behind() {
        let locks = Arc::new(TaskLocks::default());
        let id = TaskId::new();
        let held = locks.lock(id).await;
        let waiter = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { drop(locks.lock(id).await) }
        });
        tokio::task::yield_now().await;
        // The holder leaves while the waiter still counts, and the waiter
        // is abandoned before it takes its turn (a client that went away).
        drop(held);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(locks.len(), 0);
    }
}
