//! The orchestrator, its compensation and the assignee's answers on a real
//! store, with the task changing hands before the orchestrator has read the
//! change (the window in which only the store can tell).

use std::sync::Arc;

use taskstream_domain::{
    Assignee, Cause, NewTask, Priority, Task, TaskChange, TaskPatch, TaskTitle,
};
use taskstream_store::{
    NotificationStore, OutboxStore, SagaState, SagaStore, SqliteOptions, SqliteStore, TaskStore,
};
use tokio::sync::Notify;

use super::events::SagaEvent;
use super::orchestrator::SagaBackend;
use super::*;
use crate::consumer::fixtures::{delivery, record};
use crate::topics::TASK_EVENTS;
use crate::NotificationHandler;
use crate::{EventEncoding, EventHandler};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    orchestrator: SagaOrchestrator,
    compensator: Arc<Compensator>,
    commands: SagaCommands,
    offset: std::sync::atomic::AtomicI64,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("saga.db"), &SqliteOptions::default())
                .await
                .unwrap(),
        );
        let backend: Arc<dyn SagaBackend> = store.clone();
        let wake = Arc::new(Notify::new());
        let compensator = Arc::new(Compensator::new(
            Arc::clone(&backend),
            EventEncoding::Json,
            SagaSettings::default(),
            Arc::clone(&wake),
        ));
        Self {
            orchestrator: SagaOrchestrator::new(backend, Arc::clone(&compensator)),
            compensator,
            commands: SagaCommands::new(store.clone(), Arc::new(Notify::new()), wake),
            store,
            _dir: dir,
            offset: Default::default(),
        }
    }

    fn message(change: &TaskChange) -> taskstream_store::OutboxMessage {
        EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                TASK_EVENTS,
                None,
            )
            .unwrap()
    }

    /// Creates a task assigned to `assignee`; the orchestrator reads its event.
    async fn assigned(&self, assignee: &str) -> Task {
        let change = Task::create(
            NewTask {
                title: TaskTitle::parse("rotate the keys").unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: Some(Assignee::parse(assignee).unwrap()),
            },
            taskstream_domain::now(),
            Cause::default(),
        );
        self.store
            .insert_task(&change.task, &Self::message(&change))
            .await
            .unwrap();
        self.read(&change).await;
        change.task
    }

    /// Writes `patch` as the Task API would; returns the change, which the
    /// orchestrator has not read.
    async fn patch(&self, task: &Task, patch: TaskPatch) -> TaskChange {
        let change = task
            .update(patch, taskstream_domain::now(), Cause::default())
            .unwrap()
            .unwrap();
        self.store
            .save_task(&change.task, task.version, &Self::message(&change))
            .await
            .unwrap();
        change
    }

    async fn assign(&self, task: &Task, assignee: Option<&str>) -> TaskChange {
        let patch = TaskPatch {
            assignee: Some(assignee.map(|a| Assignee::parse(a).unwrap())),
            ..TaskPatch::default()
        };
        self.patch(task, patch).await
    }

    /// The orchestrator reads the change's event.
    async fn read(&self, change: &TaskChange) {
        let offset = self
            .offset
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = record(offset);
        self.orchestrator
            .handle(&delivery(SAGA_GROUP, &r, &change.event))
            .await
            .unwrap();
    }

    async fn saga(&self, task: &Task) -> taskstream_store::Saga {
        self.store
            .latest_saga_for_task(&task.id.to_string())
            .await
            .unwrap()
            .unwrap()
    }

    async fn task(&self, task: &Task) -> Task {
        self.store.task(task.id).await.unwrap().unwrap()
    }

    /// The saga events waiting in the outbox, in order.
    async fn saga_events(&self) -> Vec<SagaEvent> {
        let lease = self.store.acquire_lease("test").await.unwrap().unwrap();
        self.store
            .pending(&lease, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.message.topic == crate::topics::TASK_SAGAS)
            .map(|p| SagaEvent::decode(&p.message.payload).unwrap())
            .collect()
    }

    async fn steps(&self, saga: &taskstream_store::Saga) -> Vec<String> {
        self.store
            .saga_history(saga.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.step)
            .collect()
    }
}

#[tokio::test]
async fn an_answer_from_an_assignee_the_task_was_taken_from_is_refused_until_the_new_saga_asks() {
    let f = Fixture::new().await;
    let task = f.assigned("bo").await;
    let asked = f.saga(&task).await;
    assert_eq!(asked.state, SagaState::AwaitingAcceptance);
    let moved = f.assign(&task, Some("al")).await;

    let tid = task.id.to_string();
    for decision in [SagaDecision::Accept, SagaDecision::Decline] {
        let refused = f.commands.decide(&tid, decision, None).await.unwrap_err();
        assert!(
            matches!(refused, SagaCommandError::NotAssigned { .. }),
            "{refused}"
        );
        let why = refused.to_string();
        assert!(
            why.contains("asked bo") && why.contains("reassigned to al (version 2)"),
            "{why}"
        );
    }
    let untouched = f.store.saga(asked.id).await.unwrap().unwrap();
    assert_eq!(untouched.state, SagaState::AwaitingAcceptance);
    assert_eq!(f.task(&task).await, moved.task);

    // Once the orchestrator reads the reassignment, bo's saga is superseded
    // and al's asks: al's answer counts.
    f.read(&moved).await;
    let superseded = f.store.saga(asked.id).await.unwrap().unwrap();
    assert_eq!(superseded.state, SagaState::Superseded);
    let (accepted, changed) = f
        .commands
        .decide(&tid, SagaDecision::Accept, None)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(
        (accepted.assignee.as_str(), accepted.state),
        ("al", SagaState::Completed)
    );
}

#[tokio::test]
async fn an_answer_to_the_saga_of_an_assignment_made_again_to_the_same_person_is_refused() {
    let f = Fixture::new().await;
    let task = f.assigned("bo").await;
    let old = f.saga(&task).await;
    let unassigned = f.assign(&task, None).await;
    let again = f.assign(&unassigned.task, Some("bo")).await;

    let refused = f
        .commands
        .decide(&task.id.to_string(), SagaDecision::Accept, None)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("assigned to bo again at version 3"),
        "{refused}"
    );
    assert_eq!(
        f.store.saga(old.id).await.unwrap().unwrap().state,
        SagaState::AwaitingAcceptance
    );
    assert_eq!(f.task(&task).await, again.task);
}

#[tokio::test]
async fn a_late_compensation_leaves_a_new_assignment_to_the_same_person_alone() {
    let f = Fixture::new().await;
    let task = f.assigned("bo").await;
    let tid = task.id.to_string();
    let (declined, _) = f
        .commands
        .decide(&tid, SagaDecision::Decline, None)
        .await
        .unwrap();
    assert_eq!(declined.state, SagaState::Compensating);
    // Before the timer compensates, the task is unassigned and given to bo
    // again: a new assignment, which the declined saga did not make.
    let unassigned = f.assign(&task, None).await;
    let again = f.assign(&unassigned.task, Some("bo")).await;

    assert!(f.compensator.compensate(declined.id).await.unwrap());
    assert_eq!(f.task(&task).await, again.task, "bo keeps the task");
    let done = f.store.saga(declined.id).await.unwrap().unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert!(!done.holds_capacity);
    let steps = f.steps(&done).await;
    assert_eq!(steps.last().map(String::as_str), Some("capacity_released"));
    assert!(!steps.iter().any(|s| s == "unassigned" || s == "escalated"));
    // Only the request to accept is announced: no escalation.
    let announced: Vec<_> = f
        .saga_events()
        .await
        .into_iter()
        .filter_map(|e| Some((e.event_type, e.recipient?)))
        .collect();
    assert_eq!(
        announced,
        [("saga.acceptance_requested".to_owned(), "bo".to_owned())]
    );
}

#[tokio::test]
async fn the_steps_to_announce_carry_what_the_notifier_needs_and_the_saga_notifies_no_one_itself() {
    let f = Fixture::new().await;
    let task = f.assigned("bo").await;
    let tid = task.id.to_string();
    let (declined, _) = f
        .commands
        .decide(&tid, SagaDecision::Decline, None)
        .await
        .unwrap();
    assert!(f.compensator.compensate(declined.id).await.unwrap());

    let events = f.saga_events().await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "saga.started",
            "saga.acceptance_requested",
            "saga.declined",
            "saga.unassigned",
            "saga.capacity_released",
            "saga.escalated"
        ]
    );
    let asked = &events[1];
    assert_eq!(asked.recipient.as_deref(), Some("bo"));
    assert_eq!(asked.title.as_deref(), Some("rotate the keys"));
    // The default accept timeout is a day.
    assert_eq!(
        asked.deadline_at,
        Some(asked.time + chrono::Duration::days(1))
    );
    let escalated = &events[5];
    assert_eq!(escalated.recipient.as_deref(), Some("team-queue"));
    assert_eq!(escalated.title.as_deref(), Some("rotate the keys"));
    assert_eq!(escalated.outcome.as_deref(), Some("declined"));
    for other in [&events[0], &events[2], &events[3], &events[4]] {
        assert_eq!(other.recipient, None, "{}", other.event_type);
    }

    // The notifier tells the assignee and the team queue; the saga's own
    // transactions recorded no notification.
    let told: Vec<_> = events
        .iter()
        .flat_map(NotificationHandler::saga_notifications_for)
        .collect();
    assert_eq!(told.len(), 2);
    assert_eq!(
        (told[0].0, told[0].1.as_str()),
        ("saga_acceptance_requested", "bo")
    );
    assert!(
        told[0].2.contains("\"rotate the keys\" by ")
            && told[0].2.contains(&format!("/tasks/{tid}/accept")),
        "{}",
        told[0].2
    );
    assert_eq!(
        told[1],
        (
            "saga_escalated",
            "team-queue".to_owned(),
            "\"rotate the keys\" needs an owner: bo declined it".to_owned()
        )
    );
    assert!(f
        .store
        .notifications(Some(&tid), 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_compensation_still_undoes_its_assignment_after_other_edits() {
    let f = Fixture::new().await;
    let task = f.assigned("bo").await;
    let renamed = f
        .patch(
            &task,
            TaskPatch {
                title: Some(TaskTitle::parse("rotate the keys today").unwrap()),
                ..TaskPatch::default()
            },
        )
        .await;
    let (declined, _) = f
        .commands
        .decide(&task.id.to_string(), SagaDecision::Decline, None)
        .await
        .unwrap();
    assert!(f.compensator.compensate(declined.id).await.unwrap());
    let now = f.task(&task).await;
    assert_eq!(now.version, renamed.task.version + 2);
    assert_eq!(now.assignee.unwrap().as_str(), "team-queue");
    let steps = f.steps(&f.saga(&task).await).await;
    assert!(steps.ends_with(&[
        "unassigned".to_owned(),
        "capacity_released".to_owned(),
        "escalated".to_owned()
    ]));
}
