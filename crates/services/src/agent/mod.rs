//! The triage agent: its own consumer group on `task-events`. For each
//! `task.created` it asks a model ([`TriageModel`]: the offline
//! [`LocalModel`] by default, or an OpenAI-compatible endpoint) for a
//! priority, an assignee and a due date, stores the suggestion and
//! publishes `task.triage_suggested` to `task-suggestions` through the
//! outbox, in one transaction keyed by the triggering event's id.
//!
//! The agent proposes; it never changes a task. A suggestion becomes a
//! change only through the Task API's command
//! (`POST /tasks/{id}/suggestions/{sid}/accept`), sent by a person or by a
//! rule the user configures.

mod event;
mod handler;
mod local;
mod model;
mod openai;
mod request_reply;

pub use event::{
    correlation_of, outbox_message, suggestion, suggestion_event, SuggestionData, SuggestionEvent,
    AGENT_SOURCE, SUGGESTION_AGGREGATE, TRIAGE_SUGGESTED,
};
pub use handler::{SuggestionListener, TriageHandler};
pub use local::{AssigneeMap, LocalModel};
pub use model::{ModelError, Triage, TriageInput, TriageModel};
pub use openai::{OpenAiModel, OpenAiSettings};
pub use request_reply::{
    allowed_reply_topic, ask, AskError, TriageReply, TriageRequest, TriageResponder,
    CORRELATION_ID, DEADLINE, REPLY_TO, REQUESTS_GROUP,
};

/// The agent's consumer group.
pub const AGENT_GROUP: &str = "triage-agent";
