//! The relay's pipeline, watched through an outbox that records the
//! relay's claims and marks: the next batch is claimed (and, at least
//! once, enqueued) before the batch in flight is marked, batches are
//! marked in claim order, a failure in a batch behind others leaves exactly
//! the rows from the failed one on pending, and an exactly-once relay
//! whose mark failed while the next transaction committed finds both
//! batches on the topic after a restart instead of publishing them again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};
use taskstream_kafka::{
    apply_topics, read_committed, EventProducer, KafkaConfig, ProducerSettings, TopicSpec,
    TransactionSettings,
};
use taskstream_services::{
    EventEncoding, OutboxRelay, ProducerFactory, RelayError, RelayPublisher, RelaySettings,
};
use taskstream_store::{
    Lease, OutboxStats, OutboxStore, PendingMessage, Store, StoreError, TaskStore,
};
use uuid::Uuid;

/// What the relay asked of the outbox, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// The seqs a claim returned.
    Claim(Vec<i64>),
    /// The seqs a mark was asked for (failed or not).
    Mark(Vec<i64>),
}

/// An outbox that records claims and marks, can fail the next marks, and
/// can have rows written right after the first claim (while the relay
/// publishes what it claimed).
struct Recording {
    inner: Arc<Store>,
    calls: Mutex<Vec<Call>>,
    failing_marks: AtomicUsize,
    /// Written (topic, rows) once the first claim returned.
    after_first_claim: Mutex<Option<(String, Vec<Row>)>>,
    /// The ids of the rows written after the first claim.
    written_later: Mutex<Vec<Uuid>>,
}

impl Recording {
    fn new(inner: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Mutex::new(Vec::new()),
            failing_marks: AtomicUsize::new(0),
            after_first_claim: Mutex::new(None),
            written_later: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn marks(&self) -> Vec<Vec<i64>> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Mark(seqs) => Some(seqs),
                Call::Claim(_) => None,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl OutboxStore for Recording {
    async fn acquire_lease(&self, holder: &str) -> Result<Option<Lease>, StoreError> {
        self.inner.acquire_lease(holder).await
    }

    async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        self.inner.release_lease(lease).await
    }

    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        in_flight: &[i64],
    ) -> Result<Vec<PendingMessage>, StoreError> {
        let rows = self.inner.claim(lease, limit, in_flight).await?;
        let seqs = rows.iter().map(|row| row.seq).collect();
        self.calls.lock().unwrap().push(Call::Claim(seqs));
        let later = self.after_first_claim.lock().unwrap().take();
        if let Some((topic, later)) = later {
            let ids = insert(&self.inner, &topic, &later).await;
            self.written_later.lock().unwrap().extend(ids);
        }
        Ok(rows)
    }

    async fn mark_published(&self, seqs: &[i64], at: DateTime<Utc>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.calls.lock().unwrap().push(Call::Mark(seqs.to_vec()));
        let fail = self
            .failing_marks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::Unavailable(
                "the disk is gone (injected)".into(),
            ));
        }
        self.inner.mark_published(seqs, at).await
    }

    async fn unpublished_among(
        &self,
        topic: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        self.inner.unpublished_among(topic, ids).await
    }

    async fn unpublished_topics(&self) -> Result<Vec<String>, StoreError> {
        self.inner.unpublished_topics().await
    }

    async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.inner.record_failure(seq, error).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.inner.outbox_stats().await
    }

    async fn prune_published(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.inner.prune_published(before, limit).await
    }
}

/// taskstream's broker with a one-partition topic (so that the records'
/// order on it is the order they were published in).
async fn broker_with_topic(
    prefix: &str,
    configs: BTreeMap<String, String>,
) -> (
    tempfile::TempDir,
    taskstream_broker::RunningBroker,
    KafkaConfig,
    String,
) {
    let data = tempfile::tempdir().unwrap();
    let broker =
        taskstream_broker::Broker::start(taskstream_broker::BrokerConfig::new(data.path()))
            .expect("taskstream's broker starts");
    let kafka = KafkaConfig::new(broker.addr().to_string()).quiet();
    let topic = format!("{prefix}-{}", Uuid::new_v4());
    apply_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
            configs,
        }],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    (data, broker, kafka, topic)
}

async fn open_store(dir: &std::path::Path) -> Arc<Store> {
    taskstream::components::open_store(
        dir,
        None,
        &taskstream_store::SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// How a test row is stored.
#[derive(Clone, Copy)]
enum Row {
    /// Avro, published as stored, with a payload of this many bytes.
    Avro(usize),
    /// A task event an earlier version stored as JSON, whose payload is
    /// not JSON: an Avro relay cannot convert it.
    BrokenJson,
}

/// One outbox row per `rows`, for `topic`; their ids, in seq order.
async fn insert(store: &Store, topic: &str, rows: &[Row]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let change = Task::create(
            NewTask {
                title: TaskTitle::parse(&format!("row {i}")).unwrap(),
                description: None,
                priority: Priority::Medium,
                due_at: None,
                assignee: None,
            },
            taskstream_domain::now(),
            Cause::default(),
        );
        let mut message = EventEncoding::Json
            .outbox_message(
                &change.event,
                "task",
                change.task.id.to_string(),
                topic,
                None,
            )
            .unwrap();
        match row {
            Row::Avro(size) => {
                message.content_type = taskstream_avro::AVRO_CONTENT_TYPE.to_owned();
                message.payload = vec![b'x'; *size];
            }
            Row::BrokenJson => message.payload = b"{not json".to_vec(),
        }
        store.insert_task(&change.task, &message).await.unwrap();
        ids.push(message.id);
    }
    ids
}

/// Every seq in the outbox with whether it is marked, in seq order.
async fn seqs(store: &Store) -> Vec<i64> {
    let lease = store.acquire_lease("check").await.unwrap().unwrap();
    let rows = store.pending(&lease, 10_000).await.unwrap();
    store.release_lease(lease).await.unwrap();
    rows.iter().map(|row| row.seq).collect()
}

/// An at-least-once relay on `outbox`, `batch_size` rows a batch, with an
/// Avro encoding whose registry is never asked (rows stored as Avro are
/// published as stored; a broken JSON row fails before any request).
fn idempotent_relay(
    outbox: Arc<Recording>,
    kafka: &KafkaConfig,
    batch_size: u32,
    batches_in_flight: usize,
) -> OutboxRelay {
    let kafka = kafka.clone();
    let factory: ProducerFactory =
        Arc::new(move || EventProducer::new(&kafka, "relay", &ProducerSettings::ordered()));
    let registry = Arc::new(taskstream_avro::RegistryClient::new("http://127.0.0.1:9"));
    OutboxRelay::new(
        outbox,
        factory,
        Arc::new(tokio::sync::Notify::new()),
        RelaySettings {
            batch_size,
            batches_in_flight,
            ..RelaySettings::default()
        },
        taskstream_telemetry::Metrics::new(),
        EventEncoding::avro(registry, "unused"),
    )
    .unwrap()
}

/// An exactly-once relay on `outbox`, `batch_size` rows a batch, under a
/// transactional id of its own, publishing rows as stored.
fn transactional_relay(
    outbox: Arc<Recording>,
    kafka: &KafkaConfig,
    batch_size: u32,
) -> OutboxRelay {
    OutboxRelay::new(
        outbox,
        RelayPublisher::Transactional {
            kafka: kafka.clone(),
            settings: TransactionSettings::new(format!("relay-{}", Uuid::new_v4())),
        },
        Arc::new(tokio::sync::Notify::new()),
        RelaySettings {
            batch_size,
            ..RelaySettings::default()
        },
        taskstream_telemetry::Metrics::new(),
        EventEncoding::Json,
    )
    .unwrap()
}

/// The ids on `topic`, in offset order.
async fn on_topic(kafka: &KafkaConfig, topic: &str) -> Vec<Uuid> {
    read_committed(kafka, topic, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|record| record.header_str("id").unwrap().parse().unwrap())
        .collect()
}

/// The position of the first call matching `wanted`.
fn position(calls: &[Call], wanted: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("no such call in {calls:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_relay_claims_the_next_batches_before_marking_the_first_and_marks_in_order(
) {
    let (_data, _broker, kafka, topic) = broker_with_topic("pipelined", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let ids = insert(&store, &topic, &[Row::Avro(100); 7]).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = idempotent_relay(Arc::clone(&outbox), &kafka, 2, 3);

    assert_eq!(relay.publish_pending().await.unwrap(), 7);

    let calls = outbox.calls();
    let first_mark = position(&calls, |c| matches!(c, Call::Mark(_)));
    let claims_before: Vec<&Call> = calls[..first_mark]
        .iter()
        .filter(|c| matches!(c, Call::Claim(seqs) if !seqs.is_empty()))
        .collect();
    assert_eq!(
        claims_before,
        vec![
            &Call::Claim(all[0..2].to_vec()),
            &Call::Claim(all[2..4].to_vec()),
            &Call::Claim(all[4..6].to_vec()),
        ],
        "three batches in flight before the first is marked: {calls:?}"
    );
    assert_eq!(
        outbox.marks(),
        vec![
            all[0..2].to_vec(),
            all[2..4].to_vec(),
            all[4..6].to_vec(),
            all[6..7].to_vec()
        ],
        "each batch marked once, in order"
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    assert_eq!(
        on_topic(&kafka, &topic).await,
        ids,
        "each row once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_in_flight_is_claimed_only_after_the_one_before_is_marked() {
    let (_data, _broker, kafka, topic) = broker_with_topic("unpipelined", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    insert(&store, &topic, &[Row::Avro(100); 5]).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = idempotent_relay(Arc::clone(&outbox), &kafka, 2, 1);

    assert_eq!(relay.publish_pending().await.unwrap(), 5);
    assert_eq!(
        outbox.calls(),
        vec![
            Call::Claim(all[0..2].to_vec()),
            Call::Mark(all[0..2].to_vec()),
            Call::Claim(all[2..4].to_vec()),
            Call::Mark(all[2..4].to_vec()),
            Call::Claim(all[4..5].to_vec()),
            Call::Mark(all[4..5].to_vec()),
        ]
    );
}

/// A row that cannot be encoded in the third batch, with the first two
/// still in flight: the rows before it are published and marked (the
/// earlier batches as their reports come in), it gets its failure
/// recorded, and it and every row after it stay pending; no batch is
/// claimed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_failing_behind_batches_in_flight_leaves_exactly_it_and_the_rows_after_it_pending() {
    let (_data, _broker, kafka, topic) = broker_with_topic("failing", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut rows = vec![Row::Avro(100); 10];
    rows[5] = Row::BrokenJson;
    let ids = insert(&store, &topic, &rows).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = idempotent_relay(Arc::clone(&outbox), &kafka, 2, 3);

    let error = relay
        .publish_pending()
        .await
        .expect_err("a row cannot be encoded");
    assert!(matches!(error, RelayError::Encoding(_)), "{error:?}");

    let calls = outbox.calls();
    let claims: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c, Call::Claim(_)))
        .collect();
    assert_eq!(
        claims,
        vec![
            &Call::Claim(all[0..2].to_vec()),
            &Call::Claim(all[2..4].to_vec()),
            &Call::Claim(all[4..6].to_vec()),
        ],
        "nothing claimed after the failing batch: {calls:?}"
    );
    assert!(
        position(&calls, |c| *c == Call::Claim(all[4..6].to_vec()))
            < position(&calls, |c| matches!(c, Call::Mark(_))),
        "the failing batch was claimed with two in flight: {calls:?}"
    );
    assert_eq!(
        outbox.marks(),
        vec![all[0..2].to_vec(), all[2..4].to_vec(), all[4..5].to_vec()]
    );
    assert_eq!(
        seqs(&store).await,
        all[5..].to_vec(),
        "pending from the failed row"
    );
    let lease = store.acquire_lease("check").await.unwrap().unwrap();
    let pending = store.pending(&lease, 10).await.unwrap();
    store.release_lease(lease).await.unwrap();
    let attempts: Vec<i64> = pending.iter().map(|row| row.attempts).collect();
    assert_eq!(
        attempts,
        vec![1, 0, 0, 0, 0],
        "the failure is the failed row's"
    );
    assert_eq!(on_topic(&kafka, &topic).await, ids[..5].to_vec());
}

/// A record the broker refuses (larger than the topic takes) among batches
/// in flight: whatever the producer did with its neighbours, every marked
/// row was acknowledged (it is on the topic), the marked rows are the
/// first ones, and the refused row and every row after it stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_behind_batches_in_flight_leaves_it_and_every_later_row_pending() {
    let (_data, _broker, kafka, topic) = broker_with_topic(
        "refused",
        BTreeMap::from([("max.message.bytes".to_owned(), "4000".to_owned())]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut rows = vec![Row::Avro(100); 12];
    rows[7] = Row::Avro(20_000);
    let ids = insert(&store, &topic, &rows).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = idempotent_relay(Arc::clone(&outbox), &kafka, 2, 4);

    relay
        .publish_pending()
        .await
        .expect_err("the broker refuses a record");

    let pending = seqs(&store).await;
    let marked = all.len() - pending.len();
    assert!(marked <= 7, "the refused row is not marked: {pending:?}");
    assert_eq!(
        pending,
        all[marked..].to_vec(),
        "the marked rows are a prefix"
    );
    let published: std::collections::HashSet<Uuid> =
        on_topic(&kafka, &topic).await.into_iter().collect();
    for id in &ids[..marked] {
        assert!(published.contains(id), "a marked row was acknowledged");
    }
    assert!(
        !published.contains(&ids[7]),
        "the refused record is not on the topic"
    );
}

/// An exactly-once relay whose mark of batch 1 fails while batch 2's
/// transaction runs: batch 2 commits too, and neither is marked (batch 2
/// never before batch 1). The next round reads both back from the topic
/// and marks them, then publishes the rest: every row is on the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mark_with_the_next_transaction_committed_leaves_two_batches_the_next_round_finds()
{
    let (_data, _broker, kafka, topic) = broker_with_topic("two-unmarked", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let ids = insert(&store, &topic, &[Row::Avro(100); 5]).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    outbox.failing_marks.store(1, Ordering::SeqCst);
    let relay = transactional_relay(Arc::clone(&outbox), &kafka, 2);

    let error = relay.publish_pending().await.expect_err("the mark fails");
    assert!(matches!(error, RelayError::Store(_)), "{error:?}");
    assert_eq!(
        outbox.calls(),
        vec![
            Call::Claim(all[0..2].to_vec()),
            Call::Claim(all[2..4].to_vec()),
            Call::Mark(all[0..2].to_vec()),
        ],
        "batch 2 claimed during batch 1's transaction, batch 1 marked during batch 2's"
    );
    assert_eq!(
        on_topic(&kafka, &topic).await,
        ids[..4].to_vec(),
        "two batches committed"
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 5);

    assert_eq!(relay.publish_pending().await.unwrap(), 1);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    let published = on_topic(&kafka, &topic).await;
    assert_eq!(published, ids, "every row once, in order");
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in published {
        *counts.entry(id).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

/// Exactly once, in order: batch N+1 is claimed before batch N is marked,
/// and the marks come in claim order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_relay_claims_the_next_batch_before_marking_the_last_and_marks_in_order() {
    let (_data, _broker, kafka, topic) = broker_with_topic("eos-pipelined", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let ids = insert(&store, &topic, &[Row::Avro(100); 5]).await;
    let all = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = transactional_relay(Arc::clone(&outbox), &kafka, 2);

    assert_eq!(relay.publish_pending().await.unwrap(), 5);
    assert_eq!(
        outbox.calls(),
        vec![
            Call::Claim(all[0..2].to_vec()),
            Call::Claim(all[2..4].to_vec()),
            Call::Mark(all[0..2].to_vec()),
            Call::Claim(all[4..5].to_vec()),
            Call::Mark(all[2..4].to_vec()),
            // After a short batch, the claim once its commit is answered.
            Call::Claim(vec![]),
            Call::Mark(all[4..5].to_vec()),
        ]
    );
    assert_eq!(on_topic(&kafka, &topic).await, ids);
}

/// Exactly once under a steady trickle: rows written while a short batch's
/// transaction runs are claimed as soon as its commit is answered and go
/// out in the next transaction of the same round, the short batch's mark
/// running meanwhile, instead of waiting for that mark and a new round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_relay_publishes_rows_written_during_a_transaction_before_marking_it() {
    let (_data, _broker, kafka, topic) = broker_with_topic("eos-trickle", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let first = insert(&store, &topic, &[Row::Avro(100); 2]).await;
    let first_seqs = seqs(&store).await;
    let outbox = Recording::new(Arc::clone(&store));
    *outbox.after_first_claim.lock().unwrap() = Some((topic.clone(), vec![Row::Avro(100); 3]));
    let relay = transactional_relay(Arc::clone(&outbox), &kafka, 10);

    assert_eq!(relay.publish_pending().await.unwrap(), 5, "one round");
    let calls = outbox.calls();
    let Some(Call::Claim(later_seqs)) = calls.get(1).cloned() else {
        panic!("the second call is not a claim: {calls:?}");
    };
    assert_eq!(later_seqs.len(), 3, "{calls:?}");
    assert_eq!(
        calls,
        vec![
            Call::Claim(first_seqs.clone()),
            Call::Claim(later_seqs.clone()),
            Call::Mark(first_seqs),
            Call::Claim(vec![]),
            Call::Mark(later_seqs),
        ]
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    let later = outbox.written_later.lock().unwrap().clone();
    assert_eq!(on_topic(&kafka, &topic).await, [first, later].concat());
}

/// A round stops claiming after a hundred full batches (the run loop then
/// starts the next one at once, pruning in between): a long backlog is
/// drained in rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_claims_at_most_a_hundred_full_batches() {
    let (_data, _broker, kafka, topic) = broker_with_topic("rounds", BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    insert(&store, &topic, &[Row::Avro(10); 203]).await;
    let outbox = Recording::new(Arc::clone(&store));
    let relay = idempotent_relay(Arc::clone(&outbox), &kafka, 2, 3);

    assert_eq!(relay.publish_pending().await.unwrap(), 200);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 3);
    assert_eq!(relay.publish_pending().await.unwrap(), 3);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}
