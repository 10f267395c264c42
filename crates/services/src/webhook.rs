//! Delivers notifications to an HTTP endpoint: one `POST` per notification,
//! JSON body, with the notification's stable id as the `Idempotency-Key`
//! header, so a receiver can drop the repeats that at-least-once delivery
//! brings (a crash between the POST and the record, a rebalance).

use std::time::Duration;

use async_trait::async_trait;
use taskstream_store::NotificationRecord;

use crate::{NotificationSink, SinkError};

/// POSTs each notification to one URL.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
}

impl WebhookSink {
    /// A sink for `url` (http only), giving up on a request after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let url = url.trim();
        match url.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", _)) => {
                return Err(
                    "https webhooks are not supported yet; use http:// (e.g. a sidecar or an in-cluster service)"
                        .into(),
                )
            }
            _ => return Err(format!("expected a webhook URL such as http://127.0.0.1:9000/notify, got {url:?}")),
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
        })
    }
}

#[async_trait]
impl NotificationSink for WebhookSink {
    fn channel(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), SinkError> {
        let body = serde_json::json!({
            "id": n.id,
            "event_id": n.event_id,
            "event_type": n.event_type,
            "task_id": n.task_id,
            "kind": n.kind,
            "recipient": n.recipient,
            "message": n.message,
            "sent_at": n.sent_at,
        });
        let response = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", n.id.to_string())
            .json(&body)
            .send()
            .await
            .map_err(|e| SinkError::transient(format!("POST {}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("POST {} answered {status}", self.url);
        // Overload and server trouble pass; any other refusal will not.
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(SinkError::transient(message))
        } else {
            Err(SinkError::permanent(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_accepted() {
        let timeout = Duration::from_secs(1);
        assert!(WebhookSink::new("http://127.0.0.1:9000/notify", timeout).is_ok());
        assert!(WebhookSink::new("https://example.com", timeout)
            .unwrap_err()
            .contains("https"));
        assert!(WebhookSink::new("example.com/notify", timeout)
            .unwrap_err()
            .contains("expected a webhook URL"));
    }
}
