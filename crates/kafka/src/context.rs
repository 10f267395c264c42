//! The context every taskstream client is created with: librdkafka's logs
//! into `tracing`, statistics to a listener, and — for consumers — the
//! bookkeeping that makes commits exact across rebalances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, Statistics, TopicPartitionList};

use crate::offset_reset::ResetMark;
use crate::stats::{ClientStats, StatsListener};

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
                        Some(mark) if now - mark.at_ms < self.reset_window_ms => {
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
    /// Consumers only.
    pub(crate) group: Option<Arc<Mutex<GroupState>>>,
}

impl TracingContext {
    pub(crate) fn new(client: impl Into<String>, stats: Option<StatsListener>) -> Self {
        Self {
            client: client.into(),
            stats,
            group: None,
        }
    }
}

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let client = self.client.as_str();
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
        // Transport errors while a broker is down are expected and retried by
        // librdkafka; they are worth a warning, not an error.
        tracing::warn!(target: "librdkafka", client = self.client.as_str(), %error, "{reason}");
    }

    fn stats(&self, statistics: Statistics) {
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
                if commit.count() > 0 {
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
