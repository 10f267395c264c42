//! Reading a whole topic, from the start to its current end, outside any
//! consumer group (for inspecting dead letters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

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
    let mut rd = config.client_config();
    // A group id is required for assignment; nothing is ever committed.
    rd.set("group.id", TOPIC_READER_GROUP)
        .set("enable.auto.commit", "false")
        // A transaction's commit marker takes the last offset of a
        // partition but is never delivered: the end is where EOF is reported.
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<TracingContext> = rd
        .create_with_context(TracingContext::of("topic-reader", config))
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(err("Metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(KafkaError::Admin {
                operation: "Metadata",
                message: format!("topic {topic} does not exist"),
            });
        }
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, timeout)
                .map_err(err("ListOffsets"))?;
            if high > low {
                ends.insert(p, high);
                tpl.add_partition_offset(&topic, p, Offset::Offset(low))
                    .map_err(err("Assign"))?;
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return Ok(records);
        }
        consumer.assign(&tpl).map_err(err("Assign"))?;
        let mut deadline = Instant::now() + timeout;
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(KafkaError::Consume(format!(
                    "timed out reading {topic}: no record for {timeout:?}"
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    deadline = Instant::now() + timeout;
                    let partition = m.partition();
                    if ends
                        .get(&partition)
                        .is_some_and(|end| m.offset() + 1 >= *end)
                    {
                        ends.remove(&partition);
                    }
                    records.push(InboundRecord::from_message(&m));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                    ends.remove(&partition);
                }
                Some(Err(e)) => return Err(err("Fetch")(e)),
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    })
    .await
    .map_err(|e| KafkaError::Consume(e.to_string()))?
}
