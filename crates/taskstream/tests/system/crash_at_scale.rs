//! The crash harness for the deployment shape: two APIs, two relays, two
//! notifiers and two auditors, each its own process on one PostgreSQL
//! database, under a steady HTTP load, while a random one of them is killed
//! with SIGKILL and started again, over and over. At the end, every change
//! an API acknowledged must be in the audit log exactly once and in order,
//! with its notification sent once.
//!
//! It runs on a dev broker in a process of its own and on Apache Kafka.
//! Sized by `TASKSTREAM_CRASH_TASKS` (default 300) and
//! `TASKSTREAM_CRASH_KILLS` (default 6); replay a schedule with
//! `TASKSTREAM_CRASH_SEED`. Prints a summary line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskstream_testkit::Shape;

use crate::at_scale::{drop_database, scratch_database, start};
use crate::binary::{launch, ChildGuard};
use crate::brokers::{Broker, KAFKA_SESSION_TIMEOUT};
use crate::crash::{env_or, seed, verdict, Load, Rng, Verdict};
use crate::helpers::client;

/// The components, in the order they are started.
const REPLICAS: [&str; 8] = [
    "api", "api", "relay", "relay", "notifier", "notifier", "auditor", "auditor",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_any_replica_under_load_loses_nothing_and_doubles_no_effect() {
    sigkill_of_any_replica(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_any_replica_under_load_loses_nothing_and_doubles_no_effect_on_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(
        Shape::SingleNode,
        "the crash harness for separate processes",
    )
    .await
    else {
        return;
    };
    sigkill_of_any_replica(&kafka).await;
}

async fn sigkill_of_any_replica(broker: &Broker) {
    let Some((admin, database)) = scratch_database().await else {
        return;
    };
    let tasks = env_or("TASKSTREAM_CRASH_TASKS", 300);
    let kills = env_or("TASKSTREAM_CRASH_KILLS", 6);
    let seed = seed();
    eprintln!("crash harness (separate processes): seed={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (_broker, kafka, session_timeout) = match broker.cluster() {
        Some(cluster) => (
            None,
            cluster.bootstrap_servers().to_owned(),
            KAFKA_SESSION_TIMEOUT,
        ),
        None => {
            let (child, line) = launch(&["dev-broker"], "warn", Stdio::null());
            let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();
            // A killed replica's partitions move after 6 s (the least the
            // broker accepts), not 45.
            (Some(child), kafka, KAFKA_SESSION_TIMEOUT)
        }
    };
    let session_timeout = session_timeout.as_secs().to_string();
    let registry_dir = dir.path().join("registry");
    let (_registry, line) = launch(
        &[
            "registry",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            registry_dir.to_str().unwrap(),
        ],
        "warn",
        Stdio::null(),
    );
    let registry = line.strip_prefix("schema-registry: ").unwrap().to_owned();
    let kafka_args: Vec<String> = vec![
        "--kafka-bootstrap".into(),
        kafka,
        "--schema-registry".into(),
        registry,
    ];
    let launch_replica = |i: usize| {
        let mut extra: Vec<&str> = match REPLICAS[i] {
            "api" => kafka_args[2..].iter().map(String::as_str).collect(),
            _ => kafka_args.iter().map(String::as_str).collect(),
        };
        if matches!(REPLICAS[i], "notifier" | "auditor") {
            extra.extend(["--session-timeout", session_timeout.as_str()]);
        }
        start(REPLICAS[i], &extra, &database, &dir)
    };
    let mut replicas: Vec<(ChildGuard, String)> = (0..REPLICAS.len()).map(launch_replica).collect();

    let client = client();
    let mut load = Load::new(tasks);
    let mut killed = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_millis(200 + rng.below(500));
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while !load.done() {
        if killed.len() < kills && Instant::now() >= next_kill {
            let victim = rng.below(REPLICAS.len() as u64) as usize;
            let pid = replicas[victim].0 .0.id().to_string();
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
            replicas[victim].0 .0.wait().unwrap();
            replicas[victim] = launch_replica(victim);
            killed.push(REPLICAS[victim]);
            next_kill = Instant::now() + Duration::from_millis(200 + rng.below(500));
        }
        pace.tick().await;
        // Both APIs take writes, in turn.
        let apis = [replicas[0].1.as_str(), replicas[1].1.as_str()];
        load.round(&client, &mut rng, &apis).await;
    }

    let (audit, notes) = load
        .settled(&client, &replicas[0].1, Duration::from_secs(120))
        .await;
    let Verdict {
        lost,
        duplicate_effects,
        out_of_order,
    } = verdict(&load.acknowledged, &audit, &notes);
    let summary = format!(
        "broker={} tasks={} kills={} ({}) acknowledged_changes={} audited={} notifications={} lost={lost} duplicate_effects={duplicate_effects} out_of_order={out_of_order}",
        broker.name(),
        load.created,
        killed.len(),
        killed.join(","),
        load.acknowledged.len(),
        audit.len(),
        notes.len()
    );
    println!("{summary}");
    eprintln!("{summary} seed={seed}");
    assert_eq!(
        (lost, duplicate_effects, out_of_order),
        (0, 0, 0),
        "{summary}"
    );
    drop(replicas);
    drop_database(&admin, &database).await;
}
