//! `/audit`: the audit-log service's records, read-only.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskstream_store::{AuditEntry, AuditStore};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Problem;

pub(crate) fn routes(store: Arc<dyn AuditStore>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .with_state(store)
}

/// Query parameters shared by the read-only views.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordsParams {
    /// Only records about this task (a task id, a UUID).
    #[param(value_type = Option<uuid::Uuid>)]
    pub(crate) task_id: Option<String>,
    /// At most this many records, 1 to 10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub(crate) limit: Option<u32>,
}

/// [`RecordsParams`], checked.
pub(crate) struct RecordsQuery {
    /// The task id as the store keeps it (lower-case, hyphenated).
    pub(crate) task_id: Option<String>,
    pub(crate) limit: u32,
}

impl RecordsParams {
    /// The checked query, or a 422 naming every parameter that failed.
    pub(crate) fn validate(self) -> Result<RecordsQuery, Problem> {
        let mut errors = Vec::new();
        let task_id = self
            .task_id
            .and_then(|raw| match raw.parse::<uuid::Uuid>() {
                Ok(id) => Some(id.to_string()),
                Err(_) => {
                    errors.push(crate::FieldProblem {
                        field: "task_id".into(),
                        message: format!("must be a task id (a UUID); got {raw:?}"),
                    });
                    None
                }
            });
        let limit = self.limit.unwrap_or(1000);
        if !(1..=10_000).contains(&limit) {
            errors.push(crate::FieldProblem {
                field: "limit".into(),
                message: format!("must be between 1 and 10000; got {limit}"),
            });
        }
        if errors.is_empty() {
            Ok(RecordsQuery { task_id, limit })
        } else {
            Err(Problem::validation(errors))
        }
    }
}

/// One recorded event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditItem {
    event_id: uuid::Uuid,
    event_type: String,
    task_id: String,
    task_version: i64,
    /// When the change happened.
    event_time: DateTime<Utc>,
    correlation_id: Option<String>,
    /// Where the event was read from.
    topic: String,
    partition: i32,
    offset: i64,
    /// When the audit service stored it.
    recorded_at: DateTime<Utc>,
}

impl From<AuditEntry> for AuditItem {
    fn from(e: AuditEntry) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type,
            task_id: e.task_id,
            task_version: e.task_version,
            event_time: e.event_time,
            correlation_id: e.correlation_id,
            topic: e.topic,
            partition: e.partition,
            offset: e.offset,
            recorded_at: e.recorded_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    items: Vec<AuditItem>,
}

/// The audit log, in the order events were recorded.
#[utoipa::path(
    get, path = "/audit", tag = "audit",
    params(RecordsParams),
    responses(
        (status = 200, description = "Recorded events", body = AuditPage),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter failed validation", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_audit(
    State(store): State<Arc<dyn AuditStore>>,
    params: Result<Query<RecordsParams>, QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let query = params.validate()?;
    let entries = store
        .audit_entries(query.task_id.as_deref(), query.limit)
        .await
        .map_err(|e| {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "reading the audit log failed"
            );
            Problem::internal()
        })?;
    Ok(Json(AuditPage {
        items: entries.into_iter().map(AuditItem::from).collect(),
    }))
}
