//! Assembles the routes a component serves and runs the HTTP server.

use std::future::Future;
use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use taskstream_store::{AuditStore, NotificationStore};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

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

    /// The finished router, with the OpenAPI document of exactly the routes
    /// it serves at `/openapi.json`.
    pub fn build(self) -> Router {
        let (router, openapi) = self.router.split_for_parts();
        let openapi = Arc::new(openapi);
        router
            .route(
                "/openapi.json",
                get(move || {
                    let openapi = Arc::clone(&openapi);
                    async move { Json(openapi.as_ref().clone()).into_response() }
                }),
            )
            .fallback(|| async { Problem::not_found("no such resource") })
            .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
            .layer(axum::middleware::from_fn(crate::request_id::assign))
            .layer(TraceLayer::new_for_http())
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
