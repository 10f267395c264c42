//! The context every taskstream client is created with: librdkafka's logs
//! into `tracing`, statistics to a listener, and — for consumers — the
//! bookkeeping that makes commits exact across rebalances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, Statistics, TopicPartitionList};

use crate::connectivity::Connectivity;
use crate::offset_reset::ResetMark;
use crate::stats::{ClientStats, StatsListener};
use crate::KafkaConfig;

/// The prefix of the metadata taskstream commits with each offset; the rest
/// is the commit time in milliseconds since the epoch. Lag evaluation reads
/// it back to tell a consumer that stopped committing from one that commits
/// without progress.
pub(crate) const COMMIT_METADATA_PREFIX: &str = "taskstream:committed_at_ms=";

/// Partitions a consumer owns and the next offset to commit for each.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub(crate) assigned: HashSet<(String, i32)>,
    pub(crate) acked: HashMap<(String, i32), i64>,
    /// Which assignment each owned partition came with: a partition lost
    /// and assigned again gets a new number, so state kept about the old
    /// ownership can be told apart.
    pub(crate) assignment: HashMap<(String, i32), u64>,
    assignments: u64,
    /// Offset resets still being reported, by partition: each is written
    /// into the partition's commit metadata until `reset_window_ms` after
    /// it was noticed.
    pub(crate) reset_marks: HashMap<(String, i32), ResetMark>,
    pub(crate) reset_window_ms: i64,
}

impl GroupState {
    /// The acknowledged offsets of `partitions` (all owned ones when `None`),
    /// stamped with the commit time.
    pub(crate) fn commit_list(&self, only: Option<&HashSet<(String, i32)>>) -> TopicPartitionList {
        let now = now_ms();
        let metadata = format!("{COMMIT_METADATA_PREFIX}{now}");
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.acked {
            let key = (topic.clone(), *partition);
            let wanted = only.map_or(self.assigned.contains(&key), |o| o.contains(&key));
            if wanted {
                let mut elem = tpl.add_partition(topic, *partition);
                if elem.set_offset(Offset::Offset(*next)).is_ok() {
                    match self.reset_marks.get(&key) {
                        // `at_ms` comes from commit metadata any member may
                        // write: a far-off value must not overflow.
                        Some(mark) if now.saturating_sub(mark.at_ms) < self.reset_window_ms => {
                            elem.set_metadata(format!("{metadata}{}", mark.encode()));
                        }
                        _ => elem.set_metadata(metadata.as_str()),
                    }
                }
            }
        }
        tpl
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Default)]
pub(crate) struct TracingContext {
    /// Names the client in log lines (`relay`, `auditor`, ...).
    pub(crate) client: String,
    pub(crate) stats: Option<StatsListener>,
    /// Where connection failures go instead of one log line each.
    pub(crate) connectivity: Option<Arc<Connectivity>>,
    /// Consumers only.
    pub(crate) group: Option<Arc<Mutex<GroupState>>>,
}

impl TracingContext {
    /// A context that logs everything librdkafka says (the dev broker's own client).
    pub(crate) fn new(client: impl Into<String>) -> Self {
        Self {
            client: client.into(),
            ..Self::default()
        }
    }

    /// The context of a client made from `config`: statistics to its
    /// listener, connection failures to its connectivity log.
    pub(crate) fn of(client: impl Into<String>, config: &KafkaConfig) -> Self {
        Self {
            client: client.into(),
            stats: config.stats.as_ref().map(|(listener, _)| listener.clone()),
            connectivity: Some(Arc::clone(&config.connectivity)),
            group: None,
        }
    }

    /// Whether `fac`/`message` is librdkafka reporting a failed or lost
    /// connection, which the connectivity log summarises.
    fn is_connection_failure(fac: &str, message: &str) -> bool {
        matches!(fac, "FAIL" | "BROKERFAIL" | "CONNECT" | "RESOLVE")
            || message.contains("brokers are down")
    }
}

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let client = self.client.as_str();
        if self.connectivity.is_some() && Self::is_connection_failure(fac, message) {
            // Counted through the error callback, which reports the same
            // failure; the connectivity log says it once.
            tracing::debug!(target: "librdkafka", client, fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", client, fac, "{message}")
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let client = self.client.as_str();
        if let Some(connectivity) = &self.connectivity {
            match error.rdkafka_error_code() {
                // One broker unreachable or lost: librdkafka retries it.
                Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                    connectivity.connection_failed(client, reason);
                    return;
                }
                // The sum of the failures above, already reported per broker.
                Some(RDKafkaErrorCode::AllBrokersDown) => {
                    tracing::debug!(target: "librdkafka", client, %error, "{reason}");
                    return;
                }
                _ => {
                    connectivity.other_error(client, &format!("{error}: {reason}"));
                    return;
                }
            }
        }
        // Other transient errors are retried by librdkafka too; they are
        // worth a warning, not an error.
        tracing::warn!(target: "librdkafka", client, %error, "{reason}");
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(connectivity) = &self.connectivity {
            for broker in statistics.brokers.values() {
                // The internal and logical brokers are librdkafka's own.
                if broker.state == "UP"
                    && matches!(broker.source.as_str(), "configured" | "learned")
                {
                    connectivity.broker_up(&broker.nodename);
                }
            }
        }
        if let Some(listener) = &self.stats {
            listener(&ClientStats::from_rdkafka(&self.client, &statistics));
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn keys(tpl: &TopicPartitionList) -> HashSet<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for TracingContext {
    // ANCHOR: pre_rebalance
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let client = self.client.as_str();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(client, partitions = %describe(tpl), "partitions revoked");
                let Some(group) = &self.group else { return };
                // Commit exactly what was processed on the partitions we are
                // losing, before their next owner starts reading them.
                let revoked = keys(tpl);
                let commit = {
                    let mut state = group.lock().expect("group state poisoned");
                    let commit = state.commit_list(Some(&revoked));
                    for key in &revoked {
                        state.assigned.remove(key);
                        state.acked.remove(key);
                        state.assignment.remove(key);
                        state.reset_marks.remove(key);
                    }
                    commit
                };
                if commit.count() > 0 && consumer.assignment_lost() {
                    // The group went on without this member (its session
                    // timed out): Kafka refuses the commit, and waiting for
                    // a coordinator that may be gone would block the thread.
                    tracing::warn!(client, "partitions lost; their next owner will see the events since the last commit again");
                } else if commit.count() > 0 {
                    if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                        tracing::warn!(client, %error, "commit on revoke failed; the next owner may see some events again");
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(client, partitions = %describe(tpl), "partitions assigned")
            }
            Rebalance::Error(e) => tracing::warn!(client, error = %e, "rebalance error"),
        }
    }
    // ANCHOR_END: pre_rebalance

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(tpl), Some(group)) = (rebalance, &self.group) {
            {
                let mut state = group.lock().expect("group state poisoned");
                for key in keys(tpl) {
                    state.assignments += 1;
                    let n = state.assignments;
                    state.assignment.insert(key.clone(), n);
                    state.assigned.insert(key);
                }
            }
            // librdkafka remembers an application pause across losing and
            // regaining a partition; a new assignment starts unpaused.
            if tpl.count() > 0 {
                if let Err(error) = consumer.resume(tpl) {
                    tracing::warn!(client = self.client.as_str(), %error, "cannot resume newly assigned partitions");
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::trace!(client = self.client.as_str(), offsets = %describe(offsets), "offsets committed")
            }
            Err(e) => {
                tracing::warn!(client = self.client.as_str(), error = %e, "offset commit failed")
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for TracingContext {
    type DeliveryOpaque = ();
    // Only the dev broker's own client uses the base producer; it sends nothing.
    fn delivery(&self, _result: &rdkafka::producer::DeliveryResult<'_>, _opaque: ()) {}
}
