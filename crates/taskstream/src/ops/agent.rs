//! `taskstream agent ask` (request-reply over Kafka) and `taskstream agent
//! replay` (the agent re-run over the task-event history, compared with
//! what people finally did).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use taskstream_avro::RegistryClient;
use taskstream_domain::{EventEnvelope, EventType, Task};
use taskstream_services::agent::{
    ask as ask_agent, ModelError, Triage, TriageInput, TriageModel, TriageRequest,
};
use taskstream_services::topics::{TASK_EVENTS, TASK_TRIAGE_REPLIES};
use taskstream_services::EventDecoder;

use crate::cli::{AgentModelArgs, RegistryArgs};
use crate::config::{parse_seconds, KafkaArgs};

/// `taskstream agent ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The task's title, as it would be created.
    #[arg(long)]
    pub title: String,
    #[arg(long)]
    pub description: Option<String>,
    /// Seconds to wait for the reply; the request carries this deadline,
    /// and an agent reading it later does not answer.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// The topic to be answered on: `task-triage-replies` or `task-triage-replies.<name>`.
    #[arg(long, default_value = TASK_TRIAGE_REPLIES)]
    pub reply_topic: String,
    /// Where to find a running `taskstream up`'s endpoints.json when no --kafka-bootstrap is given.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Sends one triage request and prints the reply as JSON; fails with one
/// line when no reply comes in time or the model could not answer.
pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let (kafka, _) = args.kafka.resolve(&args.data_dir, "agent ask")?;
    let request = TriageRequest {
        title: args.title,
        description: args.description,
    };
    let reply = ask_agent(&kafka.quiet(), &request, &args.reply_topic, args.timeout).await?;
    if let Some(error) = &reply.error {
        anyhow::bail!("the triage agent could not answer: {error}");
    }
    super::emit(&format!("{}\n", serde_json::to_string_pretty(&reply)?))
}

/// `taskstream agent replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Read the task-event history from its beginning (required: replay
    /// always does, outside any consumer group, committing nothing).
    #[arg(long, required = true)]
    pub from_beginning: bool,
    /// The model to evaluate: `local` (the rules and keywords, with
    /// --agent-assignees) or the base URL of an OpenAI-compatible API (with
    /// the --agent-model-* and --agent-api-key* flags).
    #[arg(long, default_value = "local")]
    pub model: String,
    #[command(flatten)]
    pub agent: AgentModelArgs,
    /// The most requests sent to a remote model (--model URL) in all,
    /// retries included. When they are spent, replay asks about no more
    /// tasks and reports how many it skipped. (Requests are also spaced to
    /// stay within --agent-max-requests-per-minute: replay waits for room
    /// rather than counting a task unanswered.)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_model_requests: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds reading may go without a record before it fails.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Where to find a running `taskstream up`'s endpoints.json when no --kafka-bootstrap is given.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// How often one field's suggestion matched what people finally set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FieldAgreement {
    /// Tasks the model had an opinion on this field for.
    pub suggested: u64,
    /// Of those, tasks whose final value is the suggested one (for due
    /// dates: the same day, UTC).
    pub agreed: u64,
}

impl FieldAgreement {
    fn count(&mut self, suggested: bool, agreed: bool) {
        if suggested {
            self.suggested += 1;
            self.agreed += u64::from(agreed);
        }
    }

    /// `agreed` of `suggested`, in percent; `None` without suggestions.
    pub fn percent(&self) -> Option<f64> {
        (self.suggested > 0).then(|| 100.0 * self.agreed as f64 / self.suggested as f64)
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub model: String,
    /// Task events read.
    pub events: u64,
    /// Tasks whose `task.created` was read and the model was asked about
    /// (evaluated).
    pub tasks: u64,
    /// Of those, tasks the model could not answer for.
    pub unanswered: u64,
    /// Tasks whose `task.created` was read but the model was not asked
    /// about, or not answered for, because its request budget
    /// (--max-model-requests) was spent; they count in no agreement.
    pub skipped: u64,
    pub priority: FieldAgreement,
    pub assignee: FieldAgreement,
    pub due_at: FieldAgreement,
}

impl ReplayReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        let pct = |f: &FieldAgreement| {
            f.percent()
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%"))
        };
        let mut out = format!(
            "model {}: {} events, {} tasks evaluated, {} unanswered, {} skipped (request budget spent)\n{:<10} {:>9} {:>7} {:>9}\n",
            self.model,
            self.events,
            self.tasks,
            self.unanswered,
            self.skipped,
            "FIELD",
            "SUGGESTED",
            "AGREED",
            "AGREEMENT"
        );
        for (name, f) in [
            ("priority", &self.priority),
            ("assignee", &self.assignee),
            ("due_at", &self.due_at),
        ] {
            out.push_str(&format!(
                "{name:<10} {:>9} {:>7} {:>9}\n",
                f.suggested,
                f.agreed,
                pct(f)
            ));
        }
        out
    }
}

/// Re-runs `model` over `history` (task events in log order) and compares
/// each task's suggestion with its final state (its latest event). Once the
/// model says its request limit is reached, the tasks still to come are
/// skipped, not asked about.
pub async fn evaluate(model: &dyn TriageModel, history: &[EventEnvelope]) -> ReplayReport {
    let mut report = ReplayReport {
        model: model.name().to_owned(),
        events: history.len() as u64,
        ..ReplayReport::default()
    };
    // Per task: the suggestion (if answered) and the final state.
    let mut suggested: BTreeMap<String, Option<Triage>> = BTreeMap::new();
    let mut skipped: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut last: BTreeMap<String, Task> = BTreeMap::new();
    let mut spent = false;
    for event in history {
        let task = &event.data.task;
        let first = !suggested.contains_key(&event.subject) && !skipped.contains(&event.subject);
        if event.event_type == EventType::TaskCreated && first {
            if spent {
                skipped.insert(event.subject.clone());
            } else {
                match model.triage(&TriageInput::of(task)).await {
                    Err(ModelError::RequestLimitReached(why)) => {
                        tracing::warn!(%why, "the model's request budget is spent: the tasks still to come are skipped");
                        spent = true;
                        skipped.insert(event.subject.clone());
                    }
                    answer => {
                        suggested.insert(event.subject.clone(), answer.ok());
                    }
                }
            }
        }
        let newer = last
            .get(&event.subject)
            .is_none_or(|seen| seen.version <= task.version);
        if newer {
            last.insert(event.subject.clone(), task.clone());
        }
    }
    for (task_id, answer) in &suggested {
        report.tasks += 1;
        let (Some(triage), Some(fin)) = (answer, last.get(task_id)) else {
            report.unanswered += 1;
            continue;
        };
        report.priority.count(
            triage.priority.is_some(),
            triage.priority == Some(fin.priority),
        );
        report.assignee.count(
            triage.assignee.is_some(),
            triage.assignee.as_deref() == fin.assignee.as_ref().map(|a| a.as_str()),
        );
        let day = |d: &DateTime<Utc>| d.date_naive();
        report.due_at.count(
            triage.due_at.is_some(),
            triage.due_at.as_ref().map(day) == fin.due_at.as_ref().map(day),
        );
    }
    report.skipped = skipped.len() as u64;
    report
}

/// Reads `task-events` from the beginning, outside any group (nothing is
/// committed, published or stored), re-runs the model and prints the report.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (kafka, _) = args.kafka.resolve(&args.data_dir, "agent replay")?;
    let registry = args
        .registry
        .resolve(&args.data_dir)?
        .map(|url| Arc::new(RegistryClient::new(&url)));
    let decoder = EventDecoder::new(registry);
    let records = taskstream_kafka::read_topic(&kafka.quiet(), TASK_EVENTS, args.timeout)
        .await
        .context("cannot read task-events")?;
    let mut history = Vec::with_capacity(records.len());
    for record in &records {
        let Some(value) = record.payload.as_deref() else {
            continue;
        };
        match decoder.decode(value).await {
            Ok(event) => history.push(event),
            Err(error) => tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                %error,
                "an undecodable record is left out of the replay"
            ),
        }
    }
    // One task's events share a partition, so per task they are in order;
    // across partitions, order by time.
    history.sort_by_key(|e| e.time);
    let mut agent = args.agent.clone();
    agent.agent_model_url = match args.model.as_str() {
        "local" => None,
        url => Some(url.to_owned()),
    };
    let model: Arc<dyn TriageModel> = agent.replay_model(args.max_model_requests)?;
    let report = evaluate(&*model, &history).await;
    if args.json {
        super::emit(&format!("{}\n", serde_json::to_string(&report)?))
    } else {
        super::emit(&report.table())
    }
}

#[cfg(test)]
mod tests {
    use taskstream_domain::{Assignee, Cause, NewTask, Priority, TaskPatch, TaskTitle};

    use super::*;

    fn created(title: &str) -> taskstream_domain::TaskChange {
        let new = NewTask {
            title: TaskTitle::parse(title).unwrap(),
            description: None,
            priority: Priority::Medium,
            due_at: None,
            assignee: None,
        };
        Task::create(new, taskstream_domain::now(), Cause::default())
    }

    use taskstream_services::agent::{AssigneeMap, LocalModel};

    /// Answers `budget` times (the local model's answer), then says its
    /// request limit is reached; counts the questions.
    struct Budgeted {
        inner: LocalModel,
        budget: u64,
        asked: std::sync::atomic::AtomicU64,
    }

    #[async_trait::async_trait]
    impl TriageModel for Budgeted {
        fn name(&self) -> &str {
            "budgeted"
        }

        async fn triage(&self, input: &TriageInput) -> Result<Triage, ModelError> {
            let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= self.budget {
                return Err(ModelError::RequestLimitReached(format!(
                    "{} requests in all",
                    self.budget
                )));
            }
            self.inner.triage(input).await
        }
    }

    #[tokio::test]
    async fn a_spent_request_budget_skips_the_remaining_tasks_and_says_how_many() {
        let model = Budgeted {
            inner: LocalModel::new(AssigneeMap::parse("database=ana").unwrap()),
            budget: 2,
            asked: Default::default(),
        };
        let a = created("urgent: database down");
        let b = created("minor typo");
        let c = created("write the report");
        let d = created("urgent: disk full");
        let c2 = c
            .task
            .update(
                TaskPatch {
                    priority: Some(Priority::Low),
                    ..TaskPatch::default()
                },
                taskstream_domain::now(),
                Cause::default(),
            )
            .unwrap()
            .unwrap();
        let history = [a.event, b.event, c.event, d.event, c2.event];
        let report = evaluate(&model, &history).await;
        assert_eq!(
            (
                report.events,
                report.tasks,
                report.unanswered,
                report.skipped
            ),
            (5, 2, 0, 2)
        );
        // Asked for a, b and c (refused); never for d.
        assert_eq!(model.asked.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Only the evaluated tasks count in the agreement: a (high) and b (low).
        assert_eq!(report.priority.suggested, 2);
        assert!(
            report.table().starts_with(
                "model budgeted: 5 events, 2 tasks evaluated, 0 unanswered, 2 skipped"
            ),
            "{}",
            report.table()
        );
    }

    #[tokio::test]
    async fn replay_compares_each_suggestion_with_the_final_state_of_its_task() {
        let model = LocalModel::new(AssigneeMap::parse("database=ana").unwrap());
        // Suggested high and ana; people kept high but gave it to bo.
        let a = created("urgent: database down");
        let a2 = a
            .task
            .update(
                TaskPatch {
                    priority: Some(Priority::High),
                    assignee: Some(Some(Assignee::parse("bo").unwrap())),
                    ..TaskPatch::default()
                },
                taskstream_domain::now(),
                Cause::default(),
            )
            .unwrap()
            .unwrap();
        // Suggested low; people left it medium.
        let b = created("minor typo");
        // No opinion at all.
        let c = created("write the report");
        let history = [a.event, b.event, c.event, a2.event];
        let report = evaluate(&model, &history).await;
        assert_eq!((report.events, report.tasks, report.unanswered), (4, 3, 0));
        assert_eq!(
            report.priority,
            FieldAgreement {
                suggested: 2,
                agreed: 1
            }
        );
        assert_eq!(
            report.assignee,
            FieldAgreement {
                suggested: 1,
                agreed: 0
            }
        );
        assert_eq!(report.due_at, FieldAgreement::default());
        assert_eq!(report.priority.percent(), Some(50.0));
        let table = report.table();
        assert!(
            table.contains("priority           2       1     50.0%"),
            "{table}"
        );
        assert!(
            table.contains("due_at             0       0         -"),
            "{table}"
        );
    }
}
