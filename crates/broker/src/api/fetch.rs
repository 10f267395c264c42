//! Fetch: whole batches from each partition, waiting up to `max_wait_ms`
//! until at least `min_bytes` are available. A waiting fetch watches each
//! partition it asked for and wakes as soon as one of them is appended to.

use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use futures::FutureExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::Shared;
use crate::storage::batch::BatchHeader;
use crate::storage::ReadError;
use crate::topics::Topic;

/// No client waits longer than this, whatever it asks.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// `isolation_level` of a `read_committed` consumer.
const READ_COMMITTED: i8 = 1;

pub(crate) async fn handle(shared: &Arc<Shared>, request: FetchRequest) -> FetchResponse {
    if request.session_id != 0 {
        // Fetch sessions are never created (we answer session id 0), so a
        // client naming one has it wrong.
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    // Subscribe before reading so that no append between the read and the
    // wait goes unnoticed.
    let mut watches: Vec<watch::Receiver<i64>> = request
        .topics
        .iter()
        .filter_map(|t| {
            shared
                .topics
                .get(t.topic.0.as_str())
                .map(|topic| (t, topic))
        })
        .flat_map(|(t, topic)| {
            t.partitions
                .iter()
                .filter_map(|p| usize::try_from(p.partition).ok())
                .filter_map(|i| topic.partitions.get(i).map(|p| p.appended.subscribe()))
                .collect::<Vec<_>>()
        })
        .collect();
    loop {
        let (response, bytes, errors) = read(shared, &request);
        if bytes >= request.min_bytes.max(0) as usize || errors || Instant::now() >= deadline {
            return response;
        }
        if watches.is_empty() {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        let changed = select_all(watches.iter_mut().map(|w| w.changed().boxed()));
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

/// One pass over the requested partitions: the response, its record bytes,
/// and whether any partition had an error.
fn read(shared: &Arc<Shared>, request: &FetchRequest) -> (FetchResponse, usize, bool) {
    let mut total = 0usize;
    let mut errors = false;
    let max_bytes = request.max_bytes.max(0) as usize;
    let read_committed = request.isolation_level == READ_COMMITTED;
    let responses = request
        .topics
        .iter()
        .map(|t| {
            let topic = shared.topics.get(t.topic.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let data = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1));
                    let budget = (p.partition_max_bytes.max(0) as usize)
                        .min(max_bytes.saturating_sub(total));
                    match read_partition(
                        topic.as_deref(),
                        p.partition,
                        p.fetch_offset,
                        budget,
                        total == 0,
                        read_committed,
                    ) {
                        Ok(read) => {
                            total += read.records.len();
                            let aborted = read_committed.then(|| {
                                read.aborted
                                    .into_iter()
                                    .map(|(pid, first)| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(pid))
                                            .with_first_offset(first)
                                    })
                                    .collect()
                            });
                            data.with_high_watermark(read.high_watermark)
                                .with_last_stable_offset(read.last_stable_offset)
                                .with_log_start_offset(read.log_start_offset)
                                .with_aborted_transactions(aborted)
                                .with_records(Some(read.records.into()))
                        }
                        Err(code) => {
                            errors = true;
                            data.with_error_code(code.code())
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                                .with_records(Some(Default::default()))
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        total,
        errors,
    )
}

/// What one partition gave a fetch.
struct PartitionRead {
    records: Vec<u8>,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// For `read_committed`: aborted transactions in the records returned.
    aborted: Vec<(i64, i64)>,
}

/// Reads whole batches from `offset`; for `read_committed`, only below the
/// last stable offset, with the aborted transactions they overlap (the
/// client drops those transactions' records).
fn read_partition(
    topic: Option<&Topic>,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    first_whole: bool,
    read_committed: bool,
) -> Result<PartitionRead, ResponseError> {
    let partition = topic
        .and_then(|t| t.partition(partition))
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let log = partition.log();
    let last_stable_offset = log.last_stable_offset();
    // Never past the high watermark: under BeforeAcknowledge it stops at
    // what is fsynced.
    let high_watermark = log.high_watermark();
    let limit = if read_committed {
        last_stable_offset
    } else {
        high_watermark
    };
    let records = log
        .read_below(offset, max_bytes, first_whole, limit)
        .map_err(|e| match e {
            ReadError::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
            ReadError::Io(e) => {
                tracing::error!(error = %e, "reading a log failed");
                ResponseError::KafkaStorageError
            }
        })?;
    let aborted = if read_committed && !records.is_empty() {
        log.aborted_between(offset, last_record_end(&records))
    } else {
        Vec::new()
    };
    Ok(PartitionRead {
        records,
        high_watermark,
        last_stable_offset,
        log_start_offset: log.log_start_offset(),
        aborted,
    })
}

/// The offset after the last record of whole batches.
fn last_record_end(records: &[u8]) -> i64 {
    let mut at = 0;
    let mut end = 0;
    while let Some(header) = BatchHeader::parse(&records[at..]) {
        end = header.last_offset() + 1;
        match header.total_len() {
            Some(len) => at += len,
            None => break,
        }
    }
    end
}
