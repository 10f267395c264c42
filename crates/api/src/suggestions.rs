//! `/tasks/{id}/suggestions`: what the triage agent suggested for a task,
//! and the commands that accept or reject a suggestion. The agent only
//! proposes; accepting is the one way a suggestion changes a task, through
//! the Task API's normal write path (a `task.updated` event via the outbox).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use taskstream_domain::TaskId;
use taskstream_store::{SuggestionRecord, SuggestionStore};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::request_id::RequestContext;
use crate::service::SuggestionError;
use crate::tasks::{task_id, task_response};
use crate::{Problem, TaskService};

/// What the suggestion routes share.
#[derive(Clone)]
pub(crate) struct Suggestions {
    tasks: TaskService,
    store: Arc<dyn SuggestionStore>,
}

pub(crate) fn routes(tasks: TaskService, store: Arc<dyn SuggestionStore>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_suggestions))
        .routes(routes!(accept_suggestion))
        .routes(routes!(reject_suggestion))
        .with_state(Suggestions { tasks, store })
}

/// One suggestion of the triage agent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SuggestionItem {
    id: Uuid,
    task_id: String,
    /// The `task.created` event it answers (the causation id of its `task.triage_suggested`).
    event_id: Uuid,
    /// The task's version it was made for; accepting it after the task changed is refused.
    task_version: i64,
    /// `low`, `medium` or `high`; absent when the model has no opinion.
    priority: Option<String>,
    assignee: Option<String>,
    due_at: Option<DateTime<Utc>>,
    /// How sure the model is, 0 to 100.
    confidence: u8,
    /// `local`, or the remote model's name.
    model: String,
    rationale: String,
    /// `pending`, `accepted` or `rejected`.
    status: String,
    created_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl From<SuggestionRecord> for SuggestionItem {
    fn from(s: SuggestionRecord) -> Self {
        Self {
            id: s.id,
            task_id: s.task_id,
            event_id: s.event_id,
            task_version: s.task_version,
            priority: s.priority,
            assignee: s.assignee,
            due_at: s.due_at,
            confidence: s.confidence,
            model: s.model,
            rationale: s.rationale,
            status: s.status.as_str().to_owned(),
            created_at: s.created_at,
            resolved_at: s.resolved_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SuggestionPage {
    items: Vec<SuggestionItem>,
}

impl From<SuggestionError> for Problem {
    fn from(error: SuggestionError) -> Self {
        match error {
            e @ SuggestionError::NotFound { .. } => Problem::not_found(e.to_string()),
            e @ (SuggestionError::Resolved { .. } | SuggestionError::Stale { .. }) => {
                Problem::conflict(e.to_string())
            }
            e @ SuggestionError::Unusable { .. } => Problem::conflict(e.to_string()),
            SuggestionError::Service(e) => e.into(),
        }
    }
}

fn ids(path: Result<Path<(String, String)>, PathRejection>) -> Result<(TaskId, Uuid), Problem> {
    let Path((task, suggestion)) = path.map_err(|e| Problem::not_found(e.body_text()))?;
    let task = task_id(Ok(Path(task)))?;
    let suggestion = suggestion
        .parse()
        .map_err(|_| Problem::not_found(format!("no suggestion with id {suggestion:?}")))?;
    Ok((task, suggestion))
}

/// The triage agent's suggestions for a task, oldest first.
#[utoipa::path(
    get, path = "/tasks/{id}/suggestions", tag = "suggestions",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task's suggestions", body = SuggestionPage),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_suggestions(
    State(s): State<Suggestions>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SuggestionPage>, Problem> {
    let id = task_id(path)?;
    s.tasks.get(id).await?;
    let records = s.store.suggestions(&id.to_string()).await.map_err(|e| {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "reading suggestions failed"
        );
        if e.is_transient() {
            Problem::unavailable("the database did not answer; try again shortly")
        } else {
            Problem::internal()
        }
    })?;
    Ok(Json(SuggestionPage {
        items: records.into_iter().map(SuggestionItem::from).collect(),
    }))
}

/// Accept a suggestion: the task takes its priority, assignee and due
/// date. Emits `task.updated` (nothing when the task has those values already).
#[utoipa::path(
    post, path = "/tasks/{id}/suggestions/{sid}/accept", tag = "suggestions",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("sid" = uuid::Uuid, Path, description = "Suggestion id"),
    ),
    responses(
        (status = 200, description = "The task, changed", body = taskstream_domain::Task, headers(("ETag" = String))),
        (status = 404, description = "No such task or suggestion", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The suggestion was accepted or rejected already, or the task changed since it was made (stale), or the task is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write, or the event schemas are not registered yet; nothing was stored unless the outcome is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The database is out of space; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn accept_suggestion(
    State(s): State<Suggestions>,
    context: RequestContext,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let (id, suggestion) = ids(path)?;
    let task = s
        .tasks
        .accept_suggestion(&*s.store, id, suggestion, &context)
        .await?;
    Ok(task_response(StatusCode::OK, task))
}

/// Reject a suggestion; the task is not changed.
#[utoipa::path(
    post, path = "/tasks/{id}/suggestions/{sid}/reject", tag = "suggestions",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("sid" = uuid::Uuid, Path, description = "Suggestion id"),
    ),
    responses(
        (status = 200, description = "The suggestion, rejected", body = SuggestionItem),
        (status = 404, description = "No such task or suggestion", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The suggestion was accepted or rejected already", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reject_suggestion(
    State(s): State<Suggestions>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<SuggestionItem>, Problem> {
    let (id, suggestion) = ids(path)?;
    let record = s.tasks.reject_suggestion(&*s.store, id, suggestion).await?;
    Ok(Json(record.into()))
}
