//! The triage agent as a component: its own consumer group on
//! `task-events` (the consumer runtime, the group's inbox, the
//! [`TriageHandler`]), with an optional rule that accepts confident
//! suggestions through the Task API's command.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use taskstream_api::{RequestContext, TaskService};
use taskstream_kafka::KafkaConfig;
use taskstream_services::agent::{
    SuggestionListener, TriageHandler, TriageModel, TriageResponder, AGENT_GROUP,
};
use taskstream_services::topics::{TASK_EVENTS, TASK_SUGGESTIONS};
use taskstream_services::{Deduplicated, EventEncoding, ProcessedEvents};
use taskstream_store::{Store, SuggestionRecord};
use taskstream_telemetry::{Metrics, TraceParent};
use tokio::sync::Notify;

use super::consumer::{checks, consumer};
use super::{Component, ConsumerOptions};

/// A rule that accepts a suggestion without a person: `min-confidence=N`
/// accepts every suggestion whose confidence is at least N (0 to 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoAccept {
    pub min_confidence: u8,
}

impl std::str::FromStr for AutoAccept {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let value = raw
            .trim()
            .strip_prefix("min-confidence=")
            .ok_or_else(|| format!("expected min-confidence=N (N from 0 to 100), got {raw:?}"))?;
        match value.trim().parse::<u8>() {
            Ok(n) if n <= 100 => Ok(Self { min_confidence: n }),
            _ => Err(format!(
                "min-confidence must be a whole number from 0 to 100, got {value:?}"
            )),
        }
    }
}

/// What the agent runs with.
#[derive(Clone)]
pub struct AgentSettings {
    pub model: Arc<dyn TriageModel>,
    pub auto_accept: Option<AutoAccept>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("model", &self.model.name())
            .field("auto_accept", &self.auto_accept)
            .finish()
    }
}

/// How the agent's process writes to the outbox.
pub struct OutboxWrites {
    /// Notified after each commit, so a relay in this process publishes at once.
    pub relay_wake: Arc<Notify>,
    /// The task events' format, for the changes an auto-accept rule makes.
    pub encoding: EventEncoding,
}

/// Starts the triage agent in `group` (default `triage-agent`). Its
/// suggestions go to `task-suggestions` through `store`'s outbox (see
/// [`OutboxWrites`]). With an auto-accept rule, the suggestions it allows
/// are accepted through the Task API's command, as a person's would be.
///
/// Records deleted before the agent read them are reported like every
/// consumer's, but not repaired: suggesting for old tasks again is not
/// worth republishing their events to every group.
pub fn agent(
    store: Arc<Store>,
    kafka: &KafkaConfig,
    group: Option<&str>,
    options: &ConsumerOptions,
    settings: &AgentSettings,
    writes: OutboxWrites,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Component> {
    let OutboxWrites {
        relay_wake,
        encoding,
    } = writes;
    let group = group.unwrap_or(AGENT_GROUP);
    let checks = checks(&store, kafka, options);
    let mut handler =
        TriageHandler::new(store.clone(), Arc::clone(&settings.model), TASK_SUGGESTIONS)
            .waking(Arc::clone(&relay_wake));
    if let Some(rule) = settings.auto_accept {
        let tasks = TaskService::new(store.clone(), encoding, relay_wake, TASK_EVENTS);
        handler = handler.telling(Arc::new(AutoAcceptRule {
            rule,
            tasks,
            store: store.clone(),
        }));
    }
    let handler = Deduplicated::new(ProcessedEvents::new(store.clone()), handler);
    Ok(consumer("agent", kafka, group, options, handler, None, metrics)?.with_checks(checks))
}

/// Starts the agent's answering side: it reads `task-triage-requests` in
/// its own group and replies on each request's reply topic (see
/// [`TriageResponder`]).
pub fn agent_responder(
    kafka: &KafkaConfig,
    options: &ConsumerOptions,
    settings: &AgentSettings,
) -> anyhow::Result<Component> {
    let responder = TriageResponder::new(kafka, &options.kafka, Arc::clone(&settings.model))
        .context("cannot join the triage requests' consumer group")?;
    Ok(Component::spawn("agent-replies", move |shutdown| {
        responder.run(shutdown)
    }))
}

/// Accepts the suggestions its rule allows, through the same command as
/// `POST /tasks/{id}/suggestions/{sid}/accept`.
struct AutoAcceptRule {
    rule: AutoAccept,
    tasks: TaskService,
    store: Arc<Store>,
}

#[async_trait]
impl SuggestionListener for AutoAcceptRule {
    async fn recorded(&self, suggestion: &SuggestionRecord) {
        if suggestion.confidence < self.rule.min_confidence {
            return;
        }
        let Ok(task_id) = suggestion.task_id.parse() else {
            return;
        };
        let trace = TraceParent::generate();
        let context = RequestContext {
            request_id: format!("auto-accept-{}", suggestion.id),
            traceparent: trace.to_string(),
            trace,
        };
        match self
            .tasks
            .accept_suggestion(&*self.store, task_id, suggestion.id, &context)
            .await
        {
            Ok(_) => tracing::info!(
                target: "agent",
                suggestion_id = %suggestion.id,
                task_id = suggestion.task_id,
                confidence = suggestion.confidence,
                "suggestion accepted by the auto-accept rule"
            ),
            // The suggestion stays pending for a person to decide.
            Err(error) => tracing::warn!(
                target: "agent",
                suggestion_id = %suggestion.id,
                %error,
                "the auto-accept rule could not accept the suggestion"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auto_accept_rule_names_a_minimum_confidence_from_0_to_100() {
        assert_eq!(
            "min-confidence=70".parse::<AutoAccept>().unwrap(),
            AutoAccept { min_confidence: 70 }
        );
        for bad in [
            "70",
            "min-confidence=101",
            "min-confidence=-1",
            "confidence=5",
            "",
        ] {
            assert!(bad.parse::<AutoAccept>().is_err(), "{bad}");
        }
    }
}
