//! The broker conformance suite: everything taskstream asks of a Kafka
//! broker, written once and run against every broker taskstream talks to —
//! the dev broker (librdkafka's mock cluster, `taskstream_kafka::DevBroker`),
//! taskstream's own broker (`taskstream_broker`, one per check on a fresh
//! data directory) and Apache Kafka itself (one node, started once for this
//! binary from Maven Central; skipped loudly without Java and Maven, and
//! failed instead when `TASKSTREAM_REQUIRE_KAFKA=1`).
//!
//! Apache Kafka and taskstream's broker must pass every check, with no
//! list of differences. Where the dev broker behaves
//! differently, the check names the difference from [`Difference`], prints
//! `KNOWN-DIFFERENCE <name>: <why>` and asserts that the dev broker *still*
//! behaves that way, so the list cannot go stale: when a librdkafka upgrade
//! closes a gap, that check fails and the entry must go.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};
use taskstream_kafka::{
    apply_topics, group_offsets, list_groups, ConsumerSettings, DevBroker, EventConsumer,
    EventProducer, KafkaConfig, OutboundRecord, ProducerSettings, TopicOutcome, TopicSpec,
};
use taskstream_testkit::{kafka_or_skip, KafkaCluster, Shape};
use uuid::Uuid;

/// How long any single wait in this suite may take before the check fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// The ways the dev broker is known to differ from Apache Kafka.
#[derive(Debug, Clone, Copy)]
enum Difference {
    ReadCommitted,
    TransactionalOffsets,
    Fencing,
    TopicAdmin,
    GroupAdmin,
    DeleteRecords,
    OffsetsForTimes,
    SessionTimeoutBounds,
    StaticMembership,
}

impl Difference {
    fn name(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read-committed",
            Self::TransactionalOffsets => "send-offsets-to-transaction",
            Self::Fencing => "transactional-fencing",
            Self::TopicAdmin => "topic-admin",
            Self::GroupAdmin => "group-admin",
            Self::DeleteRecords => "delete-records",
            Self::OffsetsForTimes => "offsets-for-times",
            Self::SessionTimeoutBounds => "session-timeout-bounds",
            Self::StaticMembership => "static-membership",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::ReadCommitted => {
                "the dev broker writes no transaction markers, so read_committed readers see aborted records"
            }
            Self::TransactionalOffsets => {
                "the dev broker acknowledges TxnOffsetCommit but never commits the offsets"
            }
            Self::Fencing => {
                "the dev broker lets a producer whose transactional.id was taken over commit its transaction"
            }
            Self::TopicAdmin => {
                "the dev broker serves no CreateTopics, DeleteTopics or DescribeConfigs; topics are made through its own API"
            }
            Self::GroupAdmin => "the dev broker serves no ListGroups or DescribeGroups",
            Self::DeleteRecords => {
                "the dev broker serves no DeleteRecords; it only drops a partition's oldest data beyond 5 MiB"
            }
            Self::OffsetsForTimes => {
                "the dev broker answers every ListOffsets-by-time with no offset"
            }
            Self::SessionTimeoutBounds => {
                "the dev broker accepts any session timeout; Kafka refuses one below group.min.session.timeout.ms (6 s)"
            }
            Self::StaticMembership => {
                "the dev broker keeps group.instance.id but treats every join as a new member (KIP-345 unimplemented): a restarted static member waits for the old one's session to time out, and an older consumer with the same instance id is never fenced"
            }
        }
    }
}

enum Broker {
    Dev(DevBroker),
    Kafka(&'static KafkaCluster),
    /// Taskstream's own broker, held (stopped on drop) with the directory
    /// holding its data.
    Taskstream {
        _broker: taskstream_broker::RunningBroker,
        _data: tempfile::TempDir,
    },
}

/// The broker one check runs against.
struct Target {
    broker: Broker,
    bootstrap: String,
}

impl Target {
    fn dev() -> Self {
        let broker = DevBroker::start(&[]).expect("the dev broker starts");
        let bootstrap = broker.bootstrap_servers().to_owned();
        Self {
            broker: Broker::Dev(broker),
            bootstrap,
        }
    }

    fn taskstream() -> Self {
        let dir = tempfile::tempdir().expect("a data directory");
        let broker =
            taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(dir.path()))
                .expect("taskstream's broker starts");
        let bootstrap = broker.addr().to_string();
        Self {
            broker: Broker::Taskstream {
                _broker: broker,
                _data: dir,
            },
            bootstrap,
        }
    }

    fn kafka(what: &str) -> Option<Self> {
        let cluster = kafka_or_skip(Shape::SingleNode, what)?;
        Some(Self {
            broker: Broker::Kafka(cluster),
            bootstrap: cluster.bootstrap_servers().to_owned(),
        })
    }

    /// On the dev broker: prints the difference and returns `true`; the
    /// caller then asserts the dev broker still differs that way.
    fn differs(&self, difference: Difference) -> bool {
        match self.broker {
            Broker::Dev(_) => {
                eprintln!(
                    "KNOWN-DIFFERENCE {}: {}",
                    difference.name(),
                    difference.why()
                );
                true
            }
            Broker::Kafka(_) | Broker::Taskstream { .. } => false,
        }
    }

    fn config(&self) -> KafkaConfig {
        KafkaConfig::new(&self.bootstrap)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("fetch.wait.max.ms", "10");
        config
    }

    /// How long an admin request may wait for an answer: the dev broker
    /// never answers the admin APIs it lacks, so waiting long there only
    /// slows the suite down.
    fn admin_timeout(&self) -> Duration {
        match self.broker {
            Broker::Dev(_) => Duration::from_secs(3),
            Broker::Kafka(_) | Broker::Taskstream { .. } => PATIENCE,
        }
    }

    /// Client settings for admin requests, bounded by [`Target::admin_timeout`].
    fn admin_config(&self) -> KafkaConfig {
        self.config().with(
            "socket.timeout.ms",
            self.admin_timeout().as_millis().to_string(),
        )
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.admin_timeout()))
            .operation_timeout(Some(self.admin_timeout()))
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        let mut config = self.client();
        config.set(
            "socket.timeout.ms",
            self.admin_timeout().as_millis().to_string(),
        );
        config.create().expect("admin client")
    }

    /// A fresh topic with `partitions` partitions, ready for use.
    fn topic(&self, partitions: i32) -> String {
        let name = format!("conformance-{}", Uuid::new_v4().simple());
        match &self.broker {
            Broker::Dev(dev) => dev
                .create_topic(&TopicSpec {
                    name: name.clone(),
                    partitions,
                    replication_factor: 1,
                    configs: BTreeMap::new(),
                })
                .expect("dev broker topic"),
            Broker::Kafka(_) | Broker::Taskstream { .. } => {
                let created = futures_block_on(self.admin().create_topics(
                    &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(PATIENCE)),
                ))
                .expect("CreateTopics");
                assert!(created.iter().all(Result::is_ok), "{created:?}");
            }
        }
        self.wait_for_leaders(&name, partitions);
        name
    }

    fn wait_for_leaders(&self, topic: &str, partitions: i32) {
        let consumer = self.consumer(None, &[]);
        eventually(
            &format!("{topic} to have {partitions} led partitions"),
            || {
                consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics().iter().find(|t| t.name() == topic).map(|t| {
                            t.partitions().len() == partitions as usize
                                && t.partitions().iter().all(|p| p.leader() >= 0)
                        })
                    })
                    .unwrap_or(false)
            },
        );
    }

    fn consumer(&self, group: Option<&str>, extra: &[(&str, &str)]) -> BaseConsumer {
        let mut config = self.client();
        config
            .set(
                "group.id",
                group.map_or_else(|| format!("reader-{}", Uuid::new_v4()), str::to_owned),
            )
            .set("enable.auto.commit", "false");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        config.create().expect("consumer")
    }

    fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut config = self.client();
        config.set("acks", "all").set("linger.ms", "1");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        config.create().expect("producer")
    }

    /// Every record of `topic`'s partition 0 from the start, as seen with
    /// `isolation`, up to and including the first whose value is `last`.
    fn read_until(&self, topic: &str, isolation: &str, last: &str) -> Vec<String> {
        let consumer = self.consumer(None, &[("isolation.level", isolation)]);
        assign(&consumer, topic, 0, Offset::Beginning);
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let value =
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    let done = value == last;
                    seen.push(value);
                    if done {
                        return seen;
                    }
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        panic!("{last:?} never arrived in {topic} ({isolation}); saw {seen:?}");
    }

    /// The offset (and metadata) `group` committed for `topic`'s partition 0.
    fn committed(&self, group: &str, topic: &str) -> Option<(i64, String)> {
        let consumer = self.consumer(Some(group), &[]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("OffsetFetch");
        let elem = committed.find_partition(topic, 0)?;
        match elem.offset() {
            Offset::Offset(offset) => Some((offset, elem.metadata().to_owned())),
            _ => None,
        }
    }
}

/// Declares each check three times: against the dev broker, taskstream's
/// broker and Apache Kafka.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod dev_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::Target::dev()).await;
                }
            )*
        }

        mod own_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::Target::taskstream()).await;
                }
            )*
        }

        mod apache_kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(target) = super::Target::kafka(stringify!($check)) {
                        super::$check(&target).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    acks_all_produce_reports_each_delivery_and_keeps_keys_headers_and_timestamps,
    the_idempotent_producer_is_assigned_a_producer_id,
    a_second_member_takes_half_the_partitions_and_the_first_gets_them_back_when_it_leaves,
    committed_offsets_keep_their_metadata_and_a_restarted_member_resumes_after_them,
    watermarks_bound_the_log_and_offsets_for_times_finds_the_first_record_at_or_after_a_time,
    create_topics_applies_configs_that_describe_configs_reports,
    delete_topics_removes_the_topic,
    list_groups_and_describe_groups_show_a_live_member,
    read_committed_hides_aborted_records_that_read_uncommitted_shows,
    offsets_sent_to_a_transaction_are_committed_only_when_it_commits,
    a_new_producer_with_the_same_transactional_id_fences_the_old_one,
    a_consumer_whose_position_fell_off_the_log_is_told_which_partition,
    an_event_consumer_names_the_records_it_skipped_and_its_commits_say_so,
    a_session_timeout_below_the_brokers_minimum_is_refused,
    a_static_member_restarted_without_leaving_gets_its_partitions_back_before_its_session_times_out,
    a_second_live_consumer_with_the_same_instance_id_fences_the_first,
    a_restarted_static_member_resumes_after_its_committed_offsets,
);

async fn acks_all_produce_reports_each_delivery_and_keeps_keys_headers_and_timestamps(
    target: &Target,
) {
    let topic = target.topic(1);
    let producer = EventProducer::new(
        &target.config(),
        "conformance",
        &ProducerSettings::default(),
    )
    .expect("producer");
    let before = now_ms();
    let mut offsets = Vec::new();
    for i in 0..5 {
        let key = format!("task-{i}");
        let payload = format!("payload-{i}");
        let id = format!("event-{i}");
        let headers = [("event-id", id.as_bytes()), ("empty", &b""[..])];
        let delivery = producer
            .enqueue(OutboundRecord {
                topic: &topic,
                key: key.as_bytes(),
                payload: payload.as_bytes(),
                headers: &headers,
            })
            .await
            .expect("enqueued")
            .await
            .expect("acknowledged");
        assert_eq!(delivery.partition, 0);
        offsets.push(delivery.offset);
    }
    assert_eq!(
        offsets,
        [0, 1, 2, 3, 4],
        "deliveries report consecutive offsets"
    );
    // A timestamp chosen by the producer is kept as the record's CreateTime.
    let stamped = 1_700_000_000_123;
    let raw = target.producer(&[]);
    let delivery = raw
        .send(
            FutureRecord::to(&topic)
                .key("stamped")
                .payload("stamped")
                .timestamp(stamped),
            PATIENCE,
        )
        .await
        .expect("acknowledged");
    assert_eq!((delivery.partition, delivery.offset), (0, 5));
    let after = now_ms();

    let consumer = target.consumer(None, &[]);
    assign(&consumer, &topic, 0, Offset::Beginning);
    let records = poll_records(&consumer, 6);
    for (i, m) in records.iter().take(5).enumerate() {
        assert_eq!(m.key(), Some(format!("task-{i}").as_bytes()));
        assert_eq!(m.payload(), Some(format!("payload-{i}").as_bytes()));
        let headers = m.headers().expect("headers");
        let pairs: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("event-id".to_owned(), format!("event-{i}").into_bytes()),
                ("empty".to_owned(), Vec::new())
            ]
        );
        match m.timestamp() {
            Timestamp::CreateTime(ts) => assert!(
                (before..=after).contains(&ts),
                "timestamp {ts} outside {before}..={after}"
            ),
            other => panic!("record {i} has {other:?}, not a CreateTime"),
        }
    }
    assert_eq!(records[5].timestamp(), Timestamp::CreateTime(stamped));
}

/// Keeps the last statistics a client emitted.
#[derive(Default, Clone)]
struct LastStatistics(Arc<std::sync::Mutex<Option<Statistics>>>);

impl ClientContext for LastStatistics {
    fn stats(&self, statistics: Statistics) {
        *self.0.lock().unwrap() = Some(statistics);
    }
}

async fn the_idempotent_producer_is_assigned_a_producer_id(target: &Target) {
    let topic = target.topic(1);
    let mut config = target.client();
    config
        .set("enable.idempotence", "true")
        .set("statistics.interval.ms", "100");
    let last = LastStatistics::default();
    let producer: FutureProducer<LastStatistics> = config
        .create_with_context(last.clone())
        .expect("idempotent producer");
    producer
        .send(FutureRecord::to(&topic).key("k").payload("v"), PATIENCE)
        .await
        .expect("acknowledged");
    let eos = eventually("statistics with an assigned producer id", || {
        let stats = last.0.lock().unwrap().clone();
        stats
            .and_then(|s| s.eos)
            .filter(|eos| eos.idemp_state == "Assigned" && eos.producer_id >= 0)
    });
    assert!(eos.producer_epoch >= 0, "{eos:?}");
}

/// Runs a member's poll loop (which is also where it takes part in
/// rebalances) until the returned handle is aborted.
fn keep_polling(consumer: Arc<EventConsumer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = consumer.recv().await;
        }
    })
}

fn owned(consumer: &EventConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, u64> {
    (0..partitions)
        .filter_map(|p| consumer.ownership(topic, p).map(|o| (p, o)))
        .collect()
}

/// Session timeouts Apache Kafka accepts (its minimum is 6 s), with short fetches.
fn group_settings() -> ConsumerSettings {
    ConsumerSettings {
        session_timeout: Duration::from_secs(6),
        fetch_wait: Duration::from_millis(10),
        ..ConsumerSettings::default()
    }
}

async fn a_second_member_takes_half_the_partitions_and_the_first_gets_them_back_when_it_leaves(
    target: &Target,
) {
    let topic = target.topic(4);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = target.config();
    let first = Arc::new(
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("first"),
    );
    let first_loop = keep_polling(Arc::clone(&first));
    let alone = eventually_async("the first member to own all 4 partitions", || {
        let owned = owned(&first, &topic, 4);
        (owned.len() == 4).then_some(owned)
    })
    .await;

    let second = Arc::new(
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("second"),
    );
    let second_loop = keep_polling(Arc::clone(&second));
    let (kept, taken) = eventually_async("the partitions to split 2 and 2", || {
        let kept = owned(&first, &topic, 4);
        let taken = owned(&second, &topic, 4);
        (kept.len() == 2 && taken.len() == 2).then_some((kept, taken))
    })
    .await;
    let kept_ids: BTreeSet<i32> = kept.keys().copied().collect();
    let taken_ids: BTreeSet<i32> = taken.keys().copied().collect();
    assert!(kept_ids.is_disjoint(&taken_ids), "{kept:?} {taken:?}");
    // Cooperative: the first member kept its two partitions throughout
    // (same assignment), rather than giving up all four and getting two back.
    for (partition, assignment) in &kept {
        assert_eq!(
            alone.get(partition),
            Some(assignment),
            "partition {partition} was revoked"
        );
    }

    second_loop.abort();
    let _ = second_loop.await;
    let second = Arc::try_unwrap(second).unwrap_or_else(|_| panic!("second member still shared"));
    second
        .close(PATIENCE)
        .await
        .expect("the second member leaves");
    let back = eventually_async("the first member to own all 4 again", || {
        let owned = owned(&first, &topic, 4);
        (owned.len() == 4).then_some(owned)
    })
    .await;
    for (partition, assignment) in &kept {
        assert_eq!(
            back.get(partition),
            Some(assignment),
            "partition {partition} was revoked"
        );
    }
    first_loop.abort();
}

async fn committed_offsets_keep_their_metadata_and_a_restarted_member_resumes_after_them(
    target: &Target,
) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = target.config();
    let producer = target.producer(&[]);
    for i in 0..5 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("r{i}")),
                PATIENCE,
            )
            .await
            .expect("acknowledged");
    }
    let before = now_ms();
    let member =
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("member");
    for expected in 0..3 {
        let record = tokio::time::timeout(PATIENCE, member.recv())
            .await
            .expect("a record in time")
            .expect("a record");
        assert_eq!(record.offset, expected);
        assert!(member.ack(&record));
    }
    member.commit_acked(true).await.expect("commit");
    member.close(PATIENCE).await.expect("close");
    let after = now_ms();

    let offsets = group_offsets(&config, &group, &topic, PATIENCE)
        .await
        .expect("group offsets");
    assert_eq!(offsets.len(), 1);
    assert_eq!(offsets[0].committed, Some(3));
    assert_eq!(offsets[0].log_end, 5);
    let stamped = offsets[0]
        .committed_at_ms
        .expect("commit metadata read back");
    assert!(
        (before..=after).contains(&stamped),
        "{stamped} outside {before}..={after}"
    );

    let restarted = EventConsumer::subscribe(&config, &group, &[&topic], &group_settings())
        .expect("restarted member");
    let first = tokio::time::timeout(PATIENCE, restarted.recv())
        .await
        .expect("a record in time")
        .expect("a record");
    assert_eq!(first.offset, 3, "resumes right after the committed offset");
    restarted.close(PATIENCE).await.expect("close");
}

async fn watermarks_bound_the_log_and_offsets_for_times_finds_the_first_record_at_or_after_a_time(
    target: &Target,
) {
    let topic = target.topic(1);
    let base = now_ms() - 60_000;
    let producer = target.producer(&[]);
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload(&format!("r{i}"))
                    .timestamp(base + i * 1_000),
                PATIENCE,
            )
            .await
            .expect("acknowledged");
    }
    let consumer = target.consumer(None, &[]);
    let watermarks = consumer
        .fetch_watermarks(&topic, 0, PATIENCE)
        .expect("watermarks");
    assert_eq!(watermarks, (0, 3));

    let lookup = |time: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(time))
            .unwrap();
        consumer
            .offsets_for_times(tpl, PATIENCE)
            .expect("ListOffsets by time")
            .find_partition(&topic, 0)
            .expect("the partition")
            .offset()
    };
    let middle = lookup(base + 500);
    if target.differs(Difference::OffsetsForTimes) {
        assert_eq!(
            middle,
            Offset::End,
            "the dev broker now finds offsets by time"
        );
        return;
    }
    assert_eq!(middle, Offset::Offset(1));
    assert_eq!(lookup(base), Offset::Offset(0));
    assert_eq!(lookup(base + 2_500), Offset::End, "no record that late");
}

async fn create_topics_applies_configs_that_describe_configs_reports(target: &Target) {
    let name = format!("conformance-{}", Uuid::new_v4().simple());
    let spec = TopicSpec {
        name: name.clone(),
        partitions: 3,
        replication_factor: 1,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("retention.ms".to_owned(), "3600000".to_owned()),
        ]),
    };
    let config = target.admin_config();
    let created = apply_topics(&config, std::slice::from_ref(&spec), target.admin_timeout()).await;
    let described = futures_block_on(
        target
            .admin()
            .describe_configs(&[ResourceSpecifier::Topic(&name)], &target.admin_options()),
    );
    if target.differs(Difference::TopicAdmin) {
        assert!(
            created.is_err(),
            "the dev broker now serves CreateTopics: {created:?}"
        );
        let described_ok = described
            .as_ref()
            .is_ok_and(|results| results.iter().all(Result::is_ok));
        assert!(
            !described_ok,
            "the dev broker now serves DescribeConfigs: {described:?}"
        );
        return;
    }
    assert_eq!(
        created.expect("CreateTopics"),
        [(name.clone(), TopicOutcome::Created)]
    );
    let again = apply_topics(&config, &[spec], target.admin_timeout())
        .await
        .expect("CreateTopics again");
    assert_eq!(again, [(name.clone(), TopicOutcome::AlreadyExists)]);
    target.wait_for_leaders(&name, 3);

    let resource = described
        .expect("DescribeConfigs")
        .pop()
        .expect("one resource")
        .expect("the topic's configs");
    let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));
}

async fn delete_topics_removes_the_topic(target: &Target) {
    let topic = target.topic(1);
    let deleted = futures_block_on(
        target
            .admin()
            .delete_topics(&[topic.as_str()], &target.admin_options()),
    );
    let deleted_ok = deleted
        .as_ref()
        .is_ok_and(|results| results.iter().all(Result::is_ok));
    let consumer = target.consumer(None, &[]);
    let listed = || {
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.topics().iter().any(|t| t.name() == topic))
            .unwrap_or(true)
    };
    if target.differs(Difference::TopicAdmin) {
        assert!(
            !deleted_ok,
            "the dev broker now serves DeleteTopics: {deleted:?}"
        );
        assert!(listed(), "the topic is still there");
        return;
    }
    assert!(deleted_ok, "DeleteTopics: {deleted:?}");
    eventually("the topic to disappear from the metadata", || !listed());
}

async fn list_groups_and_describe_groups_show_a_live_member(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = target.config();
    let member = Arc::new(
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("member"),
    );
    let polling = keep_polling(Arc::clone(&member));
    eventually_async("the member to own the partition", || {
        member.ownership(&topic, 0)
    })
    .await;

    let listed = list_groups(&target.admin_config(), target.admin_timeout()).await;
    let described = target
        .consumer(None, &[])
        .fetch_group_list(Some(&group), target.admin_timeout());
    polling.abort();
    if target.differs(Difference::GroupAdmin) {
        let listed_ok = listed.as_ref().is_ok_and(|groups| groups.contains(&group));
        assert!(
            !listed_ok,
            "the dev broker now serves ListGroups: {listed:?}"
        );
        let described_ok = described
            .as_ref()
            .is_ok_and(|list| list.groups().iter().any(|g| g.state() == "Stable"));
        assert!(!described_ok, "the dev broker now serves DescribeGroups");
        return;
    }
    let listed = listed.expect("ListGroups");
    assert!(listed.contains(&group), "{group} not in {listed:?}");
    let described = described.expect("DescribeGroups");
    let info = described
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .expect("the group described");
    assert_eq!(info.state(), "Stable");
    assert_eq!(info.protocol_type(), "consumer");
    assert_eq!(info.protocol(), "cooperative-sticky");
    assert_eq!(info.members().len(), 1);
    assert_eq!(info.members()[0].client_id(), format!("taskstream-{group}"));
}

fn transactional_producer(target: &Target, transactional_id: &str) -> FutureProducer {
    let producer = target.producer(&[("transactional.id", transactional_id)]);
    producer
        .init_transactions(PATIENCE)
        .expect("init_transactions");
    producer
}

async fn send_value(producer: &FutureProducer, topic: &str, value: &str) {
    producer
        .send(FutureRecord::to(topic).key("k").payload(value), PATIENCE)
        .await
        .unwrap_or_else(|(e, _)| panic!("sending {value}: {e}"));
}

async fn read_committed_hides_aborted_records_that_read_uncommitted_shows(target: &Target) {
    let topic = target.topic(1);
    let producer = transactional_producer(target, &format!("txn-{}", Uuid::new_v4()));
    producer.begin_transaction().expect("begin");
    send_value(&producer, &topic, "committed-1").await;
    producer.commit_transaction(PATIENCE).expect("commit");
    producer.begin_transaction().expect("begin");
    send_value(&producer, &topic, "aborted").await;
    producer.abort_transaction(PATIENCE).expect("abort");
    producer.begin_transaction().expect("begin");
    send_value(&producer, &topic, "committed-2").await;
    producer.commit_transaction(PATIENCE).expect("commit");

    let uncommitted = target.read_until(&topic, "read_uncommitted", "committed-2");
    assert_eq!(uncommitted, ["committed-1", "aborted", "committed-2"]);
    let committed = target.read_until(&topic, "read_committed", "committed-2");
    if target.differs(Difference::ReadCommitted) {
        assert_eq!(
            committed, uncommitted,
            "the dev broker now hides aborted records"
        );
        return;
    }
    assert_eq!(committed, ["committed-1", "committed-2"]);
}

async fn offsets_sent_to_a_transaction_are_committed_only_when_it_commits(target: &Target) {
    let input = target.topic(1);
    let output = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let group_member = target.consumer(Some(&group), &[]);
    let metadata = group_member.group_metadata().expect("group metadata");
    let offsets_at = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&input, 0, Offset::Offset(offset))
            .unwrap();
        tpl
    };
    let producer = transactional_producer(target, &format!("txn-{}", Uuid::new_v4()));

    producer.begin_transaction().expect("begin");
    send_value(&producer, &output, "result-of-5").await;
    producer
        .send_offsets_to_transaction(&offsets_at(5), &metadata, PATIENCE)
        .expect("send offsets");
    producer.abort_transaction(PATIENCE).expect("abort");
    assert_eq!(
        target.committed(&group, &input),
        None,
        "aborted offsets are not committed"
    );

    producer.begin_transaction().expect("begin");
    send_value(&producer, &output, "result-of-7").await;
    producer
        .send_offsets_to_transaction(&offsets_at(7), &metadata, PATIENCE)
        .expect("send offsets");
    producer.commit_transaction(PATIENCE).expect("commit");
    if target.differs(Difference::TransactionalOffsets) {
        assert_eq!(
            target.committed(&group, &input),
            None,
            "the dev broker now commits transactional offsets"
        );
        return;
    }
    let committed = eventually("the transaction's offset to be committed", || {
        target.committed(&group, &input)
    });
    assert_eq!(committed.0, 7);
}

async fn a_new_producer_with_the_same_transactional_id_fences_the_old_one(target: &Target) {
    let topic = target.topic(1);
    let transactional_id = format!("txn-{}", Uuid::new_v4());
    let zombie = transactional_producer(target, &transactional_id);
    zombie.begin_transaction().expect("begin");
    send_value(&zombie, &topic, "from-the-zombie").await;

    let successor = transactional_producer(target, &transactional_id);
    let refused = zombie.commit_transaction(PATIENCE);
    if target.differs(Difference::Fencing) {
        assert!(
            refused.is_ok() && zombie.client().fatal_error().is_none(),
            "the dev broker now fences zombies: {refused:?}"
        );
        return;
    }
    let error = match refused {
        Err(RdError::Transaction(error)) => error,
        other => panic!("the fenced producer's commit returned {other:?}"),
    };
    assert!(error.is_fatal(), "fencing is fatal: {error:?}");
    let (code, reason) = zombie
        .client()
        .fatal_error()
        .expect("the zombie reports a fatal error");
    assert!(
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        ),
        "{code:?}: {reason}"
    );

    successor.begin_transaction().expect("begin");
    send_value(&successor, &topic, "from-the-successor").await;
    successor
        .commit_transaction(PATIENCE)
        .expect("the successor commits");
}

/// Makes `topic`'s partition 0 start at `offset` or later.
async fn truncate_log_before(target: &Target, topic: &str, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    let deleted = futures_block_on(target.admin().delete_records(&tpl, &target.admin_options()));
    if target.differs(Difference::DeleteRecords) {
        let deleted_ok = deleted.as_ref().is_ok_and(|tpl| {
            tpl.elements()
                .iter()
                .all(|e| e.error().is_ok() && e.offset() == Offset::Offset(offset))
        });
        assert!(
            !deleted_ok,
            "the dev broker now serves DeleteRecords: {deleted:?}"
        );
        // What it does instead: past 5 MiB it drops the oldest batches.
        let producer = target.producer(&[("linger.ms", "0")]);
        let filler = vec![b'x'; 256 * 1024];
        for _ in 0..24 {
            producer
                .send(
                    FutureRecord::to(topic).key("filler").payload(&filler),
                    PATIENCE,
                )
                .await
                .expect("acknowledged");
        }
        return;
    }
    let tpl = deleted.expect("DeleteRecords");
    let low = tpl.find_partition(topic, 0).expect("the partition");
    assert_eq!(low.offset(), Offset::Offset(offset), "{:?}", low.error());
}

/// A consumer error as librdkafka delivers it, partition included
/// (rust-rdkafka's `poll` keeps only the error code).
struct ConsumerErrorReport {
    topic: String,
    partition: i32,
    code: RDKafkaErrorCode,
    reason: String,
}

/// Polls `consumer` through librdkafka's C API until it reports an error.
fn next_error_report(consumer: &BaseConsumer) -> Option<ConsumerErrorReport> {
    use rdkafka::bindings as rd;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        // SAFETY: the handle lives as long as `consumer`; each message is
        // destroyed after its fields are copied.
        unsafe {
            let message = rd::rd_kafka_consumer_poll(consumer.client().native_ptr(), 100);
            if message.is_null() {
                continue;
            }
            let m = &*message;
            let report =
                (m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| {
                    let topic = if m.rkt.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt))
                            .to_string_lossy()
                            .into_owned()
                    };
                    let reason = if m.payload.is_null() {
                        String::new()
                    } else {
                        String::from_utf8_lossy(std::slice::from_raw_parts(
                            m.payload as *const u8,
                            m.len,
                        ))
                        .into_owned()
                    };
                    ConsumerErrorReport {
                        topic,
                        partition: m.partition,
                        code: m.err.into(),
                        reason,
                    }
                });
            rd::rd_kafka_message_destroy(message);
            if report.is_some() {
                return report;
            }
        }
    }
    None
}

async fn a_consumer_whose_position_fell_off_the_log_is_told_which_partition(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let producer = target.producer(&[]);
    for i in 0..10 {
        send_value(&producer, &topic, &format!("r{i}")).await;
    }
    // The group had read two records when the log's start moved past them.
    let member = target.consumer(Some(&group), &[]);
    member
        .commit(
            &{
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, 0, Offset::Offset(2))
                    .unwrap();
                tpl
            },
            CommitMode::Sync,
        )
        .expect("commit");
    truncate_log_before(target, &topic, 6).await;
    let (low, _) = target
        .consumer(None, &[])
        .fetch_watermarks(&topic, 0, PATIENCE)
        .expect("watermarks");
    assert!(
        low > 2,
        "the committed offset 2 is no longer in the log (starts at {low})"
    );

    // With auto.offset.reset=error the consumer reports it, naming the partition...
    let strict = target.consumer(Some(&group), &[("auto.offset.reset", "error")]);
    assign(&strict, &topic, 0, Offset::Stored);
    let report = next_error_report(&strict).expect("an error report");
    assert_eq!(
        report.code,
        RDKafkaErrorCode::AutoOffsetReset,
        "{}",
        report.reason
    );
    assert_eq!(
        (report.topic.as_str(), report.partition),
        (topic.as_str(), 0)
    );
    assert!(
        report.reason.contains("Offset out of range"),
        "the reason says why: {}",
        report.reason
    );
    // ...and rust-rdkafka's poll surfaces the same error, by code alone.
    let strict = target.consumer(Some(&group), &[("auto.offset.reset", "error")]);
    assign(&strict, &topic, 0, Offset::Stored);
    let error = poll_error(&strict);
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset)
    );

    // With auto.offset.reset=earliest, the default, the skip is silent: the
    // first record delivered is simply the log's first.
    let lenient = target.consumer(Some(&group), &[("auto.offset.reset", "earliest")]);
    assign(&lenient, &topic, 0, Offset::Stored);
    let first = poll_records(&lenient, 1);
    assert_eq!(first[0].offset(), low);
}

/// Receives the next record of `member`, within [`PATIENCE`].
async fn next_record(member: &EventConsumer) -> taskstream_kafka::InboundRecord {
    tokio::time::timeout(PATIENCE, member.recv())
        .await
        .expect("a record in time")
        .expect("a record")
}

async fn an_event_consumer_names_the_records_it_skipped_and_its_commits_say_so(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let config = target.config();
    let producer = target.producer(&[]);
    for i in 0..10 {
        send_value(&producer, &topic, &format!("r{i}")).await;
    }
    // The group reads two records, commits, and stops.
    let member =
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("member");
    for _ in 0..2 {
        let record = next_record(&member).await;
        assert!(member.ack(&record));
    }
    assert_eq!(member.confirm_skips().await, [], "nothing skipped so far");
    member.close(PATIENCE).await.expect("close");

    // The log's start moves past the group's position while it is away.
    truncate_log_before(target, &topic, 6).await;
    let offsets = group_offsets(&config, &group, &topic, PATIENCE)
        .await
        .expect("group offsets");
    let low = offsets[0].log_start;
    assert_eq!(offsets[0].committed, Some(2));
    assert!(low > 2, "the log now starts at {low}");
    assert_eq!(
        offsets[0].deleted_unread(),
        low - 2,
        "seen from outside the group: records deleted unread"
    );

    // Back, the member is moved to the log's start, and says what it skipped.
    let member =
        EventConsumer::subscribe(&config, &group, &[&topic], &group_settings()).expect("member");
    let first = next_record(&member).await;
    assert_eq!(first.offset, low);
    let resets = member.confirm_skips().await;
    assert_eq!(resets.len(), 1, "{resets:?}");
    let reset = &resets[0];
    assert_eq!(
        (
            reset.group.as_str(),
            reset.topic.as_str(),
            reset.partition,
            reset.from,
            reset.to,
            reset.log_start
        ),
        (group.as_str(), topic.as_str(), 0, 2, low, low)
    );
    assert_eq!(reset.skipped(), low - 2);
    assert_eq!(member.confirm_skips().await, [], "each skip is named once");

    // Its commits carry the reset, so `taskstream lag` sees it too.
    assert!(member.ack(&first));
    member.commit_acked(true).await.expect("commit");
    let offsets = group_offsets(&config, &group, &topic, PATIENCE)
        .await
        .expect("group offsets");
    assert_eq!(offsets[0].committed, Some(low + 1));
    assert_eq!(offsets[0].deleted_unread(), 0);
    let mark = offsets[0].reset.expect("the reset in the commit metadata");
    assert_eq!((mark.from, mark.to), (2, low));
    assert!(
        offsets[0].committed_at_ms.is_some(),
        "the commit time is still read"
    );
    member.close(PATIENCE).await.expect("close");

    // A new group starts at the log's start by design: nothing is skipped.
    let fresh = EventConsumer::subscribe(
        &config,
        &format!("group-{}", Uuid::new_v4().simple()),
        &[&topic],
        &group_settings(),
    )
    .expect("member");
    assert_eq!(next_record(&fresh).await.offset, low);
    assert_eq!(fresh.confirm_skips().await, []);
    fresh.close(PATIENCE).await.expect("close");
}

async fn a_session_timeout_below_the_brokers_minimum_is_refused(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let settings = ConsumerSettings {
        session_timeout: Duration::from_secs(3),
        ..group_settings()
    };
    let member =
        EventConsumer::subscribe(&target.config(), &group, &[&topic], &settings).expect("member");
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(e) = member.recv().await {
                return Err(e.to_string());
            }
            if member.ownership(&topic, 0).is_some() {
                return Ok(());
            }
        }
    });
    // An idle member learns of its assignment only while polling: give it a record.
    send_value(&target.producer(&[]), &topic, "wake").await;
    let outcome = outcome.await.expect("an answer in time");
    if target.differs(Difference::SessionTimeoutBounds) {
        assert_eq!(
            outcome,
            Ok(()),
            "the dev broker now refuses short session timeouts"
        );
        return;
    }
    let error = outcome.expect_err("Kafka refuses the join");
    assert!(error.contains("session timeout"), "{error}");
}

/// The session timeout of the static members below: long enough that a
/// restart answered only when the old member's session ran out shows.
const STATIC_SESSION: Duration = Duration::from_secs(30);

/// A consumer of `group` with `group.instance.id` `instance` (KIP-345),
/// subscribed to `topic`.
fn static_member(target: &Target, group: &str, instance: &str, topic: &str) -> BaseConsumer {
    let session = STATIC_SESSION.as_millis().to_string();
    let consumer = target.consumer(
        Some(group),
        &[
            ("group.instance.id", instance),
            ("session.timeout.ms", &session),
            ("heartbeat.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
        ],
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Polls `consumer` until it is assigned `partitions` partitions of
/// `topic`, at most `within`: the records polled meanwhile, or the number
/// of partitions it had when time ran out.
fn poll_for_assignment(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: usize,
    within: Duration,
) -> Result<Vec<rdkafka::message::OwnedMessage>, usize> {
    let mut records = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let assigned = consumer
            .assignment()
            .map(|tpl| tpl.elements_for_topic(topic).len())
            .unwrap_or(0);
        if assigned == partitions {
            return Ok(records);
        }
        if Instant::now() >= deadline {
            return Err(assigned);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(m.detach()),
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
}

/// [`poll_for_assignment`] within [`PATIENCE`], failing the check otherwise.
fn poll_until_assigned(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    poll_for_assignment(consumer, topic, partitions, PATIENCE).unwrap_or_else(|had| {
        panic!("{partitions} partitions of {topic} not assigned in time (has {had})")
    })
}

/// The state and member count DescribeGroups gives `group`, or `None` on
/// the dev broker, which serves no DescribeGroups ([`Difference::GroupAdmin`]).
fn group_state(target: &Target, group: &str) -> Option<(String, usize)> {
    if target.differs(Difference::GroupAdmin) {
        return None;
    }
    let described = target
        .consumer(None, &[])
        .fetch_group_list(Some(group), target.admin_timeout())
        .expect("DescribeGroups");
    let info = described
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .expect("the group described");
    Some((info.state().to_owned(), info.members().len()))
}

async fn a_static_member_restarted_without_leaving_gets_its_partitions_back_before_its_session_times_out(
    target: &Target,
) {
    let topic = target.topic(2);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let instance = format!("instance-{}", Uuid::new_v4().simple());
    let first = static_member(target, &group, &instance, &topic);
    poll_until_assigned(&first, &topic, 2);
    // Closing a static member sends no LeaveGroup: it keeps its place.
    drop(first);
    let closed = Instant::now();
    if let Some(state) = group_state(target, &group) {
        assert_eq!(
            state,
            ("Stable".to_owned(), 1),
            "the closed static member is still in the group"
        );
    }

    let restarted = static_member(target, &group, &instance, &topic);
    if target.differs(Difference::StaticMembership) {
        let assigned = poll_for_assignment(&restarted, &topic, 2, STATIC_SESSION / 2);
        assert!(
            assigned.is_err(),
            "the dev broker now gives a restarted static member its partitions at once"
        );
        return;
    }
    poll_until_assigned(&restarted, &topic, 2);
    let rejoined_after = closed.elapsed();
    eprintln!(
        "a restarted static member was assigned its partitions {:.1} s after the old one closed (session timeout {} s)",
        rejoined_after.as_secs_f64(),
        STATIC_SESSION.as_secs()
    );
    assert!(
        rejoined_after < STATIC_SESSION / 2,
        "the restarted member waited for the old one's session to time out ({rejoined_after:?})"
    );
    if let Some(state) = group_state(target, &group) {
        assert_eq!(
            state,
            ("Stable".to_owned(), 1),
            "the restarted member took the old one's place"
        );
    }
}

async fn a_second_live_consumer_with_the_same_instance_id_fences_the_first(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let instance = format!("instance-{}", Uuid::new_v4().simple());
    let first = static_member(target, &group, &instance, &topic);
    poll_until_assigned(&first, &topic, 1);

    let second = static_member(target, &group, &instance, &topic);
    if target.differs(Difference::StaticMembership) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let _ = first.poll(Duration::from_millis(50));
            let _ = second.poll(Duration::from_millis(50));
        }
        assert!(
            first.client().fatal_error().is_none(),
            "the dev broker now fences an older consumer with the same instance id"
        );
        return;
    }
    let fenced = std::thread::scope(|scope| {
        let first = &first;
        let fenced = scope.spawn(move || {
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Some(fatal) = first.client().fatal_error() {
                    return Some(fatal);
                }
                let _ = first.poll(Duration::from_millis(100));
            }
            None
        });
        poll_until_assigned(&second, &topic, 1);
        fenced.join().expect("the first member's poller")
    });
    let (code, message) = fenced.expect("the first member is fenced in time");
    eprintln!("the older member with instance id {instance} was told: {message}");
    assert_eq!(code, RDKafkaErrorCode::FencedInstanceId, "{message}");
    assert!(message.contains("group.instance.id"), "{message}");
    drop(second);
}

async fn a_restarted_static_member_resumes_after_its_committed_offsets(target: &Target) {
    let topic = target.topic(1);
    let group = format!("group-{}", Uuid::new_v4().simple());
    let instance = format!("instance-{}", Uuid::new_v4().simple());
    let producer = target.producer(&[]);
    for i in 0..5 {
        send_value(&producer, &topic, &format!("r{i}")).await;
    }
    let first = static_member(target, &group, &instance, &topic);
    let mut seen = poll_until_assigned(&first, &topic, 1);
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 3 && Instant::now() < deadline {
        match first.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => seen.push(m.detach()),
            Some(Err(e)) => panic!("consuming: {e}"),
            None => {}
        }
    }
    assert!(seen.len() >= 3, "three records read in time");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(3))
        .unwrap();
    first
        .commit(&tpl, CommitMode::Sync)
        .expect("OffsetCommit by the static member");
    drop(first);

    let restarted = static_member(target, &group, &instance, &topic);
    // On the dev broker the restarted member waits for the old one's
    // session to time out first.
    let within = if target.differs(Difference::StaticMembership) {
        STATIC_SESSION + PATIENCE
    } else {
        PATIENCE
    };
    let mut records = poll_for_assignment(&restarted, &topic, 1, within)
        .expect("the restarted member is assigned the partition");
    let deadline = Instant::now() + PATIENCE;
    while records.is_empty() && Instant::now() < deadline {
        match restarted.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(m.detach()),
            Some(Err(e)) => panic!("consuming: {e}"),
            None => {}
        }
    }
    let first_record = records.first().expect("a record after the restart");
    assert_eq!(
        first_record.offset(),
        3,
        "resumes right after the committed offset"
    );
    assert_eq!(target.committed(&group, &topic).map(|(o, _)| o), Some(3));
}

// ---- helpers ----

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn futures_block_on<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

fn assign(consumer: &BaseConsumer, topic: &str, partition: i32, offset: Offset) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, offset).unwrap();
    consumer.assign(&tpl).expect("assign");
}

fn poll_records(consumer: &BaseConsumer, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let mut records = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while records.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(m.detach()),
            Some(Err(e)) => panic!("consuming: {e}"),
            None => {}
        }
    }
    assert_eq!(records.len(), count, "records received in time");
    records
}

fn poll_error(consumer: &BaseConsumer) -> RdError {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(e)) => return e,
            Some(Ok(m)) => panic!("expected an error, got the record at {}", m.offset()),
            None => {}
        }
    }
    panic!("no error reported in time");
}

/// Polls `check` (blocking) until it yields a value.
fn eventually<T>(what: &str, mut check: impl FnMut() -> T) -> T::Output
where
    T: IntoOption,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().into_option() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` (without blocking the runtime) until it yields a value.
async fn eventually_async<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bool` (`true` = done) or `Option` (`Some` = done), for [`eventually`].
trait IntoOption {
    type Output;
    fn into_option(self) -> Option<Self::Output>;
}

impl IntoOption for bool {
    type Output = ();
    fn into_option(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> IntoOption for Option<T> {
    type Output = T;
    fn into_option(self) -> Option<T> {
        self
    }
}

// Kafka's own tools, as clients nobody on this team wrote; Apache Kafka only.
mod kafka_tools {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_consumer_groups_reports_the_offsets_a_taskstream_consumer_committed() {
        let Some(target) = Target::kafka("kafka-consumer-groups") else {
            return;
        };
        let Broker::Kafka(cluster) = target.broker else {
            unreachable!()
        };
        let topic = target.topic(1);
        let group = format!("group-{}", Uuid::new_v4().simple());
        let producer = target.producer(&[]);
        for i in 0..4 {
            send_value(&producer, &topic, &format!("r{i}")).await;
        }
        let member =
            EventConsumer::subscribe(&target.config(), &group, &[&topic], &group_settings())
                .expect("member");
        for _ in 0..3 {
            let record = tokio::time::timeout(PATIENCE, member.recv())
                .await
                .expect("in time")
                .expect("a record");
            member.ack(&record);
        }
        member.close(PATIENCE).await.expect("close");

        let described = cluster
            .tool(
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                &[
                    "--bootstrap-server",
                    cluster.bootstrap_servers(),
                    "--describe",
                    "--group",
                    &group,
                ],
            )
            .expect("kafka-consumer-groups --describe");
        let row = described
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(topic.as_str()))
            .unwrap_or_else(|| panic!("no row for {topic} in:\n{described}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
        assert_eq!(
            &columns[..6],
            [group.as_str(), topic.as_str(), "0", "3", "4", "1"],
            "{described}"
        );

        let listed = cluster
            .tool(
                "org.apache.kafka.tools.TopicCommand",
                &["--bootstrap-server", cluster.bootstrap_servers(), "--list"],
            )
            .expect("kafka-topics --list");
        assert!(listed.lines().any(|l| l == topic), "{listed}");
    }

    #[test]
    fn a_failing_tool_reports_its_exit_status_and_stderr() {
        let Some(cluster) = kafka_or_skip(Shape::SingleNode, "a failing tool") else {
            return;
        };
        let error = cluster
            .tool(
                "org.apache.kafka.tools.TopicCommand",
                &[
                    "--bootstrap-server",
                    cluster.bootstrap_servers(),
                    "--describe",
                    "--topic",
                    "no-such-topic",
                ],
            )
            .expect_err("describing a missing topic fails");
        let text = error.to_string();
        assert!(text.contains("TopicCommand exited with"), "{text}");
        assert!(text.contains("no-such-topic"), "{text}");
    }
}
