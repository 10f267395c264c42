//! Produce: validate and append each partition's batches; the response is
//! sent only after the data is in the segment file (and fsynced first under
//! [`FlushPolicy::BeforeAcknowledge`](crate::FlushPolicy)).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::str_bytes;
use crate::broker::Shared;
use crate::storage::batch::BatchHeader;
use crate::storage::txn::is_transactional;
use crate::storage::AppendError;
use crate::FlushPolicy;

pub(crate) fn handle(shared: &Arc<Shared>, request: ProduceRequest) -> ProduceResponse {
    let acks_valid = matches!(request.acks, -1..=1);
    let sync = shared.config.flush == FlushPolicy::BeforeAcknowledge && request.acks != 0;
    let transactional_id = super::is_transactional_produce(&request).map(str::to_owned);
    let responses = request
        .topic_data
        .into_iter()
        .map(|topic_data| {
            let topic_name = topic_data.name.0.as_str().to_owned();
            let topic = shared.topics.get(&topic_name);
            let partition_responses = topic_data
                .partition_data
                .into_iter()
                .map(|data| {
                    let response = PartitionProduceResponse::default().with_index(data.index);
                    let fail = |error: ResponseError, message: Option<String>| {
                        response
                            .clone()
                            .with_error_code(error.code())
                            .with_base_offset(-1)
                            .with_error_message(message.map(|m| str_bytes(&m)))
                    };
                    if !acks_valid {
                        return fail(ResponseError::InvalidRequiredAcks, None);
                    }
                    let Some(partition) = topic.as_ref().and_then(|t| {
                        usize::try_from(data.index)
                            .ok()
                            .and_then(|i| t.partitions.get(i))
                    }) else {
                        return fail(ResponseError::UnknownTopicOrPartition, None);
                    };
                    let Some(records) = data.records else {
                        return fail(ResponseError::CorruptMessage, Some("no records".into()));
                    };
                    let mut records = records.to_vec();
                    let header = first_transactional(&records);
                    let in_txn = header.is_some();
                    // A transaction's batches are appended under the
                    // coordinator's lock, after checking that the
                    // transaction is open, holds this partition and has
                    // this epoch: nothing lands after its markers.
                    let guard = match (&transactional_id, in_txn, header) {
                        (Some(id), true, Some(h)) => {
                            let guard = shared.transactions.guard();
                            if let Err(e) = guard.verify_produce(
                                id,
                                h.producer_id,
                                h.producer_epoch,
                                &topic_name,
                                data.index,
                            ) {
                                return fail(e, None);
                            }
                            Some(guard)
                        }
                        (None, true, _) => {
                            return fail(
                                ResponseError::InvalidRecord,
                                Some("a transactional batch needs a transactional id".into()),
                            )
                        }
                        _ => None,
                    };
                    let mut log = partition.log();
                    let appended = log.append(&mut records).and_then(|appended| {
                        if sync {
                            log.sync()?;
                        }
                        Ok(appended)
                    });
                    drop(guard);
                    match appended {
                        Ok(appended) => {
                            partition.appended.send_replace(log.next_offset());
                            response
                                .with_base_offset(appended.base_offset)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(log.log_start_offset())
                        }
                        Err(e) => {
                            drop(log);
                            let code = match &e {
                                AppendError::Corrupt(_) => ResponseError::CorruptMessage,
                                AppendError::Unsupported(_) => ResponseError::InvalidRecord,
                                AppendError::TooLarge => ResponseError::MessageTooLarge,
                                AppendError::OutOfOrderSequence => {
                                    ResponseError::OutOfOrderSequenceNumber
                                }
                                AppendError::FencedEpoch => ResponseError::InvalidProducerEpoch,
                                AppendError::Io(_) => ResponseError::KafkaStorageError,
                            };
                            if matches!(e, AppendError::Io(_)) {
                                tracing::error!(error = %e, "appending to a log failed");
                            }
                            fail(code, Some(e.to_string()))
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// The header of the first transactional batch in produced data, if any.
fn first_transactional(mut data: &[u8]) -> Option<BatchHeader> {
    while let Some(header) = BatchHeader::parse(data) {
        if is_transactional(&header) {
            return Some(header);
        }
        data = data.get(header.total_len()?..)?;
    }
    None
}
