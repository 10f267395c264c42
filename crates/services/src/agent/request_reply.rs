//! Request-reply over Kafka, for callers that want a suggestion now
//! (`taskstream agent ask`) rather than watching `task-suggestions`.
//!
//! A request is a record on `task-triage-requests` whose value is a
//! [`TriageRequest`] (JSON) and whose headers name:
//! - [`CORRELATION_ID`]: the caller's id for the exchange, copied onto the reply;
//! - [`REPLY_TO`]: the topic to answer on: `task-triage-replies`, or a
//!   topic whose name starts with `task-triage-replies.` (anything else is
//!   refused, so a request cannot make the agent write to another topic);
//! - [`DEADLINE`]: when the caller stops waiting (RFC 3339). A request read
//!   after its deadline is not answered: nobody waits for it any more.
//!
//! The agent answers each request once it is read, in its own consumer
//! group (`triage-agent-requests`), with a [`TriageReply`] keyed and
//! headed by the correlation id. The caller reads the reply topic from the
//! end it saw before sending, outside any group, and takes the first
//! record with its correlation id; after its deadline it gives up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use taskstream_kafka::{
    await_record, end_offsets, ConsumerSettings, EventConsumer, EventProducer, InboundRecord,
    KafkaConfig, KafkaError, OutboundRecord, ProducerSettings,
};
use uuid::Uuid;

use super::model::{Triage, TriageInput, TriageModel};
use crate::topics::{TASK_TRIAGE_REPLIES, TASK_TRIAGE_REQUESTS};
use crate::{Backoff, Shutdown};

/// The header naming the exchange.
pub const CORRELATION_ID: &str = "correlation_id";
/// The header naming the topic to answer on.
pub const REPLY_TO: &str = "reply-to";
/// The header saying until when the caller waits (RFC 3339).
pub const DEADLINE: &str = "deadline";

/// The consumer group the agent reads requests in.
pub const REQUESTS_GROUP: &str = "triage-agent-requests";

/// What a caller asks about: a task as it would be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageRequest {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The agent's answer: a suggestion, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageReply {
    pub correlation_id: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub confidence: u8,
    #[serde(default)]
    pub rationale: String,
    /// Set instead of a suggestion when the model could not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the agent may answer on `topic`.
pub fn allowed_reply_topic(topic: &str) -> bool {
    topic == TASK_TRIAGE_REPLIES
        || topic
            .strip_prefix(TASK_TRIAGE_REPLIES)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|suffix| {
                !suffix.is_empty()
                    && suffix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            })
}

/// A request as read, or why it is not answered.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Answer {
        correlation_id: String,
        reply_to: String,
        request: TriageRequest,
    },
    Expired,
    Invalid(String),
}

fn read(record: &InboundRecord, now: DateTime<Utc>) -> Read {
    let Some(correlation_id) = record.header_str(CORRELATION_ID).map(str::to_owned) else {
        return Read::Invalid(format!("no {CORRELATION_ID} header"));
    };
    let Some(reply_to) = record.header_str(REPLY_TO).map(str::to_owned) else {
        return Read::Invalid(format!("no {REPLY_TO} header"));
    };
    if !allowed_reply_topic(&reply_to) {
        return Read::Invalid(format!("{REPLY_TO} {reply_to:?} is not a reply topic"));
    }
    let deadline = record
        .header_str(DEADLINE)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok());
    let Some(deadline) = deadline else {
        return Read::Invalid(format!("no RFC 3339 {DEADLINE} header"));
    };
    if deadline.with_timezone(&Utc) <= now {
        return Read::Expired;
    }
    match serde_json::from_slice::<TriageRequest>(record.payload.as_deref().unwrap_or_default()) {
        Ok(request) => Read::Answer {
            correlation_id,
            reply_to,
            request,
        },
        Err(e) => Read::Invalid(format!("the value is not a triage request: {e}")),
    }
}

fn reply(correlation_id: &str, model: &str, answer: Result<Triage, String>) -> TriageReply {
    let mut reply = TriageReply {
        correlation_id: correlation_id.to_owned(),
        model: model.to_owned(),
        priority: None,
        assignee: None,
        due_at: None,
        confidence: 0,
        rationale: String::new(),
        error: None,
    };
    match answer {
        Ok(t) => {
            reply.priority = t.priority.map(|p| p.as_str().to_owned());
            reply.assignee = t.assignee;
            reply.due_at = t.due_at;
            reply.confidence = t.confidence;
            reply.rationale = t.rationale;
        }
        Err(e) => reply.error = Some(e),
    }
    reply
}

/// Answers requests on `task-triage-requests` until `shutdown`.
pub struct TriageResponder {
    consumer: EventConsumer,
    producer: EventProducer,
    model: Arc<dyn TriageModel>,
}

impl TriageResponder {
    /// Joins the requests group (from the earliest request: deadlines keep
    /// stale ones unanswered).
    pub fn new(
        kafka: &KafkaConfig,
        settings: &ConsumerSettings,
        model: Arc<dyn TriageModel>,
    ) -> Result<Self, KafkaError> {
        let settings = ConsumerSettings {
            start_from_earliest: true,
            ..settings.clone()
        };
        Ok(Self {
            consumer: EventConsumer::subscribe(
                kafka,
                REQUESTS_GROUP,
                &[TASK_TRIAGE_REQUESTS],
                &settings,
            )?,
            producer: EventProducer::new(
                kafka,
                "triage-agent-replies",
                &ProducerSettings::default(),
            )?,
            model,
        })
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let record = tokio::select! {
                _ = shutdown.wait() => break,
                received = self.consumer.recv() => received,
            };
            match record {
                Ok(record) => {
                    backoff.reset();
                    self.answer(&record).await;
                    self.consumer.ack(&record);
                    if let Err(error) = self.consumer.commit_acked(false).await {
                        tracing::debug!(%error, "committing answered requests failed");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "receiving triage requests failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        if let Err(error) = self.consumer.close(Duration::from_secs(5)).await {
            tracing::warn!(%error, "the triage responder's final commit failed");
        }
    }

    async fn answer(&self, record: &InboundRecord) {
        let (correlation_id, reply_to, request) = match read(record, Utc::now()) {
            Read::Answer {
                correlation_id,
                reply_to,
                request,
            } => (correlation_id, reply_to, request),
            Read::Expired => {
                tracing::debug!(target: "agent", offset = record.offset, "triage request past its deadline; not answered");
                return;
            }
            Read::Invalid(why) => {
                tracing::warn!(target: "agent", offset = record.offset, why, "triage request ignored");
                return;
            }
        };
        let input = TriageInput {
            title: request.title,
            description: request.description,
            created_at: Utc::now(),
        };
        let answer = self.model.triage(&input).await.map_err(|e| e.to_string());
        let reply = reply(&correlation_id, self.model.name(), answer);
        let value = serde_json::to_vec(&reply).expect("a reply serializes");
        let headers = [(CORRELATION_ID, correlation_id.as_bytes())];
        let sent = match self
            .producer
            .enqueue(OutboundRecord {
                topic: &reply_to,
                key: correlation_id.as_bytes(),
                payload: &value,
                headers: &headers,
            })
            .await
        {
            Ok(delivery) => delivery.await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(error) = sent {
            tracing::warn!(target: "agent", %error, reply_to, "the triage reply was not delivered");
        }
    }
}

/// Why `ask` has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no reply from the triage agent within {0:?} (is an agent running?)")]
    TimedOut(Duration),
    #[error("{0} is not a reply topic (task-triage-replies or task-triage-replies.<name>)")]
    ReplyTopic(String),
    #[error("the reply is not readable: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Sends `request` and waits up to `wait` for the agent's reply on
/// `reply_topic`. The request carries the deadline, so an agent that reads
/// it later does not answer.
pub async fn ask(
    kafka: &KafkaConfig,
    request: &TriageRequest,
    reply_topic: &str,
    wait: Duration,
) -> Result<TriageReply, AskError> {
    if !allowed_reply_topic(reply_topic) {
        return Err(AskError::ReplyTopic(reply_topic.to_owned()));
    }
    let started = tokio::time::Instant::now();
    let from: HashMap<i32, i64> = end_offsets(kafka, reply_topic, wait).await?;
    let correlation_id = Uuid::now_v7().to_string();
    let deadline = Utc::now()
        + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::seconds(60));
    let deadline = deadline.to_rfc3339_opts(SecondsFormat::Millis, true);
    let producer = EventProducer::new(
        kafka,
        "triage-agent-ask",
        &ProducerSettings {
            message_timeout: wait,
            ..ProducerSettings::default()
        },
    )?;
    let value = serde_json::to_vec(request).expect("a request serializes");
    let headers = [
        (CORRELATION_ID, correlation_id.as_bytes()),
        (REPLY_TO, reply_topic.as_bytes()),
        (DEADLINE, deadline.as_bytes()),
    ];
    producer
        .enqueue(OutboundRecord {
            topic: TASK_TRIAGE_REQUESTS,
            key: correlation_id.as_bytes(),
            payload: &value,
            headers: &headers,
        })
        .await?
        .await?;
    let left = wait.saturating_sub(started.elapsed());
    let wanted = correlation_id.clone();
    let record = await_record(kafka, reply_topic, &from, left, move |r| {
        r.header_str(CORRELATION_ID) == Some(wanted.as_str())
    })
    .await?
    .ok_or(AskError::TimedOut(wait))?;
    serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
        .map_err(|e| AskError::Unreadable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], value: &str) -> InboundRecord {
        InboundRecord {
            topic: TASK_TRIAGE_REQUESTS.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            timestamp_ms: None,
        }
    }

    const NOW: &str = "2026-12-02T10:00:00Z";

    #[test]
    fn a_request_past_its_deadline_is_not_answered() {
        let now = NOW.parse().unwrap();
        let value = r#"{"title":"urgent"}"#;
        let headers = |deadline| {
            [
                (CORRELATION_ID, "c1"),
                (REPLY_TO, TASK_TRIAGE_REPLIES),
                (DEADLINE, deadline),
            ]
        };
        assert_eq!(
            read(&request(&headers("2026-12-02T09:59:59Z"), value), now),
            Read::Expired
        );
        assert!(matches!(
            read(&request(&headers("2026-12-02T10:00:05Z"), value), now),
            Read::Answer { .. }
        ));
    }

    #[test]
    fn a_request_may_only_name_a_reply_topic_and_must_carry_its_headers() {
        let now = NOW.parse().unwrap();
        let value = r#"{"title":"x"}"#;
        let later = "2026-12-02T11:00:00Z";
        for reply_to in [
            "task-events",
            "task-triage-repliesX",
            "task-triage-replies.",
        ] {
            let r = request(
                &[
                    (CORRELATION_ID, "c"),
                    (REPLY_TO, reply_to),
                    (DEADLINE, later),
                ],
                value,
            );
            assert!(matches!(read(&r, now), Read::Invalid(_)), "{reply_to}");
        }
        assert!(allowed_reply_topic("task-triage-replies.cli-7"));
        let r = request(&[(REPLY_TO, TASK_TRIAGE_REPLIES), (DEADLINE, later)], value);
        assert!(matches!(read(&r, now), Read::Invalid(_)));
        let r = request(
            &[(CORRELATION_ID, "c"), (REPLY_TO, TASK_TRIAGE_REPLIES)],
            value,
        );
        assert!(matches!(read(&r, now), Read::Invalid(_)));
        let r = request(
            &[
                (CORRELATION_ID, "c"),
                (REPLY_TO, TASK_TRIAGE_REPLIES),
                (DEADLINE, later),
            ],
            "not json",
        );
        assert!(matches!(read(&r, now), Read::Invalid(_)));
    }
}
