//! A thin, caching client for the Confluent Schema Registry REST API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered 5xx: try again later.
    #[error("schema registry unavailable at {url}: {message}")]
    Unavailable { url: String, message: String },
    /// The registry refused the request (incompatible or invalid schema,
    /// unknown id...): retrying the same request cannot help.
    #[error("schema registry refused the request ({status}, error {code}): {message}")]
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
    /// The registry returned a schema this client cannot parse.
    #[error("schema {id} from the registry does not parse: {message}")]
    BadSchema { id: u32, message: String },
}

impl RegistryError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    message: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

/// Registers schemas and fetches them by id, caching both: after the first
/// call for a subject or id, no request is made, so a registry outage does
/// not stop producers and consumers that already know their schemas.
#[derive(Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

fn encode_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How a schema the registry may take was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Compatible with the versions the subject's level covers.
    Compatible,
    /// The registry has no version under the subject: nothing to compare
    /// with. A new event type, or a renamed one (a new name is a new
    /// subject to the registry and a new type to readers).
    NewSubject,
}

impl RegistryClient {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS-free settings builds");
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            ids: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
        }
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let unavailable = |message: String| RegistryError::Unavailable {
            url: self.base.clone(),
            message,
        };
        let response = request
            .header("accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| unavailable(format!("unexpected answer: {e}")));
        }
        // Timeouts and rate limits pass; so do server errors.
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            return Err(unavailable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        Err(RegistryError::Refused {
            status: status.as_u16(),
            code: error
                .as_ref()
                .map_or(status.as_u16() as i64, |e| e.error_code),
            message: error.map_or_else(
                || String::from_utf8_lossy(&body).into_owned(),
                |e| e.message,
            ),
        })
    }

    /// Registers `schema` under `subject` (or finds it there) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.ids.lock().expect("id cache poisoned").get(&key) {
            return Ok(*id);
        }
        let url = format!(
            "{}/subjects/{}/versions",
            self.base,
            encode_segment(subject)
        );
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let request = self
            .http
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string());
        let IdBody { id } = self.call(request).await?;
        self.ids.lock().expect("id cache poisoned").insert(key, id);
        Ok(id)
    }

    /// The schema with `id`.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(schema) = self.schemas.lock().expect("schema cache poisoned").get(&id) {
            return Ok(Arc::clone(schema));
        }
        let request = self.http.get(format!("{}/schemas/ids/{id}", self.base));
        let SchemaBody { schema } = self.call(request).await?;
        let parsed =
            Arc::new(
                Schema::parse_str(&schema).map_err(|e| RegistryError::BadSchema {
                    id,
                    message: e.to_string(),
                })?,
            );
        self.schemas
            .lock()
            .expect("schema cache poisoned")
            .insert(id, Arc::clone(&parsed));
        Ok(parsed)
    }

    /// Checks the registry answers (`GET /subjects`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.call::<serde_json::Value>(self.http.get(format!("{}/subjects", self.base)))
            .await
            .map(|_| ())
    }

    /// Whether `schema` may be registered under `subject` next, as the
    /// registry's configured compatibility level judges it (against all the
    /// versions the level covers); the reasons when it may not. A subject
    /// that does not exist yet accepts anything: [`Checked::NewSubject`].
    pub async fn check(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<Checked, Vec<String>>, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        // Every version the subject's level covers, as registering would check.
        let url = format!(
            "{}/compatibility/subjects/{}/versions?verbose=true",
            self.base,
            encode_segment(subject)
        );
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let request = self
            .http
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string());
        match self.call::<Answer>(request).await {
            Ok(a) if a.is_compatible => Ok(Ok(Checked::Compatible)),
            Ok(a) => Ok(Err(a.messages)),
            Err(RegistryError::Refused { code: 40401, .. }) => Ok(Ok(Checked::NewSubject)),
            Err(e) => Err(e),
        }
    }
}
