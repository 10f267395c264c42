//! The input side of exactly-once processing: a `read_committed` reader of
//! whole topics that never commits an offset itself. Its positions go into
//! the producer's transaction ([`crate::TransactionalProducer::send_offsets`])
//! under its group's name, so an input is marked read if and only if the
//! outputs computed from it are committed.
//!
//! It takes every partition of its topics (no group membership, so no
//! rebalance can move a partition while a transaction is open): one
//! processor owns the input at a time, and the transactional id, not the
//! group, fences an older one. It starts from the group's committed
//! offsets, asked for as *stable* (`read_committed` makes librdkafka set
//! `require_stable`), so offsets of a transaction still being completed
//! are waited for rather than read stale.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::TracingContext;
use crate::reader::{outside_group_reader, Isolation};
use crate::transactional::GroupMetadata;
use crate::{InboundRecord, KafkaConfig, KafkaError};

/// A `read_committed` reader of every partition of its topics, starting at
/// its group's committed offsets; it never commits.
pub struct CommittedInput {
    inner: Arc<StreamConsumer<TracingContext>>,
    group: String,
    topics: Vec<String>,
}

impl CommittedInput {
    /// A reader for `topics` under `group` (not yet assigned; call
    /// [`CommittedInput::assign_from_committed`]). A group with no
    /// committed offset starts at the earliest record.
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        topics: &[&str],
        fetch_wait: Duration,
    ) -> Result<Self, KafkaError> {
        let mut rd = config.client_config();
        rd.set("group.id", group)
            .set("client.id", format!("taskstream-{group}"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string());
        crate::consumer::bound_prefetch(&mut rd, config);
        let inner = rd
            .create_with_context(TracingContext::of(group, config))
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        })
    }

    /// The group the positions are committed under.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Takes every partition of the topics again, each at the group's
    /// committed (stable) offset: after a transaction was aborted, reading
    /// starts over from the last committed one. Records already received
    /// and not committed will be received again.
    pub async fn assign_from_committed(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = Arc::clone(&self.inner);
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for topic in &topics {
                for partition in partitions(inner.client(), topic, timeout)? {
                    tpl.add_partition_offset(topic, partition, Offset::Stored)
                        .map_err(|e| KafkaError::Consume(e.to_string()))?;
                }
            }
            inner
                .assign(&tpl)
                .map_err(|e| KafkaError::Consume(format!("assign: {e}")))
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
    }

    /// Waits for the next committed record. Lost broker connections are
    /// not errors here: librdkafka reconnects by itself.
    pub async fn recv(&self) -> Result<InboundRecord, KafkaError> {
        loop {
            match self.inner.recv().await {
                Ok(message) => return Ok(InboundRecord::from_message(&message)),
                Err(e) if crate::error::lost_brokers(&e) => {}
                Err(e) => return Err(KafkaError::Consume(e.to_string())),
            }
        }
    }

    /// The identity offsets are committed under in a transaction.
    pub fn group_metadata(&self) -> Result<GroupMetadata, KafkaError> {
        self.inner
            .group_metadata()
            .map(|m| GroupMetadata(Arc::new(m)))
            .ok_or_else(|| KafkaError::Consume("the consumer has no group metadata".into()))
    }
}

/// The partition ids of `topic`; an error if it does not exist.
pub(crate) fn partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| KafkaError::Admin {
            operation: "Metadata",
            message: e.to_string(),
        })?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(KafkaError::UnknownTopic(topic.to_owned()));
    }
    Ok(ids)
}

/// Every committed record of `topic` that exists now, in partition and
/// offset order, read with `isolation.level=read_committed` outside any
/// group: records of aborted transactions are left out, and reading stops
/// at each partition's last stable offset. Fails when the cluster does not
/// answer for `timeout`.
pub async fn read_committed(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<InboundRecord>, KafkaError> {
    read_all(config, topic, timeout, Isolation::ReadCommitted).await
}

/// Like [`read_committed`] but `read_uncommitted`: records of aborted and
/// open transactions are included. For tests that show what a reader
/// without transactions would see.
pub async fn read_uncommitted(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<InboundRecord>, KafkaError> {
    read_all(config, topic, timeout, Isolation::ReadUncommitted).await
}

async fn read_all(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    isolation: Isolation,
) -> Result<Vec<InboundRecord>, KafkaError> {
    let consumer = outside_group_reader(config, "topic-reader", isolation, None)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let ids = partitions(consumer.client(), &topic, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for p in &ids {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                .map_err(|e| KafkaError::Consume(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| KafkaError::Consume(format!("assign: {e}")))?;
        // The end of a partition is where librdkafka reports EOF: the high
        // watermark, or for read_committed the last stable offset. Control
        // records (transaction markers) are never delivered, so the offset
        // of the last record received cannot tell.
        let mut open: HashSet<i32> = ids.into_iter().collect();
        let mut records = Vec::new();
        let mut deadline = Instant::now() + timeout;
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(KafkaError::Consume(format!(
                    "timed out reading {topic}: nothing for {timeout:?}"
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    deadline = Instant::now() + timeout;
                    records.push(InboundRecord::from_message(&m));
                }
                Some(Err(RdError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                // A broker that went away: librdkafka reconnects, or
                // fetches from the partition's next leader.
                Some(Err(e)) if crate::error::lost_brokers(&e) => {}
                Some(Err(e)) => return Err(KafkaError::Consume(e.to_string())),
                None => {}
            }
        }
        records.sort_by_key(|r: &InboundRecord| (r.partition, r.offset));
        Ok(records)
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}
