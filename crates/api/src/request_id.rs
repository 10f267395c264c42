//! Gives every request an id and a trace context, and runs it in a span
//! that carries both.
//!
//! The id is the client's `X-Request-Id` when it sent a sane one, else a
//! new UUID; events caused by the request carry it as their correlation id.
//! The trace context continues the client's W3C `traceparent` (or starts a
//! trace); events carry it as a record header so every consumer's logs share
//! the request's trace id.

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use taskstream_telemetry::TraceParent;
use tracing::Instrument;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static TRACEPARENT: HeaderName =
    HeaderName::from_static(taskstream_domain::headers::TRACEPARENT);

/// Who and what caused a command, copied into the events it emits.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// This request's span within the caller's trace; events made while
    /// serving it name it as their parent.
    pub trace: TraceParent,
    /// `trace`, formatted as a header value.
    pub traceparent: String,
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: reads or creates the ids, runs the request in a span, and
/// echoes the ids on the response.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    let (request_id, trace) = {
        let headers = request.headers();
        let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = header(&X_REQUEST_ID)
            .filter(|v| acceptable(v))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let trace = header(&TRACEPARENT)
            .and_then(TraceParent::parse)
            .map(|caller| caller.child())
            .unwrap_or_else(TraceParent::generate);
        (request_id, trace)
    };
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |m| m.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
        trace_id = trace.trace_id,
    );
    let context = RequestContext {
        request_id: request_id.clone(),
        traceparent: trace.to_string(),
        trace: trace.clone(),
    };
    request.extensions_mut().insert(context);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert(TRACEPARENT.clone(), value);
    }
    response
}

impl RequestContext {
    /// The request as the cause of the events it leads to.
    pub fn cause(&self) -> taskstream_domain::Cause<'_> {
        taskstream_domain::Cause {
            correlation_id: Some(&self.request_id),
            traceparent: Some(&self.traceparent),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| {
                let trace = TraceParent::generate();
                RequestContext {
                    request_id: uuid::Uuid::now_v7().to_string(),
                    traceparent: trace.to_string(),
                    trace,
                }
            }))
    }
}
