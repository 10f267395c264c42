//! Task commands: validate the transition, then store the new state and its
//! event in one transaction, then wake the relay.

use std::sync::Arc;

use taskstream_domain::{
    EventCodec, NewTask, Task, TaskChange, TaskId, TaskPatch, TransitionError,
};
use taskstream_store::{OutboxMessage, StoreError, TaskQuery, TaskStore};
use tokio::sync::Notify;

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
    #[error("the task kept changing concurrently; try again")]
    Contended,
    /// The store lost its connection while committing task `0`'s change and
    /// could not find out whether it took effect.
    #[error("the outcome of the change to task {0} is unknown")]
    OutcomeUnknown(TaskId),
    #[error(transparent)]
    Codec(#[from] taskstream_domain::CodecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Executes task commands against a [`TaskStore`].
#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    codec: Arc<dyn EventCodec>,
    relay_wake: Arc<Notify>,
    topic: String,
}

/// How often a change is retried when another writer got there first.
const MAX_ATTEMPTS: usize = 5;

impl TaskService {
    /// `relay_wake` is notified after every commit; events go to `topic`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        codec: Arc<dyn EventCodec>,
        relay_wake: Arc<Notify>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            store,
            codec,
            relay_wake,
            topic: topic.into(),
        }
    }

    fn outbox_message(
        &self,
        change: &TaskChange,
        context: &RequestContext,
    ) -> Result<OutboxMessage, ServiceError> {
        Ok(OutboxMessage {
            id: change.event.id.as_uuid(),
            aggregate_type: "task".to_owned(),
            aggregate_id: change.task.id.to_string(),
            event_type: change.event.event_type.to_string(),
            topic: self.topic.clone(),
            payload: self.codec.encode(&change.event)?,
            content_type: self.codec.content_type().to_owned(),
            traceparent: Some(context.traceparent.clone()),
            created_at: change.event.time,
        })
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

    /// Read, change, and write back if nobody wrote in between (optimistic
    /// concurrency on `version`); retried a few times under contention.
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
        for _ in 0..MAX_ATTEMPTS {
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
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(store_failure(e, id)),
            }
        }
        Err(ServiceError::Contended)
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
