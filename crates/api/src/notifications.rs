//! `/notifications`: what the notification service sent, read-only.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use taskstream_store::{NotificationRecord, NotificationStore};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::RecordsParams;
use crate::Problem;

pub(crate) fn routes(store: Arc<dyn NotificationStore>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .with_state(store)
}

/// One notification sent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotificationItem {
    id: uuid::Uuid,
    event_id: uuid::Uuid,
    event_type: String,
    task_id: String,
    /// `task_assigned`, `task_completed` (from task events),
    /// `saga_acceptance_requested` or `saga_escalated` (from the
    /// assignment saga's events).
    kind: String,
    recipient: String,
    message: String,
    /// The sink that delivered it: `log` or `webhook` (`saga` on the saga
    /// notifications recorded by earlier versions, which wrote them
    /// without a sink).
    channel: String,
    sent_at: DateTime<Utc>,
}

impl From<NotificationRecord> for NotificationItem {
    fn from(n: NotificationRecord) -> Self {
        Self {
            id: n.id,
            event_id: n.event_id,
            event_type: n.event_type,
            task_id: n.task_id,
            kind: n.kind,
            recipient: n.recipient,
            message: n.message,
            channel: n.channel,
            sent_at: n.sent_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotificationPage {
    items: Vec<NotificationItem>,
}

/// Notifications sent, in order.
#[utoipa::path(
    get, path = "/notifications", tag = "notifications",
    params(RecordsParams),
    responses(
        (status = 200, description = "Notifications sent", body = NotificationPage),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter failed validation", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_notifications(
    State(store): State<Arc<dyn NotificationStore>>,
    params: Result<Query<RecordsParams>, QueryRejection>,
) -> Result<Json<NotificationPage>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let query = params.validate()?;
    let records = store
        .notifications(query.task_id.as_deref(), query.limit)
        .await
        .map_err(|e| {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "reading notifications failed"
            );
            Problem::internal()
        })?;
    Ok(Json(NotificationPage {
        items: records.into_iter().map(NotificationItem::from).collect(),
    }))
}
