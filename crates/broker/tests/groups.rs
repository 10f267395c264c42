//! Consumer groups through rdkafka: cooperative-sticky rebalances relayed
//! by the broker, and committed offsets that outlive a restart.

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::*;

fn member(broker: &taskstream_broker::RunningBroker, group: &str, client: &str) -> BaseConsumer {
    let consumer: BaseConsumer = support::client(broker)
        .set("group.id", group)
        .set("client.id", client)
        .set("enable.auto.commit", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer
}

fn owned(consumer: &BaseConsumer) -> usize {
    consumer.assignment().map(|a| a.count()).unwrap_or(0)
}

/// Polls every consumer until `done` holds.
fn poll_until(consumers: &[&BaseConsumer], what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_half_the_partitions_and_the_first_gets_them_back_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "shared", 4, &[]).await;
    let first = member(&broker, "workers", "first");
    first.subscribe(&["shared"]).unwrap();
    poll_until(&[&first], "the first member to own every partition", || {
        owned(&first) == 4
    });

    let second = member(&broker, "workers", "second");
    second.subscribe(&["shared"]).unwrap();
    poll_until(&[&first, &second], "an even split", || {
        owned(&first) == 2 && owned(&second) == 2
    });

    let groups = first.fetch_group_list(Some("workers"), PATIENCE).unwrap();
    let group = &groups.groups()[0];
    assert_eq!(
        (group.state(), group.protocol()),
        ("Stable", "cooperative-sticky")
    );
    assert_eq!(group.members().len(), 2);

    second.unsubscribe();
    drop(second);
    poll_until(
        &[&first],
        "the first member to get every partition back",
        || owned(&first) == 4,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_keep_their_metadata_across_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "progress", 2, &[]).await;
    let consumer = member(&broker, "auditors", "auditor");
    consumer.subscribe(&["progress"]).unwrap();
    poll_until(&[&consumer], "the assignment", || owned(&consumer) == 2);
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("progress", 0, Offset::Offset(17))
        .unwrap();
    commit
        .find_partition("progress", 0)
        .unwrap()
        .set_metadata("checkpoint-a");
    commit
        .add_partition_offset("progress", 1, Offset::Offset(3))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).expect("commit");
    drop(consumer);
    broker.stop();

    let broker = start(dir.path());
    let consumer = member(&broker, "auditors", "auditor-again");
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition("progress", 0);
    wanted.add_partition("progress", 1);
    let committed = consumer
        .committed_offsets(wanted, PATIENCE)
        .expect("OffsetFetch");
    let p0 = committed.find_partition("progress", 0).unwrap();
    assert_eq!(p0.offset(), Offset::Offset(17));
    assert_eq!(p0.metadata(), "checkpoint-a");
    assert_eq!(
        committed.find_partition("progress", 1).unwrap().offset(),
        Offset::Offset(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_timeout_below_six_seconds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "strict", 1, &[]).await;
    let consumer: BaseConsumer = support::client(&broker)
        .set("group.id", "impatient")
        .set("session.timeout.ms", "1000")
        .set("heartbeat.interval.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&["strict"]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no error reported");
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            assert!(e.to_string().contains("session timeout"), "{e}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_listed_and_described_as_empty_with_its_protocol_type_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "survived", 1, &[]).await;
    let consumer = member(&broker, "survivors", "survivor");
    consumer.subscribe(&["survived"]).unwrap();
    poll_until(&[&consumer], "the assignment", || owned(&consumer) == 1);
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("survived", 0, Offset::Offset(4))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).expect("commit");
    drop(consumer);
    broker.stop();

    let broker = start(dir.path());
    // librdkafka lists the groups (ListGroups), then describes them
    // (DescribeGroups); no member has rejoined.
    let observer: BaseConsumer = support::client(&broker).create().unwrap();
    let groups = observer
        .fetch_group_list(Some("survivors"), PATIENCE)
        .expect("ListGroups and DescribeGroups");
    let described: Vec<_> = groups
        .groups()
        .iter()
        .map(|g| (g.name(), g.state(), g.protocol_type(), g.members().len()))
        .collect();
    assert_eq!(described, [("survivors", "Empty", "consumer", 0)]);
}
