//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn, served by [`crate::transactions`].

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, ProduceRequest, ProducerId,
    TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::str_bytes;
use crate::broker::Shared;
use crate::transactions::{PartitionErrors, PendingOffset, Stores};

/// KIP-588: clients older than these versions know PRODUCER_FENCED as
/// INVALID_PRODUCER_EPOCH.
fn code_for(error: ResponseError, version: i16, fenced_since: i16) -> i16 {
    match error {
        ResponseError::ProducerFenced if version < fenced_since => {
            ResponseError::InvalidProducerEpoch.code()
        }
        e => e.code(),
    }
}

pub(crate) fn stores(shared: &Shared) -> Stores<'_> {
    Stores {
        topics: &shared.topics,
        offsets: &shared.offsets,
    }
}

/// Whether a produce request belongs to a transaction.
pub(crate) fn is_transactional_produce(request: &ProduceRequest) -> Option<&str> {
    request
        .transactional_id
        .as_ref()
        .map(|id| id.0.as_str())
        .filter(|id| !id.is_empty())
}

pub(crate) fn add_partitions(
    shared: &Arc<Shared>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let wanted: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.as_str().to_owned(), *p))
        })
        .collect();
    let outcome = shared.transactions.add_partitions(
        &shared.topics,
        request.v3_and_below_transactional_id.0.as_str(),
        request.v3_and_below_producer_id.0,
        request.v3_and_below_producer_epoch,
        &wanted,
    );
    let code_of = |topic: &str, partition: i32| -> i16 {
        match &outcome {
            Ok(()) => 0,
            Err(PartitionErrors::All(e)) => code_for(*e, version, 2),
            Err(PartitionErrors::Each(codes)) => codes
                .iter()
                .find(|((t, p), _)| t == topic && *p == partition)
                .map_or(0, |(_, e)| e.code()),
        }
    };
    let results = request
        .v3_and_below_topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code_of(t.name.0.as_str(), *p))
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub(crate) fn add_offsets(
    shared: &Arc<Shared>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let outcome = shared.transactions.add_offsets(
        request.transactional_id.0.as_str(),
        request.producer_id.0,
        request.producer_epoch,
        request.group_id.0.as_str(),
    );
    AddOffsetsToTxnResponse::default()
        .with_error_code(outcome.err().map_or(0, |e| code_for(e, version, 2)))
}

pub(crate) fn txn_offset_commit(
    shared: &Arc<Shared>,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group = request.group_id.0.as_str();
    let allowed = if version >= 3 {
        shared.coordinator.check_commit(
            group,
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|i| i.as_str()),
            request.generation_id,
        )
    } else {
        Ok(())
    };
    let mut offsets = Vec::new();
    let mut unknown = Vec::new();
    for t in &request.topics {
        let topic = shared.topics.get(t.name.0.as_str());
        for p in &t.partitions {
            let exists = topic
                .as_ref()
                .is_some_and(|topic| topic.partition(p.partition_index).is_some());
            if !exists {
                unknown.push((t.name.0.as_str().to_owned(), p.partition_index));
                continue;
            }
            offsets.push(PendingOffset {
                group: group.to_owned(),
                topic: t.name.0.as_str().to_owned(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_owned()),
            });
        }
    }
    let outcome: Result<(), i16> = match allowed {
        Err(code) => Err(code),
        Ok(()) => shared
            .transactions
            .txn_offset_commit(
                request.transactional_id.0.as_str(),
                request.producer_id.0,
                request.producer_epoch,
                offsets,
            )
            .map_err(|e| code_for(e, version, 3)),
    };
    let topics = request
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(TopicName(str_bytes(t.name.0.as_str())))
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = if unknown
                                .iter()
                                .any(|(n, i)| n == t.name.0.as_str() && *i == p.partition_index)
                            {
                                ResponseError::UnknownTopicOrPartition.code()
                            } else {
                                outcome.err().unwrap_or(0)
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(crate) fn end_txn(
    shared: &Arc<Shared>,
    request: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let outcome = shared.transactions.end(
        &stores(shared),
        request.transactional_id.0.as_str(),
        request.producer_id.0,
        request.producer_epoch,
        request.committed,
    );
    EndTxnResponse::default()
        .with_error_code(outcome.err().map_or(0, |e| code_for(e, version, 2)))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
