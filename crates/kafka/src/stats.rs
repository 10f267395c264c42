//! A few librdkafka statistics, handed to a listener without exposing
//! `rdkafka`'s types. Enabled per client by [`crate::KafkaConfig::with_stats`].

use std::sync::Arc;

use rdkafka::Statistics;

/// One broker connection of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStats {
    /// `host:port/id` as librdkafka names it.
    pub name: String,
    /// Average request round-trip time over the last interval, if any requests were made.
    pub rtt_avg_micros: Option<i64>,
    /// Cumulative transmit errors.
    pub tx_errors: u64,
    /// Cumulative receive errors.
    pub rx_errors: u64,
    /// Cumulative request timeouts.
    pub request_timeouts: u64,
}

/// A consumer's view of how far behind it is on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Log-end offset minus committed offset, as librdkafka last saw them.
    pub lag: i64,
}

/// A snapshot of one client's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// The client name given to the constructor (`relay`, `auditor`, ...).
    pub client: String,
    /// Messages waiting in the producer's queue (0 for consumers).
    pub queue_messages: u64,
    pub brokers: Vec<BrokerStats>,
    /// Consumers only: partitions with a known lag.
    pub partitions: Vec<PartitionLag>,
}

/// Receives each statistics snapshot (every few seconds, on a librdkafka thread).
pub type StatsListener = Arc<dyn Fn(&ClientStats) + Send + Sync>;

impl ClientStats {
    pub(crate) fn from_rdkafka(client: &str, s: &Statistics) -> Self {
        let brokers = s
            .brokers
            .values()
            // Bootstrap and coordinator pseudo-brokers have no node id.
            .filter(|b| b.nodeid >= 0)
            .map(|b| BrokerStats {
                name: b.name.clone(),
                rtt_avg_micros: b.rtt.as_ref().filter(|w| w.cnt > 0).map(|w| w.avg),
                tx_errors: b.txerrs,
                rx_errors: b.rxerrs,
                request_timeouts: b.req_timeouts,
            })
            .collect();
        let partitions = s
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(move |p| PartitionLag {
                        topic: t.topic.clone(),
                        partition: p.partition,
                        lag: p.consumer_lag,
                    })
            })
            .collect();
        Self {
            client: client.to_owned(),
            queue_messages: s.msg_cnt,
            brokers,
            partitions,
        }
    }
}
