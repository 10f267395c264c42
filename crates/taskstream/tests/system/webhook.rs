//! The notifier's webhook sink against a real HTTP receiver: a refusal that
//! may pass is retried, every POST of one notification carries the same
//! `Idempotency-Key`, and a receiver that rejects a notification for good
//! sends its event to the dead-letter topic. The assignment saga's requests
//! to accept and its escalations reach the same sink, once each.

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

/// Every POST a receiver was sent: (Idempotency-Key, body), in arrival order.
async fn receive_all(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push((key, body));
    StatusCode::NO_CONTENT
}

/// A receiver on a random port; returns what it saw and its URL.
async fn receiver() -> (Seen, String) {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = Router::new()
        .route("/hook", post(receive_all))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (seen, url)
}

/// The POSTs of `kind` about `task`.
fn posts_of(seen: &Seen, kind: &str, task: &str) -> Vec<(String, Value)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body["kind"] == kind && body["task_id"] == task)
        .cloned()
        .collect()
}

/// Through the Task API at `base`: one assignment to ana is declined, one
/// to bo is left unanswered until it times out; both are escalated to the
/// team queue `ops`. Waits until the webhook heard of each request and
/// escalation; returns the two tasks.
async fn decline_one_and_leave_one_unanswered(base: &str, seen: &Seen) -> [String; 2] {
    use crate::sagas::{answer, create, saga_when};
    let client = crate::helpers::client();
    let declined = create(&client, base, "rotate the keys", "ana").await;
    let unanswered = create(&client, base, "renew the certificate", "bo").await;
    saga_when(&client, base, &declined, "awaiting_acceptance").await;
    assert_eq!(
        answer(&client, base, &declined, "decline").await.status(),
        200
    );
    for (task, outcome) in [(&declined, "declined"), (&unanswered, "timed_out")] {
        let done = saga_when(&client, base, task, "compensated").await;
        assert_eq!(done["outcome"], outcome);
    }
    for task in [&declined, &unanswered] {
        eventually(
            "the webhook to hear of the request and the escalation",
            Duration::from_secs(60),
            || async {
                (!posts_of(seen, "saga_acceptance_requested", task).is_empty()
                    && !posts_of(seen, "saga_escalated", task).is_empty())
                .then_some(())
            },
        )
        .await;
    }
    [declined, unanswered]
}

/// Once the notifier has stopped: each request and escalation was POSTed
/// exactly once, to whom it concerns, keyed by its own id.
fn assert_announced_once(seen: &Seen, [declined, unanswered]: &[String; 2]) {
    for (task, title, assignee, why) in [
        (declined, "rotate the keys", "ana", "declined it"),
        (
            unanswered,
            "renew the certificate",
            "bo",
            "did not answer in time",
        ),
    ] {
        let asked = posts_of(seen, "saga_acceptance_requested", task);
        assert_eq!(asked.len(), 1, "{asked:?}");
        let (key, body) = &asked[0];
        assert_eq!(body["recipient"], assignee);
        assert_eq!(body["event_type"], "saga.acceptance_requested");
        assert_eq!(body["id"].as_str(), Some(key.as_str()));
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("Please accept or decline \"{title}\" by "))
                && message.contains(&format!("/tasks/{task}/accept")),
            "{message}"
        );

        let escalated = posts_of(seen, "saga_escalated", task);
        assert_eq!(escalated.len(), 1, "{escalated:?}");
        let (key, body) = &escalated[0];
        assert_eq!(body["recipient"], "ops");
        assert_eq!(body["event_type"], "saga.escalated");
        assert_eq!(body["id"].as_str(), Some(key.as_str()));
        assert_eq!(
            body["message"],
            format!("\"{title}\" needs an owner: {assignee} {why}")
        );
    }
}

/// The saga's flags shared by both runs: a short deadline, and `ops` as
/// the team queue.
const SAGA_FLAGS: [&str; 4] = ["--saga-accept-timeout", "8s", "--saga-team-queue", "ops"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_requests_and_escalations_reach_the_webhook_exactly_once() {
    let (seen, url) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = SAGA_FLAGS.to_vec();
    flags.extend(["--notifier-webhook-url", &url]);
    let (mut up, base) = crate::sagas::start_up(dir.path(), &flags);
    let tasks = decline_one_and_leave_one_unanswered(&base, &seen).await;
    // A record on task-sagas that is no saga event is dead-lettered by the
    // notifier, on task-sagas.dlq.
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("endpoints.json")).unwrap())
            .unwrap();
    let kafka = KafkaConfig::new(endpoints["kafka"].as_str().unwrap()).quiet();
    let producer = taskstream_kafka::EventProducer::new(
        &kafka,
        "test-poison",
        &taskstream_kafka::ProducerSettings::default(),
    )
    .unwrap();
    let headers: [(&str, &[u8]); 1] = [("type", b"saga.escalated")];
    producer
        .enqueue(taskstream_kafka::OutboundRecord {
            topic: "task-sagas",
            key: b"poison",
            payload: b"{not a saga event",
            headers: &headers,
        })
        .await
        .unwrap()
        .await
        .unwrap();
    let dead = eventually(
        "the poison saga record dead-lettered",
        Duration::from_secs(30),
        || async {
            let records = read_topic(&kafka, "task-sagas.dlq", Duration::from_secs(5))
                .await
                .ok()?;
            (!records.is_empty()).then_some(records)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header_str("dlq.consumer.group"), Some("notifier"));
    assert_eq!(dead[0].header_str("dlq.error.class"), Some("undecodable"));
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(b"{not a saga event".as_slice())
    );
    // `lag` sees the notifier's group on task-sagas, and it catches up
    // (its last commit may trail the dead letter by a moment).
    let lag = eventually(
        "the notifier caught up on task-sagas",
        Duration::from_secs(30),
        || async {
            let lag = crate::sagas::lag(dir.path(), &["--topic", "task-sagas"]).await;
            (lag["groups"][0]["total_lag"] == 0).then_some(lag)
        },
    )
    .await;
    let groups = lag["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{lag}");
    assert_eq!(groups[0]["group"], "notifier");
    let partitions = groups[0]["partitions"].as_array().unwrap();
    assert!(!partitions.is_empty(), "{lag}");
    assert!(
        partitions.iter().all(|p| p["lag"] == 0),
        "every partition caught up: {lag}"
    );
    crate::sagas::terminate(&mut up);
    assert_announced_once(&seen, &tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_requests_and_escalations_reach_the_standalone_notifiers_webhook_on_apache_kafka() {
    let Some(kafka) = crate::brokers::Broker::apache_kafka(
        taskstream_testkit::Shape::SingleNode,
        "the saga's notifications through the notifier",
    )
    .await
    else {
        return;
    };
    let Some((admin, database)) = crate::at_scale::scratch_database().await else {
        return;
    };
    let (seen, url) = receiver().await;
    let bootstrap = kafka.kafka_config().unwrap().bootstrap_servers;
    let dir = tempfile::tempdir().unwrap();
    let start = |component, extra: &[&str]| {
        let mut args = vec!["--kafka-bootstrap", bootstrap.as_str()];
        args.extend_from_slice(extra);
        crate::at_scale::start(component, &args, &database, &dir)
    };
    let (mut api, base) =
        crate::at_scale::start("api", &["--event-format", "json"], &database, &dir);
    let (mut relay, _) = start("relay", &["--event-format", "json"]);
    let mut saga_flags = vec!["--event-format", "json", "--saga-poll-interval", "200ms"];
    saga_flags.extend(SAGA_FLAGS);
    let (mut saga, _) = start("saga", &saga_flags);
    let (mut notifier, _) = start("notifier", &["--webhook-url", &url]);
    let tasks = decline_one_and_leave_one_unanswered(&base, &seen).await;
    for child in [&mut notifier, &mut saga, &mut relay, &mut api] {
        crate::sagas::terminate(child);
    }
    assert_announced_once(&seen, &tasks);
    crate::at_scale::drop_database(&admin, &database).await;
}
