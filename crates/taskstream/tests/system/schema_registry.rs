//! Avro and the schema registry: outages, and the schema check that guards
//! the `schemas/` folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, ConsumerOptions};
use taskstream_avro::RegistryClient;
use taskstream_kafka::{read_topic, KafkaConfig};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{dead_letter_topic, EventEncoding, RelaySettings};
use taskstream_store::{AuditStore, OutboxStore, SqliteOptions};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::helpers::{client, eventually, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_down_at_start_writes_are_refused_then_events_flow_without_it() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let broker = crate::helpers::own_broker().await;
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let store = components::open_store(
        dir.path(),
        None,
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    // The registry's address, with nothing serving it yet.
    let (registry_addr, registry) = components::registry(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        "registry",
        &Default::default(),
    )
    .await
    .unwrap();
    registry.stop().await;
    let registry_client = Arc::new(RegistryClient::new(&format!("http://{registry_addr}")));
    let metrics = Metrics::new();
    let wake = Arc::new(Notify::new());
    let encoding = EventEncoding::avro(Arc::clone(&registry_client), TASK_EVENTS);
    let registration = components::register_schemas(&encoding)
        .await
        .unwrap()
        .expect("registration goes on in the background");
    let relay = components::relay(
        store.clone(),
        &kafka,
        wake.clone(),
        RelaySettings::default(),
        encoding.clone(),
        &metrics,
    )
    .unwrap();
    let options = ConsumerOptions {
        registry: Some(Arc::clone(&registry_client)),
        ..ConsumerOptions::default()
    };
    let auditor = components::auditor(
        store.clone(),
        Some(store.clone()),
        &kafka,
        None,
        &options,
        &metrics,
    )
    .unwrap();
    let (addr, http) = components::http(
        "127.0.0.1:0".parse().unwrap(),
        components::task_api(store.clone(), wake, encoding),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = client();
    let post = |path: String, body: Value| {
        client
            .post(format!("http://{addr}{path}"))
            .json(&body)
            .send()
    };
    let audited = || async { store.audit_entries(None, 100).await.unwrap().len() };

    // The schemas are not registered: a write is refused, and stores nothing.
    let refused = post("/tasks".into(), json!({ "title": "t" }))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:taskstream:problem:schemas-unregistered"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{problem}"
    );
    assert_eq!(store.outbox_stats().await.unwrap().total, 0);
    let listed: Value = client
        .get(format!("http://{addr}/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "{listed}");

    // The registry comes up: registration finishes and writes are taken.
    let (_, registry) =
        components::registry(registry_addr, dir.path(), "registry", &Default::default())
            .await
            .unwrap();
    let first = eventually("a write taken", Duration::from_secs(30), || async {
        let response = post("/tasks".into(), json!({ "title": "t" })).await.ok()?;
        if response.status() != 201 {
            return None;
        }
        let task: Value = response.json().await.ok()?;
        Some(task["id"].as_str()?.to_owned())
    })
    .await;
    eventually("the first event", Duration::from_secs(20), || async {
        (audited().await == 1).then_some(())
    })
    .await;

    // Down again. Every type's id is cached: the API stores and the relay
    // publishes task.completed, which nobody published before.
    registry.stop().await;
    let done = post(format!("/tasks/{first}/complete"), json!({}))
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "the API takes the write");
    eventually("the relay to publish", Duration::from_secs(20), || async {
        (store.outbox_stats().await.ok()?.pending == 0).then_some(())
    })
    .await;
    // The auditor has not seen that schema id yet: it waits for the registry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audited().await, 1, "nothing was read without its schema");

    // The registry comes back: the event is read, nothing dead-lettered.
    let (_, registry) =
        components::registry(registry_addr, dir.path(), "registry", &Default::default())
            .await
            .unwrap();
    eventually(
        "the completion audited",
        Duration::from_secs(60),
        || async { (audited().await == 2).then_some(()) },
    )
    .await;
    let dead = read_topic(
        &kafka,
        &dead_letter_topic(TASK_EVENTS),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(dead.is_empty(), "nothing was dead-lettered");

    for c in [http, relay, auditor, registry, registration] {
        c.stop().await;
    }
    store.close().await;
    crate::helpers::stop_broker(broker).await;
}

fn copy_schemas(to: &Path) {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Adds a field to `task_created.avsc`'s top level.
fn add_field(schemas: &Path, field: Value) {
    let path = schemas.join("task_created.avsc");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    schema["fields"].as_array_mut().unwrap().push(field);
    std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
}

fn schema_check(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["schema", "check", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn schema_check_passes_the_repository_and_refuses_a_required_field_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    copy_schemas(tmp.path());
    let schemas = tmp.path().join("schemas");
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("TaskCreated: BACKWARD with v1, v2"), "{text}");

    // A new optional field with a default is a compatible change...
    add_field(
        &schemas,
        json!({ "name": "labels", "type": { "type": "array", "items": "string" }, "default": [] }),
    );
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(ok, "{text}");
    // ...a new required field is not, and the message names it.
    add_field(
        &schemas,
        json!({ "name": "priority_reason", "type": "string" }),
    );
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL") && text.contains("'priority_reason'"),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("error: 1 schema(s) incompatible"),
        "{text}"
    );
    // NONE accepts anything.
    let (ok, text) = schema_check(&schemas, &["--level", "NONE"]);
    assert!(ok, "{text}");
}

#[test]
fn schema_check_refuses_a_record_moved_to_another_namespace_and_a_recorded_record_that_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    copy_schemas(tmp.path());
    let schemas = tmp.path().join("schemas");
    let path = schemas.join("task_completed.avsc");

    // Same simple name, another namespace: Avro's own check passes it, but
    // readers look the writer's schema up by full name.
    let original = std::fs::read_to_string(&path).unwrap();
    let mut schema: Value = serde_json::from_str(&original).unwrap();
    schema["namespace"] = json!("acme.events");
    std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "FAIL  acme.events.TaskCompleted: v1 is taskstream.events.TaskCompleted; a reader finds"
        ),
        "{text}"
    );

    // Renamed to a new simple name: the recorded TaskCompleted has no schema left.
    schema["namespace"] = json!("taskstream.events");
    schema["name"] = json!("TaskFinished");
    std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL  TaskCompleted: recorded in history/, but no schema"),
        "{text}"
    );

    // Put back, it passes again.
    std::fs::write(&path, original).unwrap();
    let (ok, text) = schema_check(&schemas, &[]);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_check_asks_the_registry_when_given_one() {
    let app = spawn_app().await;
    // Events of every type register every schema.
    let id = app.created("t", None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.client
        .patch(app.url(&format!("/tasks/{id}")))
        .json(&json!({ "title": "u" }))
        .send()
        .await
        .unwrap();
    app.complete(&id).await;
    app.delete(&id).await;
    app.audit_when(4).await;
    let registry = app.system.registry_url().unwrap().to_owned();

    let tmp = tempfile::tempdir().unwrap();
    copy_schemas(tmp.path());
    let schemas = tmp.path().join("schemas");
    let (ok, text) = tokio::task::spawn_blocking({
        let (schemas, registry) = (schemas.clone(), registry.clone());
        move || schema_check(&schemas, &["--schema-registry", &registry])
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "ok    taskstream.events.TaskCompleted (task-events-taskstream.events.TaskCompleted)"
        ),
        "{text}"
    );
    // Moved to another namespace: a subject the registry does not have,
    // said as such rather than "ok".
    let completed = schemas.join("task_completed.avsc");
    let original = std::fs::read_to_string(&completed).unwrap();
    let mut moved: Value = serde_json::from_str(&original).unwrap();
    moved["namespace"] = json!("acme.events");
    std::fs::write(&completed, serde_json::to_string_pretty(&moved).unwrap()).unwrap();
    let (ok, text) = tokio::task::spawn_blocking({
        let (schemas, registry) = (schemas.clone(), registry.clone());
        move || schema_check(&schemas, &["--schema-registry", &registry])
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("new   acme.events.TaskCompleted (task-events-acme.events.TaskCompleted): the registry has no version of it"),
        "{text}"
    );
    std::fs::write(&completed, original).unwrap();
    add_field(
        &schemas,
        json!({ "name": "priority_reason", "type": "string" }),
    );
    let (ok, text) = tokio::task::spawn_blocking(move || {
        schema_check(&schemas, &["--schema-registry", &registry])
    })
    .await
    .unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("'priority_reason'"), "{text}");
    app.system.shutdown().await;
}
