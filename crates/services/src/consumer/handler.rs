//! What the runtime drives: a handler's business logic, given one decoded
//! event (or several at once) together with where it came from.

use async_trait::async_trait;
use taskstream_domain::EventEnvelope;
use taskstream_kafka::InboundRecord;
use tracing::Instrument;
use uuid::Uuid;

use super::HandleError;

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The effect was applied now.
    Applied,
    /// The event had been handled before; nothing was done.
    Duplicate,
}

/// What the runtime reads of a decoded event, whatever its shape: a task
/// event ([`EventEnvelope`]), or another kind a group reads besides (the
/// notifier's saga events).
pub trait ConsumedEvent: Send + Sync + 'static {
    /// The id the group's inbox remembers.
    fn event_id(&self) -> Uuid;
    /// For metrics and logs.
    fn event_type(&self) -> &str;
    /// The task it is about.
    fn subject(&self) -> &str;
    fn correlation_id(&self) -> Option<&str>;
}

impl ConsumedEvent for EventEnvelope {
    fn event_id(&self) -> Uuid {
        self.id.as_uuid()
    }

    fn event_type(&self) -> &str {
        self.event_type.as_str()
    }

    fn subject(&self) -> &str {
        &self.subject
    }

    fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
}

/// One decoded record on its way to a handler.
pub struct Delivery<'a, E = EventEnvelope> {
    /// The consumer group the record was read in: whatever the handler
    /// remembers about the event is remembered for this group.
    pub group: &'a str,
    pub record: &'a InboundRecord,
    pub event: &'a E,
    /// Carries the event's id, type and trace id; its logs belong to it.
    pub span: tracing::Span,
}

/// Reacts to events: one business effect, nothing else. Decoding, retries,
/// holds, dead letters, metrics and de-duplication are layers around it
/// (see [`crate::ConsumerService`] and [`crate::Deduplicated`]).
///
/// The effect must be idempotent by event id: after a crash or a rebalance
/// a record comes again.
#[async_trait]
pub trait EventHandler<E: ConsumedEvent = EventEnvelope>: Send + Sync + 'static {
    /// Applies the event's effect durably.
    async fn handle(&self, delivery: &Delivery<'_, E>) -> Result<Handled, HandleError>;

    /// Applies several events (in order) at once — one transaction instead of
    /// one per event, where the handler can. All or nothing: on error, the
    /// runtime falls back to [`EventHandler::handle`] one event at a time.
    async fn handle_batch(&self, batch: &[Delivery<'_, E>]) -> Result<Vec<Handled>, HandleError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for d in batch {
            outcomes.push(self.handle(d).instrument(d.span.clone()).await?);
        }
        Ok(outcomes)
    }
}
