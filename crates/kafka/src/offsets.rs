//! Reading a consumer group's committed offsets next to the log-end offsets:
//! the raw material of consumer lag.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError};

/// One partition's position for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The next offset the group will read; `None` if it never committed.
    pub committed: Option<i64>,
    /// The offset the next record written to the partition will get.
    pub log_end: i64,
}

impl PartitionOffsets {
    /// Records written but not yet consumed by the group.
    pub fn lag(&self) -> i64 {
        (self.log_end - self.committed.unwrap_or(0)).max(0)
    }
}

/// The committed and log-end offsets of every partition of `topic` for
/// `group`, without joining the group.
pub async fn group_offsets(
    config: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    let mut rd = config.client_config();
    rd.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer<TracingContext> = rd
        .create_with_context(TracingContext {
            client: format!("offsets-{group}"),
        })
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let topic = topic.to_owned();
    let admin_err = |operation: &'static str| {
        move |e: rdkafka::error::KafkaError| KafkaError::Admin {
            operation,
            message: e.to_string(),
        }
    };
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(admin_err("Metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(admin_err("OffsetFetch"))?;
        let mut result = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (_low, high) = consumer
                .fetch_watermarks(&topic, p, timeout)
                .map_err(admin_err("ListOffsets"))?;
            let committed = committed
                .find_partition(&topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            result.push(PartitionOffsets {
                partition: p,
                committed,
                log_end: high,
            });
        }
        Ok(result)
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}
