//! Property-based robustness of the HTTP API: random and malformed bodies,
//! ids and headers never produce a 500, and never a partial write.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};
use taskstream_store::OutboxStore;

use crate::helpers::spawn_app;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("x".repeat(300))),
        Just(Value::from("2026-12-01T17:00:00Z")),
        prop_oneof![Just("low"), Just("medium"), Just("high"), Just("urgent")]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like task bodies: usually a plausible title, plus known
/// field names (and a typo) with any values.
fn task_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("description"),
        Just("priority"),
        Just("due_at"),
        Just("assignee"),
        Just("stauts")
    ];
    let title = prop_oneof![
        4 => "[a-zA-Z ]{0,30}".prop_map(Value::from),
        1 => json_value(),
    ];
    (
        proptest::option::weighted(0.85, title),
        prop::collection::btree_map(field, json_value(), 0..3),
    )
        .prop_map(|(title, rest)| {
            let mut object: Map<String, Value> =
                rest.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(title) = title {
                object.insert("title".to_owned(), title);
            }
            Value::Object(object)
        })
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    /// 0: /tasks, 1: /tasks/{known id}, 2: /tasks/{known id}/complete, 3: /tasks/{random}
    target: u8,
    random_id: String,
    body: Option<Vec<u8>>,
    content_type: Option<String>,
    if_match: Option<String>,
    request_id: Option<String>,
    traceparent: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    let body = prop_oneof![
        5 => task_like().prop_map(|v| Some(serde_json::to_vec(&v).unwrap())),
        1 => json_value().prop_map(|v| Some(serde_json::to_vec(&v).unwrap())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        1 => Just(None),
    ];
    let content_type = prop_oneof![
        8 => Just(Some("application/json".to_owned())),
        1 => Just(Some("application/merge-patch+json".to_owned())),
        1 => Just(Some("text/plain".to_owned())),
        1 => Just(None),
    ];
    (
        // Mostly the routes that exist, with a few that do not.
        prop_oneof![
            6 => Just(("POST", 0u8)),
            4 => Just(("PATCH", 1u8)),
            2 => Just(("POST", 2u8)),
            1 => Just(("DELETE", 1u8)),
            1 => Just(("GET", 1u8)),
            1 => Just(("GET", 0u8)),
            2 => Just(("PATCH", 3u8)),
            1 => Just(("PUT", 0u8)),
            1 => Just(("POST", 1u8)),
        ],
        "[ -~]{0,40}",
        body,
        content_type,
        proptest::option::weighted(0.15, "[ -~]{0,20}"),
        proptest::option::of("[ -~]{0,150}"),
        proptest::option::of("[0-9a-f-]{0,60}"),
    )
        .prop_map(
            |(
                (method, target),
                random_id,
                body,
                content_type,
                if_match,
                request_id,
                traceparent,
            )| Case {
                method,
                target,
                random_id,
                body,
                content_type,
                if_match,
                request_id,
                traceparent,
            },
        )
}

#[test]
fn random_requests_never_fail_with_500_nor_write_partially() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(spawn_app());
    let known = runtime.block_on(app.created("fuzz target", Some("ana")));
    let known_id = known["id"].as_str().unwrap().to_owned();
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(async {
            let outbox_before = app.system.store().outbox_stats().await.unwrap().total;
            let path = match case.target {
                0 => "/tasks".to_owned(),
                1 => format!("/tasks/{known_id}"),
                2 => format!("/tasks/{known_id}/complete"),
                _ => format!("/tasks/{}", urlencode(&case.random_id)),
            };
            let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
            let mut request = app.client.request(method, app.url(&path));
            if let Some(ct) = &case.content_type {
                request = request.header("content-type", ct);
            }
            if let Some(v) = case
                .if_match
                .as_deref()
                .filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok())
            {
                request = request.header("if-match", v);
            }
            if let Some(v) = case
                .request_id
                .as_deref()
                .filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok())
            {
                request = request.header("x-request-id", v);
            }
            if let Some(v) = &case.traceparent {
                request = request.header("traceparent", v);
            }
            if let Some(body) = &case.body {
                request = request.body(body.clone());
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = response.bytes().await.unwrap();
            prop_assert!(
                status.as_u16() < 500,
                "{case:?} -> {status}: {}",
                String::from_utf8_lossy(&body)
            );
            prop_assert!(
                serde_json::from_slice::<Value>(&body).is_ok(),
                "every body is JSON: {case:?}"
            );
            if !status.is_success() {
                prop_assert_eq!(content_type, "application/problem+json");
            }
            let written = app.system.store().outbox_stats().await.unwrap().total - outbox_before;
            if status.is_success() {
                prop_assert!(
                    written == 0 || written == 1,
                    "one change, one event: {case:?}"
                );
            } else {
                prop_assert_eq!(written, 0, "a rejected request writes nothing: {:?}", case);
            }
            Ok(())
        })
    });
    runtime.block_on(app.system.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator must reach both sides of the API, or the test proves little.
    let statuses = statuses.into_inner().unwrap();
    eprintln!("statuses: {statuses:?}");
    let ok: usize = statuses.range(200..300).map(|(_, n)| n).sum();
    let rejected: usize = statuses.range(400..500).map(|(_, n)| n).sum();
    assert!(ok >= 10 && rejected >= 10, "{statuses:?}");
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
