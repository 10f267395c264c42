//! The assignment saga through the real `taskstream up`: accepted,
//! declined, timed out, over capacity, and across a SIGKILL, as a user sees
//! it over HTTP and on `task-sagas` — on the broker `up` embeds, and for
//! the accepted and the over-capacity paths on Apache Kafka too
//! (`up --kafka-bootstrap`).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use taskstream_testkit::Shape;

use crate::binary::{launch, ChildGuard};
use crate::brokers::Broker;
use crate::helpers::{client, eventually};

/// `taskstream up` on `dir`, on the broker it embeds, with the saga's flags
/// `saga_args`.
pub fn start_up(dir: &std::path::Path, saga_args: &[&str]) -> (ChildGuard, String) {
    start_up_on(&Broker::Dev, dir, saga_args)
}

/// `taskstream up` on `dir` and `broker` with the saga's flags `saga_args`.
pub fn start_up_on(
    broker: &Broker,
    dir: &std::path::Path,
    saga_args: &[&str],
) -> (ChildGuard, String) {
    let broker_args = broker.up_args();
    let mut args = vec![
        "up",
        "--http",
        "127.0.0.1:0",
        "--registry-http",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    if !saga_args.contains(&"--saga-poll-interval") {
        args.extend(["--saga-poll-interval", "200ms"]);
    }
    args.extend_from_slice(saga_args);
    args.extend(broker_args.iter().map(String::as_str));
    let (child, line) = launch(&args, "warn,librdkafka=off", Stdio::null());
    (child, line.strip_prefix("http: ").unwrap().to_owned())
}

pub async fn get(client: &reqwest::Client, url: String) -> Option<Value> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The task's current saga (via the task's link), once it has one.
pub async fn saga_of(client: &reqwest::Client, base: &str, task_id: &str) -> Option<Value> {
    let task = get(client, format!("{base}/tasks/{task_id}")).await?;
    let href = task["saga"]["href"].as_str()?;
    get(client, format!("{base}{href}")).await
}

/// Waits until the task's saga is in `state`, and returns it.
pub async fn saga_when(client: &reqwest::Client, base: &str, task_id: &str, state: &str) -> Value {
    eventually(
        &format!("the saga of {task_id} to be {state}"),
        Duration::from_secs(30),
        || async {
            saga_of(client, base, task_id)
                .await
                .filter(|s| s["state"] == state)
        },
    )
    .await
}

pub async fn create(client: &reqwest::Client, base: &str, title: &str, assignee: &str) -> String {
    let response = client
        .post(format!("{base}/tasks"))
        .json(&json!({ "title": title, "assignee": assignee }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

pub async fn answer(
    client: &reqwest::Client,
    base: &str,
    task_id: &str,
    what: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/tasks/{task_id}/{what}"))
        .send()
        .await
        .unwrap()
}

fn steps(saga: &Value) -> Vec<String> {
    saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect()
}

async fn problem_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    response.json().await.unwrap()
}

pub fn terminate(child: &mut ChildGuard) {
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.0.wait().unwrap().success(), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_assignment_completes_its_saga_and_an_answer_after_the_end_is_refused_with_409()
{
    an_accepted_assignment_completes_its_saga(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_assignment_completes_its_saga_and_an_answer_after_the_end_is_refused_with_409_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the accepted saga").await else {
        return;
    };
    an_accepted_assignment_completes_its_saga(&kafka).await;
}

/// An accepted assignment on `broker`: the saga completes, the same answer
/// again changes nothing, any other answer is a 409, and so is an answer
/// for a task without a saga; the notifier announced the request.
async fn an_accepted_assignment_completes_its_saga(broker: &Broker) {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up_on(broker, dir.path(), &[]);
    let client = client();
    let task = create(&client, &base, "write the runbook", "ana").await;
    let waiting = saga_when(&client, &base, &task, "awaiting_acceptance").await;
    assert_eq!(steps(&waiting), ["started", "acceptance_requested"]);
    assert_eq!(waiting["assignee"], "ana");
    assert!(waiting["deadline_at"].is_string());
    // The first step was caused by the task event that started the saga.
    assert_eq!(
        waiting["history"][0]["causation_id"],
        waiting["trigger_event_id"]
    );
    assert_eq!(
        waiting["history"][1]["causation_id"],
        waiting["history"][0]["event_id"]
    );

    let accepted = answer(&client, &base, &task, "accept").await;
    assert_eq!(accepted.status(), 200);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["state"], "completed");
    assert_eq!(accepted["outcome"], "accepted");
    // The same answer again is harmless: the same saga, no second step.
    let again = answer(&client, &base, &task, "accept").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        steps(&again),
        ["started", "acceptance_requested", "accepted"]
    );
    // Any other answer once it ended is a conflict.
    let refused = problem_of(answer(&client, &base, &task, "decline").await, 409).await;
    assert!(
        refused["detail"].as_str().unwrap().contains("completed"),
        "{refused}"
    );
    // A task that never had a saga has nothing to answer: the task exists,
    // so not 404 but a conflict with its state.
    let unassigned = client
        .post(format!("{base}/tasks"))
        .json(&json!({ "title": "nobody's" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let id = unassigned["id"].as_str().unwrap();
    let refused = problem_of(answer(&client, &base, id, "accept").await, 409).await;
    assert!(
        refused["detail"].as_str().unwrap().contains("has no saga"),
        "{refused}"
    );
    let task_view = get(&client, format!("{base}/tasks/{id}")).await.unwrap();
    assert!(task_view.get("saga").is_none(), "no link without a saga");
    // No such task at all: 404.
    let missing = uuid::Uuid::now_v7().to_string();
    problem_of(answer(&client, &base, &missing, "decline").await, 404).await;
    problem_of(
        client
            .get(format!("{base}/sagas/{}", uuid::Uuid::now_v7()))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // The assignee was asked: the notifier announced the saga's request.
    eventually("the request announced", Duration::from_secs(30), || async {
        let notes = get(&client, format!("{base}/notifications?task_id={task}")).await?;
        notes["items"]
            .as_array()?
            .iter()
            .any(|n| n["kind"] == "saga_acceptance_requested" && n["recipient"] == "ana")
            .then_some(())
    })
    .await;
    // Every saga route is in the OpenAPI document.
    let openapi = get(&client, format!("{base}/openapi.json")).await.unwrap();
    for path in ["/sagas/{id}", "/tasks/{id}/accept", "/tasks/{id}/decline"] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
    terminate(&mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_assignment_is_unassigned_escalated_and_notified_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up(dir.path(), &["--saga-team-queue", "triage"]);
    let client = client();
    let task = create(&client, &base, "rotate the keys", "bo").await;
    saga_when(&client, &base, &task, "awaiting_acceptance").await;
    let declined = answer(&client, &base, &task, "decline").await;
    assert_eq!(declined.status(), 200);
    let done = saga_when(&client, &base, &task, "compensated").await;
    assert_eq!(done["outcome"], "declined");
    assert_eq!(done["holds_capacity"], false);
    assert_eq!(
        steps(&done),
        [
            "started",
            "acceptance_requested",
            "declined",
            "unassigned",
            "capacity_released",
            "escalated"
        ]
    );
    // The task went through the Task API's write path: unassigned, then
    // escalated to the team queue, each a task.updated on the outbox.
    let current = get(&client, format!("{base}/tasks/{task}")).await.unwrap();
    assert_eq!(current["assignee"], "triage");
    assert_eq!(current["version"], 3);
    assert_eq!(
        current["saga"]["id"], done["id"],
        "the queue starts no saga"
    );
    let audit = eventually(
        "the compensation audited",
        Duration::from_secs(30),
        || async {
            let audit = get(&client, format!("{base}/audit?task_id={task}")).await?;
            let items = audit["items"].as_array()?.clone();
            (items.len() >= 3).then_some(items)
        },
    )
    .await;
    let types: Vec<_> = audit
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.updated", "task.updated"]);
    // The queue was told twice over, by the notifier: of the saga's
    // escalation (task-sagas) and of the assignment (task-events).
    let notes = eventually("the queue notified", Duration::from_secs(30), || async {
        let notes = get(&client, format!("{base}/notifications?task_id={task}")).await?;
        let items = notes["items"].as_array()?.clone();
        let told = |kind: &str| {
            items
                .iter()
                .any(|n| n["kind"] == kind && n["recipient"] == "triage")
        };
        (told("task_assigned") && told("saga_escalated")).then_some(items)
    })
    .await;
    let escalations: Vec<_> = notes
        .iter()
        .filter(|n| n["kind"] == "saga_escalated")
        .collect();
    assert_eq!(escalations.len(), 1);
    assert_eq!(escalations[0]["recipient"], "triage");

    // Answers after the end: the same one is harmless, another refused.
    assert_eq!(answer(&client, &base, &task, "decline").await.status(), 200);
    problem_of(answer(&client, &base, &task, "accept").await, 409).await;
    let after = saga_of(&client, &base, &task).await.unwrap();
    assert_eq!(steps(&after).len(), 6, "no step applied twice");

    // Every step went out on task-sagas, once, in order.
    let events = saga_events(dir.path(), 6).await;
    let on_topic: Vec<_> = events
        .iter()
        .filter(|e| e["saga_id"] == done["id"])
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<_> = steps(&done).iter().map(|s| format!("saga.{s}")).collect();
    assert_eq!(on_topic, expected);
    terminate(&mut up);
}

/// Reads `task-sagas` of the `up` in `dir` back until at least `n` saga
/// events are there, decoded.
pub async fn saga_events(dir: &std::path::Path, n: usize) -> Vec<Value> {
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    let kafka = taskstream_kafka::KafkaConfig::new(endpoints["kafka"].as_str().unwrap()).quiet();
    eventually(
        "the saga events on task-sagas",
        Duration::from_secs(30),
        || async {
            let records = taskstream_kafka::read_committed(
                &kafka,
                taskstream_services::topics::TASK_SAGAS,
                Duration::from_secs(10),
            )
            .await
            .ok()?;
            let events: Vec<Value> = records
                .iter()
                .map(|r| {
                    assert_eq!(
                        r.header_str("content-type"),
                        Some(taskstream_services::saga::events::SAGA_CONTENT_TYPE)
                    );
                    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()
                })
                .collect();
            (events.len() >= n).then_some(events)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_assignment_times_out_and_is_compensated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up(dir.path(), &["--saga-accept-timeout", "2s"]);
    let client = client();
    let task = create(&client, &base, "renew the certificate", "cy").await;
    let done = saga_when(&client, &base, &task, "compensated").await;
    assert_eq!(done["outcome"], "timed_out");
    assert_eq!(
        steps(&done),
        [
            "started",
            "acceptance_requested",
            "timed_out",
            "unassigned",
            "capacity_released",
            "escalated"
        ]
    );
    let current = get(&client, format!("{base}/tasks/{task}")).await.unwrap();
    assert_eq!(current["assignee"], "team-queue");
    problem_of(answer(&client, &base, &task, "accept").await, 409).await;
    terminate(&mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_beyond_the_assignees_capacity_is_compensated_and_completing_a_task_frees_a_slot(
) {
    beyond_capacity_is_compensated_until_a_completion_frees_a_slot(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_beyond_the_assignees_capacity_is_compensated_and_completing_a_task_frees_a_slot_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the saga's capacity").await else {
        return;
    };
    beyond_capacity_is_compensated_until_a_completion_frees_a_slot(&kafka).await;
}

/// One open assignment per assignee on `broker`: a second is compensated
/// (it held no slot, so it gives none back), accepted work still holds the
/// slot, and completing that task frees it for the next assignment.
async fn beyond_capacity_is_compensated_until_a_completion_frees_a_slot(broker: &Broker) {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up_on(broker, dir.path(), &["--saga-max-open-per-assignee", "1"]);
    let client = client();
    let first = create(&client, &base, "first", "dee").await;
    saga_when(&client, &base, &first, "awaiting_acceptance").await;
    let second = create(&client, &base, "second", "dee").await;
    let over = saga_when(&client, &base, &second, "compensated").await;
    assert_eq!(over["outcome"], "capacity_exceeded");
    assert_eq!(
        steps(&over),
        // It never held a slot, so it gives none back.
        ["started", "capacity_exceeded", "unassigned", "escalated"]
    );
    let second_task = get(&client, format!("{base}/tasks/{second}"))
        .await
        .unwrap();
    assert_eq!(second_task["assignee"], "team-queue");

    // Accepted work still holds the slot; completing it frees it.
    assert_eq!(answer(&client, &base, &first, "accept").await.status(), 200);
    let third = create(&client, &base, "third", "dee").await;
    let refused = saga_when(&client, &base, &third, "compensated").await;
    assert_eq!(refused["outcome"], "capacity_exceeded");
    let completed = client
        .post(format!("{base}/tasks/{first}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), 200);
    let released = eventually(
        "the accepted saga to release its slot",
        Duration::from_secs(30),
        || async {
            saga_of(&client, &base, &first)
                .await
                .filter(|s| s["holds_capacity"] == false)
        },
    )
    .await;
    assert_eq!(released["state"], "completed");
    assert_eq!(steps(&released).last().unwrap(), "capacity_released");
    let fourth = create(&client, &base, "fourth", "dee").await;
    saga_when(&client, &base, &fourth, "awaiting_acceptance").await;
    terminate(&mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_and_its_deadline_survive_a_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = ["--saga-accept-timeout", "6s"];
    let (mut up, base) = start_up(dir.path(), &timeout);
    let client = client();
    let waits = create(&client, &base, "survives", "eve").await;
    let accepts = create(&client, &base, "accepted after the restart", "eve").await;
    let before = saga_when(&client, &base, &waits, "awaiting_acceptance").await;
    saga_when(&client, &base, &accepts, "awaiting_acceptance").await;
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    up.0.wait().unwrap();
    // The deadline passes while nothing runs.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let (mut up, base) = start_up(dir.path(), &timeout);
    // An accept answered after the deadline is refused, whether or not the
    // restarted timer has scanned yet: the saga times out.
    let answered = answer(&client, &base, &accepts, "accept").await.status();
    assert_eq!(answered, 409, "an accept after the deadline is refused");
    let after = saga_when(&client, &base, &waits, "compensated").await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["outcome"], "timed_out");
    assert_eq!(
        steps(&after),
        [
            "started",
            "acceptance_requested",
            "timed_out",
            "unassigned",
            "capacity_released",
            "escalated"
        ]
    );
    let other = eventually("the other saga to end", Duration::from_secs(30), || async {
        saga_of(&client, &base, &accepts)
            .await
            .filter(|s| s["state"] == "completed" || s["state"] == "compensated")
    })
    .await;
    assert_eq!(other["outcome"], "timed_out");
    terminate(&mut up);
}

/// `taskstream saga` as its own process beside `taskstream api`, `relay`
/// and `notifier`, sharing PostgreSQL, on `broker_args`' Kafka: a decline
/// answered by the API process is compensated by the saga process, and an
/// unanswered assignment times out there.
async fn saga_as_its_own_process(kafka: &str, database: &str, dir: &tempfile::TempDir) {
    use crate::at_scale::start;
    let common = ["--kafka-bootstrap", kafka, "--event-format", "json"];
    let (mut api, api_url) = start("api", &["--event-format", "json"], database, dir);
    let (mut relay, _) = start("relay", &common, database, dir);
    let mut saga_args = common.to_vec();
    saga_args.extend([
        "--saga-accept-timeout",
        "3s",
        "--saga-poll-interval",
        "200ms",
        "--saga-team-queue",
        "ops",
    ]);
    let (mut saga, saga_url) = start("saga", &saga_args, database, dir);
    let client = client();
    let declined = create(&client, &api_url, "declined across processes", "ana").await;
    let unanswered = create(&client, &api_url, "unanswered across processes", "ana").await;
    saga_when(&client, &api_url, &declined, "awaiting_acceptance").await;
    assert_eq!(
        answer(&client, &api_url, &declined, "decline")
            .await
            .status(),
        200
    );
    let done = saga_when(&client, &api_url, &declined, "compensated").await;
    assert_eq!(done["outcome"], "declined");
    let timed_out = saga_when(&client, &api_url, &unanswered, "compensated").await;
    assert_eq!(timed_out["outcome"], "timed_out");
    for task in [&declined, &unanswered] {
        let current = get(&client, format!("{api_url}/tasks/{task}"))
            .await
            .unwrap();
        assert_eq!(current["assignee"], "ops");
    }
    // The saga process serves the sagas too, and is ready.
    let id = done["id"].as_str().unwrap();
    let seen = get(&client, format!("{saga_url}/sagas/{id}"))
        .await
        .unwrap();
    assert_eq!(seen["state"], "compensated");
    let ready = client
        .get(format!("{saga_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    for child in [&mut saga, &mut relay, &mut api] {
        terminate(child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_as_its_own_process_on_postgres_and_the_dev_broker() {
    let Some((admin, database)) = crate::at_scale::scratch_database().await else {
        return;
    };
    let (mut broker, line) = launch(&["dev-broker"], "warn", Stdio::null());
    let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    saga_as_its_own_process(&kafka, &database, &dir).await;
    terminate(&mut broker);
    crate::at_scale::drop_database(&admin, &database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_as_its_own_process_on_postgres_and_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the standalone saga").await else {
        return;
    };
    let Some((admin, database)) = crate::at_scale::scratch_database().await else {
        return;
    };
    let bootstrap = kafka.kafka_config().unwrap().bootstrap_servers;
    let dir = tempfile::tempdir().unwrap();
    saga_as_its_own_process(&bootstrap, &database, &dir).await;
    crate::at_scale::drop_database(&admin, &database).await;
}

#[test]
fn saga_flags_are_checked_at_start_up_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (command, flag, value, hint) in [
        ("up", "--saga-accept-timeout", "0s", "between 1ms and 24h"),
        ("saga", "--saga-accept-timeout", "2d", "between 1ms and 24h"),
        (
            "up",
            "--saga-max-open-per-assignee",
            "0",
            "not in 1..=100000",
        ),
        ("saga", "--saga-team-queue", "   ", "must not be empty"),
        ("up", "--saga-poll-interval", "soon", "between 1ms and 24h"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_taskstream"))
            .args([command, &format!("{flag}={value}")])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} {flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(hint),
            "{command} {flag}={value}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_the_deadline_is_refused_even_before_the_timer_times_the_saga_out() {
    let dir = tempfile::tempdir().unwrap();
    // The timer scans at start-up and then only hourly: the deadline passes
    // with nothing acting on it, as while the saga process is down.
    let (mut up, base) = start_up(
        dir.path(),
        &["--saga-accept-timeout", "2s", "--saga-poll-interval", "1h"],
    );
    let client = client();
    let task = create(&client, &base, "answered late", "fay").await;
    let waiting = saga_when(&client, &base, &task, "awaiting_acceptance").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = problem_of(answer(&client, &base, &task, "accept").await, 409).await;
    assert!(
        late["detail"].as_str().unwrap().contains("stopped waiting"),
        "{late}"
    );
    // Nothing changed: the saga still waits for the timer, holding its slot.
    let still = saga_of(&client, &base, &task).await.unwrap();
    assert_eq!(still["id"], waiting["id"]);
    assert_eq!(still["state"], "awaiting_acceptance");
    terminate(&mut up);
}

/// `taskstream lag --json` with its default groups, against the `up` whose
/// endpoints are in `dir`.
async fn default_lag(dir: &std::path::Path) -> Value {
    lag(dir, &[]).await
}

/// [`default_lag`] with `extra` arguments (`--topic task-sagas`).
pub async fn lag(dir: &std::path::Path, extra: &[&str]) -> Value {
    let dir = dir.to_owned();
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_taskstream"))
            .args(["lag", "--json", "--samples", "2", "--interval", "0.1"])
            .args(&extra)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_by_default_shows_every_group_up_runs_the_saga_and_the_agent_included() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up(dir.path(), &[]);
    let client = client();
    let task = create(&client, &base, "watch the lag", "bo").await;
    saga_when(&client, &base, &task, "awaiting_acceptance").await;
    let want = ["auditor", "notifier", "saga", "triage-agent"];
    // Each group shows once it has committed what it read.
    let report = eventually(
        "lag to show the groups up runs",
        Duration::from_secs(30),
        || async {
            let report = default_lag(dir.path()).await;
            let names: Vec<&str> = report["groups"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|g| g["group"].as_str())
                .collect();
            want.iter()
                .all(|w| names.contains(w))
                .then_some(report.clone())
        },
    )
    .await;
    for group in want {
        let g = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == group)
            .unwrap();
        assert!(
            g["partitions"].as_array().is_some_and(|p| !p.is_empty()),
            "{g}"
        );
    }
    terminate(&mut up);
}

fn group_names(report: &Value) -> Vec<String> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["group"].as_str().map(str::to_owned))
        .collect()
}

/// A consumer in group `saga` that joins and never commits, as a saga
/// failing on its first event would: confluent-kafka-python, until killed.
const MEMBER_THAT_NEVER_COMMITS: &str = r#"
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "saga",
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
c.subscribe(["task-events"])
while True:
    c.poll(0.5)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_by_default_leaves_out_a_group_the_deployment_does_not_run_but_shows_one_that_never_committed(
) {
    let Some(python) = crate::interop::python() else {
        crate::interop::skip_or_fail("a member that never commits, for taskstream lag");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = start_up(dir.path(), &["--no-saga", "--no-agent"]);
    let client = client();
    create(&client, &base, "nobody runs the saga", "bo").await;
    // The auditor and the notifier always; no saga: this deployment runs none.
    let report = eventually(
        "lag to show the auditor and the notifier",
        Duration::from_secs(30),
        || async {
            let report = default_lag(dir.path()).await;
            let names = group_names(&report);
            (names.contains(&"auditor".to_owned()) && names.contains(&"notifier".to_owned()))
                .then_some(report)
        },
    )
    .await;
    assert!(
        !group_names(&report).contains(&"saga".to_owned()),
        "{report}"
    );
    // A saga member that is up but never commits is shown, with its lag.
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("endpoints.json")).unwrap())
            .unwrap();
    let member = ChildGuard(
        Command::new(python)
            .args(["-c", MEMBER_THAT_NEVER_COMMITS])
            .arg(endpoints["kafka"].as_str().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let report = eventually(
        "lag to show the saga group",
        Duration::from_secs(60),
        || async {
            let report = default_lag(dir.path()).await;
            group_names(&report)
                .contains(&"saga".to_owned())
                .then_some(report)
        },
    )
    .await;
    let saga = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "saga")
        .unwrap();
    assert!(
        saga["partitions"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["lag"].as_i64() > Some(0))),
        "{saga}"
    );
    drop(member);
    terminate(&mut up);
}
