//! The saga events on `task-sagas`: one per step, JSON, keyed by saga id,
//! each recorded in the saga's history with the same id.
//!
//! They are not task events (the `task-events` schema does not change):
//! their own topic, their own content type, their own shape.
//!
//! The steps someone must hear about carry what the notification service
//! needs to tell them ([`SagaEvent::recipient`] and the fields beside it):
//! `saga.acceptance_requested` is announced to the assignee,
//! `saga.escalated` to the team queue. The saga writes no notification
//! itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskstream_store::{NewSagaStep, OutboxMessage, SagaState};
use uuid::Uuid;

use crate::topics::TASK_SAGAS;
use crate::EncodingError;

/// The `content-type` of saga events.
pub const SAGA_CONTENT_TYPE: &str = "application/vnd.taskstream.saga+json";

/// The outbox's aggregate type of saga events.
pub const SAGA_AGGREGATE: &str = "saga";

/// One saga event as it travels on `task-sagas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// Also the `id` header and the history step's `event_id`.
    pub id: Uuid,
    /// `saga.<step>`: `saga.started`, `saga.acceptance_requested`,
    /// `saga.accepted`, `saga.declined`, `saga.timed_out`,
    /// `saga.capacity_exceeded`, `saga.unassigned`,
    /// `saga.capacity_released`, `saga.nothing_to_undo`, `saga.escalated`, `saga.superseded`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub saga_id: Uuid,
    pub task_id: String,
    pub assignee: String,
    /// The saga's state after the step.
    pub state: String,
    pub detail: Option<String>,
    pub time: DateTime<Utc>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// Who the step is announced to: the assignee on
    /// `saga.acceptance_requested`, the team queue on `saga.escalated`;
    /// absent on other steps. Events written before saga events carried it
    /// were announced by the saga itself, and have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The task's title, on an announced step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Until when the assignee may answer, on `saga.acceptance_requested`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    /// Why the task is escalated (the saga's outcome: `declined`,
    /// `timed_out`, `capacity_exceeded`), on `saga.escalated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl SagaEvent {
    /// The saga event in a record value (JSON; unknown fields are ignored,
    /// missing optional ones are `None`).
    pub fn decode(bytes: &[u8]) -> Result<Self, EncodingError> {
        serde_json::from_slice(bytes).map_err(EncodingError::Saga)
    }
}

/// What an announced step tells its recipient (see [`SagaEvent::recipient`]).
#[derive(Debug, Clone)]
pub struct Announcement {
    pub recipient: String,
    pub title: String,
    pub deadline_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

/// What every step of one saga shares.
#[derive(Debug, Clone)]
pub struct SagaRef {
    pub id: Uuid,
    pub task_id: String,
    pub assignee: String,
    pub correlation_id: Option<String>,
}

impl From<&taskstream_store::Saga> for SagaRef {
    fn from(s: &taskstream_store::Saga) -> Self {
        Self {
            id: s.id,
            task_id: s.task_id.clone(),
            assignee: s.assignee.clone(),
            correlation_id: s.correlation_id.clone(),
        }
    }
}

/// Steps being recorded, each caused by the one before (the first by
/// `causation`), with their saga events for the outbox.
pub struct Steps<'a> {
    saga: &'a SagaRef,
    at: DateTime<Utc>,
    causation: Option<String>,
    pub steps: Vec<NewSagaStep>,
    pub outbox: Vec<OutboxMessage>,
}

impl<'a> Steps<'a> {
    pub fn new(saga: &'a SagaRef, at: DateTime<Utc>, causation: Option<String>) -> Self {
        Self {
            saga,
            at,
            causation,
            steps: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// Records step `step` leaving the saga in `state`; returns its event id.
    pub fn push(&mut self, step: &str, state: SagaState, detail: Option<String>) -> Uuid {
        self.push_event(step, state, detail, None)
    }

    /// Records step `step` like [`Steps::push`], with what announcing it
    /// takes.
    pub fn announce(
        &mut self,
        step: &str,
        state: SagaState,
        detail: Option<String>,
        announcement: Announcement,
    ) -> Uuid {
        self.push_event(step, state, detail, Some(announcement))
    }

    fn push_event(
        &mut self,
        step: &str,
        state: SagaState,
        detail: Option<String>,
        announcement: Option<Announcement>,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let (recipient, title, deadline_at, outcome) = match announcement {
            Some(a) => (Some(a.recipient), Some(a.title), a.deadline_at, a.outcome),
            None => (None, None, None, None),
        };
        let event = SagaEvent {
            id,
            event_type: format!("saga.{step}"),
            saga_id: self.saga.id,
            task_id: self.saga.task_id.clone(),
            assignee: self.saga.assignee.clone(),
            state: state.as_str().to_owned(),
            detail: detail.clone(),
            time: self.at,
            correlation_id: self.saga.correlation_id.clone(),
            causation_id: self.causation.clone(),
            recipient,
            title,
            deadline_at,
            outcome,
        };
        self.outbox.push(OutboxMessage {
            id,
            aggregate_type: SAGA_AGGREGATE.to_owned(),
            aggregate_id: self.saga.id.to_string(),
            event_type: event.event_type.clone(),
            topic: TASK_SAGAS.to_owned(),
            payload: serde_json::to_vec(&event).expect("a saga event serialises"),
            content_type: SAGA_CONTENT_TYPE.to_owned(),
            traceparent: None,
            created_at: self.at,
        });
        self.steps.push(NewSagaStep {
            step: step.to_owned(),
            state,
            detail,
            event_id: id,
            causation_id: self.causation.replace(id.to_string()),
            at: self.at,
        });
        id
    }

    /// The id of the latest step's event (what the next step is caused by).
    pub fn last_event(&self) -> Option<&str> {
        self.causation.as_deref()
    }
}
