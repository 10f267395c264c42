//! Transactions through librdkafka: what a `read_committed` consumer sees
//! when transactions commit, abort, time out, or are left open by a broker
//! restart.

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Offset;
use support::*;
use taskstream_broker::RunningBroker;

fn transactional(broker: &RunningBroker, id: &str, timeout_ms: u32) -> FutureProducer {
    let producer: FutureProducer = client(broker)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "1")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(PATIENCE)
        .expect("init_transactions");
    producer
}

async fn send(producer: &FutureProducer, topic: &str, value: &str) {
    producer
        .send(FutureRecord::to(topic).key("k").payload(value), PATIENCE)
        .await
        .unwrap_or_else(|(e, _)| panic!("sending {value}: {e}"));
}

fn committed_reader(broker: &RunningBroker, topic: &str) -> BaseConsumer {
    isolated_reader(broker, topic, "read_committed")
}

fn isolated_reader(broker: &RunningBroker, topic: &str, isolation: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client(broker)
        .set("group.id", "readers")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    rdkafka::consumer::Consumer::assign(&consumer, &list).expect("assign");
    consumer
}

/// Values read until `last` arrives.
fn read_until(consumer: &BaseConsumer, last: &str) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let done = value == last;
            seen.push(value);
            if done {
                return seen;
            }
        }
    }
    panic!("{last} never arrived; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holds_back_read_committed_readers_until_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "t", 1, &[]).await;
    let holder = transactional(&broker, "holder", 60_000);
    holder.begin_transaction().unwrap();
    send(&holder, "t", "inside").await;
    // Written after the transaction's first record, outside it.
    send(&producer(&broker), "t", "outside").await;

    let committed = committed_reader(&broker, "t");
    // ListOffsets: the latest offset is the last stable offset to
    // read_committed clients, the end of the log to the others.
    let uncommitted = isolated_reader(&broker, "t", "read_uncommitted");
    assert_eq!(
        committed.fetch_watermarks("t", 0, PATIENCE).unwrap(),
        (0, 0)
    );
    assert_eq!(
        uncommitted.fetch_watermarks("t", 0, PATIENCE).unwrap(),
        (0, 2)
    );
    let held_back = Instant::now() + Duration::from_secs(2);
    while Instant::now() < held_back {
        if let Some(m) = committed.poll(Duration::from_millis(100)) {
            panic!(
                "a read_committed reader got {:?} past the open transaction",
                m.map(|m| m.offset())
            );
        }
    }
    holder.commit_transaction(PATIENCE).expect("commit");
    assert_eq!(read_until(&committed, "outside"), ["inside", "outside"]);
    assert_eq!(
        committed.fetch_watermarks("t", 0, PATIENCE).unwrap(),
        (0, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_longer_than_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "t", 1, &[]).await;
    let slow = transactional(&broker, "slow", 1_000);
    slow.begin_transaction().unwrap();
    send(&slow, "t", "too-slow").await;
    send(&producer(&broker), "t", "after").await;
    // The broker aborts the transaction once it is 1 s old; until then the
    // reader is held back, after it the aborted record is skipped.
    let committed = committed_reader(&broker, "t");
    assert_eq!(read_until(&committed, "after"), ["after"]);
    let refused = slow.commit_transaction(PATIENCE);
    assert!(refused.is_err(), "the timed-out producer cannot commit");
    let uncommitted = isolated_reader(&broker, "t", "read_uncommitted");
    assert_eq!(read_until(&uncommitted, "after"), ["too-slow", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_by_a_restart_is_aborted_and_the_id_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "t", 1, &[]).await;
    let before = transactional(&broker, "restarted", 60_000);
    before.begin_transaction().unwrap();
    send(&before, "t", "in-flight").await;
    drop(before);
    broker.stop();

    let broker = start(dir.path());
    let after = transactional(&broker, "restarted", 60_000);
    after.begin_transaction().unwrap();
    send(&after, "t", "committed").await;
    after.commit_transaction(PATIENCE).expect("commit");
    let committed = committed_reader(&broker, "t");
    assert_eq!(read_until(&committed, "committed"), ["committed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_with_the_same_transactional_id_aborts_the_open_transaction_and_fences_the_first(
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    create_topic(&broker, "t", 1, &[]).await;
    let first = transactional(&broker, "shared", 60_000);
    first.begin_transaction().unwrap();
    send(&first, "t", "from-first").await;

    // The broker aborts the first producer's transaction; librdkafka
    // retries InitProducerId until the abort is done.
    let second = transactional(&broker, "shared", 60_000);
    let committed = committed_reader(&broker, "t");
    assert_eq!(
        committed.fetch_watermarks("t", 0, PATIENCE).unwrap(),
        (0, 2),
        "the first transaction's record and its abort marker are stable"
    );
    second.begin_transaction().unwrap();
    send(&second, "t", "from-second").await;
    second.commit_transaction(PATIENCE).expect("commit");
    assert_eq!(read_until(&committed, "from-second"), ["from-second"]);

    let refused = first
        .commit_transaction(PATIENCE)
        .expect_err("the first producer cannot commit");
    match &refused {
        rdkafka::error::KafkaError::Transaction(e) => {
            assert!(e.is_fatal(), "fencing is fatal to the first producer: {e}")
        }
        other => panic!("expected a transaction error, got {other}"),
    }
    let uncommitted = isolated_reader(&broker, "t", "read_uncommitted");
    assert_eq!(
        read_until(&uncommitted, "from-second"),
        ["from-first", "from-second"]
    );
}
