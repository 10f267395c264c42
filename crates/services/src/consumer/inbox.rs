//! De-duplication: the layer that asks whether the group the consumer runs
//! in has already handled an event, and skips the handler if so.
//!
//! The question is always asked for the group the record was read in (see
//! [`Delivery::group`]), so a consumer started in another group handles
//! every event for itself. The handler's effect records the event as
//! handled for that same group, in the transaction of the effect.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use taskstream_store::InboxStore;
use tracing::Instrument;
use uuid::Uuid;

use super::{ConsumedEvent, Delivery, EventHandler, HandleError, Handled};

/// Remembers which events each group has handled.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether `group` has already handled the event `event_id`.
    async fn handled(&self, group: &str, event_id: Uuid) -> Result<bool, HandleError>;

    /// Which of `event_ids` `group` has already handled: a batch's
    /// question, asked once where the inbox can.
    async fn handled_among(
        &self,
        group: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, HandleError> {
        let mut handled = HashSet::new();
        for &event_id in event_ids {
            if self.handled(group, event_id).await? {
                handled.insert(event_id);
            }
        }
        Ok(handled)
    }
}

/// The store's processed-events table, written by each consumer's effect
/// for the group it runs in, in the effect's transaction (the auditor's
/// [`taskstream_store::AuditStore::append`], the notifier's
/// [`taskstream_store::NotificationStore::record_notifications`]).
pub struct ProcessedEvents {
    store: Arc<dyn InboxStore>,
}

impl ProcessedEvents {
    pub fn new(store: Arc<dyn InboxStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Inbox for ProcessedEvents {
    async fn handled(&self, group: &str, event_id: Uuid) -> Result<bool, HandleError> {
        Ok(self.store.is_processed(group, event_id).await?)
    }

    async fn handled_among(
        &self,
        group: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, HandleError> {
        Ok(self.store.processed_among(group, event_ids).await?)
    }
}

/// A handler behind its inbox: events the group has handled (or that come
/// twice in one batch) reach it no more and count as duplicates.
pub struct Deduplicated<I, H> {
    inbox: I,
    inner: H,
}

impl<I: Inbox, H> Deduplicated<I, H> {
    pub fn new(inbox: I, inner: H) -> Self {
        Self { inbox, inner }
    }
}

/// Logs, in the event's span, that its delivery was a duplicate.
fn ignored<E>(d: &Delivery<'_, E>) {
    d.span
        .in_scope(|| tracing::debug!(target: "inbox", "duplicate delivery ignored"));
}

// ANCHOR: deduplicated
#[async_trait]
impl<I: Inbox, E: ConsumedEvent, H: EventHandler<E>> EventHandler<E> for Deduplicated<I, H> {
    async fn handle(&self, delivery: &Delivery<'_, E>) -> Result<Handled, HandleError> {
        let id = delivery.event.event_id();
        if self.inbox.handled(delivery.group, id).await? {
            ignored(delivery);
            return Ok(Handled::Duplicate);
        }
        self.inner.handle(delivery).await
    }
    // ANCHOR_END: deduplicated

    async fn handle_batch(&self, batch: &[Delivery<'_, E>]) -> Result<Vec<Handled>, HandleError> {
        let Some(group) = batch.first().map(|d| d.group) else {
            return Ok(Vec::new());
        };
        let ids: Vec<Uuid> = batch.iter().map(|d| d.event.event_id()).collect();
        let handled = self.inbox.handled_among(group, &ids).await?;
        let mut fresh = Vec::with_capacity(batch.len());
        let mut seen = HashSet::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for d in batch {
            let id = d.event.event_id();
            if !seen.insert(id) || handled.contains(&id) {
                ignored(d);
                slots.push(None);
                continue;
            }
            slots.push(Some(fresh.len()));
            fresh.push(Delivery {
                group: d.group,
                record: d.record,
                event: d.event,
                span: d.span.clone(),
            });
        }
        let outcomes = match fresh.len() {
            0 => Vec::new(),
            1 => {
                let d = &fresh[0];
                vec![self.inner.handle(d).instrument(d.span.clone()).await?]
            }
            _ => self.inner.handle_batch(&fresh).await?,
        };
        if outcomes.len() != fresh.len() {
            return Err(HandleError::transient(format!(
                "the handler answered {} outcomes for {} events",
                outcomes.len(),
                fresh.len()
            )));
        }
        Ok(slots
            .into_iter()
            .map(|slot| slot.map_or(Handled::Duplicate, |i| outcomes[i]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::consumer::fixtures::{delivery, event, record};

    /// Remembers what `handle` saw, by group, like a store would.
    #[derive(Default)]
    struct Remembering {
        handled: Mutex<HashSet<(String, Uuid)>>,
        calls: Mutex<u32>,
    }

    #[async_trait]
    impl Inbox for Arc<Remembering> {
        async fn handled(&self, group: &str, event_id: Uuid) -> Result<bool, HandleError> {
            let handled = self.handled.lock().unwrap();
            Ok(handled.contains(&(group.to_owned(), event_id)))
        }
    }

    #[async_trait]
    impl EventHandler for Arc<Remembering> {
        async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
            *self.calls.lock().unwrap() += 1;
            let mut handled = self.handled.lock().unwrap();
            handled.insert((d.group.to_owned(), d.event.id.as_uuid()));
            Ok(Handled::Applied)
        }
    }

    /// A batch handler that forgets the last event's outcome.
    struct ShortAnswer;

    #[async_trait]
    impl EventHandler for ShortAnswer {
        async fn handle(&self, _: &Delivery<'_>) -> Result<Handled, HandleError> {
            Ok(Handled::Applied)
        }

        async fn handle_batch(&self, batch: &[Delivery<'_>]) -> Result<Vec<Handled>, HandleError> {
            Ok(vec![Handled::Applied; batch.len() - 1])
        }
    }

    #[tokio::test]
    async fn a_batch_answered_with_too_few_outcomes_fails_instead_of_panicking() {
        let state = Arc::new(Remembering::default());
        let layer = Deduplicated::new(Arc::clone(&state), ShortAnswer);
        let (a, b, record) = (event("dedup"), event("dedup"), record(7));
        let batch = [delivery("g", &record, &a), delivery("g", &record, &b)];
        let error = layer.handle_batch(&batch).await.unwrap_err();
        assert!(error.is_retriable(), "{error}");
        assert!(
            error.to_string().contains("1 outcomes for 2 events"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_event_is_handled_once_per_group_and_once_more_in_another_group() {
        let state = Arc::new(Remembering::default());
        let layer = Deduplicated::new(Arc::clone(&state), Arc::clone(&state));
        let (event, record) = (event("dedup"), record(7));
        let first = delivery("notifier", &record, &event);
        assert_eq!(layer.handle(&first).await.unwrap(), Handled::Applied);
        assert_eq!(layer.handle(&first).await.unwrap(), Handled::Duplicate);
        let other = delivery("notifier-second", &record, &event);
        assert_eq!(layer.handle(&other).await.unwrap(), Handled::Applied);
        assert_eq!(*state.calls.lock().unwrap(), 2);
    }

    /// An inbox that has handled nothing, and counts the questions.
    #[derive(Default)]
    struct Asked {
        one: Mutex<u32>,
        batch: Mutex<u32>,
    }

    #[async_trait]
    impl Inbox for Arc<Asked> {
        async fn handled(&self, _: &str, _: Uuid) -> Result<bool, HandleError> {
            *self.one.lock().unwrap() += 1;
            Ok(false)
        }

        async fn handled_among(&self, _: &str, _: &[Uuid]) -> Result<HashSet<Uuid>, HandleError> {
            *self.batch.lock().unwrap() += 1;
            Ok(HashSet::new())
        }
    }

    #[tokio::test]
    async fn a_batch_asks_its_inbox_once_for_all_its_events() {
        let asked = Arc::new(Asked::default());
        let layer = Deduplicated::new(Arc::clone(&asked), Arc::new(Remembering::default()));
        let (events, record) = ([event("dedup"), event("dedup"), event("dedup")], record(7));
        let batch = events.each_ref().map(|e| delivery("auditor", &record, e));
        let outcomes = layer.handle_batch(&batch).await.unwrap();
        assert_eq!(outcomes, [Handled::Applied; 3]);
        assert_eq!(*asked.batch.lock().unwrap(), 1);
        assert_eq!(*asked.one.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_batch_skips_handled_events_and_repeats_within_itself() {
        let state = Arc::new(Remembering::default());
        let layer = Deduplicated::new(Arc::clone(&state), Arc::clone(&state));
        let (old, new, record) = (event("dedup"), event("dedup"), record(7));
        layer
            .handle(&delivery("auditor", &record, &old))
            .await
            .unwrap();
        let batch = [
            delivery("auditor", &record, &old),
            delivery("auditor", &record, &new),
            delivery("auditor", &record, &new),
        ];
        let outcomes = layer.handle_batch(&batch).await.unwrap();
        assert_eq!(
            outcomes,
            [Handled::Duplicate, Handled::Applied, Handled::Duplicate]
        );
        assert_eq!(*state.calls.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn the_processed_events_table_answers_for_the_group_asked_about() {
        let dir = tempfile::tempdir().unwrap();
        let store = taskstream_store::SqliteStore::open(
            &dir.path().join("inbox.db"),
            &taskstream_store::SqliteOptions::default(),
        )
        .await
        .unwrap();
        let store = Arc::new(store);
        let event_id = Uuid::new_v4();
        taskstream_store::NotificationStore::record_notifications(
            &*store,
            "notifier",
            event_id,
            &[],
        )
        .await
        .unwrap();
        let inbox = ProcessedEvents::new(store);
        assert!(inbox.handled("notifier", event_id).await.unwrap());
        assert!(!inbox.handled("notifier-second", event_id).await.unwrap());
        let other = Uuid::new_v4();
        let among = inbox.handled_among("notifier", &[other, event_id]).await;
        assert_eq!(among.unwrap(), [event_id].into());
    }
}
