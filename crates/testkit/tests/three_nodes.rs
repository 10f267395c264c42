//! The three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas = 2`): replicated topics work, and `acks=all`
//! producing carries on while one node is killed and after it returns.
//! Skipped loudly without Java and Maven; failed instead with
//! `TASKSTREAM_REQUIRE_KAFKA=1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use taskstream_kafka::{
    ConsumerSettings, EventConsumer, EventProducer, KafkaConfig, OutboundRecord, ProducerSettings,
};
use taskstream_testkit::{kafka_or_skip, KafkaCluster, Shape};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);

/// The tests here kill nodes of one shared cluster: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(what: &str) -> Option<&'static KafkaCluster> {
    kafka_or_skip(Shape::ThreeNodes, what)
}

/// A topic created without a replication factor: the cluster's default (3).
fn create_topic(cluster: &KafkaCluster, partitions: i32) -> String {
    let name = format!("replicated-{}", Uuid::new_v4().simple());
    create_topic_named(cluster, &name, partitions)
}

fn create_topic_named(cluster: &KafkaCluster, name: &str, partitions: i32) -> String {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("admin");
    let created = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(-1))],
        &AdminOptions::new().operation_timeout(Some(PATIENCE)),
    ))
    .expect("CreateTopics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for_full_isr(cluster, name, partitions);
    name.to_owned()
}

fn wait_for_full_isr(cluster: &KafkaCluster, topic: &str, partitions: i32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let full = (0..partitions).all(|p| {
            cluster
                .in_sync_replicas(topic, p)
                .is_ok_and(|isr| isr.len() == 3)
        });
        if full {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} did not get 3 in-sync replicas on every partition"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_producing_carries_on_while_the_partition_leader_is_killed_and_after_it_returns() {
    let Some(cluster) = cluster("killing a node under acks=all") else {
        return;
    };
    let _serial = ONE_AT_A_TIME.lock().await;
    let topic = create_topic(cluster, 3);
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(
        &config,
        "three-nodes",
        &ProducerSettings {
            message_timeout: PATIENCE,
            ..ProducerSettings::default()
        },
    )
    .expect("producer");

    let mut deliveries: Vec<taskstream_kafka::DeliveryFuture> = Vec::new();
    let mut victim = None;
    for i in 0..300u32 {
        if i == 100 {
            // Let the first hundred land, then crash the leader of partition 0.
            for delivery in deliveries.drain(..) {
                delivery.await.expect("acknowledged before the crash");
            }
            let leader = cluster
                .partition_leader(&topic, 0)
                .expect("metadata")
                .expect("a leader");
            cluster.kill_node(leader).expect("kill");
            victim = Some(leader);
        }
        let key = format!("task-{}", i % 7);
        let payload = i.to_string();
        deliveries.push(
            producer
                .enqueue(OutboundRecord {
                    topic: &topic,
                    key: key.as_bytes(),
                    payload: payload.as_bytes(),
                    headers: &[],
                })
                .await
                .expect("enqueued"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = victim.expect("a node was killed");
    for delivery in deliveries {
        delivery
            .await
            .expect("acknowledged by the two remaining replicas");
    }
    let new_leader = cluster
        .partition_leader(&topic, 0)
        .expect("metadata")
        .expect("a leader");
    assert_ne!(new_leader, victim, "leadership moved off the killed node");
    assert!(!cluster.node_running(victim));

    cluster.restart_node(victim).expect("restart");
    assert!(cluster.node_running(victim));
    wait_for_full_isr(cluster, &topic, 3);

    // Every record is there exactly once, in order per key.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).expect("assign");
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut total = 0;
    let deadline = Instant::now() + PATIENCE;
    while total < 300 && Instant::now() < deadline {
        if let Some(message) = reader.poll(Duration::from_millis(100)) {
            let m = message.expect("a record");
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value: u32 = std::str::from_utf8(m.payload().unwrap_or_default())
                .unwrap()
                .parse()
                .unwrap();
            per_key.entry(key).or_default().push(value);
            total += 1;
        }
    }
    assert_eq!(total, 300, "every acknowledged record was read back");
    for (key, values) in &per_key {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(values, &sorted, "{key}: in order and without duplicates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_the_cluster_reports_are_the_ones_kafkas_tools_name() {
    let Some(cluster) = cluster("finding a group's coordinator") else {
        return;
    };
    let _serial = ONE_AT_A_TIME.lock().await;
    let topic = create_topic(cluster, 1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let member = EventConsumer::subscribe(
        &config,
        &group,
        &[&topic],
        &ConsumerSettings {
            session_timeout: Duration::from_secs(6),
            ..ConsumerSettings::default()
        },
    )
    .expect("member");
    // Joining makes the group known to its coordinator.
    let deadline = Instant::now() + PATIENCE;
    while member.ownership(&topic, 0).is_none() {
        assert!(Instant::now() < deadline, "never assigned");
        let _ = tokio::time::timeout(Duration::from_millis(200), member.recv()).await;
    }
    let coordinator = cluster
        .group_coordinator(&group)
        .expect("metadata")
        .expect("a coordinator");
    let state = cluster
        .tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &[
                "--bootstrap-server",
                cluster.bootstrap_servers(),
                "--describe",
                "--state",
                "--group",
                &group,
            ],
        )
        .expect("kafka-consumer-groups --describe --state");
    // GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS
    let expected = format!("({})", cluster.node_id(coordinator));
    let row = state
        .lines()
        .find(|l| l.starts_with(&group))
        .unwrap_or_else(|| panic!("no row for {group} in:\n{state}"));
    assert_eq!(
        row.split_whitespace().nth(2),
        Some(expected.as_str()),
        "{state}"
    );
    member.close(PATIENCE).await.expect("close");

    // The same for a transactional id, against kafka-transactions.
    let transactional_id = format!("txn-{}", Uuid::new_v4().simple());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("transactional.id", &transactional_id)
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(PATIENCE)
        .expect("init_transactions");
    let coordinator = cluster
        .transaction_coordinator(&transactional_id)
        .expect("metadata")
        .expect("a coordinator");
    let described = cluster
        .tool(
            "org.apache.kafka.tools.TransactionsCommand",
            &[
                "--bootstrap-server",
                cluster.bootstrap_servers(),
                "describe",
                "--transactional-id",
                &transactional_id,
            ],
        )
        .expect("kafka-transactions describe");
    let mut lines = described.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|c| *c == "CoordinatorId")
        .unwrap_or_else(|| panic!("no CoordinatorId column in:\n{described}"));
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(column).copied(),
        Some(cluster.node_id(coordinator).to_string().as_str()),
        "{described}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_restarts_killed_nodes_and_leaves_no_topic_nor_group_behind() {
    let Some(cluster) = cluster("resetting the cluster") else {
        return;
    };
    let _serial = ONE_AT_A_TIME.lock().await;
    let topic = create_topic(cluster, 1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let producer =
        EventProducer::new(&config, "reset", &ProducerSettings::default()).expect("producer");
    producer
        .enqueue(OutboundRecord {
            topic: &topic,
            key: b"k",
            payload: b"v",
            headers: &[],
        })
        .await
        .expect("enqueued")
        .await
        .expect("delivered");
    let member = EventConsumer::subscribe(
        &config,
        &group,
        &[&topic],
        &ConsumerSettings {
            session_timeout: Duration::from_secs(6),
            ..ConsumerSettings::default()
        },
    )
    .expect("member");
    let record = tokio::time::timeout(PATIENCE, member.recv())
        .await
        .expect("in time")
        .expect("a record");
    member.ack(&record);
    member.close(PATIENCE).await.expect("close");
    cluster.kill_node(2).expect("kill");

    tokio::task::spawn_blocking(move || cluster.reset())
        .await
        .unwrap()
        .expect("reset");

    assert!((0..3).all(|i| cluster.node_running(i)), "every node runs");
    let listed = cluster
        .tool(
            "org.apache.kafka.tools.TopicCommand",
            &["--bootstrap-server", cluster.bootstrap_servers(), "--list"],
        )
        .expect("kafka-topics --list");
    assert!(
        listed.lines().all(|t| t.starts_with("__")),
        "only Kafka's own topics are left:\n{listed}"
    );
    let groups = cluster
        .tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &["--bootstrap-server", cluster.bootstrap_servers(), "--list"],
        )
        .expect("kafka-consumer-groups --list");
    assert!(groups.trim().is_empty(), "no group is left:\n{groups}");
    // A client asking for the deleted topic does not bring it back.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("allow.auto.create.topics", "true")
        .create()
        .expect("reader");
    let metadata = reader
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert!(
        metadata.topics().iter().all(|t| t.partitions().is_empty()),
        "asking for a missing topic does not create it"
    );
    // The same name can be created again at once.
    create_topic_named(cluster, &topic, 1);
}
