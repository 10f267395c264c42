//! `/metrics` and `/readyz`, and the middleware that measures every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use taskstream_store::OutboxStore;
use taskstream_telemetry::{HttpLabels, Metrics, RouteLabels};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// One dependency a component needs before it can do its job.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short, stable name (`store`, `kafka`, `outbox_age`).
    fn name(&self) -> &'static str;
    /// `Ok(detail)` when the dependency is usable, `Err(detail)` otherwise.
    async fn check(&self) -> Result<String, String>;
}

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct Observability {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) outbox: Option<Arc<dyn OutboxStore>>,
    pub(crate) checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
}

pub(crate) fn routes(state: Observability) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(readyz))
        .with_state(state)
}

/// Middleware: counts and times every request by route template and status.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    // Route templates use `:param`, not `{param}`: braces inside label
    // values trip some Prometheus text parsers. A request no route matched
    // is `unmatched`, never its path.
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_owned(),
        |m| m.as_str().replace('{', ":").replace('}', ""),
    );
    let response = next.run(request).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: a standard method's name, or `other` for any
/// other token a client made up, so clients cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<Observability>) -> Response {
    if let Some(outbox) = &state.outbox {
        match outbox.outbox_stats().await {
            Ok(stats) => {
                state.metrics.outbox_pending.set(stats.pending);
                let age = stats
                    .oldest_pending_at
                    .map(|t| {
                        (taskstream_domain::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                    })
                    .unwrap_or(0.0);
                state.metrics.outbox_oldest_age.set(age);
            }
            Err(error) => tracing::warn!(%error, "cannot read outbox statistics for /metrics"),
        }
        match outbox.replication_slots().await {
            Ok(slots) => state.metrics.observe_replication_slots(
                &slots
                    .into_iter()
                    .map(|s| (s.name, s.active, s.retained_bytes, s.unconfirmed_bytes))
                    .collect::<Vec<_>>(),
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot read replication slots for /metrics")
            }
        }
    }
    (
        [(header::CONTENT_TYPE, taskstream_telemetry::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// One readiness check's result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CheckResult {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// The readiness verdict.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    checks: Vec<CheckResult>,
}

/// Readiness: 200 when every dependency this process needs is usable, 503
/// otherwise; the body names each check.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is not usable", body = Readiness),
    ))]
async fn readyz(State(state): State<Observability>) -> (StatusCode, Json<Readiness>) {
    let runs = state.checks.iter().map(|check| async move {
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, check.check())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        CheckResult {
            name: check.name(),
            ok,
            detail,
        }
    });
    let checks = futures::future::join_all(runs).await;
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks,
        }),
    )
}
