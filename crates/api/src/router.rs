//! Assembles the routes a component serves and runs the HTTP server.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use taskstream_store::{AuditStore, NotificationStore, OutboxStore, SuggestionStore};
use taskstream_telemetry::Metrics;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::observability::{Observability, ReadinessCheck};
use crate::server::CatchPanic;
use crate::{Problem, TaskService};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskstream",
        description = "The Task API and the read-only views of the services that react to its events."
    ),
    tags(
        (name = "tasks", description = "Tasks; every change publishes an event"),
        (name = "suggestions", description = "The triage agent's suggestions, and the commands that accept or reject them"),
        (name = "audit", description = "Events recorded by the audit-log service"),
        (name = "notifications", description = "Notifications sent by the notification service"),
        (name = "sagas", description = "Assignment sagas: the assignee accepts or declines; a decline, a timeout or a full assignee is compensated"),
        (name = "health", description = "Probes"),
    )
)]
struct ApiDoc;

/// Chooses which parts of the API a process serves: the Task API, the audit
/// view, the notification view, or (for `taskstream up`) all of them.
/// `/healthz` and `/openapi.json` are always served.
pub struct ApiBuilder {
    router: OpenApiRouter,
    metrics: Option<Arc<Metrics>>,
}

impl Default for ApiBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiBuilder {
    pub fn new() -> Self {
        Self {
            router: OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(crate::health::routes()),
            metrics: None,
        }
    }

    /// Serves `/tasks`.
    pub fn tasks(mut self, service: TaskService) -> Self {
        self.router = self.router.merge(crate::tasks::routes(service));
        self
    }

    /// Serves `/sagas/{id}`, `POST /tasks/{id}/accept` and
    /// `POST /tasks/{id}/decline`.
    pub fn sagas(mut self, commands: taskstream_services::saga::SagaCommands) -> Self {
        self.router = self.router.merge(crate::sagas::routes(commands));
        self
    }

    /// Serves `/tasks/{id}/suggestions` and the commands on a suggestion,
    /// writing through `service`.
    pub fn suggestions(mut self, service: TaskService, store: Arc<dyn SuggestionStore>) -> Self {
        self.router = self
            .router
            .merge(crate::suggestions::routes(service, store));
        self
    }

    /// Serves `/audit`.
    pub fn audit(mut self, store: Arc<dyn AuditStore>) -> Self {
        self.router = self.router.merge(crate::audit::routes(store));
        self
    }

    /// Serves `/notifications`.
    pub fn notifications(mut self, store: Arc<dyn NotificationStore>) -> Self {
        self.router = self.router.merge(crate::notifications::routes(store));
        self
    }

    /// Serves `/metrics` (with the outbox gauges when `outbox` is given) and
    /// `/readyz` (running `checks`), and measures every request.
    pub fn observability(
        mut self,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<dyn OutboxStore>>,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> Self {
        let state = Observability {
            metrics: Arc::clone(&metrics),
            outbox,
            checks: Arc::new(checks),
        };
        self.router = self.router.merge(crate::observability::routes(state));
        self.metrics = Some(metrics);
        self
    }

    /// Serves `routes` too (documented in `/openapi.json` like the others),
    /// under the same middleware.
    pub fn merge(mut self, routes: OpenApiRouter) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// The finished router, with the OpenAPI document of exactly the routes
    /// it serves at `/openapi.json`.
    pub fn build(self) -> Router {
        let (router, openapi) = self.router.split_for_parts();
        let openapi = Arc::new(openapi);
        let router = router
            .route(
                "/openapi.json",
                get(move || {
                    let openapi = Arc::clone(&openapi);
                    async move { Json(openapi.as_ref().clone()).into_response() }
                }),
            )
            .fallback(|| async { Problem::not_found("no such resource") })
            .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
            // Inside the metrics middleware, so a panic counts as a 500.
            .layer(axum::middleware::from_fn(problem_on_panic))
            .layer(axum::middleware::from_fn(crate::request_id::assign));
        let router = match self.metrics {
            Some(metrics) => router.layer(axum::middleware::from_fn_with_state(
                metrics,
                crate::observability::track,
            )),
            None => router,
        };
        // Failures are logged where they happen (a handler's own error, the
        // panic hook), once: the trace layer's own ERROR line for every 5xx
        // would repeat them.
        router.layer(TraceLayer::new_for_http().on_failure(()))
    }
}

/// Middleware: a handler that panics is answered with a 500 problem (the
/// panic is logged once, as one line, by [`CatchPanic`]).
async fn problem_on_panic(request: Request, next: Next) -> Response {
    CatchPanic::new(next.run(request))
        .await
        .unwrap_or_else(|_| Problem::internal().into_response())
}
