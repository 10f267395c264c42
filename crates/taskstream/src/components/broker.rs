//! The embedded Kafka-protocol broker `up` and `dev-broker` start when no
//! cluster is configured, with the declared topics.
//!
//! Two engines: taskstream's own broker (`taskstream-broker`, the default),
//! which keeps topics, records and group offsets on disk, and librdkafka's
//! mock cluster, memory only, kept for what needs its fault injection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_broker::{Broker, BrokerConfig, FlushPolicy, RunningBroker};
use taskstream_kafka::{apply_topics, DevBroker, KafkaConfig};
use taskstream_services::topics::declared_topics;

use super::{Checks, KafkaCheck};

/// Which broker runs when no cluster is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DevBrokerKind {
    /// taskstream's own broker: data on disk, transactions, admin API.
    #[default]
    Taskstream,
    /// librdkafka's mock cluster: memory only, drops data beyond ~5 MiB per
    /// partition; for fault injection (`broker_down`, injected errors).
    Mock,
}

/// The subdirectory of a data directory holding the broker's files.
pub const BROKER_DIR: &str = "broker";

/// Starts the mock cluster with the declared topics (one replica each).
/// Its address is [`DevBroker::bootstrap_servers`]; stop it with
/// [`DevBroker::shutdown`] after the clients that use it.
pub fn dev_broker() -> anyhow::Result<DevBroker> {
    DevBroker::start(&declared_topics(1)).context("cannot start the dev broker")
}

/// Where and how the embedded broker runs.
#[derive(Debug, Clone)]
pub struct EmbeddedBrokerSettings {
    pub kind: DevBrokerKind,
    /// Where taskstream's broker keeps its files; `None` uses a fresh
    /// temporary directory, removed when the broker stops.
    pub data_dir: Option<PathBuf>,
    /// Where taskstream's broker listens (the mock always picks a port).
    pub listen: std::net::SocketAddr,
    /// When taskstream's broker fsyncs.
    pub flush: FlushPolicy,
}

impl EmbeddedBrokerSettings {
    /// taskstream's broker with its defaults, keeping its data in `data_dir`.
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        Self {
            kind: DevBrokerKind::default(),
            data_dir,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            flush: BrokerConfig::new("").flush,
        }
    }
}

/// A running embedded broker. Stop it with [`EmbeddedBroker::shutdown`]
/// after the clients that use it.
pub struct EmbeddedBroker {
    engine: Engine,
    bootstrap: String,
    /// A temporary data directory to remove when the broker stops.
    scratch: Option<PathBuf>,
}

enum Engine {
    Own(RunningBroker),
    Mock(DevBroker),
}

impl EmbeddedBroker {
    /// Starts the broker `settings` name and creates the declared topics
    /// that do not exist yet, with their configs.
    pub async fn start(settings: &EmbeddedBrokerSettings) -> anyhow::Result<Self> {
        if settings.kind == DevBrokerKind::Mock {
            let mock = dev_broker()?;
            return Ok(Self {
                bootstrap: mock.bootstrap_servers().to_owned(),
                engine: Engine::Mock(mock),
                scratch: None,
            });
        }
        let (dir, scratch) = match &settings.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("taskstream-dev-broker-{}", uuid::Uuid::new_v4()));
                (dir.clone(), Some(dir))
            }
        };
        let mut config = BrokerConfig::new(&dir);
        config.listen = settings.listen;
        config.flush = settings.flush;
        let broker = tokio::task::spawn_blocking(move || Broker::start(config))
            .await
            .context("the broker's start panicked")?
            .with_context(|| format!("cannot start the broker in {}", dir.display()))?;
        let running = Self {
            bootstrap: broker.addr().to_string(),
            engine: Engine::Own(broker),
            scratch,
        };
        apply_topics(
            &KafkaConfig::new(&running.bootstrap),
            &declared_topics(1),
            Duration::from_secs(30),
        )
        .await
        .context("cannot create the declared topics on the broker")?;
        Ok(running)
    }

    /// `bootstrap.servers` for the clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Its readiness: the declared topic takes events (see [`KafkaCheck`]).
    pub fn readiness_checks(&self) -> Checks {
        vec![Arc::new(KafkaCheck::new(&KafkaConfig::new(
            &self.bootstrap,
        )))]
    }

    /// The mock cluster, for fault injection, when that is the engine.
    pub fn mock(&self) -> Option<&DevBroker> {
        match &self.engine {
            Engine::Mock(mock) => Some(mock),
            Engine::Own(_) => None,
        }
    }

    /// Which engine runs.
    pub fn kind(&self) -> DevBrokerKind {
        match self.engine {
            Engine::Mock(_) => DevBrokerKind::Mock,
            Engine::Own(_) => DevBrokerKind::Taskstream,
        }
    }

    /// Stops the broker: taskstream's fsyncs its logs and releases its
    /// data directory (removing a temporary one); the mock is given
    /// `mock_grace` to close.
    pub fn shutdown(self, mock_grace: Duration) {
        match self.engine {
            Engine::Mock(mock) => mock.shutdown(mock_grace),
            Engine::Own(broker) => broker.stop(),
        }
        if let Some(dir) = self.scratch {
            remove_scratch(&dir);
        }
    }
}

fn remove_scratch(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove the broker's temporary data directory");
    }
}

/// Parses `--broker-flush`: `ack` (fsync before each acknowledgement) or
/// a number of milliseconds between background fsyncs.
pub fn parse_broker_flush(raw: &str) -> Result<FlushPolicy, String> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("ack") {
        return Ok(FlushPolicy::BeforeAcknowledge);
    }
    match raw.parse::<u64>() {
        Ok(ms) if (1..=3_600_000).contains(&ms) => {
            Ok(FlushPolicy::Interval(Duration::from_millis(ms)))
        }
        _ => Err(format!(
            "expected `ack` or milliseconds between fsyncs (1 to 3600000), got {raw:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_policy_is_ack_or_a_positive_interval_in_milliseconds() {
        assert_eq!(
            parse_broker_flush("ack"),
            Ok(FlushPolicy::BeforeAcknowledge)
        );
        assert_eq!(
            parse_broker_flush("250"),
            Ok(FlushPolicy::Interval(Duration::from_millis(250)))
        );
        for bad in ["0", "-5", "1s", "", "3600001"] {
            assert!(parse_broker_flush(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
