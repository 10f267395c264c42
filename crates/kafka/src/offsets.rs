//! Reading a consumer group's committed offsets next to the log's start and
//! end offsets — the raw material of consumer lag — without joining the group.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::context::TracingContext;
use crate::offset_reset::{committed_at_ms, ResetMark};
use crate::{KafkaConfig, KafkaError};

/// One partition's position for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The next offset the group will read; `None` if it never committed.
    pub committed: Option<i64>,
    /// When the committed offset was last committed, if the committer said
    /// so (taskstream's consumers do, in the commit metadata), in ms since the epoch.
    pub committed_at_ms: Option<i64>,
    /// The offset of the oldest record the partition still holds: a
    /// committed offset below it means records were deleted unread.
    pub log_start: i64,
    /// The offset the next record written to the partition will get.
    pub log_end: i64,
    /// Records the group skipped recently because they were deleted before
    /// it read them, as taskstream's consumers mark in their commit metadata.
    pub reset: Option<ResetMark>,
}

impl PartitionOffsets {
    /// Records written but not yet consumed by the group.
    pub fn lag(&self) -> i64 {
        (self.log_end - self.committed.unwrap_or(0)).max(0)
    }

    /// Records deleted before the group read them: those between its
    /// committed offset and the log's start.
    pub fn deleted_unread(&self) -> i64 {
        self.committed
            .map_or(0, |committed| (self.log_start - committed).max(0))
    }
}

fn admin_err(operation: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError {
    move |e| KafkaError::Admin {
        operation,
        message: e.to_string(),
    }
}

fn client(
    config: &KafkaConfig,
    name: String,
    group: Option<&str>,
) -> Result<BaseConsumer<TracingContext>, KafkaError> {
    let mut rd = config.client_config();
    rd.set("enable.auto.commit", "false");
    if let Some(group) = group {
        rd.set("group.id", group);
    }
    rd.create_with_context(TracingContext::of(name, config))
        .map_err(|e| KafkaError::Config(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
}

/// The group id the lag probe's consumer carries (librdkafka needs one for a
/// manual assignment); it never joins the group or commits.
pub const LAG_PROBE_GROUP: &str = "taskstream-lag-probe";

/// The committed and log-end offsets of every partition of `topic` for
/// `group`.
pub async fn group_offsets(
    config: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    let consumer = client(config, format!("offsets-{group}"), Some(group))?;
    let topic = topic.to_owned();
    blocking(move || {
        let partitions = crate::committed_input::partitions(consumer.client(), &topic, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(admin_err("OffsetFetch"))?;
        let mut result = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, timeout)
                .map_err(admin_err("ListOffsets"))?;
            let elem = committed.find_partition(&topic, p);
            let offset = elem.as_ref().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let metadata = elem.as_ref().map(|e| e.metadata()).unwrap_or_default();
            result.push(PartitionOffsets {
                partition: p,
                committed: offset,
                committed_at_ms: offset.and(committed_at_ms(metadata)),
                log_start: low,
                log_end: high,
                reset: offset.and(ResetMark::decode(metadata)),
            });
        }
        Ok(result)
    })
    .await
}

/// The timestamps (ms since the epoch) of the records at the given
/// `(partition, offset)` positions of `topic` — for lag in seconds, the age
/// of the oldest record a group has not consumed. Positions whose record
/// cannot be read within `timeout` are left out.
pub async fn record_timestamps(
    config: &KafkaConfig,
    topic: &str,
    positions: &[(i32, i64)],
    timeout: Duration,
) -> Result<HashMap<i32, i64>, KafkaError> {
    if positions.is_empty() {
        return Ok(HashMap::new());
    }
    // librdkafka needs a group id even for a manual assignment; nothing is committed.
    let consumer = client(config, "lag-probe".to_owned(), Some(LAG_PROBE_GROUP))?;
    let topic = topic.to_owned();
    let positions = positions.to_vec();
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &positions {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(*offset))
                .map_err(admin_err("Assign"))?;
        }
        consumer.assign(&tpl).map_err(admin_err("Assign"))?;
        let wanted: HashMap<i32, i64> = positions.into_iter().collect();
        let mut found = HashMap::new();
        let deadline = std::time::Instant::now() + timeout;
        while found.len() < wanted.len() && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if wanted.get(&m.partition()) == Some(&m.offset()) => {
                    if let Some(ts) = m.timestamp().to_millis() {
                        found.insert(m.partition(), ts);
                    }
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(admin_err("Fetch")(e)),
            }
        }
        Ok(found)
    })
    .await
}

/// The names of every consumer group the cluster knows (ListGroups).
pub async fn list_groups(
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let consumer = client(config, "list-groups".to_owned(), None)?;
    blocking(move || {
        let list = consumer
            .fetch_group_list(None, timeout)
            .map_err(admin_err("ListGroups"))?;
        let mut names: Vec<String> = list.groups().iter().map(|g| g.name().to_owned()).collect();
        names.sort();
        Ok(names)
    })
    .await
}
