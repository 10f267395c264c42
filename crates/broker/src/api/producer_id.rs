//! InitProducerId: for an idempotent producer, a fresh producer id at
//! epoch 0 (sequence numbers are checked per partition by the log,
//! `storage::producers`); for a transactional one, the transactional id's
//! producer id with a new epoch, fencing its predecessor
//! ([`crate::transactions`]).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::transactions::stores;
use crate::broker::Shared;

/// KIP-588: PRODUCER_FENCED is answered from v4 on, INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 4;

pub(crate) fn handle(
    shared: &Arc<Shared>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let failed = |code: i16| {
        InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_error_code(code)
    };
    if let Some(id) = request
        .transactional_id
        .as_ref()
        .map(|id| id.0.as_str())
        .filter(|id| !id.is_empty())
    {
        let expected =
            (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
        return match shared.transactions.init_producer_id(
            &stores(shared),
            &shared.producer_ids,
            id,
            request.transaction_timeout_ms,
            expected,
        ) {
            Ok((producer_id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(ResponseError::ProducerFenced) if version < FENCED_SINCE => {
                failed(ResponseError::InvalidProducerEpoch.code())
            }
            Err(e) => failed(e.code()),
        };
    }
    match shared.producer_ids.next() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        // Retriable for every client, as Kafka answers while its broker
        // waits for a new block of ids: UNKNOWN_SERVER_ERROR would be fatal
        // to a Java producer, and the failure (a full or failing disk)
        // usually passes.
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            failed(ResponseError::CoordinatorLoadInProgress.code())
        }
    }
}
