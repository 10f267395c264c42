//! The triage agent under the crash harness: the real `taskstream up`,
//! agent on, under the harness's steady load (creations and completions),
//! killed with SIGKILL at random moments and restarted on the same data
//! directory. At the end every task whose creation the API acknowledged
//! has exactly one suggestion, and `task-suggestions` holds each
//! suggestion once and at most one per task, however the kills fell
//! between a model's answer, its store transaction, the relay's commit and
//! the consumer's offset commit. Size it with
//! `TASKSTREAM_AGENT_CRASH_TASKS` (default 150) and
//! `TASKSTREAM_AGENT_CRASH_KILLS` (default 3).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskstream_kafka::{read_topic, KafkaConfig};
use taskstream_services::topics::TASK_SUGGESTIONS;

use crate::binary::{launch, ChildGuard};
use crate::crash::{env_or, kill_at, seed, Load, Rng};
use crate::helpers::{client, eventually, try_items};

/// `taskstream up` on `dir` with the agent (and without the saga, whose
/// harness is its own), publishing exactly once.
fn start(dir: &std::path::Path) -> (ChildGuard, String) {
    let args = [
        "up",
        "--http",
        "127.0.0.1:0",
        "--registry-http",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--relay-delivery",
        "exactly-once",
        "--no-saga",
        "--agent-assignees",
        "crash=ana",
    ];
    let (child, line) = launch(&args, "warn,librdkafka=off", Stdio::null());
    (child, line.strip_prefix("http: ").unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_one_suggestion_per_created_task_published_once() {
    let tasks = env_or("TASKSTREAM_AGENT_CRASH_TASKS", 150);
    let kills = env_or("TASKSTREAM_AGENT_CRASH_KILLS", 3);
    let seed = seed();
    eprintln!("agent crash harness: seed={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let client = client();

    let mut load = Load::new(tasks);
    let mut http = String::new();
    for round in 0..=kills {
        let (mut child, address) = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || start(&dir)
        })
        .await
        .unwrap();
        let deadline =
            (round < kills).then(|| Instant::now() + Duration::from_millis(300 + rng.below(1200)));
        let killer = deadline.map(|d| kill_at(&child, d));
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        while deadline.is_none_or(|d| Instant::now() < d) && !load.done() {
            pace.tick().await;
            load.round(&client, &mut rng, &[address.as_str()]).await;
        }
        match killer {
            Some(killer) => {
                killer.await.unwrap();
                child.0.wait().unwrap();
            }
            None => {
                http = address;
                // The last run: every acknowledged change handled, then the
                // suggestions; the child stays up until the checks end.
                load.settled(&client, &http, Duration::from_secs(120)).await;
                check(&load, &http, dir.path(), seed).await;
                drop(child);
            }
        }
    }
    assert!(!http.is_empty(), "the last run ended the harness");
}

async fn check(load: &Load, http: &str, dir: &std::path::Path, seed: u64) {
    let client = client();
    let created: Vec<&String> = load
        .acknowledged
        .iter()
        .filter(|(_, version)| *version == 1)
        .map(|(id, _)| id)
        .collect();
    // On the topic: each suggestion once, one per task.
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    let kafka = KafkaConfig::new(endpoints["kafka"].as_str().unwrap()).quiet();
    let wanted: HashSet<&str> = created.iter().map(|id| id.as_str()).collect();
    let (published, published_twice, tasks_with_two) = eventually(
        "a published suggestion for every acknowledged creation",
        Duration::from_secs(60),
        || async {
            let records = read_topic(&kafka, TASK_SUGGESTIONS, Duration::from_secs(10))
                .await
                .ok()?;
            let mut ids = HashMap::<String, usize>::new();
            let mut per_task = HashMap::<String, HashSet<String>>::new();
            for record in &records {
                let event: Value = serde_json::from_slice(record.payload.as_deref()?).ok()?;
                let suggestion = event["data"]["suggestion_id"].as_str()?.to_owned();
                let task = event["data"]["task_id"].as_str()?.to_owned();
                *ids.entry(suggestion.clone()).or_default() += 1;
                per_task.entry(task).or_default().insert(suggestion);
            }
            let covered = wanted.iter().all(|id| per_task.contains_key(*id));
            covered.then(|| {
                (
                    records.len(),
                    ids.values().filter(|n| **n > 1).count(),
                    per_task.values().filter(|s| s.len() > 1).count(),
                )
            })
        },
    )
    .await;
    // Stored with its outbox row in one transaction, so in the API too:
    // exactly one per acknowledged creation.
    let mut without = Vec::new();
    let mut doubled = Vec::new();
    for id in &created {
        let items = try_items(&client, http, &format!("/tasks/{id}/suggestions"))
            .await
            .unwrap_or_default();
        match items.len() {
            0 => without.push(id.to_string()),
            1 => {}
            _ => doubled.push(id.to_string()),
        }
    }
    let summary = format!(
        "agent crash harness: created={} acknowledged_creations={} without_suggestion={} with_two={} published={published} published_twice={published_twice} tasks_with_two_published={tasks_with_two} seed={seed}",
        load.created,
        created.len(),
        without.len(),
        doubled.len(),
    );
    println!("{summary}");
    eprintln!("{summary}");
    assert!(without.is_empty(), "{summary}: {without:?}");
    assert!(doubled.is_empty(), "{summary}: {doubled:?}");
    assert_eq!((published_twice, tasks_with_two), (0, 0), "{summary}");
}
