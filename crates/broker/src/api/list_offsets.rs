//! ListOffsets: the earliest (-2) or latest (-1) offset of a partition, or
//! the first offset whose record is stamped at or after a given time. For
//! `read_committed` (isolation level 1) the latest offset is the last
//! stable offset.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::Shared;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// Answers ListOffsets at `version`: the leader epoch exists from v4 on
/// (before, it must stay unset, or the response cannot be encoded).
pub(crate) fn handle(
    shared: &Arc<Shared>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let epoch = if version >= 4 { 0 } else { -1 };
    let read_committed = request.isolation_level == 1;
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = shared.topics.get(t.name.0.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return response
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let log = partition.log();
                    match p.timestamp {
                        // read_committed consumers end at the last stable offset.
                        LATEST if read_committed => response
                            .with_offset(log.last_stable_offset())
                            .with_leader_epoch(epoch),
                        LATEST => response
                            .with_offset(log.high_watermark())
                            .with_leader_epoch(epoch),
                        EARLIEST => response
                            .with_offset(log.log_start_offset())
                            .with_leader_epoch(epoch),
                        t if t < 0 => {
                            response.with_error_code(ResponseError::UnsupportedVersion.code())
                        }
                        t => match log.offset_for_timestamp(t) {
                            // Only records below the high watermark are
                            // found, as by Kafka.
                            Ok(Some((timestamp, offset))) if offset < log.high_watermark() => {
                                response
                                    .with_timestamp(timestamp)
                                    .with_offset(offset)
                                    .with_leader_epoch(epoch)
                            }
                            Ok(_) => response,
                            Err(e) => {
                                tracing::error!(error = %e, "reading a time index failed");
                                response.with_error_code(ResponseError::KafkaStorageError.code())
                            }
                        },
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
