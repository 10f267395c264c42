//! The triage agent end to end: a created task gets one suggestion on
//! `task-suggestions` and in the API; accepting it updates the task once;
//! a redelivered event adds nothing; what the model cannot answer is
//! dead-lettered; `agent ask` answers over Kafka or times out cleanly; and
//! `agent replay` measures agreement on a known history. Each runs on
//! taskstream's broker and on Apache Kafka.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::AgentSettings;
use taskstream_kafka::{read_topic, EventProducer, KafkaConfig, OutboundRecord, ProducerSettings};
use taskstream_services::agent::{AssigneeMap, LocalModel, OpenAiModel, OpenAiSettings};
use taskstream_services::dead_letter_topic;
use taskstream_services::topics::{TASK_EVENTS, TASK_SUGGESTIONS};
use taskstream_testkit::Shape;

use crate::brokers::Broker;
use crate::helpers::{eventually, spawn_app_with, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// The local model with `database` naming ana.
fn local_agent() -> AgentSettings {
    AgentSettings {
        model: Arc::new(LocalModel::new(AssigneeMap::parse("database=ana").unwrap())),
        auto_accept: None,
    }
}

async fn suggestions_when(app: &TestApp, task_id: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} suggestions for {task_id}"),
        Duration::from_secs(30),
        || async {
            let items = app.items(&format!("/tasks/{task_id}/suggestions")).await;
            (items.len() >= n).then_some(items)
        },
    )
    .await
}

/// The records of `topic` that `wanted` accepts, once there are `n`.
async fn records_when(
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    wanted: impl Fn(&taskstream_kafka::InboundRecord) -> bool,
) -> Vec<taskstream_kafka::InboundRecord> {
    eventually(
        &format!("{n} records on {topic}"),
        Duration::from_secs(30),
        || async {
            let records = read_topic(kafka, topic, Duration::from_secs(5))
                .await
                .ok()?;
            let found: Vec<_> = records.into_iter().filter(|r| wanted(r)).collect();
            (found.len() >= n).then_some(found)
        },
    )
    .await
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn accept(app: &TestApp, task_id: &str, suggestion_id: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!(
            "/tasks/{task_id}/suggestions/{suggestion_id}/accept"
        )))
        .send()
        .await
        .unwrap()
}

async fn suggest_accept_and_redeliver(broker: &Broker) {
    let app = spawn_app_with(|c| {
        broker.configure(c);
        c.agent = Some(local_agent());
    })
    .await;
    let kafka = KafkaConfig::new(app.system.kafka_bootstrap());
    let response = app
        .client
        .post(app.url("/tasks"))
        .header("x-request-id", "req-triage-1")
        .json(&json!({ "title": "URGENT: database down", "description": "fix it by friday" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();

    let suggestions = suggestions_when(&app, &task_id, 1).await;
    assert_eq!(suggestions.len(), 1);
    let suggestion = &suggestions[0];
    assert_eq!(suggestion["priority"], "high");
    assert_eq!(suggestion["assignee"], "ana");
    assert!(suggestion["due_at"]
        .as_str()
        .unwrap()
        .ends_with("T17:00:00Z"));
    assert_eq!(suggestion["confidence"], 100);
    assert_eq!(suggestion["status"], "pending");
    assert_eq!(suggestion["model"], "local");
    let suggestion_id = suggestion["id"].as_str().unwrap().to_owned();
    let created_event = suggestion["event_id"].as_str().unwrap().to_owned();

    // The event on its own topic, caused by the task's event and
    // correlated with the request that created the task.
    let published = records_when(&kafka, TASK_SUGGESTIONS, 1, |r| {
        r.key.as_deref() == Some(task_id.as_bytes())
    })
    .await;
    let event: Value = serde_json::from_slice(published[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(event["type"], "task.triage_suggested");
    assert_eq!(event["causation_id"], created_event.as_str());
    assert_eq!(event["correlation_id"], "req-triage-1");
    assert_eq!(event["data"]["suggestion_id"], suggestion_id.as_str());
    assert_eq!(
        published[0].header_str("type"),
        Some("task.triage_suggested")
    );

    // The agent changed nothing.
    let unchanged: Value = app
        .client
        .get(app.url(&format!("/tasks/{task_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            unchanged["version"].as_i64(),
            unchanged["priority"].as_str()
        ),
        (Some(1), Some("medium"))
    );

    // The same task.created delivered again: no second suggestion.
    let originals = records_when(&kafka, TASK_EVENTS, 1, |r| {
        r.key.as_deref() == Some(task_id.as_bytes()) && r.header_str("type") == Some("task.created")
    })
    .await;
    let original = &originals[0];
    let headers: Vec<(&str, &[u8])> = original
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let producer =
        EventProducer::new(&kafka, "test-redeliver", &ProducerSettings::default()).unwrap();
    producer
        .enqueue(OutboundRecord {
            topic: TASK_EVENTS,
            key: original.key.as_deref().unwrap(),
            payload: original.payload.as_deref().unwrap(),
            headers: &headers,
        })
        .await
        .unwrap()
        .await
        .unwrap();
    eventually("the redelivery counted as a duplicate", Duration::from_secs(30), || async {
        metrics(&app).await.contains(
            r#"taskstream_consumer_events_total{group="triage-agent",event_type="task.created",outcome="duplicate"} 1"#,
        ).then_some(())
    })
    .await;
    assert_eq!(suggestions_when(&app, &task_id, 1).await.len(), 1);

    // Accepting applies the suggestion through the normal write path, once.
    let response = accept(&app, &task_id, &suggestion_id).await;
    assert_eq!(response.status(), 200);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["priority"], "high");
    assert_eq!(accepted["assignee"], "ana");
    assert_eq!(accepted["due_at"], suggestion["due_at"]);
    assert_eq!(accepted["version"], 2);
    let again = accept(&app, &task_id, &suggestion_id).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = again.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already accepted"),
        "{problem}"
    );
    let listed = suggestions_when(&app, &task_id, 1).await;
    assert_eq!(listed[0]["status"], "accepted");
    // task.updated went out through the outbox: the audit log sees it.
    let audit = eventually(
        "the task.updated event audited",
        Duration::from_secs(30),
        || async {
            let items = app.items(&format!("/audit?task_id={task_id}")).await;
            (items.len() >= 2).then_some(items)
        },
    )
    .await;
    assert_eq!(audit[1]["event_type"], "task.updated");
    assert_eq!(audit.len(), 2);
    // Exactly one suggestion was ever published for the task.
    let all = read_topic(&kafka, TASK_SUGGESTIONS, Duration::from_secs(5))
        .await
        .unwrap();
    let for_task = all
        .iter()
        .filter(|r| r.key.as_deref() == Some(task_id.as_bytes()))
        .count();
    assert_eq!(for_task, 1);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_task_gets_one_suggestion_that_accepting_applies_once_and_a_redelivery_adds_nothing(
) {
    suggest_accept_and_redeliver(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_task_gets_one_suggestion_that_accepting_applies_once_and_a_redelivery_adds_nothing_on_apache_kafka(
) {
    let Some(kafka) =
        Broker::apache_kafka(Shape::SingleNode, "the triage agent's suggestions").await
    else {
        return;
    };
    suggest_accept_and_redeliver(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggestion_made_stale_by_a_later_change_is_refused_and_leaves_the_task_alone() {
    let app = spawn_app_with(|c| c.agent = Some(local_agent())).await;
    let task = app.created("urgent fix", None).await;
    let task_id = task["id"].as_str().unwrap();
    let suggestion = suggestions_when(&app, task_id, 1).await.remove(0);
    let response = app
        .client
        .patch(app.url(&format!("/tasks/{task_id}")))
        .json(&json!({ "title": "urgent fix, renamed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = accept(&app, task_id, suggestion["id"].as_str().unwrap()).await;
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("version 1"),
        "{problem}"
    );
    let current: Value = app
        .client
        .get(app.url(&format!("/tasks/{task_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (current["version"].as_i64(), current["priority"].as_str()),
        (Some(2), Some("medium"))
    );
    let unknown = accept(&app, task_id, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(unknown.status(), 404);
    app.system.shutdown().await;
}

/// An OpenAI-compatible endpoint on 127.0.0.1:0 that answers prose
/// instead of the JSON object it was asked for.
async fn garbage_model() -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            axum::Json(json!({ "choices": [{ "message": { "role": "assistant",
                "content": "I think this task is quite important!" } }] }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn garbage_is_dead_lettered(broker: &Broker) {
    let url = garbage_model().await;
    let model = OpenAiModel::new(OpenAiSettings {
        url,
        model: "garbage".into(),
        api_key: None,
        timeout: Duration::from_secs(5),
        retries: 1,
        max_requests_per_minute: 100,
        wait_for_rate: false,
        max_requests: None,
        initial_backoff: Duration::from_millis(10),
    })
    .unwrap();
    let app = spawn_app_with(|c| {
        broker.configure(c);
        c.agent = Some(AgentSettings {
            model: Arc::new(model),
            auto_accept: None,
        })
    })
    .await;
    let kafka = KafkaConfig::new(app.system.kafka_bootstrap());
    let task = app.created("anything at all", None).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let letters = records_when(&kafka, &dead_letter_topic(TASK_EVENTS), 1, |r| {
        r.header_str("dlq.consumer.group") == Some("triage-agent")
            && r.key.as_deref() == Some(task_id.as_bytes())
    })
    .await;
    let message = letters[0].header_str("dlq.error.message").unwrap();
    assert!(message.contains("model garbage"), "{message}");
    assert!(message.contains("not a suggestion"), "{message}");
    assert_eq!(letters[0].header_str("dlq.error.class"), Some("permanent"));
    assert!(app
        .items(&format!("/tasks/{task_id}/suggestions"))
        .await
        .is_empty());
    // The other groups handled the event as usual.
    app.audit_when(1).await;
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_answers_garbage_gets_the_event_dead_lettered_and_no_suggestion() {
    garbage_is_dead_lettered(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_answers_garbage_gets_the_event_dead_lettered_and_no_suggestion_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(
        Shape::SingleNode,
        "the agent dead-lettering a model's garbage",
    )
    .await
    else {
        return;
    };
    garbage_is_dead_lettered(&kafka).await;
}

/// Runs the binary with `args`, returning (success, stdout, stderr).
async fn run(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ask_is_answered(broker: &Broker) {
    let app = spawn_app_with(|c| {
        broker.configure(c);
        c.agent = Some(local_agent());
    })
    .await;
    let bootstrap = app.system.kafka_bootstrap().to_owned();
    let (ok, stdout, stderr) = run(vec![
        "agent".into(),
        "ask".into(),
        "--title".into(),
        "urgent: database migration".into(),
        "--timeout".into(),
        "30".into(),
        "--kafka-bootstrap".into(),
        bootstrap,
    ])
    .await;
    assert!(ok, "{stderr}");
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["priority"], "high");
    assert_eq!(reply["assignee"], "ana");
    assert_eq!(reply["model"], "local");
    assert!(reply["correlation_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ask_gets_the_running_agents_reply_over_kafka() {
    ask_is_answered(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ask_gets_the_running_agents_reply_over_kafka_on_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "agent ask").await else {
        return;
    };
    ask_is_answered(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ask_times_out_with_one_line_and_a_failure_when_no_agent_runs() {
    let app = spawn_app_with(|c| c.agent = None).await;
    let bootstrap = app.system.kafka_bootstrap().to_owned();
    let (ok, stdout, stderr) = run(vec![
        "agent".into(),
        "ask".into(),
        "--title".into(),
        "anyone there?".into(),
        "--timeout".into(),
        "2".into(),
        "--kafka-bootstrap".into(),
        bootstrap,
    ])
    .await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("no reply from the triage agent"),
        "{stderr}"
    );
    app.system.shutdown().await;
}

async fn replay_measures_agreement(broker: &Broker) {
    // The running agent (no keyword map) suggests too; replay must add nothing to that.
    let app = spawn_app_with(|c| {
        broker.configure(c);
        c.agent = Some(AgentSettings {
            model: Arc::new(LocalModel::default()),
            auto_accept: None,
        })
    })
    .await;
    // Suggested high and ana; people set exactly that.
    let a = app.created("urgent: database down", None).await;
    let response = app
        .client
        .patch(app.url(&format!("/tasks/{}", a["id"].as_str().unwrap())))
        .json(&json!({ "priority": "high", "assignee": "ana" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Suggested low; people left it medium.
    app.created("minor typo in the footer", None).await;
    // Suggested nothing.
    app.created("write the quarterly report", None).await;
    // Suggested ana; people gave it to bo.
    app.created("database index", Some("bo")).await;
    app.audit_when(5).await;
    let kafka = KafkaConfig::new(app.system.kafka_bootstrap());
    records_when(&kafka, TASK_SUGGESTIONS, 4, |_| true).await;
    let (ok, stdout, stderr) = run(vec![
        "agent".into(),
        "replay".into(),
        "--from-beginning".into(),
        "--model".into(),
        "local".into(),
        "--agent-assignees".into(),
        "database=ana".into(),
        "--json".into(),
        "--kafka-bootstrap".into(),
        app.system.kafka_bootstrap().to_owned(),
        "--schema-registry".into(),
        app.system.registry_url().unwrap().to_owned(),
    ])
    .await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["events"], 5);
    assert_eq!(report["tasks"], 4);
    assert_eq!(report["priority"], json!({ "suggested": 2, "agreed": 1 }));
    assert_eq!(report["assignee"], json!({ "suggested": 2, "agreed": 1 }));
    assert_eq!(report["due_at"], json!({ "suggested": 0, "agreed": 0 }));
    // Replay published and stored nothing: still the running agent's four.
    let published = read_topic(&kafka, TASK_SUGGESTIONS, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(published.len(), 4);
    let stored = app
        .items(&format!("/tasks/{}/suggestions", a["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored.len(), 1);
    // The table form, for people.
    let (ok, table, stderr) = run(vec![
        "agent".into(),
        "replay".into(),
        "--from-beginning".into(),
        "--agent-assignees".into(),
        "database=ana".into(),
        "--kafka-bootstrap".into(),
        app.system.kafka_bootstrap().to_owned(),
        "--schema-registry".into(),
        app.system.registry_url().unwrap().to_owned(),
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        table.contains("priority           2       1     50.0%"),
        "{table}"
    );
    app.system.shutdown().await;
}

/// An OpenAI-compatible endpoint on 127.0.0.1:0 that suggests high
/// priority for anything, counting the requests it is sent.
async fn counting_model() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                axum::Json(json!({ "choices": [{ "message": { "role": "assistant",
                    "content": r#"{"priority":"high","assignee":null,"due_at":null,"confidence":60,"rationale":"r"}"# } }] }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_replay_against_a_remote_model_stops_at_its_request_budget_and_says_what_it_skipped()
{
    let app = spawn_app_with(|c| {
        Broker::Dev.configure(c);
        c.agent = None;
    })
    .await;
    for title in ["one", "two", "three", "four", "five"] {
        app.created(title, None).await;
    }
    app.audit_when(5).await;
    let (url, calls) = counting_model().await;
    let (ok, stdout, stderr) = run(vec![
        "agent".into(),
        "replay".into(),
        "--from-beginning".into(),
        "--model".into(),
        url,
        "--max-model-requests".into(),
        "2".into(),
        "--json".into(),
        "--kafka-bootstrap".into(),
        app.system.kafka_bootstrap().to_owned(),
        "--schema-registry".into(),
        app.system.registry_url().unwrap().to_owned(),
    ])
    .await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["events"], 5);
    assert_eq!(report["tasks"], 2, "{report}");
    assert_eq!(report["unanswered"], 0, "{report}");
    assert_eq!(report["skipped"], 3, "{report}");
    assert_eq!(report["priority"], json!({ "suggested": 2, "agreed": 0 }));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_replay_reports_how_often_the_suggestions_matched_what_people_did() {
    replay_measures_agreement(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_replay_reports_how_often_the_suggestions_matched_what_people_did_on_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "agent replay").await else {
        return;
    };
    replay_measures_agreement(&kafka).await;
}

async fn auto_accept_applies_confident_ones(broker: &Broker) {
    let app = spawn_app_with(|c| {
        broker.configure(c);
        c.agent = Some(AgentSettings {
            auto_accept: Some("min-confidence=70".parse().unwrap()),
            ..local_agent()
        })
    })
    .await;
    // Three fields suggested: confidence 100, accepted.
    let sure = app.created("urgent: database down by friday", None).await;
    let sure_id = sure["id"].as_str().unwrap();
    // One field: confidence 40, left for a person.
    let unsure = app.created("urgent: call the vendor", None).await;
    let unsure_id = unsure["id"].as_str().unwrap();
    let accepted = eventually(
        "the suggestion accepted",
        Duration::from_secs(30),
        || async {
            let items = app.items(&format!("/tasks/{sure_id}/suggestions")).await;
            items.first().filter(|s| s["status"] == "accepted").cloned()
        },
    )
    .await;
    let task: Value = app
        .client
        .get(app.url(&format!("/tasks/{sure_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["version"], 2);
    assert_eq!(task["priority"], "high");
    assert_eq!(task["assignee"], "ana");
    assert_eq!(task["due_at"], accepted["due_at"]);
    let left = suggestions_when(&app, unsure_id, 1).await;
    assert_eq!(left[0]["status"], "pending");
    assert_eq!(left[0]["confidence"], 40);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_accept_rule_accepts_confident_suggestions_through_the_command_and_leaves_the_rest()
{
    auto_accept_applies_confident_ones(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_accept_rule_accepts_confident_suggestions_through_the_command_and_leaves_the_rest_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the agent's auto-accept rule").await
    else {
        return;
    };
    auto_accept_applies_confident_ones(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_settings_stop_the_binary_at_start_with_one_line() {
    for (args, expected) in [
        (vec!["up", "--agent-auto-accept", "70"], "min-confidence=N"),
        (
            vec!["up", "--agent-auto-accept", "min-confidence=101"],
            "0 to 100",
        ),
        (
            vec!["agent", "--agent-model-url", "ftp://models.example"],
            "http(s) URL",
        ),
        (
            vec![
                "agent",
                "--agent-model-url",
                "http://user:key@127.0.0.1:9/v1",
            ],
            "without credentials",
        ),
        (
            vec!["agent", "--agent-assignees", "database"],
            "keyword=assignee",
        ),
        (
            vec!["agent", "--agent-max-requests-per-minute", "0"],
            "agent-max-requests-per-minute",
        ),
        (
            vec![
                "agent",
                "--agent-auto-accept",
                "min-confidence=70",
                "--data-dir",
                "/nonexistent/taskstream",
            ],
            "or --event-format json",
        ),
        (
            vec!["agent", "--event-format", "protobuf"],
            "invalid value 'protobuf' for '--event-format",
        ),
        (
            vec![
                "agent",
                "replay",
                "--from-beginning",
                "--max-model-requests",
                "0",
            ],
            "--max-model-requests",
        ),
        (
            vec![
                "agent",
                "ask",
                "--title",
                "x",
                "--reply-topic",
                "task-events",
                "--kafka-bootstrap",
                "127.0.0.1:9",
            ],
            "not a reply topic",
        ),
    ] {
        let (ok, _, stderr) = run(args.iter().map(|a| (*a).to_owned()).collect()).await;
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("user:key"), "{stderr}");
    }
}
