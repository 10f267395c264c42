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

pub(crate) fn handle(
    shared: &Arc<Shared>,
    request: ProduceRequest,
    version: i16,
) -> ProduceResponse {
    let acks_valid = matches!(request.acks, -1..=1);
    // Under BeforeAcknowledge readers see only fsynced records, so even an
    // acks=0 produce, which nobody waits for, is fsynced before it is done.
    let sync = shared.config.flush == FlushPolicy::BeforeAcknowledge;
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
                    let Some(partition) = topic.as_ref().and_then(|t| t.partition(data.index))
                    else {
                        return fail(ResponseError::UnknownTopicOrPartition, None);
                    };
                    let Some(records) = data.records else {
                        return fail(ResponseError::CorruptMessage, Some("no records".into()));
                    };
                    let mut records = records.to_vec();
                    let headers = transactional_headers(&records);
                    // A transaction's batches are appended under the
                    // coordinator's lock, after checking that the
                    // transaction is open, holds this partition and has
                    // the epoch of every batch: nothing lands after its
                    // markers.
                    let guard = match (&transactional_id, headers.is_empty()) {
                        (_, true) => None,
                        (None, false) => {
                            return fail(
                                ResponseError::InvalidRecord,
                                Some("a transactional batch needs a transactional id".into()),
                            )
                        }
                        (Some(id), false) => {
                            let guard = shared.transactions.guard();
                            let verified = headers.iter().try_for_each(|h| {
                                guard.verify_produce(
                                    id,
                                    h.producer_id,
                                    h.producer_epoch,
                                    &topic_name,
                                    data.index,
                                )
                            });
                            match verified {
                                Ok(()) => Some(guard),
                                Err(ResponseError::InvalidTxnState) => {
                                    return unverified(version, fail)
                                }
                                Err(e) => return fail(e, None),
                            }
                        }
                    };
                    let mut log = partition.log();
                    let appended = log.append(&mut records);
                    drop(guard);
                    match appended {
                        Ok(appended) => {
                            let (next_offset, log_start_offset) =
                                (log.next_offset(), log.log_start_offset());
                            drop(log);
                            // Waiting fetches read the batch now; the fsync
                            // (under BeforeAcknowledge) only holds this
                            // acknowledgement, and is shared with the
                            // producers appending meanwhile.
                            partition.appended.send_replace(next_offset);
                            if sync {
                                if let Err(e) = partition.sync() {
                                    tracing::error!(error = %e, "fsync of a log failed");
                                    return fail(
                                        ResponseError::KafkaStorageError,
                                        Some(e.to_string()),
                                    );
                                }
                            }
                            response
                                .with_base_offset(appended.base_offset)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(log_start_offset)
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

/// The headers of the transactional batches in produced data.
fn transactional_headers(mut data: &[u8]) -> Vec<BatchHeader> {
    let mut headers = Vec::new();
    while let Some(header) = BatchHeader::parse(data) {
        if is_transactional(&header) {
            headers.push(header);
        }
        let Some(rest) = header.total_len().and_then(|len| data.get(len..)) else {
            break;
        };
        data = rest;
    }
    headers
}

/// Kafka's answer to a transactional batch for a partition the transaction
/// does not hold (not added, or the transaction ended, as for a batch
/// retried after its transaction timed out): INVALID_TXN_STATE with this
/// message through Produce v10, TRANSACTION_ABORTABLE from v11 (KIP-890),
/// as `KafkaApis.handleProduceRequest` maps the coordinator's verdict.
fn unverified<R>(version: i16, fail: impl Fn(ResponseError, Option<String>) -> R) -> R {
    if version >= 11 {
        fail(ResponseError::TransactionAbortable, None)
    } else {
        fail(
            ResponseError::InvalidTxnState,
            Some("Partition was not added to the transaction".into()),
        )
    }
}
