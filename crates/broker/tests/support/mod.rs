//! Shared by the integration tests: a broker on a temporary directory and
//! rdkafka clients pointed at it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use taskstream_broker::{Broker, BrokerConfig, RunningBroker};

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn start(dir: &std::path::Path) -> RunningBroker {
    Broker::start(BrokerConfig::new(dir)).expect("the broker starts")
}

pub fn client(broker: &RunningBroker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.addr().to_string())
        .set("fetch.wait.max.ms", "100");
    config
}

pub fn producer(broker: &RunningBroker) -> FutureProducer {
    client(broker)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

pub fn admin(broker: &RunningBroker) -> AdminClient<DefaultClientContext> {
    client(broker).create().expect("admin client")
}

pub async fn create_topic(
    broker: &RunningBroker,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(broker)
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("CreateTopics answered");
    for result in results {
        result.expect("topic created");
    }
}

/// A consumer without a group, reading the given partitions from `offset`.
pub fn reader(
    broker: &RunningBroker,
    topic: &str,
    partitions: i32,
    offset: Offset,
) -> BaseConsumer {
    let consumer: BaseConsumer = client(broker)
        .set("enable.partition.eof", "false")
        .set("group.id", "readers")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, offset).unwrap();
    }
    consumer.assign(&list).expect("assign");
    consumer
}

/// Polls until `count` records arrived (failing after [`PATIENCE`]).
pub fn poll_records(consumer: &BaseConsumer, count: usize) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + PATIENCE;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records arrived",
            records.len()
        );
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            records.push(result.expect("a record").detach());
        }
    }
    records
}

/// Values per partition, in offset order.
pub fn by_partition(records: &[OwnedMessage]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for r in records {
        let value = String::from_utf8(r.payload().unwrap_or_default().to_vec()).unwrap();
        out.entry(r.partition())
            .or_default()
            .push((r.offset(), value));
    }
    out
}
