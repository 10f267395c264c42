//! Reading a topic outside any consumer group, as a `read_committed`
//! consumer: all of it, from the start to its current end (for inspecting
//! dead letters), or what was published after a point (for measuring when
//! consumer groups caught up with a load).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::committed_input::partitions;
use crate::context::TracingContext;
use crate::{InboundRecord, KafkaConfig, KafkaError};

fn err(operation: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError {
    move |e| KafkaError::Admin {
        operation,
        message: e.to_string(),
    }
}

/// The group id [`read_topic`]'s consumer carries; it never joins or commits.
pub const TOPIC_READER_GROUP: &str = "taskstream-topic-reader";

/// Every record of `topic` that exists now, in partition and offset order.
/// Fails when the cluster does not answer a request, or sends no record,
/// for `timeout` (reading a long topic may take longer as a whole).
pub async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<InboundRecord>, KafkaError> {
    crate::read_committed(config, topic, timeout).await
}

/// Where each partition of `topic` ends now: the offset the next record
/// written to it will get.
pub async fn end_offsets(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let consumer = outside_group_reader(config, "topic-reader", Isolation::ReadCommitted, None)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        partitions(consumer.client(), &topic, timeout)?
            .into_iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(err("ListOffsets"))?;
                Ok((p, high))
            })
            .collect()
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}

/// Records published to a topic after a given point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Committed records read (control records are not counted).
    pub records: usize,
    /// Per partition, the offset after the last record read: a consumer
    /// group whose committed offsets reach these has consumed them all.
    pub positions: HashMap<i32, i64>,
}

/// Reads `topic` as a `read_committed` consumer outside any group, from
/// `from` (partition to offset; partitions missing start at their
/// beginning) until `want` records were read. Gives up with what it read
/// once no record arrived for `idle` — the caller compares `records` with
/// `want`.
pub async fn read_published(
    config: &KafkaConfig,
    topic: &str,
    from: &HashMap<i32, i64>,
    want: usize,
    idle: Duration,
) -> Result<Published, KafkaError> {
    let consumer = outside_group_reader(config, "topic-reader", Isolation::ReadCommitted, None)?;
    let topic = topic.to_owned();
    let from = from.clone();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        let mut positions = HashMap::new();
        for p in partitions(consumer.client(), &topic, idle)? {
            let start = from
                .get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&topic, p, start)
                .map_err(err("Assign"))?;
            if let Some(o) = from.get(&p) {
                positions.insert(p, *o);
            }
        }
        consumer.assign(&tpl).map_err(err("Assign"))?;
        let mut records = 0;
        let mut last = Instant::now();
        while records < want && last.elapsed() < idle {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    records += 1;
                    positions.insert(m.partition(), m.offset() + 1);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(err("Fetch")(e)),
                None => {}
            }
        }
        Ok(Published { records, positions })
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}

/// A record seen by an [`ArrivalReader`]: its partition, its value, and
/// when the reader received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub partition: i32,
    pub value: Vec<u8>,
    pub at: Instant,
}

/// Records of a topic as they arrive, each with the instant this process
/// received it, read by a `read_committed` consumer outside any group from
/// the end every partition had when it started, with `fetch.wait.max.ms`
/// set to `fetch_wait` (as a group member's): for measuring how long a
/// record takes from a producer to a consumer through the broker. It reads
/// on a thread of its own until dropped.
pub struct ArrivalReader {
    arrivals: tokio::sync::mpsc::UnboundedReceiver<Result<Arrival, KafkaError>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Joined on drop, so that the consumer is closed before the caller
    /// goes on (and perhaps stops the broker under it).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArrivalReader {
    /// Assigns every partition of `topic` at its end and starts fetching.
    pub async fn start(
        config: &KafkaConfig,
        topic: &str,
        fetch_wait: Duration,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        // No end-of-partition events: a reader at the end with a short
        // fetch wait would get one per partition every few milliseconds.
        let consumer: BaseConsumer<TracingContext> =
            reader_config(config, Isolation::ReadCommitted, Some(fetch_wait))
                .set("enable.partition.eof", "false")
                .create_with_context(TracingContext::of("arrival-reader", config))
                .map_err(|e| KafkaError::Config(e.to_string()))?;
        let topic = topic.to_owned();
        let consumer = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in partitions(consumer.client(), &topic, timeout)? {
                tpl.add_partition_offset(&topic, p, Offset::End)
                    .map_err(err("Assign"))?;
            }
            consumer.assign(&tpl).map_err(err("Assign"))?;
            Ok::<_, KafkaError>(consumer)
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))??;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("arrival-reader".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let arrival = match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => Ok(Arrival {
                            at: Instant::now(),
                            partition: m.partition(),
                            value: m.payload().unwrap_or_default().to_vec(),
                        }),
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => continue,
                        Some(Err(e)) => Err(err("Fetch")(e)),
                    };
                    if tx.send(arrival).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
        Ok(Self {
            arrivals,
            stop,
            thread: Some(thread),
        })
    }

    /// The next record to arrive, or `None` if none did within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Arrival>, KafkaError> {
        match tokio::time::timeout(wait, self.arrivals.recv()).await {
            Ok(Some(arrival)) => arrival.map(Some),
            Ok(None) => Err(KafkaError::Consume("the arrival reader stopped".into())),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for ArrivalReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // At most one poll (100 ms) away.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which records of transactions a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Committed records only, up to the last stable offset.
    ReadCommitted,
    /// Every record, of aborted and open transactions too.
    ReadUncommitted,
}

/// A consumer that reads partitions it assigns itself, outside any group
/// (it carries [`TOPIC_READER_GROUP`], which assignment needs, and never
/// commits), reporting the end of each partition; `client` names it in
/// logs, and `fetch_wait` bounds how long the broker may hold a fetch.
pub(crate) fn outside_group_reader(
    config: &KafkaConfig,
    client: &str,
    isolation: Isolation,
    fetch_wait: Option<Duration>,
) -> Result<BaseConsumer<TracingContext>, KafkaError> {
    reader_config(config, isolation, fetch_wait)
        .create_with_context(TracingContext::of(client, config))
        .map_err(|e| KafkaError::Config(e.to_string()))
}

/// The settings of an [`outside_group_reader`].
fn reader_config(
    config: &KafkaConfig,
    isolation: Isolation,
    fetch_wait: Option<Duration>,
) -> rdkafka::ClientConfig {
    let mut rd = config.client_config();
    rd.set("group.id", TOPIC_READER_GROUP)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        );
    if let Some(wait) = fetch_wait {
        rd.set("fetch.wait.max.ms", wait.as_millis().to_string());
    }
    rd
}

/// Waits for the first record of `topic` after `from` (partition to offset;
/// partitions missing start at their beginning) that `wanted` accepts, as a
/// `read_committed` consumer outside any group that commits nothing.
/// `None` once `wait` has passed without one (a request-reply caller's
/// deadline).
pub async fn await_record<F>(
    config: &KafkaConfig,
    topic: &str,
    from: &HashMap<i32, i64>,
    wait: Duration,
    wanted: F,
) -> Result<Option<crate::InboundRecord>, KafkaError>
where
    F: Fn(&crate::InboundRecord) -> bool + Send + 'static,
{
    let consumer = outside_group_reader(config, "topic-reader", Isolation::ReadCommitted, None)?;
    let topic = topic.to_owned();
    let from = from.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + wait;
        let mut tpl = TopicPartitionList::new();
        for p in partitions(consumer.client(), &topic, wait)? {
            let start = from
                .get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&topic, p, start)
                .map_err(err("Assign"))?;
        }
        consumer.assign(&tpl).map_err(err("Assign"))?;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let record = crate::InboundRecord::from_message(&m);
                    if wanted(&record) {
                        return Ok(Some(record));
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if crate::error::lost_brokers(&e) => {}
                Some(Err(e)) => return Err(err("Fetch")(e)),
                None => {}
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}
