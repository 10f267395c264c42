//! The notifier's webhook sink against a real HTTP receiver: a refusal that
//! may pass is retried, every POST of one notification carries the same
//! `Idempotency-Key`, and a receiver that rejects a notification for good
//! sends its event to the dead-letter topic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use taskstream_kafka::{read_topic, KafkaConfig};

use crate::helpers::{eventually, spawn_app_with};

/// What the receiver saw: (Idempotency-Key, body), in arrival order.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers 503 to the first POST, 422 for the recipient `nobody`, else 204.
async fn receive(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().unwrap();
    seen.push((key, body.clone()));
    if seen.len() == 1 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if body["recipient"] == "nobody" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_notifications_are_retried_with_one_idempotency_key_and_refusals_dead_lettered() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let app = spawn_app_with(|config| config.notifier_webhook = Some(url.clone())).await;
    let task = app.created("ship the webhook", Some("ana")).await;
    let id = task["id"].as_str().unwrap().to_owned();

    let stored = app.notifications_when(1).await;
    assert_eq!(stored[0]["channel"], "webhook");
    let posts = seen.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "the 503 was retried once: {posts:?}");
    assert_eq!(
        posts[0].0, posts[1].0,
        "one notification, one Idempotency-Key"
    );
    assert_eq!(posts[1].0, stored[0]["id"].as_str().unwrap());
    assert_eq!(posts[1].1["task_id"], id.as_str());
    assert_eq!(posts[1].1["kind"], "task_assigned");
    assert_eq!(posts[1].1["recipient"], "ana");

    // A notification the receiver refuses (422) is not retried: its event
    // goes to the dead-letter topic, and later events still flow.
    app.created("for nobody", Some("nobody")).await;
    app.created("after the refusal", Some("ana")).await;
    app.notifications_when(2).await;
    let kafka = KafkaConfig::new(app.system.kafka_bootstrap());
    let dead = eventually(
        "the refused event dead-lettered",
        Duration::from_secs(30),
        || async {
            let records = read_topic(&kafka, "task-events.dlq", Duration::from_secs(5))
                .await
                .ok()?;
            (!records.is_empty()).then_some(records)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header_str("dlq.error.class"), Some("permanent"));
    assert!(dead[0]
        .header_str("dlq.error.message")
        .is_some_and(|m| m.contains("422")));
    assert_eq!(
        dead[0].header_str("dlq.attempts"),
        Some("1"),
        "a permanent refusal is not retried"
    );
    // A refused notification may be POSTed again when the batch it came in
    // falls back to one event at a time; every POST of it carries one key.
    let refused_keys: std::collections::HashSet<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body["recipient"] == "nobody")
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(refused_keys.len(), 1);
    // A notification the receiver accepted is never POSTed again, not even
    // when a later one in the same batch was refused.
    let posts = seen.lock().unwrap().clone();
    let accepted: Vec<&String> = posts
        .iter()
        .enumerate()
        .filter(|(i, (_, body))| *i > 0 && body["recipient"] != "nobody")
        .map(|(_, (key, _))| key)
        .collect();
    let distinct: std::collections::HashSet<&String> = accepted.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        distinct.len(),
        "an accepted notification was sent again: {posts:?}"
    );
}
