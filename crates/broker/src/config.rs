//! The broker's settings, checked before it starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::storage::LogConfig;

/// When appended data is fsynced, and so what readers may see. Either way,
/// data is written to the segment file (the page cache) before a produce
/// is acknowledged, so an acknowledged write survives the broker process
/// being killed (SIGKILL); fsync is what makes it survive a power loss or
/// kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync a partition's log before acknowledging a produce with acks=1
    /// or acks=all (and after an acks=0 produce, which nobody waits for),
    /// and show readers only fsynced records: Fetch, the high
    /// watermark, the last stable offset and ListOffsets stop at the
    /// partition's durable offset, so no consumer reads (or commits an
    /// offset past) a record that a power loss could still take back.
    /// Durable against power loss; slowest.
    BeforeAcknowledge,
    /// fsync every partition written to since the last flush at this
    /// interval (and on roll and on stop). Readers see records as soon as
    /// they are written, before the fsync. Power loss may lose up to one
    /// interval of acknowledged (and possibly consumed) data, as with
    /// Kafka's default of leaving flushing to the OS.
    Interval(Duration),
}

impl FlushPolicy {
    /// What readers of a partition are shown under this policy.
    pub(crate) fn visibility(self) -> crate::storage::Visibility {
        match self {
            Self::BeforeAcknowledge => crate::storage::Visibility::Durable,
            Self::Interval(_) => crate::storage::Visibility::Written,
        }
    }
}

/// Everything [`crate::Broker::start`] needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where topics, logs and broker state live. Created if missing.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Host clients are told to connect to (Metadata); defaults to the listen IP.
    pub advertised_host: Option<String>,
    /// This broker's node id, as reported in Metadata.
    pub node_id: i32,
    /// Whether Metadata requests that allow it create missing topics.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, or of one created with -1.
    pub default_partitions: i32,
    /// Log settings a topic gets unless its configs say otherwise.
    pub log: LogConfig,
    /// When to fsync.
    pub flush: FlushPolicy,
    /// How often retention is enforced.
    pub retention_check_interval: Duration,
    /// Largest request accepted (Kafka's `socket.request.max.bytes`,
    /// default 100 MiB); a larger size prefix closes the connection. It
    /// also bounds what decoding a request may allocate: a small multiple
    /// of its size, whatever lengths it declares.
    pub max_request_bytes: usize,
}

impl BrokerConfig {
    /// Defaults for a broker keeping its data in `data_dir`, on a random
    /// loopback port.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertised_host: None,
            node_id: 1,
            auto_create_topics: true,
            default_partitions: 1,
            log: LogConfig::default(),
            flush: FlushPolicy::Interval(Duration::from_secs(1)),
            retention_check_interval: Duration::from_secs(300),
            max_request_bytes: 100 * 1024 * 1024,
        }
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError(what.to_owned()));
        if self.node_id < 0 {
            return bad("node_id must not be negative");
        }
        if !(1..=10_000).contains(&self.default_partitions) {
            return bad("default_partitions must be 1 to 10000");
        }
        if self.log.segment_bytes < 14 || self.log.segment_bytes > i32::MAX as u64 {
            return bad("log.segment_bytes must be 14 to 2^31-1 (index positions are 32-bit)");
        }
        if self.log.segment_ms < 1 {
            return bad("log.segment_ms must be positive");
        }
        if self.log.retention_ms < -1 || self.log.retention_bytes < -1 {
            return bad("log.retention_ms and log.retention_bytes must be -1 (unlimited) or more");
        }
        if let FlushPolicy::Interval(d) = self.flush {
            if d.is_zero() {
                return bad("the flush interval must be positive");
            }
        }
        if self.retention_check_interval.is_zero() {
            return bad("retention_check_interval must be positive");
        }
        if self.max_request_bytes < 1024 || self.max_request_bytes > i32::MAX as usize {
            return bad("max_request_bytes must be 1024 to 2^31-1");
        }
        Ok(())
    }
}

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid broker configuration: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_nonsense_is_refused_with_a_reason() {
        let config = BrokerConfig::new("/tmp/x");
        assert!(config.validate().is_ok());
        let mut huge_segments = config.clone();
        huge_segments.log.segment_bytes = 1 << 40;
        let err = huge_segments.validate().unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        let mut no_flush = config.clone();
        no_flush.flush = FlushPolicy::Interval(Duration::ZERO);
        assert!(no_flush.validate().is_err());
        let mut zero_partitions = config;
        zero_partitions.default_partitions = 0;
        assert!(zero_partitions.validate().is_err());
    }
}
