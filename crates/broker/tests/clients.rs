//! rdkafka (librdkafka) producing to and consuming from the broker.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use support::*;

async fn produce_values(
    broker: &taskstream_broker::RunningBroker,
    topic: &str,
    values: impl Iterator<Item = String>,
) {
    let producer = producer(broker);
    let mut pending = Vec::new();
    for (i, value) in values.enumerate() {
        let key = format!("key-{}", i % 7);
        let record =
            FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "id",
                    value: Some(value.as_bytes()),
                }));
        pending.push(producer.send_result(record).expect("queued"));
    }
    for delivery in pending {
        delivery.await.expect("delivered").expect("acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_with_acks_all_are_read_back_and_still_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "orders", 3, &[("retention.ms", "3600000")]).await;
    let values: Vec<String> = (0..3000).map(|i| format!("value-{i}")).collect();
    produce_values(&broker, "orders", values.iter().cloned()).await;

    let consumer = reader(&broker, "orders", 3, Offset::Beginning);
    let records = poll_records(&consumer, values.len());
    let first = by_partition(&records);
    let seen: BTreeSet<&str> = first.values().flatten().map(|(_, v)| v.as_str()).collect();
    assert_eq!(seen.len(), values.len(), "every value once");
    for (partition, list) in &first {
        let offsets: Vec<i64> = list.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..list.len() as i64).collect::<Vec<_>>(),
            "partition {partition} is dense from 0"
        );
    }
    let sample = &records[0];
    let header = sample.headers().expect("headers").get(0);
    assert_eq!(header.key, "id");
    assert_eq!(header.value, sample.payload());
    assert!(sample.key().is_some_and(|k| k.starts_with(b"key-")));
    drop(consumer);
    broker.stop();

    let broker = start(dir.path());
    let consumer = reader(&broker, "orders", 3, Offset::Beginning);
    let again = by_partition(&poll_records(&consumer, values.len()));
    assert_eq!(again, first, "the restarted broker serves the same log");
    produce_values(&broker, "orders", (0..30).map(|i| format!("after-{i}"))).await;
    let after = by_partition(&poll_records(&consumer, 30));
    for (partition, list) in after {
        assert_eq!(
            list[0].0,
            first[&partition].len() as i64,
            "offsets continue in partition {partition}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_returns_as_soon_as_a_record_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "waits", 1, &[]).await;
    let consumer: rdkafka::consumer::BaseConsumer = client(&broker)
        .set("fetch.wait.max.ms", "20000")
        .set("group.id", "readers")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("waits", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    // Let the consumer's first fetch start waiting on the empty partition.
    assert!(consumer.poll(Duration::from_millis(1500)).is_none());
    produce_values(&broker, "waits", std::iter::once("wake".to_owned())).await;
    let started = Instant::now();
    let records = poll_records(&consumer, 1);
    assert_eq!(records[0].payload(), Some(&b"wake"[..]));
    // A fetch held for its whole 20 s would take far longer than PATIENCE allows for the rest.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the fetch was woken, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_and_offsets_for_times_describe_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "times", 1, &[]).await;
    let producer = producer(&broker);
    for (i, ts) in [1_000i64, 2_000, 3_000, 4_000].iter().enumerate() {
        let value = format!("v{i}");
        producer
            .send(
                FutureRecord::<(), _>::to("times")
                    .payload(&value)
                    .timestamp(*ts),
                Duration::from_secs(10),
            )
            .await
            .expect("acknowledged");
    }
    let consumer = reader(&broker, "times", 1, Offset::Beginning);
    assert_eq!(
        consumer.fetch_watermarks("times", 0, PATIENCE).unwrap(),
        (0, 4)
    );
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset("times", 0, Offset::Offset(2_500))
        .unwrap();
    let found = consumer.offsets_for_times(query, PATIENCE).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::Offset(2)
    );
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset("times", 0, Offset::Offset(9_999))
        .unwrap();
    let found = consumer.offsets_for_times(query, PATIENCE).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::End
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_auto_created_refused_when_invalid_and_deleted_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    produce_values(&broker, "auto-made", std::iter::once("x".to_owned())).await;
    let consumer = reader(&broker, "auto-made", 1, Offset::Beginning);
    assert_eq!(poll_records(&consumer, 1)[0].payload(), Some(&b"x"[..]));

    let admin = admin(&broker);
    let bad = rdkafka::admin::NewTopic::new("bad", 1, rdkafka::admin::TopicReplication::Fixed(3));
    let refused = admin
        .create_topics([&bad], &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        refused[0].is_err(),
        "replication factor 3 on one node: {refused:?}"
    );
    let unknown_config =
        rdkafka::admin::NewTopic::new("bad", 1, rdkafka::admin::TopicReplication::Fixed(1))
            .set("no.such.config", "1");
    let refused = admin
        .create_topics([&unknown_config], &AdminOptions::new())
        .await
        .unwrap();
    assert!(refused[0].is_err(), "an unknown config: {refused:?}");
    create_topic(&broker, "doomed", 2, &[("cleanup.policy", "compact")]).await;
    let again = admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                "doomed",
                2,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(matches!(
        again[0],
        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
    ));

    let deleted = admin
        .delete_topics(&["doomed"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let metadata = consumer.fetch_metadata(None, PATIENCE).unwrap();
    let names: BTreeSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(
        names.contains("auto-made") && !names.contains("doomed"),
        "{names:?}"
    );
    broker.stop();
    let broker = start(dir.path());
    let consumer = reader(&broker, "auto-made", 1, Offset::Beginning);
    let metadata = consumer.fetch_metadata(None, PATIENCE).unwrap();
    let names: BTreeSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert_eq!(names, BTreeSet::from(["auto-made"]), "the deletion lasted");
}

/// Measures rather than asserts speed: prints records/s for a quick
/// produce (acks=all) and consume of 200,000 records of 100 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_throughput_run_moves_every_record() {
    const COUNT: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "bulk", 1, &[]).await;
    let value = "x".repeat(100);
    let producer = producer(&broker);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..COUNT {
        loop {
            match producer.send_result(FutureRecord::<(), _>::to("bulk").payload(&value)) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((_, _)) => {
                    // Local queue full: wait for the oldest delivery.
                    pending
                        .pop_front()
                        .expect("in flight")
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
        }
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    let produced = started.elapsed();
    let consumer = reader(&broker, "bulk", 1, Offset::Beginning);
    let started = Instant::now();
    let records = poll_records(&consumer, COUNT);
    let consumed = started.elapsed();
    assert_eq!(records.last().unwrap().offset(), COUNT as i64 - 1);
    println!(
        "THROUGHPUT produce acks=all: {:.0} records/s ({:.1} MB/s); consume: {:.0} records/s ({:.1} MB/s)",
        COUNT as f64 / produced.as_secs_f64(),
        (COUNT * 100) as f64 / produced.as_secs_f64() / 1e6,
        COUNT as f64 / consumed.as_secs_f64(),
        (COUNT * 100) as f64 / consumed.as_secs_f64() / 1e6,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_and_fsync_before_acknowledge_both_store_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = taskstream_broker::BrokerConfig::new(dir.path());
    config.flush = taskstream_broker::FlushPolicy::BeforeAcknowledge;
    let broker = taskstream_broker::Broker::start(config).unwrap();
    create_topic(&broker, "fire-and-forget", 1, &[]).await;
    let unacknowledged: rdkafka::producer::FutureProducer =
        client(&broker).set("acks", "0").create().unwrap();
    let fsynced = producer(&broker);
    for i in 0..10 {
        let value = format!("acks0-{i}");
        unacknowledged
            .send(
                FutureRecord::<(), _>::to("fire-and-forget").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
    fsynced
        .send(
            FutureRecord::<(), _>::to("fire-and-forget").payload("synced"),
            Duration::from_secs(10),
        )
        .await
        .expect("acknowledged");
    let consumer = reader(&broker, "fire-and-forget", 1, Offset::Beginning);
    let values: Vec<String> = poll_records(&consumer, 11)
        .iter()
        .map(|r| String::from_utf8(r.payload().unwrap().to_vec()).unwrap())
        .collect();
    assert!(values.contains(&"synced".to_owned()));
    assert_eq!(
        values.iter().filter(|v| v.starts_with("acks0-")).count(),
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_reports_set_configs_and_delete_records_raises_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "configured", 1, &[("retention.ms", "3600000")]).await;
    let admin = admin(&broker);
    let described = admin
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic("configured")],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
        .pop()
        .unwrap()
        .expect("the topic's configs");
    let value = |key: &str| described.get(key).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));

    produce_values(&broker, "configured", (0..10).map(|i| format!("r{i}"))).await;
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset("configured", 0, Offset::Offset(4))
        .unwrap();
    let deleted = admin
        .delete_records(&before, &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        deleted.find_partition("configured", 0).unwrap().offset(),
        Offset::Offset(4)
    );
    broker.stop();
    let broker = start(dir.path());
    let consumer = reader(&broker, "configured", 1, Offset::Beginning);
    assert_eq!(
        consumer
            .fetch_watermarks("configured", 0, PATIENCE)
            .unwrap(),
        (4, 10)
    );
    assert_eq!(poll_records(&consumer, 1)[0].offset(), 4);
}

#[test]
fn a_second_broker_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path());
    let second = taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(dir.path()));
    assert!(
        matches!(second, Err(taskstream_broker::StartError::Locked(_))),
        "{second:?}"
    );
    first.stop();
    start(dir.path()).stop();
}
