//! The audit-log service: records every task event it consumes, once.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::EventEnvelope;
use taskstream_kafka::InboundRecord;
use taskstream_store::{AuditEntry, AuditStore};

use crate::{Delivery, EventHandler, HandleError, Handled};

/// The audit-log service's consumer group.
pub const AUDITOR_GROUP: &str = "auditor";

/// Appends each event, with the topic, partition and offset it was read
/// from, to the audit log. The log holds one entry per event, whichever
/// group read it: an event already recorded is not recorded again, and
/// counts as a duplicate.
pub struct AuditHandler {
    store: Arc<dyn AuditStore>,
}

impl AuditHandler {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }
}

fn entry(record: &InboundRecord, event: &EventEnvelope) -> Result<AuditEntry, HandleError> {
    Ok(AuditEntry {
        event_id: event.id.as_uuid(),
        event_type: event.event_type.to_string(),
        task_id: event.subject.clone(),
        task_version: event.data.task.version,
        event_time: event.time,
        correlation_id: event.correlation_id.clone(),
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        recorded_at: taskstream_domain::now(),
        envelope: serde_json::to_string(event).map_err(|e| HandleError::Permanent {
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?,
    })
}

fn log(record: &InboundRecord, fresh: bool) -> Handled {
    if fresh {
        // Per event, so DEBUG; `taskstream_consumer_events_total` counts them.
        tracing::debug!(target: "audit", partition = record.partition, offset = record.offset, "event recorded");
        Handled::Applied
    } else {
        tracing::debug!(target: "audit", "duplicate delivery ignored");
        Handled::Duplicate
    }
}

#[async_trait]
impl EventHandler for AuditHandler {
    async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
        let fresh = self.store.append(&entry(d.record, d.event)?).await?;
        Ok(log(d.record, fresh))
    }

    async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandleError> {
        let entries = batch
            .iter()
            .map(|d| entry(d.record, d.event))
            .collect::<Result<Vec<_>, _>>()?;
        let fresh = self.store.append_batch(&entries).await?;
        Ok(batch
            .iter()
            .zip(fresh)
            .map(|(d, fresh)| d.span.in_scope(|| log(d.record, fresh)))
            .collect())
    }
}
