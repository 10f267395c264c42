//! Broker failures on the three-node Apache Kafka cluster (replication 3,
//! `min.insync.replicas` 2), under a steady load through `taskstream up
//! --kafka-bootstrap` on SQLite:
//!
//! 1. the node leading the most `task-events` partitions is killed
//!    (SIGKILL), and started again once its partitions have new leaders;
//! 2. two nodes are killed at once — below `min.insync.replicas`, while the
//!    cluster's dedicated controller keeps running, so the surviving broker
//!    leads every partition and refuses writes with `NOT_ENOUGH_REPLICAS` —
//!    for an outage: the API keeps answering 201, the outbox grows and
//!    `/readyz` says why (first that the dead brokers do not answer, then,
//!    once the controller has fenced them, that too few replicas are in
//!    sync); then both come back and everything drains.
//!
//! At the end the crash harness's three counts must be zero: lost,
//! duplicate_effects and out_of_order. It prints a summary line with the
//! times to recover. Knobs: `TASKSTREAM_BROKER_OUTAGE_SECS` (how long two
//! nodes stay down; default 10) and `TASKSTREAM_BROKER_LOAD_PACE_MS` (the
//! time between rounds of four requests; default 100).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use taskstream_services::topics::{TASK_EVENTS, TASK_EVENTS_PARTITIONS};
use taskstream_testkit::{KafkaCluster, Shape};

use crate::binary::{launch, up_args, ChildGuard};
use crate::brokers::{Broker, KAFKA_SESSION_TIMEOUT};
use crate::crash::{env_or, seed, verdict, Load, Rng, Verdict};
use crate::helpers::{client, eventually};
use crate::kafka_tools::topic_configs;

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// The largest outbox backlog and oldest unpublished event seen since the
/// last [`Backlog::take`].
#[derive(Debug, Default, Clone, Copy)]
struct Backlog {
    pending: f64,
    oldest_age_s: f64,
}

impl Backlog {
    fn take(watch: &Mutex<Backlog>) -> Backlog {
        std::mem::take(&mut *watch.lock().unwrap())
    }
}

/// The outbox gauges of `up`'s `/metrics` (computed when scraped).
async fn outbox(client: &reqwest::Client, http: &str) -> Option<Backlog> {
    let text = client
        .get(format!("{http}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    Some(Backlog {
        pending: gauge("taskstream_outbox_pending_events")?,
        oldest_age_s: gauge("taskstream_outbox_oldest_pending_age_seconds")?,
    })
}

/// `/readyz`: its status code and body.
async fn readiness(client: &reqwest::Client, http: &str) -> Option<(u16, Value)> {
    let response = client.get(format!("{http}/readyz")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {body}"))
}

/// Runs a blocking cluster operation off the async runtime.
async fn on_cluster<T: Send + 'static>(
    cluster: &'static KafkaCluster,
    op: impl FnOnce(&'static KafkaCluster) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || op(cluster))
        .await
        .unwrap()
}

/// Each partition's leader (a node index), `None` where there is none.
fn leaders(cluster: &KafkaCluster) -> Vec<Option<usize>> {
    (0..TASK_EVENTS_PARTITIONS)
        .map(|p| cluster.partition_leader(TASK_EVENTS, p).ok().flatten())
        .collect()
}

fn seconds(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_leaders_then_two_of_three_brokers_under_load_loses_and_doubles_nothing() {
    let Some(kafka) = Broker::empty_apache_kafka(Shape::ThreeNodes, "broker failures").await else {
        return;
    };
    let cluster = kafka.cluster().unwrap();
    let outage = Duration::from_secs(env_or("TASKSTREAM_BROKER_OUTAGE_SECS", 10) as u64);
    let pace = Duration::from_millis(env_or("TASKSTREAM_BROKER_LOAD_PACE_MS", 100) as u64);
    let seed = seed();
    eprintln!("broker failures: seed={seed}");
    let mut rng = Rng(seed);

    // The topics, as an operator creates them: replication 3, min ISR 2.
    let applied = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["topics", "apply", "--replication-factor", "3"])
            .args(["--kafka-bootstrap", cluster.bootstrap_servers()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(
        topic_configs(cluster, TASK_EVENTS)
            .await
            .get("min.insync.replicas")
            .map(String::as_str),
        Some("2")
    );
    eventually(
        "every partition fully replicated",
        Duration::from_secs(60),
        || async {
            on_cluster(cluster, |c| {
                (0..TASK_EVENTS_PARTITIONS).all(|p| {
                    c.in_sync_replicas(TASK_EVENTS, p)
                        .is_ok_and(|isr| isr.len() == 3)
                })
            })
            .await
            .then_some(())
        },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let session = KAFKA_SESSION_TIMEOUT.as_secs().to_string();
    let mut args = up_args(dir.path().to_str().unwrap());
    args.extend([
        "--kafka-bootstrap",
        cluster.bootstrap_servers(),
        "--session-timeout",
        &session,
        "--ready-max-outbox-age",
        "5",
        // The checks count task events and their effects: no saga changes
        // tasks behind the load's back, no agent adds suggestion rows.
        "--no-saga",
        "--no-agent",
    ]);
    let (mut up, line): (ChildGuard, String) = launch(&args, "warn,librdkafka=off", Stdio::null());
    let http = line.strip_prefix("http: ").unwrap().to_owned();
    let client = client();
    // The load's requests must each be answered within this, brokers or not.
    let answer_within = Duration::from_secs(5);
    let load_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(answer_within)
        .build()
        .unwrap();

    // The outbox, watched all along.
    let watch = Arc::new(Mutex::new(Backlog::default()));
    let watcher = tokio::spawn({
        let (watch, client, http) = (watch.clone(), client.clone(), http.clone());
        async move {
            loop {
                if let Some(now) = outbox(&client, &http).await {
                    let mut seen = watch.lock().unwrap();
                    seen.pending = seen.pending.max(now.pending);
                    seen.oldest_age_s = seen.oldest_age_s.max(now.oldest_age_s);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let paused = Arc::new(AtomicBool::new(false));
    let script = tokio::spawn({
        let (watch, client, http, paused) =
            (watch.clone(), client.clone(), http.clone(), paused.clone());
        async move { failures(cluster, &client, &http, &watch, &paused, outage).await }
    });
    let mut load = Load::new(usize::MAX);
    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !script.is_finished() {
        ticks.tick().await;
        if !paused.load(Ordering::SeqCst) {
            load.round(&load_client, &mut rng, &[http.as_str()]).await;
        }
    }
    let figures = script.await.unwrap();
    load.stop_creating();
    while !load.done() {
        ticks.tick().await;
        load.round(&load_client, &mut rng, &[http.as_str()]).await;
    }
    let (audit, notes) = load.settled(&client, &http, Duration::from_secs(240)).await;
    watcher.abort();

    let Verdict {
        lost,
        duplicate_effects,
        out_of_order,
    } = verdict(&load.acknowledged, &audit, &notes);
    let summary = format!(
        "broker={} tasks={} acknowledged_changes={} audited={} notifications={} refused={} unanswered={} lost={lost} duplicate_effects={duplicate_effects} out_of_order={out_of_order} {figures}",
        kafka.name(),
        load.created,
        load.acknowledged.len(),
        audit.len(),
        notes.len(),
        load.refused,
        load.unanswered,
    );
    println!("{summary}");
    eprintln!("{summary} seed={seed}");
    assert_eq!(
        (load.refused, load.unanswered),
        (0, 0),
        "every request answered with success within {answer_within:?}: {summary}"
    );
    assert_eq!(
        (lost, duplicate_effects, out_of_order),
        (0, 0, 0),
        "{summary}"
    );
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(up.0.wait().unwrap().success(), "clean exit");
}

/// The failures, while the load runs; returns the figures to print.
async fn failures(
    cluster: &'static KafkaCluster,
    client: &reqwest::Client,
    http: &str,
    watch: &Mutex<Backlog>,
    paused: &AtomicBool,
    outage: Duration,
) -> String {
    // Let the consumers join and the load get going.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. The node leading the most partitions dies.
    let before = on_cluster(cluster, leaders).await;
    let victim = (0..cluster.nodes())
        .max_by_key(|n| before.iter().filter(|l| **l == Some(*n)).count())
        .unwrap();
    let led = before.iter().filter(|l| **l == Some(victim)).count();
    Backlog::take(watch);
    let killed_at = Instant::now();
    on_cluster(cluster, move |c| c.kill_node(victim))
        .await
        .unwrap();
    eventually(
        "the killed node's partitions to get new leaders",
        Duration::from_secs(60),
        || async {
            let now = on_cluster(cluster, leaders).await;
            now.iter()
                .all(|l| l.is_some_and(|n| n != victim))
                .then_some(())
        },
    )
    .await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_kill = Backlog::take(watch);
    let restarted_at = Instant::now();
    on_cluster(cluster, move |c| c.restart_node(victim))
        .await
        .unwrap();
    eventually(
        "the restarted node back in every in-sync replica set",
        Duration::from_secs(120),
        || async {
            on_cluster(cluster, |c| {
                (0..TASK_EVENTS_PARTITIONS).all(|p| {
                    c.in_sync_replicas(TASK_EVENTS, p)
                        .is_ok_and(|isr| isr.len() == 3)
                })
            })
            .await
            .then_some(())
        },
    )
    .await;
    let rejoined = restarted_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Two of the three nodes die: the leader of partition 0 and another.
    let first = on_cluster(cluster, |c| c.partition_leader(TASK_EVENTS, 0))
        .await
        .unwrap()
        .unwrap_or(0);
    let second = (first + 1) % cluster.nodes();
    let addresses: Vec<String> = cluster
        .bootstrap_servers()
        .split(',')
        .map(str::to_owned)
        .collect();
    Backlog::take(watch);
    let down_at = Instant::now();
    on_cluster(cluster, move |c| {
        c.kill_node(first).unwrap();
        c.kill_node(second).unwrap();
    })
    .await;
    let not_ready = eventually(
        "/readyz to say Kafka cannot take writes",
        Duration::from_secs(60),
        || async {
            let (status, body) = readiness(client, http).await?;
            (status == 503 && check(&body, "kafka")["ok"] == false).then_some(body)
        },
    )
    .await;
    let noticed = down_at.elapsed();
    let kafka_detail = check(&not_ready, "kafka")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("readiness with two nodes down: {not_ready}");
    assert!(
        kafka_detail.contains("min.insync.replicas")
            || [first, second]
                .iter()
                .any(|n| kafka_detail.contains(&addresses[*n])),
        "the kafka check names a broker that is down or the replicas missing: {kafka_detail}"
    );
    // Once the controller has fenced the dead brokers, the survivor leads
    // every partition, and the reason is the one writes now fail with.
    let below_min_isr = eventually(
        "/readyz to say too few replicas are in sync",
        Duration::from_secs(60),
        || async {
            let (_, body) = readiness(client, http).await?;
            let detail = check(&body, "kafka")["detail"].as_str()?.to_owned();
            // The survivor answers: it is not reported as silent.
            (detail.contains("fewer replicas in sync than min.insync.replicas (2)")
                && !detail.contains("does not answer"))
            .then_some(detail)
        },
    )
    .await;
    eprintln!("kafka check below min.insync.replicas: {below_min_isr}");
    let early = outbox(client, http).await.expect("metrics");
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let late = outbox(client, http).await.expect("metrics");
    assert!(
        late.pending > early.pending,
        "the outbox grows while Kafka cannot take writes ({} then {})",
        early.pending,
        late.pending
    );
    let (status, body) = readiness(client, http).await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(check(&body, "outbox_age")["ok"], false, "{body}");
    assert_eq!(check(&body, "store")["ok"], true, "{body}");
    eprintln!("readiness at the end of the outage: {body}");

    // Writes stop; both nodes come back; the backlog drains.
    paused.store(true, Ordering::SeqCst);
    let backlog = Backlog::take(watch);
    let back_at = Instant::now();
    on_cluster(cluster, move |c| {
        c.restart_node(first).unwrap();
        c.restart_node(second).unwrap();
    })
    .await;
    // Bounds, not speed: a transactional relay whose coordinator died
    // retries its commit before it replaces its producer.
    eventually("the outbox to drain", Duration::from_secs(300), || async {
        (outbox(client, http).await?.pending == 0.0).then_some(())
    })
    .await;
    let drained = back_at.elapsed();
    eventually(
        "/readyz to be ready again",
        Duration::from_secs(120),
        || async { (readiness(client, http).await?.0 == 200).then_some(()) },
    )
    .await;
    let ready = back_at.elapsed();
    paused.store(false, Ordering::SeqCst);

    format!(
        "leader_kill: node={} partitions_led={led} new_leaders_after_s={} oldest_unpublished_s={} node_back_in_sync_after_s={} \
         two_down: outage_s={} readyz_not_ready_after_s={} outbox_peak={} \
         recovery: outbox_drained_after_s={} ready_after_s={}",
        victim + 1,
        seconds(failover),
        after_kill.oldest_age_s,
        seconds(rejoined),
        seconds(outage),
        seconds(noticed),
        backlog.pending.max(late.pending),
        seconds(drained),
        seconds(ready),
    )
}
