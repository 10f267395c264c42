//! Lesson 21's acceptance scenarios (examples/capstone/spec.md), run
//! against its reference solution (examples/capstone/inbox.py, a
//! confluent-kafka-python service) and a fresh `taskstream up`, the real
//! binary: the inbox is added to taskstream without changing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::ChildGuard;
use crate::helpers::{client, eventually, try_items};
use crate::interop::{python, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `taskstream up` and the inbox's database beside it.
struct System {
    _up: ChildGuard,
    data: tempfile::TempDir,
    http: String,
    python: PathBuf,
    db: PathBuf,
}

impl System {
    fn start(python: PathBuf) -> Self {
        let data = tempfile::tempdir().unwrap();
        let (up, http) = crate::sagas::start_up(data.path(), &[]);
        let db = data.path().join("inbox.db");
        Self {
            _up: up,
            data,
            http,
            python,
            db,
        }
    }

    /// `taskstream endpoints NAME` of this system.
    fn endpoint(&self, name: &str) -> String {
        let out = Command::new(BIN)
            .args(["endpoints", name])
            .env("TASKSTREAM_DATA_DIR", self.data.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "taskstream endpoints {name}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts the reference inbox service, as the lesson runs it.
    fn inbox(&self) -> ChildGuard {
        let child = Command::new(&self.python)
            .arg(repo().join("examples/capstone/inbox.py"))
            .args(["run", "--db"])
            .arg(&self.db)
            .args(["--bootstrap", &self.endpoint("kafka")])
            .args(["--registry", &self.endpoint("schema-registry")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        ChildGuard(child)
    }

    fn inbox_command(&self, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .arg(repo().join("examples/capstone/inbox.py"))
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inbox.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn stats(&self) -> Value {
        if !self.db.exists() {
            return json!({});
        }
        serde_json::from_str(&self.inbox_command(&["stats"])).unwrap()
    }

    /// `(kind, task id)` of each notification in `person`'s inbox, oldest first.
    fn inbox_of(&self, person: &str) -> Vec<(String, String)> {
        self.inbox_command(&["list", person])
            .lines()
            .map(|line| {
                let kind = line.split_whitespace().next().unwrap().to_owned();
                let id = line
                    .rsplit_once('(')
                    .and_then(|(_, id)| id.strip_suffix(')'))
                    .unwrap()
                    .to_owned();
                (kind, id)
            })
            .collect()
    }

    /// Waits until `person`'s inbox holds `n` notifications and returns them.
    async fn inbox_when(&self, person: &str, n: usize) -> Vec<(String, String)> {
        eventually(
            &format!("{n} notifications for {person}"),
            Duration::from_secs(60),
            || async {
                let inbox = self.inbox_of(person);
                (inbox.len() >= n).then_some(inbox)
            },
        )
        .await
    }

    async fn create(&self, title: &str, assignee: Option<&str>) -> String {
        let response = client()
            .post(format!("{}/tasks", self.http))
            .json(&json!({ "title": title, "assignee": assignee }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating {title}");
        let task: Value = response.json().await.unwrap();
        task["id"].as_str().unwrap().to_owned()
    }

    async fn patch(&self, id: &str, body: Value) {
        let response = client()
            .patch(format!("{}/tasks/{id}", self.http))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "PATCH {id} {body}");
    }

    async fn send(&self, method: reqwest::Method, path: &str) {
        let response = client()
            .request(method.clone(), format!("{}{path}", self.http))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
    }

    async fn task(&self, id: &str) -> Value {
        client()
            .get(format!("{}/tasks/{id}", self.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn kinds(inbox: &[(String, String)], task: &str) -> Vec<String> {
    inbox
        .iter()
        .filter(|(_, id)| id == task)
        .map(|(kind, _)| kind.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capstone_inbox_passes_its_acceptance_scenarios_against_a_fresh_up() {
    let Some(python) = python() else {
        skip_or_fail("the capstone's acceptance scenarios");
        return;
    };
    let system = System::start(python);
    let _inbox = system.inbox();

    // US1 / 1: created assigned to bo: one notification, and the audit log
    // has the same event.
    let a = system.create("Write the capstone spec", Some("bo")).await;
    assert_eq!(
        system.inbox_when("bo", 1).await,
        [("assigned".into(), a.clone())]
    );
    eventually(
        "the audit log recording the task's creation",
        Duration::from_secs(60),
        || async {
            try_items(&client(), &system.http, &format!("/audit?task_id={a}"))
                .await?
                .iter()
                .any(|e| e["event_type"] == "task.created")
                .then_some(())
        },
    )
    .await;

    // US1 / 2: reassigned to cy: cy assigned, bo unassigned.
    system.patch(&a, json!({ "assignee": "cy" })).await;
    assert_eq!(kinds(&system.inbox_when("cy", 1).await, &a), ["assigned"]);
    assert_eq!(
        kinds(&system.inbox_when("bo", 2).await, &a),
        ["assigned", "unassigned"]
    );

    // US3 / 1: completed: its assignee is told.
    system
        .send(reqwest::Method::POST, &format!("/tasks/{a}/complete"))
        .await;
    assert_eq!(
        kinds(&system.inbox_when("cy", 2).await, &a),
        ["assigned", "completed"]
    );

    // US1 / 3 and US3 / 2: an unassigned task's edit and an assigned task's
    // deletion notify nobody; a later task (the sentinel) shows the inbox
    // read past them.
    let b = system.create("Nobody's task", None).await;
    system
        .patch(&b, json!({ "title": "Still nobody's task" }))
        .await;
    let d = system.create("Deleted soon", Some("dee")).await;
    system
        .send(reqwest::Method::DELETE, &format!("/tasks/{d}"))
        .await;

    // US3 / 3: bo declines through the assignment saga: bo unassigned, the
    // team queue assigned.
    let e = system.create("Declined by bo", Some("bo")).await;
    eventually(
        "the saga asking bo to accept",
        Duration::from_secs(60),
        || async {
            (system.task(&e).await["saga"]["state"] == "awaiting_acceptance").then_some(())
        },
    )
    .await;
    system
        .send(reqwest::Method::POST, &format!("/tasks/{e}/decline"))
        .await;
    assert_eq!(
        kinds(&system.inbox_when("team-queue", 1).await, &e),
        ["assigned"]
    );
    assert_eq!(
        kinds(&system.inbox_when("bo", 4).await, &e),
        ["assigned", "unassigned"]
    );

    // US4: a record that is not Avro goes to the inbox's DLQ, unchanged and
    // labelled, and the next task is still notified.
    let kafka = system.endpoint("kafka");
    let poison = Command::new(&system.python)
        .arg(repo().join("examples/python/poison.py"))
        .env("KAFKA_BOOTSTRAP", &kafka)
        .output()
        .unwrap();
    assert!(poison.status.success(), "{poison:?}");
    let sentinel = system.create("After the poison", Some("sentinel")).await;
    assert_eq!(
        system.inbox_when("sentinel", 1).await,
        [("assigned".into(), sentinel)]
    );
    let stats = system.stats();
    assert_eq!(stats["dead_lettered"], 1, "{stats}");
    let dlq = Command::new(&system.python)
        .args(["-c", READ_DLQ, &kafka])
        .output()
        .unwrap();
    let dlq = String::from_utf8_lossy(&dlq.stdout);
    assert!(
        dlq.contains("key=task-poison")
            && dlq.contains("value-unchanged=True")
            && dlq.contains("source-topic=task-events")
            && dlq.contains("error="),
        "the DLQ record: {dlq}"
    );

    // Nothing else was notified: dee only for the assignment of the task
    // deleted later, nobody for the unassigned task.
    assert_eq!(kinds(&system.inbox_of("dee"), &d), ["assigned"]);
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(
        stats["by_kind"],
        json!({ "assigned": 6, "unassigned": 2, "completed": 1 }),
        "{stats}"
    );

    // US5: the operator sees the group's lag.
    let lag = Command::new(BIN)
        .args(["lag", "--group", "capstone-inbox", "--samples", "2"])
        .env("TASKSTREAM_DATA_DIR", system.data.path())
        .output()
        .unwrap();
    let lag = String::from_utf8_lossy(&lag.stdout);
    assert!(lag.contains("capstone-inbox"), "taskstream lag: {lag}");
}

/// Reads the inbox's dead-letter topic with confluent-kafka-python and
/// prints its record's key, whether its value is the poison's, and headers.
const READ_DLQ: &str = r#"
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "dlq-check",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe(["capstone-inbox.dlq"])
for _ in range(60):
    m = c.poll(0.5)
    if m is not None and not m.error():
        print("key=" + m.key().decode())
        print("value-unchanged=" + str(m.value() == b"\x00\x00\x00\x00\x01this is not Avro"))
        for k, v in m.headers():
            print(f"{k}={v.decode()}")
        break
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capstone_inbox_killed_during_200_creations_notifies_each_person_exactly_once() {
    let Some(python) = python() else {
        skip_or_fail("the capstone's crash scenario");
        return;
    };
    let system = System::start(python);
    let mut inbox = system.inbox();

    // The first 40 go out before the kill, the rest once it happened (the
    // inbox is down for the first of them): a slow poll of the inbox's
    // stats cannot let every task be stored before the kill.
    let (killed, mut kill_seen) = tokio::sync::oneshot::channel::<()>();
    let http = system.http.clone();
    let creations = tokio::spawn(async move {
        let client = client();
        for i in 0..200 {
            if i == 40 {
                (&mut kill_seen).await.unwrap();
            }
            let response = client
                .post(format!("{http}/tasks"))
                .json(&json!({ "title": format!("task {i}"), "assignee": format!("person-{i}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // US2 / 1: SIGKILL once it has stored some, while tasks keep coming.
    eventually(
        "the inbox storing its first notifications",
        Duration::from_secs(60),
        || async { (system.stats()["notifications"].as_u64().unwrap_or(0) >= 20).then_some(()) },
    )
    .await;
    inbox.0.kill().unwrap();
    inbox.0.wait().unwrap();
    killed.send(()).unwrap();
    // US2 / 2: tasks created while it is down are notified after its restart.
    let stored_when_killed = system.stats()["notifications"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restarted = system.inbox();
    creations.await.unwrap();

    let stats = eventually(
        "an assigned notification for each of the 200 tasks",
        Duration::from_secs(120),
        || async {
            let stats = system.stats();
            (stats["by_kind"]["assigned"].as_u64() == Some(200)).then_some(stats)
        },
    )
    .await;
    assert!(stored_when_killed < 200, "the kill came mid-stream");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(stats["notifications"], 200, "{stats}");
    for i in [0, 57, 123, 199] {
        let person = format!("person-{i}");
        assert_eq!(system.inbox_of(&person).len(), 1, "{person}'s inbox");
    }
}
