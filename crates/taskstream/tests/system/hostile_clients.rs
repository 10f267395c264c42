//! Clients that do not play by the rules: made-up methods and paths, idle
//! and slowloris connections, more connections than the server takes,
//! malformed and oversized heads, stalled bodies, handlers that panic.
//! Every port answers them with its own error documents (or, where hyper
//! answers before our code runs, with the bare status line documented in
//! `taskstream_api::server`), bounds what they can hold, and keeps serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use serde_json::Value;
use taskstream::components;
use taskstream_api::{ApiBuilder, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{client, spawn_app, spawn_app_with};

/// Limits short enough for a test to watch them act.
fn short_limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_connections: 512,
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads until the server closes the connection (or resets it: a reset
/// after the response still leaves the response readable), for at most
/// `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; received so far: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let body = raw[head.len() + 4..].to_vec();
    RawResponse {
        status,
        head: head.to_owned(),
        body,
    }
}

/// Sends `request` on a new connection and reads the response the server
/// closes the connection after.
async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything we send.
    let _ = stream.write_all(request).await;
    parse_response(&read_to_close(&mut stream, Duration::from_secs(30)).await)
}

fn assert_problem(response: &RawResponse, status: u16) -> Value {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{response:?}"
    );
    let problem = response.json();
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    problem
}

fn assert_confluent_error(response: &RawResponse, status: u16, code: i64) -> Value {
    assert_eq!(response.status, status, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/vnd.schemaregistry.v1+json")),
        "{response:?}"
    );
    let error = response.json();
    assert_eq!(error["error_code"], code, "{error}");
    assert!(error["message"].is_string(), "{error}");
    error
}

fn registry_addr(app: &crate::helpers::TestApp) -> SocketAddr {
    app.system
        .registry_url()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_do_not_mint_metric_labels() {
    let app = spawn_app().await;
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let target = if i % 2 == 0 {
            "/tasks".to_owned()
        } else {
            format!("/no/such/path/{i}")
        };
        let response = app
            .client
            .request(method, app.url(&target))
            .send()
            .await
            .unwrap();
        assert!(matches!(response.status().as_u16(), 404 | 405));
        let get = app
            .client
            .get(app.url(&format!("/unknown-{i}?q={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 404);
    }
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut methods = BTreeSet::new();
    let mut routes = BTreeSet::new();
    let mut series = 0;
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("taskstream_http_"))
    {
        series += 1;
        methods.insert(sample.labels.get("method").unwrap_or_default().to_owned());
        routes.insert(sample.labels.get("route").unwrap_or_default().to_owned());
    }
    assert_eq!(
        methods,
        BTreeSet::from(["GET".to_owned(), "other".to_owned()]),
        "made-up methods share one label value"
    );
    assert_eq!(
        routes,
        BTreeSet::from(["/tasks".to_owned(), "unmatched".to_owned()]),
        "paths no route matched share one label value"
    );
    assert!(
        !text.contains("MADEUP") && !text.contains("/no/such"),
        "{text}"
    );
    // 2 counters and 2 histograms (each bucket a sample), not one per request.
    assert!(series < 60, "{series} HTTP series:\n{text}");
    app.system.shutdown().await;
}

/// Waits until the server closes `stream`: the read returns end-of-file
/// or an error. Panics if it is still open after 30 s.
async fn closed_by_server(mut stream: TcpStream) {
    read_to_close(&mut stream, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_while_healthz_keeps_answering() {
    let app = spawn_app_with(|config| config.http_limits = short_limits()).await;
    let api: SocketAddr = app.system.http_addr();
    let registry = registry_addr(&app);

    // Connections that say nothing, on both ports.
    let mut held = Vec::new();
    for i in 0..300 {
        let port = if i % 5 == 0 { registry } else { api };
        held.push(TcpStream::connect(port).await.unwrap());
    }
    // One that sends half a head and stalls.
    let mut slowloris = TcpStream::connect(api).await.unwrap();
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One that finishes a request, then keeps its connection idle.
    let mut kept_alive = TcpStream::connect(api).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept_alive.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // While they are all held, probes on both ports answer.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let subjects = app
        .client
        .get(format!("{}/subjects", app.system.registry_url().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);

    // Each one is closed by the server, by its header or idle timeout.
    held.push(slowloris);
    held.push(kept_alive);
    futures::future::join_all(held.into_iter().map(closed_by_server)).await;
    // A fresh connection: the client's pooled one has been idle past the
    // server's idle timeout too, and closed by it.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_in_the_backlog_until_a_slot_frees() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(5),
        max_connections: 4,
        ..HttpLimits::default()
    };
    let (addr, http) = components::http("127.0.0.1:0".parse().unwrap(), ApiBuilder::new(), &limits)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let probe = tokio::spawn(client().get(format!("http://{addr}/healthz")).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !probe.is_finished(),
        "a fifth connection is not served while four are held"
    );
    // The held connections time out; the probe is then accepted and answered.
    let response = tokio::time::timeout(Duration::from_secs(30), probe)
        .await
        .expect("the probe is answered once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    futures::future::join_all(held.into_iter().map(closed_by_server)).await;
    http.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_408_on_both_ports() {
    let app = spawn_app_with(|config| config.http_limits = short_limits()).await;
    let stalled = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"title\":"
        )
    };
    let api = exchange(app.system.http_addr(), stalled("/tasks").as_bytes()).await;
    assert_problem(&api, 408);
    assert_eq!(api.header("connection"), Some("close"));
    let registry = exchange(
        registry_addr(&app),
        stalled("/subjects/s-value/versions").as_bytes(),
    )
    .await;
    assert_confluent_error(&registry, 408, 408);
    assert_eq!(app.outbox_total().await, 0, "nothing was written");
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_below_the_handlers_are_problems_on_the_api_and_confluent_errors_on_the_registry() {
    let app = spawn_app().await;
    let api = app.system.http_addr();
    let registry = registry_addr(&app);
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    };
    let long_target = format!("/tasks?q={}", "a".repeat(10 * 1024));
    let big_header = format!("X-Big: {}\r\n", "b".repeat(20 * 1024));

    // 414 and 431, answered by the server before any route.
    for (port, is_api) in [(api, true), (registry, false)] {
        let uri = exchange(port, get(&long_target, "").as_bytes()).await;
        let headers = exchange(port, get("/healthz", &big_header).as_bytes()).await;
        if is_api {
            assert_problem(&uri, 414);
            assert_problem(&headers, 431);
        } else {
            assert_confluent_error(&uri, 414, 414);
            assert_confluent_error(&headers, 431, 431);
        }
    }

    // 405 and 404 on the registry (the API's own routes already answer
    // problems for these, and rejections, as `http_errors` shows).
    let put = exchange(
        registry,
        b"PUT /subjects HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_confluent_error(&put, 405, 405);
    assert_eq!(put.header("allow"), Some("GET,HEAD"));
    let api_put = exchange(
        api,
        b"PUT /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_problem(&api_put, 405);
    // A path that is not UTF-8 once decoded: axum's rejection, conformed.
    let bad_path = exchange(registry, get("/subjects/%FF/versions", "").as_bytes()).await;
    assert_confluent_error(&bad_path, 400, 400);

    // 413: a registration body over the registry's 2 MiB limit.
    let body = format!("{{\"schema\":\"{}\"}}", "x".repeat(2 * 1024 * 1024 + 1024));
    let request = format!(
        "POST /subjects/big-value/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_confluent_error(&exchange(registry, request.as_bytes()).await, 413, 413);

    // Where hyper answers before our code runs, it writes a bare status
    // line, no body, and closes: a request line it cannot parse (400), and
    // a head over its limits (431), here more than 100 header fields.
    let garbage = exchange(api, b"NOT A REQUEST LINE\r\n\r\n").await;
    assert_eq!(garbage.status, 400, "{garbage:?}");
    assert!(garbage.body.is_empty(), "{garbage:?}");
    assert_eq!(garbage.header("content-length"), Some("0"));
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let crowded = exchange(registry, get("/subjects", &many).as_bytes()).await;
    assert_eq!(crowded.status, 431, "{crowded:?}");
    assert!(crowded.body.is_empty(), "{crowded:?}");

    // None of this disturbed the service.
    assert_eq!(
        client()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.system.shutdown().await;
}

async fn broken() -> &'static str {
    panic!("a registry handler broke")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_registry_handler_answers_a_confluent_50001_and_the_registry_goes_on() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = taskstream_registry::RegistryStore::open(&dir.path().join("registry.db"))
        .await
        .unwrap();
    // The production router and server, with one extra route that panics.
    let router = taskstream_registry::router(store.clone()).route("/broken", get(broken));
    let (addr, registry) = components::serve(
        "schema-registry",
        "127.0.0.1:0".parse().unwrap(),
        router,
        &HttpLimits::default(),
        taskstream_registry::error_response,
        async move { store.close().await },
    )
    .await
    .unwrap();
    let response = exchange(
        addr,
        b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let error = assert_confluent_error(&response, 500, 50001);
    assert!(
        !error["message"].as_str().unwrap().contains("broke"),
        "{error}"
    );
    let subjects = client()
        .get(format!("http://{addr}/subjects"))
        .send()
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);
    registry.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

#[test]
fn http_limit_flags_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (command, flag, value) in [
        ("registry", "--http-header-timeout", "0"),
        ("registry", "--http-idle-timeout", "-3"),
        ("api", "--http-body-timeout", "100000"),
        ("api", "--http-max-connections", "0"),
        ("up", "--http-idle-timeout", "soon"),
    ] {
        let out = std::process::Command::new(BIN)
            .args([command, "--http", "127.0.0.1:0", &format!("{flag}={value}")])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} {flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{command} {flag} {value}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_registry_applies_the_header_timeout_from_its_environment() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::binary::ChildGuard(
        std::process::Command::new(BIN)
            .args(["registry", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TASKSTREAM_HTTP_HEADER_TIMEOUT", "1")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("schema-registry: http://")
        .unwrap()
        .parse()
        .unwrap();
    // Closed well before the default 10 s could have closed it.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    read_to_close(&mut silent, Duration::from_secs(8)).await;
    let subjects = client()
        .get(format!("http://{addr}/subjects"))
        .send()
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);
}
