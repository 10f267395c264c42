//! taskstream's Kafka commands, checked against Apache Kafka's own tools:
//! `topics apply` creates what `kafka-topics` and `kafka-configs` then
//! describe, and `lag --all-groups` reads the offsets `kafka-consumer-groups`
//! prints.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components;
use taskstream_kafka::group_offsets;
use taskstream_services::topics::{declared_topics, TASK_EVENTS};
use taskstream_store::AuditStore;
use taskstream_testkit::{KafkaCluster, Shape};

use crate::brokers::Broker;
use crate::helpers::{client, eventually, Pipeline};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

const TOPIC_COMMAND: &str = "org.apache.kafka.tools.TopicCommand";
const CONFIG_COMMAND: &str = "kafka.admin.ConfigCommand";
const CONSUMER_GROUP_COMMAND: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";

/// Runs the taskstream binary with `args`; it must succeed.
async fn taskstream(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out: Output = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs one of Kafka's tools against `cluster`, off the async runtime.
async fn kafka_tool(cluster: &'static KafkaCluster, class: &'static str, args: &[&str]) -> String {
    let mut all = vec![
        "--bootstrap-server".to_owned(),
        cluster.bootstrap_servers().to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        cluster
            .tool(class, &args)
            .unwrap_or_else(|e| panic!("{class}: {e}"))
    })
    .await
    .unwrap()
}

/// What `kafka-topics --describe` says of one topic: its id, partition
/// count and replication factor.
async fn described_topic(cluster: &'static KafkaCluster, topic: &str) -> (String, i32, i32) {
    let text = kafka_tool(cluster, TOPIC_COMMAND, &["--describe", "--topic", topic]).await;
    let header = text
        .lines()
        .find(|l| l.starts_with(&format!("Topic: {topic}\t")))
        .unwrap_or_else(|| panic!("no summary line for {topic} in:\n{text}"));
    let field = |name: &str| {
        header
            .split('\t')
            .find_map(|f| f.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {header:?}"))
            .trim()
            .to_owned()
    };
    (
        field("TopicId"),
        field("PartitionCount").parse().unwrap(),
        field("ReplicationFactor").parse().unwrap(),
    )
}

/// The configs set on `topic` itself, as `kafka-configs --describe` lists
/// them (its dynamic configs; the broker's defaults are not included).
pub async fn topic_configs(
    cluster: &'static KafkaCluster,
    topic: &str,
) -> BTreeMap<String, String> {
    let text = kafka_tool(
        cluster,
        CONFIG_COMMAND,
        &[
            "--describe",
            "--entity-type",
            "topics",
            "--entity-name",
            topic,
        ],
    )
    .await;
    text.lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let (key, value) = l.split_whitespace().next()?.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_creates_the_declared_topics_with_their_configs_and_a_rerun_changes_nothing() {
    let Some(kafka) = Broker::empty_apache_kafka(Shape::SingleNode, "topics apply").await else {
        return;
    };
    let cluster = kafka.cluster().unwrap();
    let apply = [
        "topics",
        "apply",
        "--kafka-bootstrap",
        cluster.bootstrap_servers(),
        "--replication-factor",
        "1",
    ];
    let first = taskstream(&apply).await;
    let lines = |verb: &str| -> Vec<String> {
        declared_topics(1)
            .iter()
            .map(|t| format!("{verb} {}", t.name))
            .collect()
    };
    assert_eq!(
        first.lines().collect::<Vec<_>>(),
        lines("created"),
        "{first}"
    );
    let mut ids = Vec::new();
    for spec in declared_topics(1) {
        let (id, partitions, replication) = described_topic(cluster, &spec.name).await;
        assert_eq!(
            (partitions, replication),
            (spec.partitions, spec.replication_factor),
            "{}",
            spec.name
        );
        assert_eq!(
            topic_configs(cluster, &spec.name).await,
            spec.configs,
            "the configs Kafka holds for {}",
            spec.name
        );
        ids.push(id);
    }

    let again = taskstream(&apply).await;
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        lines("exists "),
        "{again}"
    );
    for (spec, id) in declared_topics(1).iter().zip(&ids) {
        assert_eq!(
            described_topic(cluster, &spec.name).await,
            (id.clone(), spec.partitions, spec.replication_factor),
            "{} is the same topic, untouched",
            spec.name
        );
        assert_eq!(topic_configs(cluster, &spec.name).await, spec.configs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_of_all_groups_shows_the_offsets_and_lag_kafka_consumer_groups_prints() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "lag --all-groups").await else {
        return;
    };
    let cluster = kafka.cluster().unwrap();
    let p = Pipeline::start_on(&kafka, taskstream_store::SqliteOptions::default()).await;
    let (config, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let options = kafka.consumer_options();
    let auditor = components::auditor(
        store.clone(),
        Some(store.clone()),
        &config,
        None,
        &options,
        &metrics,
    )
    .unwrap();
    let notifier = components::notifier(
        store.clone(),
        Some(store.clone()),
        &config,
        None,
        &options,
        &Default::default(),
        &metrics,
    )
    .unwrap();
    // A group beyond the two defaults: only --all-groups finds it.
    let archive = components::auditor(
        store.clone(),
        Some(store.clone()),
        &config,
        Some("audit-archive"),
        &options,
        &metrics,
    )
    .unwrap();
    let client = client();
    let create = |i: usize| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/tasks"))
                .json(&json!({ "title": format!("t{i}"), "assignee": "ana" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
    };
    let caught_up = |group: &'static str, events: i64| {
        let config = config.clone();
        async move {
            eventually(
                &format!("{group} to commit all {events} events"),
                Duration::from_secs(60),
                || async {
                    let offsets =
                        group_offsets(&config, group, TASK_EVENTS, Duration::from_secs(5))
                            .await
                            .ok()?;
                    let total: i64 = offsets.iter().map(|p| p.log_end).sum();
                    (total == events && offsets.iter().all(|p| p.lag() == 0)).then_some(())
                },
            )
            .await;
        }
    };
    for i in 0..40 {
        create(i).await;
    }
    caught_up("auditor", 40).await;
    caught_up("audit-archive", 40).await;
    // The auditor stops (committing what it did); 20 more wait for it.
    auditor.stop().await;
    for i in 40..60 {
        create(i).await;
    }
    caught_up("notifier", 60).await;
    caught_up("audit-archive", 60).await;
    // Everyone stops, so the offsets hold still while both tools read them.
    notifier.stop().await;
    archive.stop().await;
    assert_eq!(store.audit_entries(None, 1000).await.unwrap().len(), 60);

    let ours: Value = serde_json::from_str(
        &taskstream(&[
            "lag",
            "--all-groups",
            "--json",
            "--samples",
            "2",
            "--interval",
            "0.1",
            "--kafka-bootstrap",
            cluster.bootstrap_servers(),
        ])
        .await,
    )
    .unwrap();
    // (group, partition) → (committed, log end, lag), for every partition
    // the group committed an offset for.
    let mut reported: BTreeMap<(String, i64), (i64, i64, i64)> = BTreeMap::new();
    let mut total_lag: BTreeMap<String, i64> = BTreeMap::new();
    for group in ours["groups"].as_array().unwrap() {
        let name = group["group"].as_str().unwrap().to_owned();
        total_lag.insert(name.clone(), group["total_lag"].as_i64().unwrap());
        for p in group["partitions"].as_array().unwrap() {
            let Some(committed) = p["committed_offset"].as_i64() else {
                continue;
            };
            reported.insert(
                (name.clone(), p["partition"].as_i64().unwrap()),
                (
                    committed,
                    p["log_end_offset"].as_i64().unwrap(),
                    p["lag"].as_i64().unwrap(),
                ),
            );
        }
    }
    assert_eq!(
        total_lag,
        BTreeMap::from([
            ("audit-archive".to_owned(), 0),
            ("auditor".to_owned(), 20),
            ("notifier".to_owned(), 0),
        ]),
        "{ours}"
    );

    let described = kafka_tool(
        cluster,
        CONSUMER_GROUP_COMMAND,
        &["--describe", "--all-groups"],
    )
    .await;
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    let printed: BTreeMap<(String, i64), (i64, i64, i64)> = described
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() >= 6 && c[1] == TASK_EVENTS)
        .map(|c| {
            let n = |i: usize| {
                c[i].parse::<i64>()
                    .unwrap_or_else(|_| panic!("column {i} of {c:?}"))
            };
            ((c[0].to_owned(), n(2)), (n(3), n(4), n(5)))
        })
        .collect();
    let groups: BTreeSet<&str> = printed.keys().map(|(g, _)| g.as_str()).collect();
    assert_eq!(
        groups,
        BTreeSet::from(["audit-archive", "auditor", "notifier"]),
        "{described}"
    );
    assert_eq!(
        reported, printed,
        "kafka-consumer-groups said:\n{described}"
    );
    p.stop().await;
}
