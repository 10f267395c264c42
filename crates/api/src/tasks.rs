//! `/tasks`: create, read, list, change, complete and delete tasks.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskstream_domain::{
    Assignee, Description, FieldError, NewTask, Priority, Task, TaskId, TaskPatch, TaskStatus,
    TaskTitle, TransitionError,
};
use taskstream_store::TaskQuery;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{double_option, JsonBody};
use crate::request_id::RequestContext;
use crate::sagas::SagaLink;
use crate::{FieldProblem, Problem, ServiceError, TaskService};

/// Routes under `/tasks`.
pub(crate) fn routes(service: TaskService) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, update_task, delete_task))
        .routes(routes!(complete_task))
        .with_state(service)
}

/// The body of `POST /tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTaskRequest {
    /// Required; 1 to 200 characters after trimming whitespace and
    /// invisible characters.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    title: Option<String>,
    /// Up to 5000 characters after trimming.
    #[schema(max_length = 5000)]
    description: Option<String>,
    /// `low`, `medium` (the default) or `high`.
    #[schema(value_type = Option<Priority>)]
    priority: Option<String>,
    /// When the task is due, RFC 3339 (`2026-12-01T17:00:00Z`).
    #[schema(value_type = Option<DateTime<Utc>>)]
    due_at: Option<String>,
    /// Who the task is assigned to; 1 to 100 characters after trimming.
    #[schema(min_length = 1, max_length = 100)]
    assignee: Option<String>,
}

/// The body of `PATCH /tasks/{id}`: only the fields present change; `null`
/// clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTaskRequest {
    /// 1 to 200 characters after trimming; cannot be cleared.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 200)]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 5000)]
    description: Option<Option<String>>,
    /// Cannot be cleared.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Priority, required = false)]
    priority: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>, nullable)]
    due_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 100)]
    assignee: Option<Option<String>>,
}

/// Query parameters of `GET /tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListTasksParams {
    /// `open`, `completed` or `deleted`; by default every task not deleted.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    cursor: Option<String>,
}

/// A page of tasks, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskPage {
    items: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

struct Validator(Vec<FieldProblem>);

impl Validator {
    fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        result
            .map_err(|e| {
                self.0.push(FieldProblem {
                    field: e.field.to_owned(),
                    message: e.message,
                })
            })
            .ok()
    }

    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldProblem {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Problem> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(Problem::validation(self.0))
        }
    }
}

fn parse_priority(raw: &str) -> Result<Priority, FieldError> {
    Priority::parse(raw).ok_or_else(|| FieldError {
        field: "priority",
        message: format!("must be one of low, medium, high; got {raw:?}"),
    })
}

fn parse_due_at(raw: &str) -> Result<DateTime<Utc>, FieldError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| FieldError {
            field: "due_at",
            message: format!(
                "must be an RFC 3339 date-time such as 2026-12-01T17:00:00Z; got {raw:?}"
            ),
        })
}

impl CreateTaskRequest {
    fn validate(self) -> Result<NewTask, Problem> {
        let mut v = Validator(Vec::new());
        let title = match self.title {
            Some(raw) => v.check(TaskTitle::parse(&raw)),
            None => {
                v.fail("title", "is required");
                None
            }
        };
        let description = self.description.map(|d| v.check(Description::parse(&d)));
        let priority = self.priority.map(|p| v.check(parse_priority(&p)));
        let due_at = self.due_at.map(|d| v.check(parse_due_at(&d)));
        let assignee = self.assignee.map(|a| v.check(Assignee::parse(&a)));
        v.finish(|| NewTask {
            title: title.expect("checked"),
            description: description.flatten(),
            priority: priority.flatten().unwrap_or_default(),
            due_at: due_at.flatten(),
            assignee: assignee.flatten(),
        })
    }
}

impl UpdateTaskRequest {
    fn validate(self) -> Result<TaskPatch, Problem> {
        let mut v = Validator(Vec::new());
        let title = match self.title {
            Some(Some(raw)) => v.check(TaskTitle::parse(&raw)),
            Some(None) => {
                v.fail("title", "cannot be null");
                None
            }
            None => None,
        };
        let priority = match self.priority {
            Some(Some(raw)) => v.check(parse_priority(&raw)),
            Some(None) => {
                v.fail("priority", "cannot be null");
                None
            }
            None => None,
        };
        let description = self
            .description
            .map(|d| d.map(|d| v.check(Description::parse(&d))));
        let due_at = self.due_at.map(|d| d.map(|d| v.check(parse_due_at(&d))));
        let assignee = self
            .assignee
            .map(|a| a.map(|a| v.check(Assignee::parse(&a))));
        v.finish(|| TaskPatch {
            title,
            description: description.map(Option::flatten),
            priority,
            due_at: due_at.map(Option::flatten),
            assignee: assignee.map(Option::flatten),
        })
    }
}

pub(crate) fn task_id(path: Result<Path<String>, PathRejection>) -> Result<TaskId, Problem> {
    let Path(raw) = path.map_err(|e| Problem::not_found(e.body_text()))?;
    raw.parse()
        .map_err(|_| Problem::not_found(format!("no task with id {raw:?}")))
}

/// An `If-Match` precondition (RFC 9110, section 13.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfMatch {
    /// `*`: any current version.
    Any,
    /// The versions named by strong entity tags. Weak tags (`W/"3"`) and
    /// tags that are no version of ours never match: If-Match compares
    /// strongly, octet by octet, so this may be empty.
    Versions(Vec<i64>),
}

/// Parses `*` or a comma-separated list of entity tags.
fn parse_if_match(raw: &str) -> Result<IfMatch, String> {
    const OWS: [char; 2] = [' ', '\t'];
    let raw = raw.trim_matches(OWS);
    if raw == "*" {
        return Ok(IfMatch::Any);
    }
    let mut versions = Vec::new();
    let mut tags = 0;
    let mut rest = raw;
    loop {
        // Empty list elements are allowed (RFC 9110, section 5.6.1).
        rest = rest.trim_start_matches(|c: char| OWS.contains(&c) || c == ',');
        if rest.is_empty() {
            break;
        }
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        let opaque = tag
            .strip_prefix('"')
            .ok_or("an entity tag is a quoted string such as \"3\"")?;
        let end = opaque
            .find('"')
            .ok_or("an entity tag is missing its closing quote")?;
        let (opaque, after) = (&opaque[..end], &opaque[end + 1..]);
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return Err("an entity tag holds a character it may not".to_owned());
        }
        rest = after.trim_start_matches(OWS);
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err("entity tags are separated by commas".to_owned());
        }
        tags += 1;
        let version = opaque
            .parse::<i64>()
            .ok()
            .filter(|v| v.to_string() == opaque);
        if let (false, Some(version)) = (weak, version) {
            versions.push(version);
        }
    }
    if tags == 0 {
        return Err("If-Match names no entity tag".to_owned());
    }
    Ok(IfMatch::Versions(versions))
}

/// Reads the `If-Match` fields, if any (several fields form one list).
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, Problem> {
    let mut values = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        values.push(
            value
                .to_str()
                .map_err(|_| Problem::bad_request("If-Match is not valid text"))?,
        );
    }
    if values.is_empty() {
        return Ok(None);
    }
    let raw = values.join(", ");
    parse_if_match(&raw).map(Some).map_err(|reason| {
        Problem::bad_request(format!(
            "If-Match must be * or entity tags such as \"3\" ({reason}); got {raw:?}"
        ))
    })
}

/// The version a change must find, from a parsed `If-Match`: none without
/// a precondition or with `*`. A list naming several versions is resolved
/// against the current one (the change then still requires that version,
/// so a concurrent write makes it fail, not slip through); one naming none
/// that could match fails at once.
async fn expected_version(
    service: &TaskService,
    id: TaskId,
    precondition: Option<IfMatch>,
) -> Result<Option<i64>, Problem> {
    let versions = match precondition {
        None | Some(IfMatch::Any) => return Ok(None),
        Some(IfMatch::Versions(versions)) => versions,
    };
    if let [only] = versions.as_slice() {
        return Ok(Some(*only));
    }
    let current = service.get(id).await?.version;
    if versions.contains(&current) {
        return Ok(Some(current));
    }
    Err(Problem::precondition_failed(format!(
        "the task is at version {current} (ETag \"{current}\"), which If-Match does not name \
         as a strong entity tag; weak tags such as W/\"{current}\" never match If-Match"
    )))
}

/// A task response with its `ETag` (the version).
pub(crate) fn task_response(status: StatusCode, task: Task) -> Response {
    let mut response = (status, Json(&task)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", task.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", task.id)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    response
}

impl From<ServiceError> for Problem {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound(id) => Problem::not_found(format!("no task with id {id}")),
            ServiceError::Transition(TransitionError::AlreadyCompleted) => {
                Problem::conflict("the task is already completed")
            }
            ServiceError::Transition(TransitionError::Deleted) => {
                Problem::conflict("the task is deleted")
            }
            e @ ServiceError::VersionMismatch { .. } => Problem::precondition_failed(e.to_string()),
            e @ ServiceError::Contended => Problem::unavailable(e.to_string()),
            ServiceError::OutcomeUnknown(id) => Problem::outcome_unknown(id),
            ServiceError::Store(e) if e.is_transient() => {
                tracing::warn!(error = &e as &dyn std::error::Error, "task write refused");
                Problem::from_store(&e)
            }
            ServiceError::Encoding(e) if e.is_retriable() => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "task write refused: the event schemas are not registered"
                );
                Problem::schemas_unregistered()
            }
            e @ (ServiceError::Encoding(_) | ServiceError::Store(_)) => {
                tracing::error!(error = &e as &dyn std::error::Error, "task command failed");
                Problem::internal()
            }
        }
    }
}

/// Create a task. Emits `task.created`.
#[utoipa::path(
    post, path = "/tasks", tag = "tasks",
    request_body = CreateTaskRequest,
    responses(
        (status = 201, description = "The task was created", body = Task,
            headers(("Location" = String, description = "The new task's URL"), ("ETag" = String))),
        (status = 400, description = "Malformed JSON or a field of the wrong type", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write (unreachable, locked, timed out), the event schemas are not registered with the schema registry yet (Avro), or the outcome of its commit is unknown; nothing was stored unless the outcome is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The database is out of space; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_task(
    State(service): State<TaskService>,
    context: RequestContext,
    JsonBody(body): JsonBody<CreateTaskRequest>,
) -> Result<Response, Problem> {
    let new = body.validate()?;
    let task = service.create(new, &context).await?;
    Ok(task_response(StatusCode::CREATED, task))
}

/// List tasks, a page at a time.
#[utoipa::path(
    get, path = "/tasks", tag = "tasks",
    params(ListTasksParams),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter failed validation", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_tasks(
    State(service): State<TaskService>,
    params: Result<Query<ListTasksParams>, QueryRejection>,
) -> Result<Json<TaskPage>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let mut v = Validator(Vec::new());
    let status = params.status.as_deref().and_then(|s| {
        let parsed = TaskStatus::parse(s);
        if parsed.is_none() {
            v.fail(
                "status",
                format!("must be one of open, completed, deleted; got {s:?}"),
            );
        }
        parsed
    });
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        v.fail("limit", format!("must be between 1 and 200; got {limit}"));
    }
    let after = params.cursor.as_deref().and_then(|c| {
        let parsed = c.parse::<TaskId>().ok();
        if parsed.is_none() {
            v.fail("cursor", "is not a cursor this API returned");
        }
        parsed
    });
    // One extra row tells whether another page follows.
    let query = v.finish(|| TaskQuery {
        status,
        after,
        limit: limit + 1,
    })?;
    let mut items = service.list(&query).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|t| t.id.to_string())
    } else {
        None
    };
    Ok(Json(TaskPage { items, next_cursor }))
}

/// Get one task (deleted tasks are returned with status `deleted`).
#[utoipa::path(
    get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task, with a link to its current or last assignment saga when it has one", body = TaskWithSaga, headers(("ETag" = String))),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_task(
    State(service): State<TaskService>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = task_id(path)?;
    let task = service.get(id).await?;
    let Some(saga) = service.saga_of(id).await? else {
        return Ok(task_response(StatusCode::OK, task));
    };
    let version = task.version;
    let mut response = Json(TaskWithSaga {
        task,
        saga: Some(SagaLink::from(&saga)),
    })
    .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// A task and, additively, the link to its assignment saga.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskWithSaga {
    #[serde(flatten)]
    task: Task,
    /// The task's current or last assignment saga (absent when it never had one).
    #[serde(skip_serializing_if = "Option::is_none")]
    saga: Option<SagaLink>,
}

/// Change some of a task's fields. Emits `task.updated` when anything changed.
#[utoipa::path(
    patch, path = "/tasks/{id}", tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^([ \t]*\*[ \t]*|[ \t,]*(W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*[ \t]*(,[ \t,]*)?)$"#,
            description = "Only apply if one of these entity tags is the task's ETag (`*`: any); compared strongly, so weak tags (`W/\"3\"`) never match"),
    ),
    request_body = UpdateTaskRequest,
    responses(
        (status = 200, description = "The task after the change", body = Task, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or a field of the wrong type", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write (unreachable, locked, timed out), the event schemas are not registered with the schema registry yet (Avro), or the outcome of its commit is unknown; nothing was stored unless the outcome is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The database is out of space; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_task(
    State(service): State<TaskService>,
    context: RequestContext,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateTaskRequest>,
) -> Result<Response, Problem> {
    let id = task_id(path)?;
    let precondition = if_match(&headers)?;
    let patch = body.validate()?;
    let if_version = expected_version(&service, id, precondition).await?;
    let task = service.update(id, patch, if_version, &context).await?;
    Ok(task_response(StatusCode::OK, task))
}

/// Mark a task completed. Emits `task.completed`.
#[utoipa::path(
    post, path = "/tasks/{id}/complete", tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^([ \t]*\*[ \t]*|[ \t,]*(W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*[ \t]*(,[ \t,]*)?)$"#,
            description = "Only apply if one of these entity tags is the task's ETag (`*`: any); compared strongly, so weak tags (`W/\"3\"`) never match"),
    ),
    responses(
        (status = 200, description = "The completed task", body = Task, headers(("ETag" = String))),
        (status = 400, description = "A malformed If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already completed, or deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write (unreachable, locked, timed out), the event schemas are not registered with the schema registry yet (Avro), or the outcome of its commit is unknown; nothing was stored unless the outcome is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The database is out of space; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn complete_task(
    State(service): State<TaskService>,
    context: RequestContext,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = task_id(path)?;
    let if_version = expected_version(&service, id, if_match(&headers)?).await?;
    let task = service.complete(id, if_version, &context).await?;
    Ok(task_response(StatusCode::OK, task))
}

/// Delete a task; it remains readable with status `deleted`. Emits `task.deleted`.
#[utoipa::path(
    delete, path = "/tasks/{id}", tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^([ \t]*\*[ \t]*|[ \t,]*(W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*[ \t]*(,[ \t,]*)?)$"#,
            description = "Only apply if one of these entity tags is the task's ETag (`*`: any); compared strongly, so weak tags (`W/\"3\"`) never match"),
    ),
    responses(
        (status = 200, description = "The deleted task", body = Task),
        (status = 400, description = "A malformed If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not take the write (unreachable, locked, timed out), the event schemas are not registered with the schema registry yet (Avro), or the outcome of its commit is unknown; nothing was stored unless the outcome is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The database is out of space; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_task(
    State(service): State<TaskService>,
    context: RequestContext,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = task_id(path)?;
    let if_version = expected_version(&service, id, if_match(&headers)?).await?;
    let task = service.delete(id, if_version, &context).await?;
    Ok(task_response(StatusCode::OK, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strongly_and_reads_lists() {
        use IfMatch::*;
        assert_eq!(parse_if_match("*"), Ok(Any));
        assert_eq!(parse_if_match(" \"3\" "), Ok(Versions(vec![3])));
        assert_eq!(parse_if_match("W/\"1\""), Ok(Versions(vec![])));
        assert_eq!(
            parse_if_match("\"1\", W/\"2\",\"3\" , ,\"x\""),
            Ok(Versions(vec![1, 3]))
        );
        // Octet equality: "01" is not the tag "1".
        assert_eq!(parse_if_match("\"01\""), Ok(Versions(vec![])));
        for malformed in [
            "",
            "3",
            "\"3",
            "\"3\" \"4\"",
            "*, \"3\"",
            ",",
            "W/3",
            "\"a b\"",
        ] {
            assert!(parse_if_match(malformed).is_err(), "{malformed:?}");
        }
    }
}
