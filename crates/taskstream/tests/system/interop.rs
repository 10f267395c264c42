//! confluent-kafka-python, a client nobody on this team wrote, reads the
//! task-event topic from the dev broker — decoding the Avro values with its
//! own SchemaRegistryClient and AvroDeserializer against our embedded
//! registry — and sees what we claim to publish.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use taskstream_store::AuditStore;

use crate::helpers::spawn_app;

/// The Python with confluent-kafka installed: `TASKSTREAM_PYTHON`, else the
/// workspace's `.venv` (which `.ci/run` creates).
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TASKSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    let ok = Command::new(&candidate)
        .args(["-c", "import confluent_kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(candidate)
}

/// Reports a check that needs confluent-kafka-python as skipped, loudly —
/// or fails it when `TASKSTREAM_REQUIRE_INTEROP` says it must run (CI).
pub fn skip_or_fail(what: &str) {
    assert!(
        std::env::var_os("TASKSTREAM_REQUIRE_INTEROP").is_none(),
        "TASKSTREAM_REQUIRE_INTEROP is set but confluent-kafka is not importable"
    );
    eprintln!(
        "SKIPPED: {what} — run `python3 -m venv .venv && .venv/bin/pip install -r crates/taskstream/tests/interop/requirements.txt` (or .ci/run)"
    );
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_task_events.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_reads_keys_headers_and_event_types() {
    let Some(python) = python() else {
        skip_or_fail("reading task events with confluent-kafka-python");
        return;
    };
    let app = spawn_app().await;
    let a = app.created("read me", Some("ana")).await;
    let b = app.created("and me", None).await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(app.complete(&a_id).await.status(), 200);
    assert_eq!(app.delete(&b_id).await.status(), 200);
    let audit = app.audit_when(4).await;

    let bootstrap = app.system.kafka_bootstrap().to_owned();
    let registry = app
        .system
        .registry_url()
        .expect("up serves a registry")
        .to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script())
            .args(["--registry", &registry])
            .args([
                "--bootstrap",
                &bootstrap,
                "--topic",
                "task-events",
                "--count",
                "4",
                "--timeout",
                "30",
            ])
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);

    for r in &records {
        let value = &r["value"];
        // Key = task id = envelope subject; headers carry id and type.
        assert_eq!(r["key"], value["subject"]);
        assert_eq!(r["headers"]["id"], value["id"]);
        assert_eq!(r["headers"]["type"], value["type"]);
        assert_eq!(
            r["headers"]["content-type"],
            "application/vnd.taskstream.avro"
        );
        // The Confluent wire format: magic byte 0, then the id of the schema
        // registered for the event's record.
        assert_eq!(r["magic"], 0);
        let record = match r["headers"]["type"].as_str().unwrap() {
            "task.created" => "TaskCreated",
            "task.completed" => "TaskCompleted",
            "task.deleted" => "TaskDeleted",
            other => panic!("unexpected {other}"),
        };
        let subject = format!("task-events-taskstream.events.{record}");
        let latest: Value = crate::helpers::client()
            .get(format!(
                "{}/subjects/{subject}/versions/latest",
                app.system.registry_url().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["schema_id"], latest["id"], "{subject}");
        // The audit service saw the same record at the same place.
        let seen = audit
            .iter()
            .find(|e| e["event_id"] == value["id"])
            .expect("audited");
        assert_eq!(seen["partition"], r["partition"]);
        assert_eq!(seen["offset"], r["offset"]);
    }
    let of = |id: &str| -> Vec<String> {
        let mut v: Vec<(i64, String)> = records
            .iter()
            .filter(|r| r["key"] == id)
            .map(|r| {
                (
                    r["offset"].as_i64().unwrap(),
                    r["headers"]["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t).collect()
    };
    assert_eq!(of(&a_id), ["task.created", "task.completed"]);
    assert_eq!(of(&b_id), ["task.created", "task.deleted"]);
    // One task's events share a partition.
    let partitions: std::collections::HashSet<&Value> = records
        .iter()
        .filter(|r| r["key"] == a_id.as_str())
        .map(|r| &r["partition"])
        .collect();
    assert_eq!(partitions.len(), 1);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_avro_serializer_registers_and_produces_what_our_consumers_read() {
    let Some(python) = python() else {
        skip_or_fail("producing Avro with confluent-kafka-python's AvroSerializer");
        return;
    };
    let app = spawn_app().await;
    // Our relay registers TaskCreated v2 first...
    app.created("ours", Some("ana")).await;
    app.audit_when(1).await;
    // ...then Python registers v1 of the same record and produces with it.
    let bootstrap = app.system.kafka_bootstrap().to_owned();
    let registry = app.system.registry_url().unwrap().to_owned();
    let schema =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/history/TaskCreated/v1.avsc");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/produce_avro.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--bootstrap", &bootstrap, "--registry", &registry])
            .arg("--schema")
            .arg(schema)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let produced: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The registry holds both versions of the subject now.
    let client = crate::helpers::client();
    let subject = "task-events-taskstream.events.TaskCreated";
    let versions: Value = client
        .get(format!(
            "{}/subjects/{subject}/versions",
            app.system.registry_url().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions, serde_json::json!([1, 2]));

    // Our consumers read the v1 record: the audit log has it, with the
    // field v1 lacks left at its default, and the notifier acted on it.
    let audit = app.audit_when(2).await;
    let entry = audit
        .iter()
        .find(|e| e["event_id"] == produced["event_id"])
        .expect("audited");
    assert_eq!(entry["correlation_id"], "from-python");
    let stored = app
        .system
        .audit_store()
        .audit_entries(produced["task_id"].as_str(), 10)
        .await
        .unwrap();
    let envelope: Value = serde_json::from_str(&stored[0].envelope).unwrap();
    assert_eq!(envelope["source"], "python/confluent-kafka");
    assert!(
        envelope.get("traceparent").is_none(),
        "v1 has no traceparent; the v2 reader sees the default"
    );
    let notes = app.notifications_when(2).await;
    assert!(notes
        .iter()
        .any(|n| n["task_id"] == produced["task_id"] && n["recipient"] == "py"));
    app.system.shutdown().await;
}
