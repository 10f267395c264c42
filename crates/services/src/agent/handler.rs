//! The agent's consumer-group handler: `task.created` in, one stored
//! suggestion and one `task.triage_suggested` outbox row out.

use std::sync::Arc;

use async_trait::async_trait;
use taskstream_domain::EventType;
use taskstream_store::{SuggestionRecord, SuggestionStore};
use tokio::sync::Notify;

use super::event::{outbox_message, suggestion, suggestion_event};
use super::model::{ModelError, TriageInput, TriageModel};
use crate::{Delivery, EventHandler, HandleError, Handled};

/// Told about each suggestion once it is stored (the configured
/// auto-accept rule listens here).
#[async_trait]
pub trait SuggestionListener: Send + Sync + 'static {
    async fn recorded(&self, suggestion: &SuggestionRecord);
}

/// Asks the model about each `task.created` event and stores its answer
/// with the event announcing it, in one transaction that also marks the
/// event processed by the group: one suggestion per task event, however
/// often it is delivered. Run it behind the group's inbox
/// (`Deduplicated::new(ProcessedEvents::new(store), handler)`), so that
/// a redelivered event does not even reach the model.
///
/// What the model cannot answer is a permanent failure: the runtime
/// dead-letters the event. Other event types are not the agent's business
/// and pass untouched. The agent never changes a task.
pub struct TriageHandler {
    store: Arc<dyn SuggestionStore>,
    model: Arc<dyn TriageModel>,
    topic: String,
    /// Notified after each new outbox row, so a relay in this process
    /// publishes it at once.
    relay_wake: Option<Arc<Notify>>,
    listener: Option<Arc<dyn SuggestionListener>>,
}

impl TriageHandler {
    /// Publishes suggestion events to `topic`.
    pub fn new(
        store: Arc<dyn SuggestionStore>,
        model: Arc<dyn TriageModel>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            store,
            model,
            topic: topic.into(),
            relay_wake: None,
            listener: None,
        }
    }

    /// Wakes `relay_wake` after each suggestion stored.
    pub fn waking(mut self, relay_wake: Arc<Notify>) -> Self {
        self.relay_wake = Some(relay_wake);
        self
    }

    /// Tells `listener` about each suggestion stored.
    pub fn telling(mut self, listener: Arc<dyn SuggestionListener>) -> Self {
        self.listener = Some(listener);
        self
    }
}

// ANCHOR: handler
#[async_trait]
impl EventHandler for TriageHandler {
    async fn handle(&self, d: &Delivery<'_>) -> Result<Handled, HandleError> {
        let event = d.event;
        if event.event_type != EventType::TaskCreated {
            return Ok(Handled::Applied);
        }
        let triage = self
            .model
            .triage(&TriageInput::of(&event.data.task))
            .await
            .map_err(|e| model_failure(self.model.name(), e))?;
        let record = suggestion(event, self.model.name(), &triage);
        let announced = suggestion_event(event, &record);
        let message = outbox_message(&announced, &self.topic, event.traceparent.clone());
        let fresh = self
            .store
            .record_suggestion(d.group, &record, &message)
            .await?;
        if !fresh {
            return Ok(Handled::Duplicate);
        }
        if let Some(wake) = &self.relay_wake {
            wake.notify_one();
        }
        tracing::debug!(target: "agent", suggestion_id = %record.id, confidence = record.confidence, "suggestion recorded");
        if let Some(listener) = &self.listener {
            listener.recorded(&record).await;
        }
        Ok(Handled::Applied)
    }
}
// ANCHOR_END: handler

// ANCHOR: failure
/// What a model's failure means for the event: time heals an outage and a
/// spent budget (the consumer holds the partition and asks again with
/// backoff, dead-lettering only after `--give-up-after`); an answer that is
/// not a suggestion would be the same next time, so it is dead-lettered.
/// (A total request limit is a replay's; should a model have one, the
/// event is not at fault either.)
fn model_failure(model: &str, e: ModelError) -> HandleError {
    let message = format!("model {model}: {e}");
    match e {
        ModelError::Unavailable(_)
        | ModelError::BudgetExhausted(_)
        | ModelError::RequestLimitReached(_) => HandleError::Transient {
            message,
            source: Some(Box::new(e)),
        },
        ModelError::Unparsable(_) => HandleError::Permanent {
            message,
            source: Some(Box::new(e)),
        },
    }
}
// ANCHOR_END: failure

#[cfg(test)]
mod tests {
    use taskstream_store::{InboxStore, SqliteOptions, SqliteStore};

    use super::*;
    use crate::agent::local::{AssigneeMap, LocalModel};
    use crate::agent::model::{ModelError, Triage};
    use crate::consumer::fixtures::{delivery, event, record};
    use crate::{Deduplicated, ProcessedEvents};

    struct Garbage;

    #[async_trait]
    impl TriageModel for Garbage {
        fn name(&self) -> &str {
            "garbage"
        }
        async fn triage(&self, _: &TriageInput) -> Result<Triage, ModelError> {
            Err(ModelError::Unparsable("no JSON object".into()))
        }
    }

    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("agent.db"), &SqliteOptions::default())
            .await
            .unwrap();
        (dir, Arc::new(store))
    }

    #[tokio::test]
    async fn a_created_task_gets_one_suggestion_however_often_its_event_comes() {
        let (_dir, store) = store().await;
        let model = LocalModel::new(AssigneeMap::parse("database=ana").unwrap());
        let agent = Deduplicated::new(
            ProcessedEvents::new(store.clone()),
            TriageHandler::new(store.clone(), Arc::new(model), "task-suggestions"),
        );
        let (created, first) = (event("urgent: database down"), record(1));
        let handled = agent
            .handle(&delivery("triage-agent", &first, &created))
            .await;
        assert_eq!(handled.unwrap(), Handled::Applied);
        let again = agent
            .handle(&delivery("triage-agent", &record(2), &created))
            .await;
        assert_eq!(again.unwrap(), Handled::Duplicate);
        let listed = store.suggestions(&created.subject).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].priority.as_deref(), Some("high"));
        assert_eq!(listed[0].assignee.as_deref(), Some("ana"));
        assert_eq!(listed[0].event_id, created.id.as_uuid());
        assert!(store
            .is_processed("triage-agent", created.id.as_uuid())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn what_the_model_cannot_answer_fails_permanently_and_stores_nothing() {
        let (_dir, store) = store().await;
        let agent = TriageHandler::new(store.clone(), Arc::new(Garbage), "task-suggestions");
        let created = event("anything");
        let error = agent
            .handle(&delivery("triage-agent", &record(1), &created))
            .await
            .unwrap_err();
        assert!(!error.is_retriable());
        assert!(error.message().contains("model garbage"), "{error}");
        assert!(store
            .suggestions(&created.subject)
            .await
            .unwrap()
            .is_empty());
        assert!(!store
            .is_processed("triage-agent", created.id.as_uuid())
            .await
            .unwrap());
    }

    #[test]
    fn an_unreachable_model_or_a_spent_budget_holds_the_event_and_a_garbage_answer_dead_letters_it()
    {
        use super::{model_failure, ModelError};
        assert!(model_failure("m", ModelError::Unavailable("down".into())).is_retriable());
        assert!(model_failure("m", ModelError::BudgetExhausted("60/min".into())).is_retriable());
        assert!(!model_failure("m", ModelError::Unparsable("{}".into())).is_retriable());
    }
}
