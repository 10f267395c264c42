//! Connection settings shared by every client.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::connectivity::{Connectivity, REACHABILITY_INTERVAL};
use crate::StatsListener;

/// librdkafka properties whose values must never be logged.
const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
];

/// Where the Kafka cluster is, plus any extra librdkafka properties
/// (`security.protocol`, `sasl.mechanism`, ...). `Debug` redacts secrets.
///
/// The clients made from one configuration and its clones report broker
/// outages together: one line when a broker becomes unreachable, a summary
/// now and then, one line when it answers again (see `connectivity.rs`).
#[derive(Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub properties: BTreeMap<String, String>,
    /// Receives every client's statistics, when set.
    pub stats: Option<(StatsListener, Duration)>,
    pub(crate) connectivity: Arc<Connectivity>,
}

impl KafkaConfig {
    /// A plaintext connection to `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            stats: None,
            connectivity: Arc::new(Connectivity::new(false)),
        }
    }

    /// Logs nothing about unreachable brokers: for one-shot commands, which
    /// report a cluster that does not answer in their own error (see
    /// [`crate::wait_for_cluster`]).
    pub fn quiet(mut self) -> Self {
        self.connectivity = Arc::new(Connectivity::new(true));
        self
    }

    /// Sends each client's statistics to `listener` every `interval`.
    pub fn with_stats(mut self, listener: StatsListener, interval: Duration) -> Self {
        self.stats = Some((listener, interval));
        self
    }

    /// Adds a librdkafka property.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Statistics also tell the connectivity log that a broker answers.
        let interval = self
            .stats
            .as_ref()
            .map_or(REACHABILITY_INTERVAL, |(_, interval)| *interval);
        config.set(
            "statistics.interval.ms",
            interval.as_millis().max(1).to_string(),
        );
        config
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET_KEYS.contains(&k.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &props)
            .field("stats", &self.stats.as_ref().map(|(_, interval)| interval))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let config = KafkaConfig::new("k:9092")
            .with("sasl.username", "relay")
            .with("sasl.password", "hunter2");
        let shown = format!("{config:?}");
        assert!(shown.contains("relay"));
        assert!(!shown.contains("hunter2"));
    }
}
