//! The real `taskstream` binary, as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{client, items_when};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// Kills the child if the test fails before it could stop it.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_its_endpoints_serves_the_loop_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildGuard(
        Command::new(BIN)
            .args(["up", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("endpoints printed")
        .unwrap();
    let http = lines[0]
        .strip_prefix("http: ")
        .expect("first line names the HTTP endpoint")
        .to_owned();
    let kafka = lines[1]
        .strip_prefix("kafka: ")
        .expect("second line names the broker")
        .to_owned();
    assert!(http.starts_with("http://127.0.0.1:"));
    assert!(kafka.starts_with("127.0.0.1:"));
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("endpoints.json")).unwrap()).unwrap();
    assert_eq!(endpoints["http"], http.as_str());
    assert_eq!(endpoints["kafka"], kafka.as_str());

    let client = client();
    assert_eq!(
        client
            .get(format!("{http}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut ids = Vec::new();
    for i in 0..20 {
        let task: Value = client
            .post(format!("{http}/tasks"))
            .json(&serde_json::json!({ "title": format!("task {i}") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..10] {
        let status = client
            .post(format!("{http}/tasks/{id}/complete"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let audit = items_when(&client, &http, "/audit", 30).await;
    let distinct: std::collections::HashSet<&str> = audit
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!((audit.len(), distinct.len()), (30, 30));

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.0.wait();
        (status, child)
    });
    let (status, _child) = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.unwrap().success(), "exit code 0 after SIGTERM");
}

#[test]
fn components_without_kafka_fail_with_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    for component in ["relay", "auditor", "notifier"] {
        let out = Command::new(BIN)
            .arg(component)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("--kafka-bootstrap"),
            "{stderr}"
        );
    }
    let bad = Command::new(BIN)
        .args(["up", "--http", "not-an-address"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--http"));
    let bad = Command::new(BIN)
        .args([
            "relay",
            "--kafka-bootstrap",
            "x:1",
            "--kafka-property",
            "novalue",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));
}

#[test]
fn topics_list_json_prints_the_declared_topics() {
    let out = Command::new(BIN)
        .args(["topics", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let topics: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let task_events = topics
        .iter()
        .find(|t| t["name"] == "task-events")
        .expect("task-events declared");
    assert_eq!(task_events["partitions"], 6);
    assert_eq!(task_events["replication_factor"], 3);
}

/// The arguments of `taskstream up` on `data_dir` with free HTTP and
/// registry ports.
pub fn up_args(data_dir: &str) -> Vec<&str> {
    vec![
        "up",
        "--http",
        "127.0.0.1:0",
        "--registry-http",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ]
}

/// Starts the binary with `args` and returns it with the first line it
/// prints on stdout; the rest of its stdout is drained, so the pipe neither
/// fills up nor closes under it. Standard error goes to `stderr`.
pub fn launch(args: &[&str], rust_log: &str, stderr: Stdio) -> (ChildGuard, String) {
    let mut child = ChildGuard(
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    (child, first)
}

/// [`launch`] with `--data-dir dir`, logging warnings to the test's stderr.
fn spawn_printing(args: &[&str], dir: &std::path::Path) -> (ChildGuard, String) {
    let dir = dir.to_str().unwrap();
    let args: Vec<&str> = args.iter().copied().chain(["--data-dir", dir]).collect();
    launch(&args, "warn", Stdio::inherit())
}

fn terminate(child: &mut ChildGuard) -> std::process::ExitStatus {
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    child.0.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_runs_alone_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, line) = launch(&["dev-broker"], "warn", Stdio::null());
    let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();

    let (mut registry, registry_line) =
        spawn_printing(&["registry", "--http", "127.0.0.1:0"], dir.path());
    let registry_url = registry_line
        .strip_prefix("schema-registry: ")
        .unwrap()
        .to_owned();
    let (mut api, http) = spawn_printing(
        &[
            "api",
            "--http",
            "127.0.0.1:0",
            "--schema-registry",
            &registry_url,
        ],
        dir.path(),
    );
    let api_url = http.strip_prefix("http: ").unwrap().to_owned();
    let (mut relay, relay_http) = spawn_printing(
        &[
            "relay",
            "--http",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            &kafka,
            "--schema-registry",
            &registry_url,
        ],
        dir.path(),
    );
    let (mut auditor, audit_http) = spawn_printing(
        &[
            "auditor",
            "--http",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            &kafka,
            "--schema-registry",
            &registry_url,
        ],
        dir.path(),
    );
    let audit_url = audit_http.strip_prefix("http: ").unwrap().to_owned();
    let (mut agent, agent_http) = spawn_printing(
        &[
            "agent",
            "--http",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            &kafka,
            "--schema-registry",
            &registry_url,
        ],
        dir.path(),
    );
    let agent_url = agent_http.strip_prefix("http: ").unwrap().to_owned();

    let client = client();
    let task: Value = client
        .post(format!("{api_url}/tasks"))
        .json(&serde_json::json!({ "title": "across processes" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    // The relay polls the shared database; the auditor reads the topic.
    let audited = items_when(&client, &audit_url, &format!("/audit?task_id={id}"), 1).await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    // The API's view of the audit log reads the auditor's own file.
    let seen_by_api = items_when(&client, &api_url, &format!("/audit?task_id={id}"), 1).await;
    assert_eq!(seen_by_api, audited);
    // The agent, in its own process, suggested through the shared database.
    let suggested = items_when(&client, &api_url, &format!("/tasks/{id}/suggestions"), 1).await;
    assert_eq!(suggested[0]["model"], "local");
    let agent_ready = client
        .get(format!("{agent_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(agent_ready.status(), 200);
    let relay_url = relay_http.strip_prefix("http: ").unwrap().to_owned();
    let ready = client
        .get(format!("{relay_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client
        .get(format!("{relay_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("taskstream_relay_events_published_total 1"),
        "{metrics}"
    );

    // The API registered every event type's schema with the standalone
    // registry when it started.
    let subjects: Value = client
        .get(format!("{registry_url}/subjects"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        subjects,
        serde_json::json!([
            "task-events-taskstream.events.TaskCompleted",
            "task-events-taskstream.events.TaskCreated",
            "task-events-taskstream.events.TaskDeleted",
            "task-events-taskstream.events.TaskUpdated"
        ])
    );
    for child in [
        &mut api,
        &mut relay,
        &mut auditor,
        &mut agent,
        &mut registry,
        &mut broker,
    ] {
        assert!(terminate(child).success());
    }
}

/// `taskstream dev-broker --data-dir D` keeps its topics and records in
/// `D/broker`: stopped and started again, it serves what it acknowledged,
/// at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_dev_broker_keeps_its_records_in_its_data_dir_across_restarts() {
    use taskstream_kafka::{
        read_topic, EventProducer, KafkaConfig, OutboundRecord, ProducerSettings,
    };
    use taskstream_services::topics::TASK_EVENTS;

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let args = [
        "dev-broker",
        "--data-dir",
        data_dir,
        "--broker-flush",
        "ack",
    ];
    let (mut broker, line) = launch(&args, "warn", Stdio::inherit());
    let kafka = KafkaConfig::new(line.strip_prefix("kafka: ").unwrap());
    let producer = EventProducer::new(&kafka, "test", &ProducerSettings::default()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let key = format!("task-{i}");
        let payload = format!("event {i}");
        let delivery = producer
            .enqueue(OutboundRecord {
                topic: TASK_EVENTS,
                key: key.as_bytes(),
                payload: payload.as_bytes(),
                headers: &[],
            })
            .await
            .unwrap()
            .await
            .unwrap();
        acknowledged.push(((delivery.partition, delivery.offset), payload.into_bytes()));
    }
    drop(producer);
    assert!(terminate(&mut broker).success(), "clean exit");
    assert!(dir.path().join("broker/topics/task-events").is_dir());

    let (mut broker, line) = launch(&args, "warn", Stdio::inherit());
    let kafka = KafkaConfig::new(line.strip_prefix("kafka: ").unwrap());
    let records = read_topic(&kafka, TASK_EVENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let mut read: Vec<_> = records
        .into_iter()
        .map(|r| ((r.partition, r.offset), r.payload.unwrap()))
        .collect();
    read.sort();
    acknowledged.sort();
    assert_eq!(read, acknowledged);
    assert!(terminate(&mut broker).success(), "clean exit");
}

#[test]
fn dev_broker_flags_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // Each refusal names the flag and what it takes.
    for (command, flag, value, hint) in [
        ("up", "--dev-broker", "kafka", "taskstream, mock"),
        (
            "up",
            "--broker-flush",
            "0",
            "expected `ack` or milliseconds",
        ),
        (
            "dev-broker",
            "--broker-flush",
            "1s",
            "expected `ack` or milliseconds",
        ),
        (
            "dev-broker",
            "--listen",
            "localhost",
            "invalid socket address",
        ),
    ] {
        let out = Command::new(BIN)
            .args([command, &format!("{flag}={value}")])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} {flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{command} {flag} {value}: {stderr}");
        assert!(stderr.contains(hint), "{command} {flag} {value}: {stderr}");
    }
    assert!(!dir.path().join("broker").exists(), "nothing started");
}
