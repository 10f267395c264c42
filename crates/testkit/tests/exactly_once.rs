//! What exactly-once rests on, shown against Apache Kafka (one node, shared
//! by this binary; skipped loudly without Java and Maven, failed with
//! `TASKSTREAM_REQUIRE_KAFKA=1`) and against taskstream's own broker:
//!
//! - the idempotent producer: a [`FaultProxy`] loses the response to a
//!   Produce request the broker has handled; librdkafka sends the records
//!   again, and the topic holds them once. The same fault without
//!   idempotence leaves them twice — the check can fail;
//! - each class of transactional error, on its own path: retriable (a
//!   commit whose answer is late), abortable (a record the broker refuses),
//!   fatal (a producer fenced by a newer one with the same id).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use taskstream_kafka::{
    apply_topics, read_committed, read_uncommitted, EventProducer, KafkaConfig, OutboundRecord,
    ProducerSettings, TopicSpec, TransactionErrorKind, TransactionSettings, TransactionalProducer,
};
use taskstream_testkit::{kafka_or_skip, FaultProxy, Shape};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(30);

/// The broker a check runs against, held for the check's length.
enum Broker {
    Kafka,
    Taskstream {
        _broker: taskstream_broker::RunningBroker,
        _data: tempfile::TempDir,
    },
}

struct Target {
    _broker: Broker,
    bootstrap: String,
}

fn kafka(what: &str) -> Option<Target> {
    let cluster = kafka_or_skip(Shape::SingleNode, what)?;
    Some(Target {
        _broker: Broker::Kafka,
        bootstrap: cluster.bootstrap_servers().to_owned(),
    })
}

fn taskstream() -> Target {
    let dir = tempfile::tempdir().expect("a data directory");
    let broker = taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(dir.path()))
        .expect("taskstream's broker starts");
    let bootstrap = broker.addr().to_string();
    Target {
        _broker: Broker::Taskstream {
            _broker: broker,
            _data: dir,
        },
        bootstrap,
    }
}

/// Creates a fresh one-partition topic with `configs` and returns its name.
async fn topic(bootstrap: &str, configs: &[(&str, &str)]) -> String {
    let name = format!("eos-{}", Uuid::new_v4());
    let spec = TopicSpec {
        name: name.clone(),
        partitions: 1,
        replication_factor: 1,
        configs: configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    };
    apply_topics(&KafkaConfig::new(bootstrap).quiet(), &[spec], PATIENCE)
        .await
        .expect("the topic is created");
    name
}

fn record<'a>(topic: &'a str, payload: &'a [u8]) -> OutboundRecord<'a> {
    OutboundRecord {
        topic,
        key: b"k",
        payload,
        headers: &[],
    }
}

async fn payloads(bootstrap: &str, topic: &str, committed: bool) -> Vec<String> {
    let config = KafkaConfig::new(bootstrap).quiet();
    let records = if committed {
        read_committed(&config, topic, PATIENCE).await
    } else {
        read_uncommitted(&config, topic, PATIENCE).await
    }
    .expect("the topic can be read");
    records
        .into_iter()
        .map(|r| String::from_utf8(r.payload.unwrap_or_default()).expect("utf-8"))
        .collect()
}

/// Sends three records through a proxy that loses the response to the
/// second Produce request, each waited for before the next, and returns
/// what the topic holds.
async fn lose_a_produce_response(target: &Target, idempotent: bool) -> Vec<String> {
    let topic = topic(&target.bootstrap, &[]).await;
    let proxy = FaultProxy::start(&target.bootstrap)
        .await
        .expect("the proxy starts");
    proxy.lose_produce_response(2);
    let payloads_sent = ["one", "two", "three"];
    if idempotent {
        // taskstream's own producer.
        let producer = EventProducer::new(
            &KafkaConfig::new(proxy.bootstrap_servers()).quiet(),
            "eos-test",
            &ProducerSettings::default(),
        )
        .expect("producer");
        for p in payloads_sent {
            producer
                .enqueue(record(&topic, p.as_bytes()))
                .await
                .expect("queued")
                .await
                .expect("delivered");
        }
    } else {
        // The same durability without idempotence.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", proxy.bootstrap_servers())
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("log_level", "0")
            .create()
            .expect("producer");
        for p in payloads_sent {
            producer
                .send(
                    FutureRecord::to(&topic).key("k").payload(p),
                    Duration::from_secs(15),
                )
                .await
                .expect("delivered");
        }
    }
    assert_eq!(
        proxy.lost_responses(),
        1,
        "the proxy lost the response to one Produce request"
    );
    payloads(&target.bootstrap, &topic, true).await
}

async fn idempotence_keeps_one_copy(target: Target) {
    let held = lose_a_produce_response(&target, true).await;
    assert_eq!(held, ["one", "two", "three"]);
}

async fn without_idempotence_the_retry_duplicates(target: Target) {
    let held = lose_a_produce_response(&target, false).await;
    assert_eq!(held, ["one", "two", "two", "three"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_an_idempotent_producer_writes_a_record_once_when_the_response_to_its_produce_request_is_lost(
) {
    let Some(target) = kafka("idempotent producer behind a lossy proxy") else {
        return;
    };
    idempotence_keeps_one_copy(target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_without_idempotence_a_lost_produce_response_leaves_the_record_twice() {
    let Some(target) = kafka("plain producer behind a lossy proxy") else {
        return;
    };
    without_idempotence_the_retry_duplicates(target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_taskstreams_broker_an_idempotent_producer_writes_a_record_once_when_the_response_to_its_produce_request_is_lost(
) {
    idempotence_keeps_one_copy(taskstream()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_taskstreams_broker_without_idempotence_a_lost_produce_response_leaves_the_record_twice()
{
    without_idempotence_the_retry_duplicates(taskstream()).await;
}

fn settings(id: &str, operation_timeout: Duration) -> TransactionSettings {
    TransactionSettings {
        operation_timeout,
        ..TransactionSettings::new(id)
    }
}

/// Retriable: the coordinator handles the commit but its answer is late;
/// the commit times out, is made again, and the record is visible once.
async fn a_late_commit_answer_is_retriable(target: Target) {
    let topic = topic(&target.bootstrap, &[]).await;
    let proxy = FaultProxy::start(&target.bootstrap)
        .await
        .expect("the proxy starts");
    let config = KafkaConfig::new(proxy.bootstrap_servers()).quiet();
    let id = format!("eos-retriable-{}", Uuid::new_v4());
    let producer =
        TransactionalProducer::start(&config, "eos-test", &settings(&id, Duration::from_secs(2)))
            .await
            .expect("init_transactions");
    producer.begin().expect("begin");
    producer
        .enqueue(record(&topic, b"late"))
        .await
        .expect("queued")
        .await
        .expect("delivered");
    proxy.stall_responses();
    let error = producer.commit().await.expect_err("the commit times out");
    assert_eq!(error.kind, TransactionErrorKind::Retriable, "{error}");
    proxy.resume_responses();
    producer
        .commit()
        .await
        .expect("the commit made again succeeds");
    assert_eq!(payloads(&target.bootstrap, &topic, true).await, ["late"]);
}

/// Abortable: the broker refuses a record (larger than the topic allows);
/// the transaction cannot commit, is aborted, and the work goes on with a
/// new producer.
async fn a_refused_record_makes_the_transaction_abortable(target: Target) {
    let topic = topic(&target.bootstrap, &[("max.message.bytes", "1024")]).await;
    let config = KafkaConfig::new(&target.bootstrap).quiet();
    let id = format!("eos-abortable-{}", Uuid::new_v4());
    let producer = TransactionalProducer::start(&config, "eos-test", &settings(&id, PATIENCE))
        .await
        .expect("init_transactions");
    producer.begin().expect("begin");
    producer
        .enqueue(record(&topic, b"small, in the aborted transaction"))
        .await
        .expect("queued")
        .await
        .expect("delivered on its own, before the large one");
    let big = vec![b'x'; 4096];
    let refused = producer
        .enqueue(record(&topic, &big))
        .await
        .expect("queued")
        .await;
    assert!(refused.is_err(), "the broker refuses the large record");
    let error = producer.commit().await.expect_err("the commit is refused");
    assert_eq!(error.kind, TransactionErrorKind::Abortable, "{error}");
    producer.abort().await.expect("abort");
    // librdkafka leaves a gap in the producer's sequence numbers where the
    // refused record was ("skipped sequence numbers" on the next commit):
    // the work is done again on a new producer with the same id.
    drop(producer);
    let producer = TransactionalProducer::start(&config, "eos-test", &settings(&id, PATIENCE))
        .await
        .expect("init_transactions again");
    producer.begin().expect("begin again");
    producer
        .enqueue(record(&topic, b"next"))
        .await
        .expect("queued");
    producer
        .commit()
        .await
        .expect("the next transaction commits");
    assert_eq!(payloads(&target.bootstrap, &topic, true).await, ["next"]);
    let uncommitted = payloads(&target.bootstrap, &topic, false).await;
    assert!(
        uncommitted.contains(&"small, in the aborted transaction".to_owned()),
        "a read_uncommitted reader sees the aborted record: {uncommitted:?}"
    );
}

/// Fatal: a second producer with the same transactional id fences the
/// first, whose open transaction is aborted and whose commit fails fatally.
async fn a_newer_producer_fences_the_older(target: Target) {
    let topic = topic(&target.bootstrap, &[]).await;
    let config = KafkaConfig::new(&target.bootstrap).quiet();
    let id = format!("eos-fenced-{}", Uuid::new_v4());
    let older = TransactionalProducer::start(&config, "eos-older", &settings(&id, PATIENCE))
        .await
        .expect("init_transactions");
    older.begin().expect("begin");
    older
        .enqueue(record(&topic, b"zombie"))
        .await
        .expect("queued")
        .await
        .expect("delivered");
    let newer = TransactionalProducer::start(&config, "eos-newer", &settings(&id, PATIENCE))
        .await
        .expect("the newer producer takes the id over");
    let error = older.commit().await.expect_err("the older one is fenced");
    assert_eq!(error.kind, TransactionErrorKind::Fatal, "{error}");
    assert!(error.fenced, "{error}");
    assert!(older.fatal_error().is_some());
    newer.begin().expect("begin");
    newer
        .enqueue(record(&topic, b"owner"))
        .await
        .expect("queued");
    newer.commit().await.expect("the newer one commits");
    assert_eq!(payloads(&target.bootstrap, &topic, true).await, ["owner"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_a_commit_whose_answer_is_late_is_retriable_and_commits_once_when_made_again() {
    let Some(target) = kafka("retriable transactional error") else {
        return;
    };
    a_late_commit_answer_is_retriable(target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_a_record_the_broker_refuses_makes_the_transaction_abortable() {
    let Some(target) = kafka("abortable transactional error") else {
        return;
    };
    a_refused_record_makes_the_transaction_abortable(target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_a_newer_producer_with_the_same_transactional_id_fences_the_older_fatally() {
    let Some(target) = kafka("fatal transactional error") else {
        return;
    };
    a_newer_producer_fences_the_older(target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_taskstreams_broker_a_commit_whose_answer_is_late_is_retriable_and_commits_once_when_made_again(
) {
    a_late_commit_answer_is_retriable(taskstream()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_taskstreams_broker_a_record_the_broker_refuses_makes_the_transaction_abortable() {
    a_refused_record_makes_the_transaction_abortable(taskstream()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_taskstreams_broker_a_newer_producer_with_the_same_transactional_id_fences_the_older_fatally(
) {
    a_newer_producer_fences_the_older(taskstream()).await;
}
