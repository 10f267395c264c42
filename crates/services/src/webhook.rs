//! Delivers notifications to an HTTP endpoint: one `POST` per notification,
//! JSON body, with the notification's stable id as the `Idempotency-Key`
//! header, so a receiver can drop the repeats that at-least-once delivery
//! brings (a crash between the POST and the record, a rebalance).

use std::time::Duration;

use async_trait::async_trait;
use taskstream_store::NotificationRecord;

use crate::{HandleError, NotificationSink};

/// POSTs each notification to one URL.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    /// The URL without user information or query (which may carry a
    /// token), for logs, errors and dead-letter headers.
    shown: String,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.shown)
            .finish()
    }
}

/// `url` without user information, query or fragment.
fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('/') {
        Some((authority, path)) => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{host}/{path}")
        }
        None => rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_owned(),
    };
    format!("{scheme}://{rest}")
}

/// Statuses that say the notification itself is unacceptable: sending it
/// again cannot help. Everything else — 5xx, 408, 429, but also 401, 403,
/// 404, 409 (a retry racing its first attempt under an idempotency key) and
/// redirects, which a receiver's deployment or configuration can fix — is
/// retried, holding the partition.
const REFUSALS: [u16; 8] = [400, 405, 410, 411, 413, 414, 415, 422];

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
            _ => {
                return Err(format!(
                    "expected a webhook URL such as http://127.0.0.1:9000/notify, got {:?}",
                    shown_url(url)
                ))
            }
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirected POST becomes a GET without a body: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            shown: shown_url(url),
        })
    }
}

#[async_trait]
impl NotificationSink for WebhookSink {
    fn channel(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, n: &NotificationRecord) -> Result<(), HandleError> {
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
            .map_err(|e| {
                let e = e.without_url();
                HandleError::Transient {
                    message: format!("POST {}: {e}", self.shown),
                    source: Some(Box::new(e)),
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("POST {} answered {status}", self.shown);
        if REFUSALS.contains(&status.as_u16()) {
            Err(HandleError::permanent(message))
        } else {
            Err(HandleError::transient(message))
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

    #[test]
    fn tokens_in_the_url_stay_out_of_messages() {
        assert_eq!(
            shown_url("http://user:secret@hooks:9000/notify?token=abc#x"),
            "http://hooks:9000/notify"
        );
        assert_eq!(
            shown_url("http://hooks:9000?token=abc"),
            "http://hooks:9000"
        );
        let sink = WebhookSink::new("http://hooks/n?token=abc", Duration::from_secs(1)).unwrap();
        assert!(!format!("{sink:?}").contains("abc"));
    }
}
