//! The notification service: turns task events (`task-events`) and the
//! assignment saga's events (`task-sagas`) into notifications by a few
//! rules, sends them through a [`NotificationSink`], and records them.
//!
//! Rules:
//! - `task.created` with an assignee → `task_assigned` to the assignee;
//! - `task.updated` that changes the assignee to someone → `task_assigned` to them;
//! - `task.completed` → `task_completed` to the assignee (or `team` when unassigned);
//! - `saga.acceptance_requested` → `saga_acceptance_requested` to the
//!   assignee, asking them to accept or decline;
//! - `saga.escalated` → `saga_escalated` to the team queue the task went to.
//!
//! A saga event names its recipient ([`SagaEvent::recipient`]); one without
//! (written before saga events carried it, when the saga recorded its own
//! notifications) calls for none.
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
use taskstream_domain::{headers, EventEnvelope, EventType};
use taskstream_kafka::InboundRecord;
use taskstream_store::{NotificationRecord, NotificationStore};
use tracing::Instrument;
use uuid::Uuid;

use crate::saga::events::{SagaEvent, SAGA_CONTENT_TYPE};
use crate::topics::TASK_SAGAS;
use crate::{
    record_value, ConsumedEvent, Delivery, EventDecoder, EventHandler, HandleError, Handled,
    RecordDecoder,
};

/// The notification service's consumer group.
pub const NOTIFIER_GROUP: &str = "notifier";

/// What the notifier reads: task events, and the saga's events.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifierEvent {
    Task(EventEnvelope),
    Saga(SagaEvent),
}

impl ConsumedEvent for NotifierEvent {
    fn event_id(&self) -> Uuid {
        match self {
            Self::Task(e) => e.event_id(),
            Self::Saga(e) => e.id,
        }
    }

    fn event_type(&self) -> &str {
        match self {
            Self::Task(e) => e.event_type.as_str(),
            Self::Saga(e) => &e.event_type,
        }
    }

    fn subject(&self) -> &str {
        match self {
            Self::Task(e) => &e.subject,
            Self::Saga(e) => &e.task_id,
        }
    }

    fn correlation_id(&self) -> Option<&str> {
        match self {
            Self::Task(e) => e.correlation_id.as_deref(),
            Self::Saga(e) => e.correlation_id.as_deref(),
        }
    }
}

/// Reads the notifier's records: a record on `task-sagas` (or labelled
/// with the saga content type) is a saga event in its own JSON shape;
/// any other is a task event, Avro or JSON ([`EventDecoder`]). A record
/// that is not what it should be is permanently undecodable, and
/// dead-lettered.
pub struct NotifierDecoder {
    tasks: EventDecoder,
}

impl NotifierDecoder {
    pub fn new(tasks: EventDecoder) -> Self {
        Self { tasks }
    }

    fn is_saga_event(record: &InboundRecord) -> bool {
        record.topic == TASK_SAGAS
            || record.header_str(headers::CONTENT_TYPE) == Some(SAGA_CONTENT_TYPE)
    }
}

#[async_trait]
impl RecordDecoder for NotifierDecoder {
    type Event = NotifierEvent;

    async fn decode(&self, record: &InboundRecord) -> Result<NotifierEvent, HandleError> {
        if Self::is_saga_event(record) {
            return Ok(NotifierEvent::Saga(SagaEvent::decode(record_value(
                record,
            )?)?));
        }
        Ok(NotifierEvent::Task(
            RecordDecoder::decode(&self.tasks, record).await?,
        ))
    }
}

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

    /// The notifications a saga event calls for: `(kind, recipient, message)`.
    pub fn saga_notifications_for(event: &SagaEvent) -> Vec<(&'static str, String, String)> {
        let Some(recipient) = event.recipient.clone() else {
            return Vec::new();
        };
        let title = event.title.as_deref().unwrap_or(&event.task_id);
        match event.event_type.as_str() {
            "saga.acceptance_requested" => vec![(
                "saga_acceptance_requested",
                recipient,
                format!(
                    "Please accept or decline \"{title}\"{} (POST /tasks/{}/accept or /decline)",
                    event
                        .deadline_at
                        .map(|d| format!(" by {}", d.to_rfc3339()))
                        .unwrap_or_default(),
                    event.task_id
                ),
            )],
            "saga.escalated" => {
                let why = match event.outcome.as_deref() {
                    Some("declined") => "declined it",
                    Some("timed_out") => "did not answer in time",
                    Some("capacity_exceeded") => "has too many open assignments",
                    _ => "could not take it",
                };
                vec![(
                    "saga_escalated",
                    recipient,
                    format!("\"{title}\" needs an owner: {} {why}", event.assignee),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Sends the notifications the delivered event calls for.
    async fn send(
        &self,
        d: &Delivery<'_, NotifierEvent>,
    ) -> Result<Vec<NotificationRecord>, HandleError> {
        let event = d.event;
        let event_id = event.event_id();
        let rules = match event {
            NotifierEvent::Task(e) => Self::notifications_for(e),
            NotifierEvent::Saga(e) => Self::saga_notifications_for(e),
        };
        let mut sent = Vec::new();
        for (kind, recipient, message) in rules {
            let n = NotificationRecord {
                id: Uuid::new_v5(&event_id, kind.as_bytes()),
                event_id,
                event_type: event.event_type().to_owned(),
                task_id: event.subject().to_owned(),
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
impl EventHandler<NotifierEvent> for NotificationHandler {
    async fn handle(&self, d: &Delivery<'_, NotifierEvent>) -> Result<Handled, HandleError> {
        let sent = self.send(d).await?;
        let fresh = self
            .store
            .record_notifications(d.group, d.event.event_id(), &sent)
            .await?;
        Ok(outcome(fresh))
    }

    async fn handle_batch(
        &self,
        batch: &[Delivery<'_, NotifierEvent>],
    ) -> Result<Vec<Handled>, HandleError> {
        let Some(group) = batch.first().map(|d| d.group) else {
            return Ok(Vec::new());
        };
        let mut to_record = Vec::with_capacity(batch.len());
        for d in batch {
            match self.send(d).instrument(d.span.clone()).await {
                Ok(sent) => to_record.push((d.event.event_id(), sent)),
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
    use crate::consumer::fixtures::record;
    use crate::{Deduplicated, ProcessedEvents};
    use taskstream_domain::{Assignee, Cause, NewTask, Priority, Task, TaskPatch, TaskTitle};

    /// A saga event as versions before announced steps wrote it: no
    /// recipient, title, deadline or outcome.
    const OLDER_SAGA_EVENT: &str = r#"{"id":"0192d5a0-7a3e-7c1e-9a51-3b1f0c2d4e5f","type":"saga.acceptance_requested","saga_id":"0192d5a0-7a3e-7c1e-9a51-3b1f0c2d4e60","task_id":"t-1","assignee":"bo","state":"awaiting_acceptance","detail":"answer by 2026-01-02T00:00:00Z","time":"2026-01-01T00:00:00Z","correlation_id":null,"causation_id":null}"#;

    fn on(topic: &str, payload: &[u8], content_type: Option<&str>) -> InboundRecord {
        InboundRecord {
            topic: topic.into(),
            payload: Some(payload.to_vec()),
            headers: content_type
                .map(|c| vec![(headers::CONTENT_TYPE.to_owned(), c.as_bytes().to_vec())])
                .unwrap_or_default(),
            ..record(3)
        }
    }

    fn decoder() -> NotifierDecoder {
        NotifierDecoder::new(EventDecoder::new(None))
    }

    #[tokio::test]
    async fn saga_records_read_as_saga_events_and_task_records_as_task_events() {
        let saga = decoder()
            .decode(&on(TASK_SAGAS, OLDER_SAGA_EVENT.as_bytes(), None))
            .await
            .unwrap();
        let NotifierEvent::Saga(older) = &saga else {
            panic!("{saga:?}")
        };
        assert_eq!(saga.event_type(), "saga.acceptance_requested");
        assert_eq!(saga.subject(), "t-1");
        assert_eq!(
            (older.recipient.as_ref(), older.title.as_ref()),
            (None, None)
        );
        // Its notification was recorded by the saga that wrote it.
        assert!(NotificationHandler::saga_notifications_for(older).is_empty());

        // Labelled with the saga content type, it is one wherever it is.
        let labelled = on(
            "elsewhere",
            OLDER_SAGA_EVENT.as_bytes(),
            Some(SAGA_CONTENT_TYPE),
        );
        assert_eq!(decoder().decode(&labelled).await.unwrap(), saga);

        let task = crate::consumer::fixtures::event("read me");
        let json = taskstream_domain::JsonCodec.encode(&task).unwrap();
        use taskstream_domain::EventCodec;
        let read = decoder()
            .decode(&on(
                crate::topics::TASK_EVENTS,
                &json,
                Some("application/json"),
            ))
            .await
            .unwrap();
        assert_eq!(read, NotifierEvent::Task(task));

        // A task event, or garbage, on the saga topic is no saga event:
        // permanently undecodable, so dead-lettered.
        for bytes in [json.as_slice(), b"{oops".as_slice()] {
            let error = decoder()
                .decode(&on(TASK_SAGAS, bytes, None))
                .await
                .unwrap_err();
            assert!(!error.is_retriable(), "{error}");
            assert!(error.to_string().contains("not a saga event"), "{error}");
        }
    }

    /// Keeps what it is given.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<NotificationRecord>>);

    #[async_trait]
    impl NotificationSink for Arc<Kept> {
        fn channel(&self) -> &'static str {
            "kept"
        }

        async fn deliver(&self, n: &NotificationRecord) -> Result<(), HandleError> {
            self.0.lock().unwrap().push(n.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_saga_escalation_is_sent_once_through_the_sink_and_recorded_under_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            taskstream_store::SqliteStore::open(
                &dir.path().join("notifier.db"),
                &taskstream_store::SqliteOptions::default(),
            )
            .await
            .unwrap(),
        );
        let kept = Arc::new(Kept::default());
        let handler = Deduplicated::new(
            ProcessedEvents::new(store.clone()),
            NotificationHandler::new(store.clone(), Arc::new(Arc::clone(&kept))),
        );
        let mut event = SagaEvent::decode(OLDER_SAGA_EVENT.as_bytes()).unwrap();
        event.event_type = "saga.escalated".into();
        event.recipient = Some("team-queue".into());
        event.title = Some("rotate the keys".into());
        event.outcome = Some("timed_out".into());
        let event = NotifierEvent::Saga(event);
        let r = on(TASK_SAGAS, b"", None);
        let d = Delivery {
            group: NOTIFIER_GROUP,
            record: &r,
            event: &event,
            span: tracing::Span::none(),
        };
        assert_eq!(handler.handle(&d).await.unwrap(), Handled::Applied);
        assert_eq!(handler.handle(&d).await.unwrap(), Handled::Duplicate);

        let sent = kept.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let n = &sent[0];
        assert_eq!(n.id, Uuid::new_v5(&event.event_id(), b"saga_escalated"));
        assert_eq!(
            (n.kind.as_str(), n.recipient.as_str(), n.channel.as_str()),
            ("saga_escalated", "team-queue", "kept")
        );
        assert_eq!(
            n.message,
            "\"rotate the keys\" needs an owner: bo did not answer in time"
        );
        assert_eq!(
            (n.event_type.as_str(), n.task_id.as_str()),
            ("saga.escalated", "t-1")
        );
        assert_eq!(store.notifications(Some("t-1"), 10).await.unwrap(), sent);
    }

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
