//! RFC 7807 problem details, the body of every error response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use taskstream_domain::TaskId;
use taskstream_store::StoreError;
use utoipa::ToSchema;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field as the client named it (`title`, `due_at`, ...).
    pub field: String,
    pub message: String,
}

/// An `application/problem+json` document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: &'static str,
    pub status: u16,
    /// What went wrong this time, for a person.
    pub detail: String,
    /// The resource the problem concerns, when the client may need it (the
    /// task whose change has an unknown outcome).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Present on validation problems: every field that failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:taskstream:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
        }
    }

    /// 400: the body or query is not what the API reads (syntax, types).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )
    }

    /// 422: well-formed, but a field's value is not acceptable.
    pub fn validation(errors: Vec<FieldProblem>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Validation failed",
                detail,
            )
        }
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this resource does not support that method",
        )
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 412: an `If-Match` precondition did not hold.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
    }

    /// 413.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            detail,
        )
    }

    /// 415.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// 500: logged in full on the server; the client gets no internals.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; it has been logged",
        )
    }

    /// 507 when the database is out of space, else 503: the store refused a
    /// write for a reason of its own condition, and stored nothing. The
    /// detail says why without naming the database.
    pub fn from_store(error: &StoreError) -> Self {
        match error {
            StoreError::StorageFull(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Insufficient storage",
                "the database has no space left; nothing was stored. Writes succeed again once space is freed",
            ),
            _ => Self::unavailable(
                "the database did not take the write; nothing was stored. Try again shortly",
            ),
        }
    }

    /// 503 for a write refused before it reached the database: the Avro
    /// event schemas are not registered yet (the schema registry was down
    /// when the API started; registration is retried in the background).
    pub fn schemas_unregistered() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schemas-unregistered",
            "Event schemas not registered",
            "the event schemas are not registered with the schema registry yet; nothing was stored. Try again shortly",
        )
    }

    /// 503 for a change that may or may not have been stored: the store
    /// lost its connection during the commit and could not check. `instance`
    /// names the task to read back before trying again.
    pub fn outcome_unknown(id: TaskId) -> Self {
        Self {
            instance: Some(format!("/tasks/{id}")),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown",
                format!(
                    "the database failed while committing the change to task {id}; it may or may not have been stored. Read /tasks/{id} before trying again"
                ),
            )
        }
    }

    /// 503: a dependency is unavailable; retrying later may work.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }
}

impl Problem {
    /// A problem for any error status, named after its reason phrase
    /// (`urn:taskstream:problem:uri-too-long`, "URI Too Long"); the kinds
    /// above keep their own names. The server uses it for the errors it
    /// answers itself (see [`crate::server`]).
    pub fn for_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        match status {
            StatusCode::BAD_REQUEST => Self::bad_request(detail),
            StatusCode::NOT_FOUND => Self::not_found(detail),
            StatusCode::METHOD_NOT_ALLOWED => Self {
                detail,
                ..Self::method_not_allowed()
            },
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(detail),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::unsupported_media_type(detail),
            StatusCode::INTERNAL_SERVER_ERROR => Self::internal(),
            StatusCode::SERVICE_UNAVAILABLE => Self::unavailable(detail),
            _ => {
                let title = status.canonical_reason().unwrap_or("Error");
                let kind = title
                    .to_ascii_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
                Self::new(status, &kind, title, detail)
            }
        }
    }

    /// [`Problem::for_status`] as a response: the API's
    /// [`crate::server::ErrorResponder`].
    pub fn response(status: StatusCode, detail: String) -> Response {
        Self::for_status(status, detail).into_response()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
        ) {
            // A hint for clients and proxies that the condition may pass.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
