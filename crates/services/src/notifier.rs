//! The notification service: turns task events into notifications by a few
//! rules, sends them through a [`NotificationSink`], and records them.
//!
//! Rules:
//! - `task.created` with an assignee → `task_assigned` to the assignee;
//! - `task.updated` that changes the assignee to someone → `task_assigned` to them;
//! - `task.completed` → `task_completed` to the assignee (or `team` when unassigned).
//!
//! Each notification's id is derived from the event id and the kind, so a
//! sink sees the same id if an event is ever redelivered and can use it as
//! an idempotency key. The event is marked processed in the same transaction
//! that records the notifications; a redelivered event sends nothing.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::{EventEnvelope, EventType};
use taskstream_kafka::InboundRecord;
use taskstream_store::{NotificationRecord, NotificationStore};
use uuid::Uuid;

use crate::{Delivery, EventHandler, Handled, HandlerError};
use tracing::Instrument;

/// The notification service's consumer group.
pub const NOTIFIER_GROUP: &str = "notifier";

/// Why a sink could not deliver.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Trying again cannot help (the receiver refused the notification).
    pub permanent: bool,
}

impl SinkError {
    /// A failure that may pass (the receiver is down or overloaded).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A refusal that retrying cannot change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Where notifications go (a log, a webhook, e-mail...).
#[async_trait]
pub trait NotificationSink: Send + Sync + 'static {
    /// The channel name stored with each notification.
    fn channel(&self) -> &'static str;
    /// Delivers one notification; `n.id` is stable across redeliveries.
    async fn deliver(&self, n: &NotificationRecord) -> Result<(), SinkError>;
}

/// Writes notifications to the log (target `notifications`, at DEBUG: one
/// line per event is too many at the default level; show them with
/// `RUST_LOG=info,notifications=debug`, or read `/notifications`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

#[async_trait]
impl NotificationSink for LogSink {
    fn channel(&self) -> &'static str {
        "log"
    }

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), SinkError> {
        tracing::debug!(
            target: "notifications",
            id = %n.id,
            kind = n.kind,
            recipient = n.recipient, "{}", n.message);
        Ok(())
    }
}

/// Wraps a sink and waits before every delivery: a slow downstream on
/// purpose, for watching consumer lag build up and drain.
pub struct DelayedSink<S> {
    inner: S,
    delay: std::time::Duration,
}

impl<S: NotificationSink> DelayedSink<S> {
    pub fn new(inner: S, delay: std::time::Duration) -> Self {
        Self { inner, delay }
    }
}

#[async_trait]
impl<S: NotificationSink> NotificationSink for DelayedSink<S> {
    fn channel(&self) -> &'static str {
        self.inner.channel()
    }

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        self.inner.deliver(n).await
    }
}

/// Applies the rules above to each event.
pub struct NotificationHandler {
    store: Arc<dyn NotificationStore>,
    sink: Arc<dyn NotificationSink>,
}

impl NotificationHandler {
    pub fn new(store: Arc<dyn NotificationStore>, sink: Arc<dyn NotificationSink>) -> Self {
        Self { store, sink }
    }

    /// The notifications an event calls for: `(kind, recipient, message)`.
    pub fn notifications_for(event: &EventEnvelope) -> Vec<(&'static str, String, String)> {
        let task = &event.data.task;
        let assignee = task.assignee.as_ref().map(|a| a.to_string());
        match event.event_type {
            EventType::TaskCreated => assignee
                .map(|who| {
                    vec![(
                        "task_assigned",
                        who,
                        format!("You were assigned \"{}\"", task.title),
                    )]
                })
                .unwrap_or_default(),
            EventType::TaskUpdated if event.data.changed_fields.iter().any(|f| f == "assignee") => {
                assignee
                    .map(|who| {
                        vec![(
                            "task_assigned",
                            who,
                            format!("You were assigned \"{}\"", task.title),
                        )]
                    })
                    .unwrap_or_default()
            }
            EventType::TaskCompleted => vec![(
                "task_completed",
                assignee.unwrap_or_else(|| "team".to_owned()),
                format!("\"{}\" was completed", task.title),
            )],
            EventType::TaskUpdated | EventType::TaskDeleted => Vec::new(),
        }
    }
}

impl NotificationHandler {
    /// Sends the notifications `event` calls for, unless it was handled
    /// before; `None` for a duplicate.
    async fn send(
        &self,
        event: &EventEnvelope,
    ) -> Result<Option<Vec<NotificationRecord>>, HandlerError> {
        let event_id = event.id.as_uuid();
        if self.store.is_processed(NOTIFIER_GROUP, event_id).await? {
            tracing::debug!(target: "notifications", "duplicate delivery ignored");
            return Ok(None);
        }
        let mut sent = Vec::new();
        for (kind, recipient, message) in Self::notifications_for(event) {
            let n = NotificationRecord {
                id: Uuid::new_v5(&event_id, kind.as_bytes()),
                event_id,
                event_type: event.event_type.to_string(),
                task_id: event.subject.clone(),
                kind: kind.to_owned(),
                recipient,
                message,
                channel: self.sink.channel().to_owned(),
                sent_at: taskstream_domain::now(),
            };
            self.sink.deliver(&n).await.map_err(|e| {
                let message = format!("sink {}: {e}", self.sink.channel());
                if e.permanent {
                    HandlerError::permanent(message)
                } else {
                    HandlerError::transient(message)
                }
            })?;
            sent.push(n);
        }
        Ok(Some(sent))
    }
}

fn outcome(fresh: bool) -> Handled {
    if fresh {
        Handled::Applied
    } else {
        Handled::Duplicate
    }
}

#[async_trait]
impl EventHandler for NotificationHandler {
    async fn handle(
        &self,
        _record: &InboundRecord,
        event: &EventEnvelope,
    ) -> Result<Handled, HandlerError> {
        let Some(sent) = self.send(event).await? else {
            return Ok(Handled::Duplicate);
        };
        let fresh = self
            .store
            .record_notifications(NOTIFIER_GROUP, event.id.as_uuid(), &sent)
            .await?;
        Ok(outcome(fresh))
    }

    async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandlerError> {
        let mut to_record = Vec::new();
        let mut slots = Vec::with_capacity(batch.len());
        for d in batch {
            let sent = match self.send(d.event).instrument(d.span.clone()).await {
                Ok(sent) => sent,
                Err(error) => {
                    // The batch fails and its events are handled again one
                    // by one: record what was already sent, so it is not
                    // sent twice (if the store is down too, it will be).
                    if !to_record.is_empty() {
                        if let Err(record_error) = self
                            .store
                            .record_notifications_batch(NOTIFIER_GROUP, &to_record)
                            .await
                        {
                            tracing::debug!(target: "notifications", error = %record_error, "cannot record the notifications sent before a failure");
                        }
                    }
                    return Err(error);
                }
            };
            match sent {
                Some(sent) => {
                    slots.push(Some(to_record.len()));
                    to_record.push((d.event.id.as_uuid(), sent));
                }
                None => slots.push(None),
            }
        }
        let fresh = self
            .store
            .record_notifications_batch(NOTIFIER_GROUP, &to_record)
            .await?;
        Ok(slots
            .into_iter()
            .map(|slot| slot.map_or(Handled::Duplicate, |i| outcome(fresh[i])))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskstream_domain::{Assignee, Cause, NewTask, Priority, Task, TaskPatch, TaskTitle};

    fn new_task(assignee: Option<&str>) -> NewTask {
        NewTask {
            title: TaskTitle::parse("ship it").unwrap(),
            description: None,
            priority: Priority::Medium,
            due_at: None,
            assignee: assignee.map(|a| Assignee::parse(a).unwrap()),
        }
    }

    #[test]
    fn rules_cover_assignment_and_completion() {
        let now = taskstream_domain::now();
        let unassigned = Task::create(new_task(None), now, Cause::default());
        assert!(NotificationHandler::notifications_for(&unassigned.event).is_empty());

        let assigned = Task::create(new_task(Some("ana")), now, Cause::default());
        let rules = NotificationHandler::notifications_for(&assigned.event);
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].0, rules[0].1.as_str()), ("task_assigned", "ana"));

        let retitled = assigned
            .task
            .update(
                TaskPatch {
                    title: Some(TaskTitle::parse("x").unwrap()),
                    ..Default::default()
                },
                now,
                Cause::default(),
            )
            .unwrap()
            .unwrap();
        assert!(NotificationHandler::notifications_for(&retitled.event).is_empty());

        let reassigned = retitled
            .task
            .update(
                TaskPatch {
                    assignee: Some(Some(Assignee::parse("bo").unwrap())),
                    ..Default::default()
                },
                now,
                Cause::default(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            NotificationHandler::notifications_for(&reassigned.event)[0].1,
            "bo"
        );

        let done = reassigned.task.complete(now, Cause::default()).unwrap();
        assert_eq!(
            NotificationHandler::notifications_for(&done.event)[0].0,
            "task_completed"
        );
        let unassigned_done = unassigned.task.complete(now, Cause::default()).unwrap();
        assert_eq!(
            NotificationHandler::notifications_for(&unassigned_done.event)[0].1,
            "team"
        );
        assert!(NotificationHandler::notifications_for(
            &done.task.delete(now, Cause::default()).unwrap().event
        )
        .is_empty());
    }
}
