//! The audit-log service: records every task event it consumes.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::EventEnvelope;
use taskstream_kafka::InboundRecord;
use taskstream_store::{AuditEntry, AuditStore};

use crate::{Delivery, EventHandler, HandleError, Handled};

/// The audit-log service's consumer group.
pub const AUDITOR_GROUP: &str = "auditor";

/// Appends each event, with the topic, partition and offset it was read
/// from, to the audit log, and marks it processed by the group it runs in
/// (in the same transaction). Run it behind the group's inbox,
/// `Deduplicated::new(ProcessedEvents::new(store), handler)`.
///
/// The log holds one entry per event, whichever group read it: an event
/// another group already recorded adds nothing, and counts as a duplicate.
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

fn outcome(record: &InboundRecord, new_entry: bool) -> Handled {
    if new_entry {
        // Per event, so DEBUG; `taskstream_consumer_events_total` counts them.
        tracing::debug!(target: "audit", partition = record.partition, offset = record.offset, "event recorded");
        Handled::Applied
    } else {
        tracing::debug!(target: "audit", "event already in the audit log");
        Handled::Duplicate
    }
}

#[async_trait]
impl EventHandler for AuditHandler {
    async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
        let new_entry = self
            .store
            .append(d.group, &entry(d.record, d.event)?)
            .await?;
        Ok(outcome(d.record, new_entry))
    }

    async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandleError> {
        let Some(group) = batch.first().map(|d| d.group) else {
            return Ok(Vec::new());
        };
        let entries = batch
            .iter()
            .map(|d| entry(d.record, d.event))
            .collect::<Result<Vec<_>, _>>()?;
        let new_entries = self.store.append_batch(group, &entries).await?;
        Ok(batch
            .iter()
            .zip(new_entries)
            .map(|(d, new_entry)| d.span.in_scope(|| outcome(d.record, new_entry)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use taskstream_store::{InboxStore, SqliteOptions, SqliteStore};

    use super::*;
    use crate::consumer::fixtures::{delivery, event, record};
    use crate::{Deduplicated, ProcessedEvents};

    #[tokio::test]
    async fn the_auditor_behind_its_inbox_records_an_event_once_whichever_group_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("audit.db"), &SqliteOptions::default())
                .await
                .unwrap(),
        );
        let auditor = Deduplicated::new(
            ProcessedEvents::new(store.clone()),
            AuditHandler::new(store.clone()),
        );
        let (event, first, again) = (event("audit me"), record(3), record(9));
        let id = event.id.as_uuid();

        let handled = auditor.handle(&delivery("auditor", &first, &event)).await;
        assert_eq!(handled.unwrap(), Handled::Applied);
        assert!(store.is_processed("auditor", id).await.unwrap());
        // Redelivered in its group: the inbox answers, the log keeps the
        // offset the event was first read at.
        let batch = [
            delivery("auditor", &again, &event),
            delivery("auditor", &again, &event),
        ];
        assert_eq!(
            auditor.handle_batch(&batch).await.unwrap(),
            [Handled::Duplicate, Handled::Duplicate]
        );
        // Another group handles it for itself, and adds no second entry.
        let replay = delivery("auditor-replay", &again, &event);
        assert_eq!(auditor.handle(&replay).await.unwrap(), Handled::Duplicate);
        assert!(store.is_processed("auditor-replay", id).await.unwrap());

        let entries = store.audit_entries(None, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].event_id, entries[0].offset), (id, 3));
    }
}
