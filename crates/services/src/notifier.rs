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
//! an idempotency key. The event is marked processed by the group the
//! notifier runs in, in the same transaction that records the
//! notifications; that group's inbox ([`crate::ProcessedEvents`]) keeps a
//! redelivered event from reaching the handler. Notifiers in other groups
//! notify on their own.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::{EventEnvelope, EventType};
use taskstream_store::{NotificationRecord, NotificationStore};
use tracing::Instrument;
use uuid::Uuid;

use crate::{Delivery, EventHandler, HandleError, Handled};

/// The notification service's consumer group.
pub const NOTIFIER_GROUP: &str = "notifier";

/// Where notifications go (a log, a webhook, e-mail...).
#[async_trait]
pub trait NotificationSink: Send + Sync + 'static {
    /// The channel name stored with each notification.
    fn channel(&self) -> &'static str;
    /// Delivers one notification; `n.id` is stable across redeliveries.
    /// A [`HandleError::Permanent`] failure means the receiver refused it.
    async fn deliver(&self, n: &NotificationRecord) -> Result<(), HandleError>;
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

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), HandleError> {
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

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), HandleError> {
        tokio::time::sleep(self.delay).await;
        self.inner.deliver(n).await
    }
}

/// Applies the rules above to each event. Run it behind the group's inbox,
/// `Deduplicated::new(ProcessedEvents::new(store), handler)`: it sends
/// whatever reaches it.
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

    /// Sends the notifications the delivered event calls for.
    async fn send(&self, d: &Delivery<'_>) -> Result<Vec<NotificationRecord>, HandleError> {
        let event = d.event;
        let event_id = event.id.as_uuid();
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
            self.sink
                .deliver(&n)
                .await
                .map_err(|e| e.context(format_args!("sink {}", self.sink.channel())))?;
            sent.push(n);
        }
        Ok(sent)
    }
}

fn outcome(fresh: bool) -> Handled {
    if fresh {
        Handled::Applied
    } else {
        tracing::debug!(target: "notifications", "duplicate delivery ignored");
        Handled::Duplicate
    }
}

#[async_trait]
impl EventHandler for NotificationHandler {
    async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
        let sent = self.send(d).await?;
        let fresh = self
            .store
            .record_notifications(d.group, d.event.id.as_uuid(), &sent)
            .await?;
        Ok(outcome(fresh))
    }

    async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandleError> {
        let Some(group) = batch.first().map(|d| d.group) else {
            return Ok(Vec::new());
        };
        let mut to_record = Vec::with_capacity(batch.len());
        for d in batch {
            match self.send(d).instrument(d.span.clone()).await {
                Ok(sent) => to_record.push((d.event.id.as_uuid(), sent)),
                Err(error) => {
                    // The batch fails and its events are handled again one
                    // by one: record what was already sent, so it is not
                    // sent twice (if the store is down too, it will be).
                    if !to_record.is_empty() {
                        if let Err(record_error) = self
                            .store
                            .record_notifications_batch(group, &to_record)
                            .await
                        {
                            tracing::debug!(target: "notifications", error = %record_error, "cannot record the notifications sent before a failure");
                        }
                    }
                    return Err(error);
                }
            }
        }
        let fresh = self
            .store
            .record_notifications_batch(group, &to_record)
            .await?;
        Ok(batch
            .iter()
            .zip(fresh)
            .map(|(d, fresh)| d.span.in_scope(|| outcome(fresh)))
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
