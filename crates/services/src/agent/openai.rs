//! A [`TriageModel`] behind any OpenAI-compatible chat-completions
//! endpoint (`POST {url}/chat/completions`), asked for a JSON object.
//!
//! The reply's message content must be a JSON object with these fields and
//! no others:
//! `{"priority": "low"|"medium"|"high"|null, "assignee": string|null,
//! "due_at": RFC 3339|null, "confidence": 0-100, "rationale": string}`,
//! alone, or alone inside one Markdown code fence (`` ```json `` or
//! `` ``` ``), as models often wrap it; nothing may come before or after.
//! Anything else is [`ModelError::Unparsable`] (dead-lettered, not retried).
//!
//! A request that times out, cannot connect, or is answered 429 or 5xx is
//! retried with backoff, up to the configured number of retries; then the
//! model is [`ModelError::Unavailable`]. Every attempt counts against a
//! budget of requests per minute (a sliding window); with none left the
//! model answers [`ModelError::BudgetExhausted`] at once instead of
//! waiting, so the budget bounds spending even while events pile up (the
//! agent), or, with [`OpenAiSettings::wait_for_rate`], waits until the
//! window has room (a replay, which has nothing else to do). A total of
//! requests ([`OpenAiSettings::max_requests`]) may bound them all: once it
//! is spent, the model answers [`ModelError::RequestLimitReached`] without
//! asking.
//!
//! The API key is sent as `Authorization: Bearer ...` and appears in no
//! log, error or `Debug` output.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use taskstream_domain::Priority;
use tokio::time::Instant;

use super::model::{ModelError, Triage, TriageInput, TriageModel};
use crate::Backoff;

/// What the model is told.
const INSTRUCTIONS: &str = "You triage tasks. Given a task's title, description and creation time, \
answer with one JSON object: {\"priority\": \"low\"|\"medium\"|\"high\"|null, \"assignee\": string|null, \
\"due_at\": RFC 3339 date-time|null, \"confidence\": integer 0-100, \"rationale\": one sentence}. \
Use null where you have no opinion.";

/// How to reach the endpoint, and how much it may be asked.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// The API's base URL; requests go to `{url}/chat/completions`.
    pub url: String,
    /// The model to ask for (the request's `model`).
    pub model: String,
    /// Sent as a bearer token when given.
    pub api_key: Option<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts after the first one for transient failures.
    pub retries: u32,
    /// The most attempts in any 60 seconds.
    pub max_requests_per_minute: u32,
    /// With the minute's attempts spent: wait for the window to have room
    /// (true), or answer [`ModelError::BudgetExhausted`] at once (false).
    pub wait_for_rate: bool,
    /// The most attempts in all, over the model's life; `None`: no limit.
    pub max_requests: Option<u64>,
    /// The first pause between attempts (it doubles, with jitter).
    pub initial_backoff: Duration,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_requests_per_minute", &self.max_requests_per_minute)
            .field("wait_for_rate", &self.wait_for_rate)
            .field("max_requests", &self.max_requests)
            .finish()
    }
}

/// The chat-completions model.
pub struct OpenAiModel {
    client: reqwest::Client,
    settings: OpenAiSettings,
    endpoint: String,
    /// When each attempt of the last minute was made, and how many were
    /// made in all.
    spent: Mutex<Spent>,
}

#[derive(Default)]
struct Spent {
    last_minute: VecDeque<Instant>,
    total: u64,
}

/// One failed attempt: whether another may help.
enum Attempt {
    Retry(String),
    Fail(ModelError),
}

impl OpenAiModel {
    pub fn new(settings: OpenAiSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the model's HTTP client: {e}"))?;
        let endpoint = format!("{}/chat/completions", settings.url.trim_end_matches('/'));
        Ok(Self {
            client,
            settings,
            endpoint,
            spent: Mutex::default(),
        })
    }

    /// How many requests the model has made.
    pub fn requests_made(&self) -> u64 {
        self.spent.lock().expect("never poisoned").total
    }

    /// Takes one request from the budgets (waiting for the minute's window
    /// to have room when the settings say so), or says which is spent.
    async fn spend(&self) -> Result<(), ModelError> {
        const WINDOW: Duration = Duration::from_secs(60);
        loop {
            let wait = {
                let now = Instant::now();
                let mut spent = self.spent.lock().expect("never poisoned");
                if let Some(max) = self.settings.max_requests {
                    if spent.total >= max {
                        return Err(ModelError::RequestLimitReached(format!(
                            "{max} requests in all"
                        )));
                    }
                }
                while spent
                    .last_minute
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    spent.last_minute.pop_front();
                }
                match spent.last_minute.front() {
                    Some(oldest)
                        if spent.last_minute.len()
                            >= self.settings.max_requests_per_minute as usize =>
                    {
                        if !self.settings.wait_for_rate {
                            return Err(ModelError::BudgetExhausted(format!(
                                "{} requests per minute",
                                self.settings.max_requests_per_minute
                            )));
                        }
                        WINDOW - now.duration_since(*oldest)
                    }
                    _ => {
                        spent.last_minute.push_back(now);
                        spent.total += 1;
                        return Ok(());
                    }
                }
            };
            tracing::debug!(target: "agent", wait = ?wait, "the model's requests per minute are spent; waiting");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<Triage, Attempt> {
        let mut request = self.client.post(&self.endpoint).json(body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            Attempt::Retry(if e.is_timeout() {
                format!("no answer within {:?}", self.settings.timeout)
            } else {
                format!("cannot reach {}: {}", self.endpoint, e.without_url())
            })
        })?;
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Attempt::Retry(format!("the endpoint answered {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fail(ModelError::Unavailable(format!(
                "the endpoint answered {status}"
            ))));
        }
        let body = response.bytes().await.map_err(|e| {
            Attempt::Retry(format!("reading the answer failed: {}", e.without_url()))
        })?;
        parse_completion(&body).map_err(|e| Attempt::Fail(ModelError::Unparsable(e)))
    }
}

#[async_trait]
impl TriageModel for OpenAiModel {
    fn name(&self) -> &str {
        &self.settings.model
    }

    async fn triage(&self, input: &TriageInput) -> Result<Triage, ModelError> {
        let task = json!({
            "title": input.title,
            "description": input.description,
            "created_at": input.created_at,
        });
        let body = json!({
            "model": self.settings.model,
            "temperature": 0,
            "response_format": { "type": "json_object" },
            "messages": [
                { "role": "system", "content": INSTRUCTIONS },
                { "role": "user", "content": task.to_string() },
            ],
        });
        let mut backoff = Backoff::new(self.settings.initial_backoff, Duration::from_secs(10));
        let mut last = String::new();
        for attempt in 0..=self.settings.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            self.spend().await?;
            match self.attempt(&body).await {
                Ok(triage) => return Ok(triage),
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry(why)) => {
                    tracing::debug!(target: "agent", attempt, why, "the model failed; retrying");
                    last = why;
                }
            }
        }
        Err(ModelError::Unavailable(format!(
            "{last} (after {} attempts)",
            self.settings.retries + 1
        )))
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    assignee: Option<String>,
    #[serde(default)]
    due_at: Option<String>,
    confidence: serde_json::Number,
    #[serde(default)]
    rationale: Option<String>,
}

/// The suggestion in a chat-completions response body.
fn parse_completion(body: &[u8]) -> Result<Triage, String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("not a chat completion: {e}"))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or("the completion has no message content")?;
    let answer: Answer = serde_json::from_str(unfenced(&content))
        .map_err(|e| format!("the content is not the suggestion object: {e}"))?;
    let priority = answer
        .priority
        .map(|p| Priority::parse(&p.to_lowercase()).ok_or(format!("priority {p:?}")))
        .transpose()?;
    let assignee = answer
        .assignee
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    if assignee.as_ref().is_some_and(|a| a.chars().count() > 100) {
        return Err("an assignee longer than 100 characters".into());
    }
    let due_at = answer
        .due_at
        .map(|d| {
            DateTime::parse_from_rfc3339(&d)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| format!("due_at {d:?} is not RFC 3339"))
        })
        .transpose()?;
    let confidence = match answer.confidence.as_f64() {
        // A probability, as some models answer.
        Some(c) if (0.0..=1.0).contains(&c) && !answer.confidence.is_u64() => c * 100.0,
        Some(c) if (0.0..=100.0).contains(&c) => c,
        _ => return Err(format!("confidence {} is not 0 to 100", answer.confidence)),
    };
    Ok(Triage {
        priority,
        assignee,
        due_at,
        confidence: confidence.round() as u8,
        rationale: answer.rationale.unwrap_or_default(),
    })
}

/// The content without the one code fence wrapping all of it, if it is
/// so wrapped (an opening `` ``` `` or `` ```json `` line, a closing
/// `` ``` ``); otherwise the content as it is, to be parsed (and refused if
/// anything surrounds the object).
fn unfenced(content: &str) -> &str {
    let content = content.trim();
    let fenced = content
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
        .and_then(|inner| inner.split_once('\n'))
        // A second fence, or text after the object, stays in the body for
        // the JSON parser to refuse; a ``` inside a string of the object is
        // just text.
        .filter(|(info, _)| {
            let info = info.trim();
            info.is_empty() || info.eq_ignore_ascii_case("json")
        });
    match fenced {
        Some((_, body)) => body.trim(),
        None => content,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::{Json, Router};

    use super::*;

    /// What the test endpoint does with each request.
    #[derive(Clone, Copy)]
    enum Behaviour {
        Answer,
        Garbage,
        FailTwiceThenAnswer,
        Slow,
        Refuse,
    }

    #[derive(Clone)]
    struct Endpoint {
        behaviour: Behaviour,
        calls: Arc<AtomicU32>,
        keys: Arc<Mutex<Vec<String>>>,
    }

    fn completion(content: &str) -> serde_json::Value {
        json!({ "id": "c1", "object": "chat.completion",
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": content } }] })
    }

    async fn complete(
        State(e): State<Endpoint>,
        headers: HeaderMap,
        Json(body): Json<serde_json::Value>,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        let call = e.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(key) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
            e.keys.lock().unwrap().push(key.to_owned());
        }
        assert_eq!(body["response_format"]["type"], "json_object");
        let user = body["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let good = completion(&format!(
            r#"{{"priority":"high","assignee":"ana","due_at":"2026-12-04T17:00:00Z","confidence":0.85,"rationale":"{}"}}"#,
            if user.contains("database") {
                "database work"
            } else {
                "other"
            }
        ));
        match e.behaviour {
            Behaviour::Answer => Ok(Json(good)),
            Behaviour::Garbage => Ok(Json(completion("Sure! Here is what I think: high."))),
            Behaviour::FailTwiceThenAnswer if call < 2 => Err(StatusCode::SERVICE_UNAVAILABLE),
            Behaviour::FailTwiceThenAnswer => Ok(Json(good)),
            Behaviour::Slow => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Json(good))
            }
            Behaviour::Refuse => Err(StatusCode::UNAUTHORIZED),
        }
    }

    /// Serves the behaviour on 127.0.0.1:0; returns the base URL and the endpoint's memory.
    async fn serve(behaviour: Behaviour) -> (String, Endpoint) {
        let endpoint = Endpoint {
            behaviour,
            calls: Arc::default(),
            keys: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/v1"), endpoint)
    }

    fn model(url: &str) -> OpenAiModel {
        OpenAiModel::new(OpenAiSettings {
            url: url.to_owned(),
            model: "test-model".into(),
            api_key: Some("sk-secret-key".into()),
            timeout: Duration::from_millis(500),
            retries: 2,
            max_requests_per_minute: 100,
            wait_for_rate: false,
            max_requests: None,
            initial_backoff: Duration::from_millis(10),
        })
        .unwrap()
    }

    fn input() -> TriageInput {
        TriageInput {
            title: "database down".into(),
            description: None,
            created_at: "2026-12-02T09:30:00Z".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_json_answer_becomes_the_suggestion_and_the_key_is_sent_as_a_bearer_token() {
        let (url, endpoint) = serve(Behaviour::Answer).await;
        let triage = model(&url).triage(&input()).await.unwrap();
        assert_eq!(triage.priority, Some(Priority::High));
        assert_eq!(triage.assignee.as_deref(), Some("ana"));
        assert_eq!(
            triage.due_at.unwrap().to_rfc3339(),
            "2026-12-04T17:00:00+00:00"
        );
        assert_eq!(triage.confidence, 85);
        assert_eq!(triage.rationale, "database work");
        assert_eq!(*endpoint.keys.lock().unwrap(), ["Bearer sk-secret-key"]);
    }

    #[tokio::test]
    async fn a_garbage_reply_is_unparsable_and_not_retried() {
        let (url, endpoint) = serve(Behaviour::Garbage).await;
        let error = model(&url).triage(&input()).await.unwrap_err();
        assert!(matches!(error, ModelError::Unparsable(_)), "{error}");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_retried_with_backoff_until_an_answer_comes() {
        let (url, endpoint) = serve(Behaviour::FailTwiceThenAnswer).await;
        let triage = model(&url).triage(&input()).await.unwrap();
        assert_eq!(triage.priority, Some(Priority::High));
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_slow_endpoint_times_out_on_every_attempt_and_the_model_is_unavailable() {
        let (url, endpoint) = serve(Behaviour::Slow).await;
        let error = model(&url).triage(&input()).await.unwrap_err();
        assert!(matches!(error, ModelError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("after 3 attempts"), "{error}");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 3);
        assert!(!error.to_string().contains("sk-secret-key"));
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_the_key_appears_in_no_error_or_debug_output() {
        let (url, endpoint) = serve(Behaviour::Refuse).await;
        let m = model(&url);
        let error = m.triage(&input()).await.unwrap_err();
        assert!(error.to_string().contains("401"), "{error}");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        assert!(!format!("{error:?}").contains("sk-secret-key"));
        assert!(!format!("{:?}", m.settings).contains("sk-secret-key"));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_after_its_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        drop(listener);
        let error = model(&url).triage(&input()).await.unwrap_err();
        assert!(matches!(error, ModelError::Unavailable(_)), "{error}");
    }

    #[tokio::test]
    async fn a_spent_budget_answers_at_once_without_asking_the_endpoint() {
        let (url, endpoint) = serve(Behaviour::Answer).await;
        let m = OpenAiModel::new(OpenAiSettings {
            max_requests_per_minute: 1,
            ..model(&url).settings
        })
        .unwrap();
        m.triage(&input()).await.unwrap();
        let error = m.triage(&input()).await.unwrap_err();
        assert!(matches!(error, ModelError::BudgetExhausted(_)), "{error}");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_total_of_requests_is_never_exceeded_even_by_retries() {
        let (url, endpoint) = serve(Behaviour::FailTwiceThenAnswer).await;
        let m = OpenAiModel::new(OpenAiSettings {
            max_requests: Some(2),
            ..model(&url).settings
        })
        .unwrap();
        // Two failed attempts spend the total before the third would answer.
        let error = m.triage(&input()).await.unwrap_err();
        assert!(
            matches!(error, ModelError::RequestLimitReached(_)),
            "{error}"
        );
        assert!(error.to_string().contains("2 requests in all"), "{error}");
        let error = m.triage(&input()).await.unwrap_err();
        assert!(
            matches!(error, ModelError::RequestLimitReached(_)),
            "{error}"
        );
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        assert_eq!(m.requests_made(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_that_waits_for_its_rate_spaces_requests_a_minute_apart() {
        let m = OpenAiModel::new(OpenAiSettings {
            max_requests_per_minute: 2,
            wait_for_rate: true,
            ..model("http://127.0.0.1:9/v1").settings
        })
        .unwrap();
        let start = Instant::now();
        m.spend().await.unwrap();
        m.spend().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The third waits (on the paused clock) until the first is a minute old.
        m.spend().await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(60));
        assert_eq!(m.requests_made(), 3);
        // Without waiting, the same budget answers at once.
        let hasty = OpenAiModel::new(OpenAiSettings {
            wait_for_rate: false,
            ..m.settings.clone()
        })
        .unwrap();
        hasty.spend().await.unwrap();
        hasty.spend().await.unwrap();
        assert!(matches!(
            hasty.spend().await,
            Err(ModelError::BudgetExhausted(_))
        ));
    }

    #[test]
    fn replies_that_are_not_a_suggestion_object_are_refused() {
        let parse = |content: &str| parse_completion(completion(content).to_string().as_bytes());
        assert!(parse(r#"{"priority":"urgent","confidence":50}"#).is_err());
        assert!(parse(r#"{"priority":"high","confidence":150}"#).is_err());
        assert!(parse(r#"{"priority":"high"}"#).is_err());
        assert!(parse(r#"{"due_at":"friday","confidence":50}"#).is_err());
        assert!(parse(r#"{"confidence":50,"mood":"happy"}"#).is_err());
        assert!(parse_completion(b"{}").is_err());
        let ok = parse(r#"{"priority":"LOW","assignee":null,"confidence":40}"#).unwrap();
        assert_eq!((ok.priority, ok.confidence), (Some(Priority::Low), 40));
    }

    fn parse(content: &str) -> Result<Triage, String> {
        parse_completion(completion(content).to_string().as_bytes())
    }

    const OBJECT: &str = r#"{"priority":"high","assignee":"ana","confidence":80,"rationale":"r"}"#;

    #[test]
    fn a_suggestion_object_with_a_field_it_does_not_define_is_refused() {
        for extra in [
            r#""mood":"happy""#,
            r#""Priority":"low""#,
            r#""reasoning":"because""#,
            r#""confidence_pct":80"#,
        ] {
            let content = format!(r#"{{"priority":"high","confidence":80,{extra}}}"#);
            let error = parse(&content).unwrap_err();
            assert!(error.contains("unknown field"), "{content}: {error}");
            let fenced = format!("```json\n{content}\n```");
            assert!(parse(&fenced).unwrap_err().contains("unknown field"));
        }
    }

    #[test]
    fn a_reply_wrapped_in_one_json_code_fence_is_read() {
        for content in [
            format!("```json\n{OBJECT}\n```"),
            format!("```JSON\n{OBJECT}\n```"),
            format!("```\n{OBJECT}\n```"),
            format!("  \n```json\n  {OBJECT}  \n```\n "),
            format!("```json\r\n{OBJECT}\r\n```"),
            "```json\n{\n  \"priority\": \"high\",\n  \"assignee\": \"ana\",\n  \"confidence\": 80,\n  \"rationale\": \"r\"\n}\n```".to_owned(),
            // A fence inside a string of the object is text, not a second fence.
            "```json\n{\"priority\": \"high\", \"assignee\": \"ana\", \"confidence\": 80, \"rationale\": \"the log shows ``` marks\"}\n```".to_owned(),
        ] {
            let triage = parse(&content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
            assert_eq!(
                (triage.priority, triage.assignee.as_deref(), triage.confidence),
                (Some(Priority::High), Some("ana"), 80),
                "{content:?}"
            );
        }
    }

    #[test]
    fn anything_around_the_object_or_its_fence_is_refused() {
        for content in [
            format!("Here is my suggestion:\n```json\n{OBJECT}\n```"),
            format!("```json\n{OBJECT}\n```\nHope this helps!"),
            format!("Sure! {OBJECT}"),
            format!("{OBJECT} Let me know."),
            format!("```python\n{OBJECT}\n```"),
            format!("```json {OBJECT}```"),
            format!("```json\n{OBJECT}"),
            format!("```json\n{OBJECT}\n```\n```json\n{OBJECT}\n```"),
            format!("```json\n{OBJECT}\n``` ```"),
            format!("`{OBJECT}`"),
        ] {
            assert!(parse(&content).is_err(), "{content:?} was accepted");
        }
    }
}
