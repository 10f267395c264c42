//! A handler that panics is answered with a 500 problem document, counted
//! in the metrics, and logged once, as one ERROR line, with the request's
//! context; the server goes on serving.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use serde_json::Value;
use taskstream_api::{ApiBuilder, HttpLimits, Problem};
use taskstream_telemetry::Metrics;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

/// Everything the test's subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn broken() -> &'static str {
    panic!("the handler broke\nacross two lines")
}

// A current-thread runtime: the server, the handler and the panic hook all
// run on this thread, under the subscriber set for it.
#[tokio::test]
async fn a_panicking_handler_answers_500_is_counted_and_logged_as_one_error_line() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let metrics = Metrics::new();
    let api = ApiBuilder::new()
        .merge(OpenApiRouter::new().route("/broken", get(broken)))
        .observability(Arc::clone(&metrics), None, Vec::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(taskstream_api::serve(
        listener,
        api.build(),
        HttpLimits::default(),
        Problem::response,
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let response = client
        .get(format!("http://{addr}/broken"))
        .header("x-request-id", "req-broken")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 500);
    assert_eq!(problem["type"], "urn:taskstream:problem:internal");
    assert!(
        !problem["detail"].as_str().unwrap().contains("broke"),
        "the client learns nothing of the panic: {problem}"
    );
    // The connection's task survived, and so did the server.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let text = metrics.render();
    assert!(
        text.contains(
            r#"taskstream_http_requests_total{method="GET",route="/broken",status="500"} 1"#
        ),
        "{text}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one ERROR line, nothing else: {logs}");
    let line = errors[0];
    assert!(line.contains("panicked while handling a request"), "{logs}");
    assert!(
        line.contains(r"the handler broke\nacross two lines"),
        "the message, on one line: {logs}"
    );
    assert!(line.contains("tests/panics.rs"), "its location: {logs}");
    assert!(line.contains("req-broken"), "the request's span: {logs}");
    assert!(!logs.contains("stack backtrace"), "{logs}");
}
