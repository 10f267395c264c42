//! What the agent asks a model, what a model answers, and why it may not.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskstream_domain::{Priority, Task};

/// What a model sees of a task: what a person wrote when creating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriageInput {
    pub title: String,
    pub description: Option<String>,
    /// When the task was created: relative due dates ("tomorrow", "by
    /// friday") count from here, so a replay suggests what the agent
    /// suggested then.
    pub created_at: DateTime<Utc>,
}

impl TriageInput {
    /// The input for `task`, as it was created.
    pub fn of(task: &Task) -> Self {
        Self {
            title: task.title.as_str().to_owned(),
            description: task.description.as_ref().map(|d| d.as_str().to_owned()),
            created_at: task.created_at,
        }
    }
}

/// A model's answer: each field it has an opinion on, how sure it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Triage {
    pub priority: Option<Priority>,
    pub assignee: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// 0 to 100.
    pub confidence: u8,
    /// Why, in a line.
    pub rationale: String,
}

/// Why a model gave no answer, after the retries inside the model. An
/// outage or a spent budget is transient: the agent holds the event's
/// partition and asks again with backoff. An answer that is not a
/// suggestion is final for the event: the agent dead-letters it, and
/// `taskstream dlq replay` asks again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model could not be reached or kept failing, after its retries.
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
    /// The model answered something that is not a suggestion.
    #[error("the model's reply is not a suggestion: {0}")]
    Unparsable(String),
    /// The configured request budget is spent for now.
    #[error("the model's request budget is exhausted ({0})")]
    BudgetExhausted(String),
    /// The configured total of requests is spent: the model asks no more.
    #[error("the model's request limit is reached ({0})")]
    RequestLimitReached(String),
}

// ANCHOR: model
/// Suggests a priority, an assignee and a due date for a new task.
#[async_trait]
pub trait TriageModel: Send + Sync + 'static {
    /// The model's name, stored with each suggestion (`local`, or the
    /// remote model's name).
    fn name(&self) -> &str;

    /// Answers for one task. Deterministic models answer the same input
    /// the same way.
    async fn triage(&self, input: &TriageInput) -> Result<Triage, ModelError>;
}
// ANCHOR_END: model
