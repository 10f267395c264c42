//! Assembles the routes a component serves and runs the HTTP server.

use std::future::Future;
use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use taskstream_store::{AuditStore, NotificationStore, OutboxStore};
use taskstream_telemetry::Metrics;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::observability::{Observability, ReadinessCheck};
use crate::{Problem, TaskService};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskstream",
        description = "The Task API and the read-only views of the services that react to its events."
    ),
    tags(
        (name = "tasks", description = "Tasks; every change publishes an event"),
        (name = "audit", description = "Events recorded by the audit-log service"),
        (name = "notifications", description = "Notifications sent by the notification service"),
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
            .layer(axum::middleware::from_fn(crate::request_id::assign));
        let router = match self.metrics {
            Some(metrics) => router.layer(axum::middleware::from_fn_with_state(
                metrics,
                crate::observability::track,
            )),
            None => router,
        };
        router.layer(TraceLayer::new_for_http())
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting connections and waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
