//! `endpoints.json`: where a running `taskstream up` announced its
//! components, so that `lag`, `dlq` and extra component processes started
//! with the same `--data-dir` find them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::kafka::check_bootstrap;

/// The file, inside the data directory, that lists the endpoints.
pub const ENDPOINTS_FILE: &str = "endpoints.json";

/// The endpoints of a running `taskstream up`. Field order is the file's
/// key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The HTTP server, `http://HOST:PORT`.
    pub http: String,
    /// The Kafka bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub kafka: String,
    /// `true` when `kafka` is the embedded mock cluster (`--dev-broker
    /// mock`), whose consumers need dev-only timings; taskstream's own
    /// broker is `false`: its consumers use the normal ones.
    #[serde(default)]
    pub kafka_is_dev_broker: bool,
    /// The schema registry, `http://HOST:PORT`, when events are Avro.
    #[serde(
        rename = "schema-registry",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_registry: Option<String>,
}

impl Endpoints {
    /// The endpoints file of `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(ENDPOINTS_FILE)
    }

    /// The endpoints a `taskstream up` in `data_dir` announced: `None` when
    /// there is no endpoints file; an error of one line when it cannot be
    /// read or is corrupt, saying which and why.
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Self::parse(&bytes)
            .map(Some)
            .map_err(|why| anyhow::anyhow!("{} is corrupt{why}", path.display()))
    }

    /// Parses and validates the file's content; the error completes
    /// "`<path>` is corrupt".
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        const REWRITTEN: &str = "a running `taskstream up` rewrites it when it starts";
        let value = serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| format!(" ({e}); {REWRITTEN}"))?;
        if !value.is_object() {
            return Err(": expected the JSON object `taskstream up` writes".to_owned());
        }
        let endpoints =
            serde_json::from_value::<Self>(value).map_err(|e| format!(" ({e}); {REWRITTEN}"))?;
        endpoints
            .validate()
            .map_err(|e| format!(" ({e}); {REWRITTEN}"))?;
        Ok(endpoints)
    }

    /// Each address has the shape its clients need.
    fn validate(&self) -> Result<(), String> {
        check_bootstrap(&self.kafka).map_err(|e| format!("kafka: {e}"))?;
        let urls = std::iter::once(("http", &self.http)).chain(
            self.schema_registry
                .iter()
                .map(|url| ("schema-registry", url)),
        );
        for (name, url) in urls {
            if url.strip_prefix("http://").is_none_or(str::is_empty) {
                return Err(format!("{name}: expected an http:// URL, got {url:?}"));
            }
        }
        Ok(())
    }

    /// Writes the file into `data_dir`, replacing any earlier one.
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir);
        let bytes = serde_json::to_vec_pretty(self)?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Name → address, as `taskstream up` prints them: `http`, `kafka`,
    /// then `schema-registry` when there is one.
    pub fn named(&self) -> Vec<(&'static str, String)> {
        let mut named = vec![("http", self.http.clone()), ("kafka", self.kafka.clone())];
        if let Some(url) = &self.schema_registry {
            named.push(("schema-registry", url.clone()));
        }
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(registry: Option<&str>) -> Endpoints {
        Endpoints {
            http: "http://127.0.0.1:8080".into(),
            kafka: "127.0.0.1:39137".into(),
            kafka_is_dev_broker: true,
            schema_registry: registry.map(str::to_owned),
        }
    }

    #[test]
    fn the_file_up_writes_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for written in [endpoints(Some("http://127.0.0.1:8081")), endpoints(None)] {
            written.write(dir.path()).unwrap();
            assert_eq!(Endpoints::read(dir.path()).unwrap(), Some(written));
        }
    }

    #[test]
    fn the_file_keeps_its_keys_in_the_order_it_always_had() {
        let text = serde_json::to_string(&endpoints(Some("http://127.0.0.1:8081"))).unwrap();
        assert_eq!(
            text,
            r#"{"http":"http://127.0.0.1:8080","kafka":"127.0.0.1:39137","kafka_is_dev_broker":true,"schema-registry":"http://127.0.0.1:8081"}"#
        );
    }

    #[test]
    fn no_file_is_no_endpoints_and_a_bad_file_is_corrupt_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Endpoints::read(dir.path()).unwrap(), None);
        for (content, says) in [
            ("{\"kafka\": \"127.0.0.1:9", "EOF while parsing"),
            ("[1, 2]", "expected the JSON object"),
            (r#"{"http": "http://a:1"}"#, "missing field `kafka`"),
            (
                r#"{"http": "http://a:1", "kafka": "http://a:9092"}"#,
                "invalid --kafka-bootstrap",
            ),
            (r#"{"http": "a:1", "kafka": "a:9092"}"#, "http: expected"),
            (
                r#"{"http": "http://a:1", "kafka": "a:9092", "schema-registry": 7}"#,
                "invalid type",
            ),
        ] {
            std::fs::write(dir.path().join(ENDPOINTS_FILE), content).unwrap();
            let error = format!("{:#}", Endpoints::read(dir.path()).unwrap_err());
            assert!(
                error.contains("endpoints.json is corrupt") && error.contains(says),
                "{content}: {error}"
            );
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }
}
