//! `/sagas/{id}` and the assignee's answers, `POST /tasks/{id}/accept` and
//! `POST /tasks/{id}/decline` (see `taskstream_services::saga`).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use taskstream_domain::TaskId;
use taskstream_services::saga::{SagaCommandError, SagaCommands, SagaDecision};
use taskstream_store::{Saga, SagaStep};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::request_id::RequestContext;
use crate::Problem;

pub(crate) fn routes(commands: SagaCommands) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_saga))
        .routes(routes!(accept_task))
        .routes(routes!(decline_task))
        .with_state(commands)
}

/// Where a saga is: `awaiting_acceptance`, `compensating`, `completed`,
/// `compensated` or `superseded`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaView {
    id: Uuid,
    task_id: String,
    assignee: String,
    /// `awaiting_acceptance`, `compensating`, `completed` (accepted),
    /// `compensated` (unassigned and escalated) or `superseded`.
    state: String,
    /// Why it ended or compensates: `accepted`, `declined`, `timed_out`,
    /// `capacity_exceeded`, `superseded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    /// Whether it counts against the assignee's capacity.
    holds_capacity: bool,
    /// When the saga acts next by itself (the acceptance deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_at: Option<DateTime<Utc>>,
    /// The `task.created` or `task.updated` event that started it.
    trigger_event_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// `/tasks/{task_id}`.
    task: String,
    /// Every step in order.
    history: Vec<SagaStepView>,
}

/// One step of a saga.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaStepView {
    seq: i64,
    /// `started`, `acceptance_requested`, `accepted`, `declined`,
    /// `timed_out`, `capacity_exceeded`, `unassigned`, `capacity_released`, `nothing_to_undo`,
    /// `escalated`, `superseded`.
    step: String,
    /// The saga's state after the step.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The id of the step's event on `task-sagas`.
    event_id: Uuid,
    /// What caused it: a task event's id, the previous step's event id, or
    /// the request id of an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<String>,
    at: DateTime<Utc>,
}

impl SagaView {
    fn new(saga: Saga, history: Vec<SagaStep>) -> Self {
        Self {
            task: format!("/tasks/{}", saga.task_id),
            id: saga.id,
            task_id: saga.task_id,
            assignee: saga.assignee,
            state: saga.state.to_string(),
            outcome: saga.outcome,
            holds_capacity: saga.holds_capacity,
            deadline_at: saga.deadline_at,
            trigger_event_id: saga.trigger_event_id,
            correlation_id: saga.correlation_id,
            version: saga.version,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
            history: history
                .into_iter()
                .map(|s| SagaStepView {
                    seq: s.seq,
                    step: s.step,
                    state: s.state.to_string(),
                    detail: s.detail,
                    event_id: s.event_id,
                    causation_id: s.causation_id,
                    at: s.at,
                })
                .collect(),
        }
    }
}

/// The link from a task to its current (or last) saga, in `GET /tasks/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SagaLink {
    id: Uuid,
    state: String,
    /// `/sagas/{id}`.
    href: String,
}

impl From<&Saga> for SagaLink {
    fn from(saga: &Saga) -> Self {
        Self {
            id: saga.id,
            state: saga.state.to_string(),
            href: format!("/sagas/{}", saga.id),
        }
    }
}

fn store_problem(e: &taskstream_store::StoreError) -> Problem {
    if e.is_transient() {
        Problem::from_store(e)
    } else {
        tracing::error!(error = e as &dyn std::error::Error, "saga request failed");
        Problem::internal()
    }
}

impl From<SagaCommandError> for Problem {
    fn from(e: SagaCommandError) -> Self {
        match e {
            e @ SagaCommandError::NoTask(_) => Problem::not_found(e.to_string()),
            // The task exists; it is its state that has no question to answer.
            e @ (SagaCommandError::NoSaga(_)
            | SagaCommandError::NotWaiting(_)
            | SagaCommandError::DeadlinePassed(_)
            | SagaCommandError::NotAssigned { .. }) => Problem::conflict(e.to_string()),
            e @ SagaCommandError::Contended => Problem::unavailable(e.to_string()),
            SagaCommandError::Store(e) => store_problem(&e),
        }
    }
}

async fn view(commands: &SagaCommands, saga: Saga) -> Result<SagaView, Problem> {
    let history = commands
        .store()
        .saga_history(saga.id)
        .await
        .map_err(|e| store_problem(&e))?;
    Ok(SagaView::new(saga, history))
}

/// A saga: its state and its history.
#[utoipa::path(
    get, path = "/sagas/{id}", tag = "sagas",
    params(("id" = Uuid, Path, description = "Saga id")),
    responses(
        (status = 200, description = "The saga", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_saga(
    State(commands): State<SagaCommands>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SagaView>, Problem> {
    let Path(raw) = path.map_err(|e| Problem::not_found(e.body_text()))?;
    let id = Uuid::parse_str(&raw)
        .map_err(|_| Problem::not_found(format!("no saga with id {raw:?}")))?;
    let saga = commands
        .store()
        .saga(id)
        .await
        .map_err(|e| store_problem(&e))?
        .ok_or_else(|| Problem::not_found(format!("no saga with id {id}")))?;
    Ok(Json(view(&commands, saga).await?))
}

async fn decide(
    commands: SagaCommands,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    decision: SagaDecision,
) -> Result<Json<SagaView>, Problem> {
    let Path(raw) = path.map_err(|e| Problem::not_found(e.body_text()))?;
    let id: TaskId = raw
        .parse()
        .map_err(|_| Problem::not_found(format!("no task with id {raw:?}")))?;
    let (saga, _changed) = commands
        .decide(&id.to_string(), decision, Some(&context.request_id))
        .await?;
    Ok(Json(view(&commands, saga).await?))
}

/// Accept the task's assignment: its saga completes. Repeating an accept
/// changes nothing and answers the same.
#[utoipa::path(
    post, path = "/tasks/{id}/accept", tag = "sagas",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The saga after the answer", body = SagaView),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task has no saga, or its saga no longer waits for an answer (declined, timed out, over capacity, superseded), or the task was reassigned, unassigned, assigned again, completed or deleted since the saga asked", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn accept_task(
    State(commands): State<SagaCommands>,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
) -> Result<Json<SagaView>, Problem> {
    decide(commands, path, context, SagaDecision::Accept).await
}

/// Decline the task's assignment: its saga compensates (the task is
/// unassigned and escalated to the team queue). Repeating a decline
/// changes nothing and answers the same.
#[utoipa::path(
    post, path = "/tasks/{id}/decline", tag = "sagas",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The saga after the answer", body = SagaView),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task has no saga, or its saga no longer waits for an answer (accepted, timed out, over capacity, superseded), or the task was reassigned, unassigned, assigned again, completed or deleted since the saga asked", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn decline_task(
    State(commands): State<SagaCommands>,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
) -> Result<Json<SagaView>, Problem> {
    decide(commands, path, context, SagaDecision::Decline).await
}
