//! Whether the brokers answer, as every client made from one [`KafkaConfig`]
//! sees them.
//!
//! While a broker cannot be reached, librdkafka reports each failed
//! connection attempt of each client — with a relay, two consumers, their
//! dead-letter producers and a readiness probe, many lines a second. This
//! turns them into one line when a broker becomes unreachable, a summary at
//! a growing interval (after 30 s, 1 min, 2 min... then every 10 min) while
//! it stays so, and one line when it answers again. Clients learn that a
//! broker answers from their statistics, which every client emits for this
//! purpose.
//!
//! [`KafkaConfig`]: crate::KafkaConfig

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError};

/// When the first summary of an outage is logged; each later one comes after
/// twice the time, until they are [`LONGEST_SUMMARY_GAP`] apart.
const FIRST_SUMMARY_AFTER: Duration = Duration::from_secs(30);
const LONGEST_SUMMARY_GAP: Duration = Duration::from_secs(600);

/// How often clients emit statistics when nobody asked for them: the delay
/// before a broker that answers again is noticed.
pub(crate) const REACHABILITY_INTERVAL: Duration = Duration::from_secs(5);

/// The connection state of each broker the clients tried.
#[derive(Debug)]
pub(crate) struct Connectivity {
    /// One-shot commands report a dead cluster in their own error instead.
    quiet: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Brokers (`host:port`) that failed since they last answered.
    outages: HashMap<String, Outage>,
    /// The last connection failure of any broker, for error messages.
    last_failure: Option<String>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    failures: u64,
    next_summary_after: Duration,
}

impl Connectivity {
    /// Logs state changes when `quiet` is false.
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            quiet,
            state: Mutex::default(),
        }
    }

    /// A client failed to connect to (or lost) a broker; `detail` is
    /// librdkafka's text, which starts with the broker's name.
    pub(crate) fn connection_failed(&self, client: &str, detail: &str) {
        let broker = broker_of(detail);
        let now = Instant::now();
        let mut state = self.state.lock().expect("connectivity state poisoned");
        state.last_failure = Some(detail.to_owned());
        let outage = state.outages.entry(broker.to_owned());
        let quiet = self.quiet;
        match outage {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Outage {
                    since: now,
                    failures: 1,
                    next_summary_after: FIRST_SUMMARY_AFTER,
                });
                if !quiet {
                    tracing::warn!(target: "kafka", broker, client, "kafka unreachable: {detail}");
                }
            }
            std::collections::hash_map::Entry::Occupied(mut occupied) => {
                let outage = occupied.get_mut();
                outage.failures += 1;
                let lasted = now.duration_since(outage.since);
                if lasted >= outage.next_summary_after {
                    outage.next_summary_after = (outage.next_summary_after * 2)
                        .min(outage.next_summary_after + LONGEST_SUMMARY_GAP);
                    if !quiet {
                        tracing::warn!(
                            target: "kafka",
                            broker,
                            "kafka still unreachable after {}s ({} connection failures reported): {detail}",
                            lasted.as_secs(),
                            outage.failures
                        );
                    }
                } else {
                    tracing::debug!(target: "kafka", broker, client, "{detail}");
                }
            }
        }
    }

    /// A client is connected to `broker` (`host:port`).
    pub(crate) fn broker_up(&self, broker: &str) {
        let mut state = self.state.lock().expect("connectivity state poisoned");
        let Some(outage) = state.outages.remove(broker) else {
            return;
        };
        if !self.quiet {
            tracing::info!(
                target: "kafka",
                broker,
                "kafka reachable again after {}s ({} connection failures reported)",
                outage.since.elapsed().as_secs(),
                outage.failures
            );
        }
    }

    /// Another error a client reported. A quiet log keeps it for the
    /// command's own error message; otherwise it is logged as a warning.
    pub(crate) fn other_error(&self, client: &str, detail: &str) {
        if self.quiet {
            tracing::debug!(target: "librdkafka", client, "{detail}");
            self.state
                .lock()
                .expect("connectivity state poisoned")
                .last_failure = Some(detail.to_owned());
        } else {
            tracing::warn!(target: "librdkafka", client, "{detail}");
        }
    }

    /// The last connection failure any client saw, if one did.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.state
            .lock()
            .expect("connectivity state poisoned")
            .last_failure
            .clone()
    }
}

/// Waits until a broker of `config`'s cluster answers a metadata request,
/// for at most `timeout`. Logs nothing itself: a cluster that does not
/// answer is the error, which names the bootstrap address and the last
/// failure seen.
pub async fn wait_for_cluster(config: &KafkaConfig, timeout: Duration) -> Result<(), KafkaError> {
    let probe = config.clone().quiet();
    let client: BaseConsumer<TracingContext> = probe
        .client_config()
        .create_with_context(TracingContext::of("probe", &probe))
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let answered =
        tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
    answered.map_err(|error| KafkaError::Unreachable {
        bootstrap: config.bootstrap_servers.clone(),
        waited: timeout,
        last_failure: probe
            .connectivity
            .last_failure()
            .unwrap_or_else(|| error.to_string()),
    })
}

/// The `host:port` a librdkafka message is about: its text starts with the
/// broker's name, `host:port/id` (`/bootstrap` before the cluster said its id).
fn broker_of(detail: &str) -> &str {
    detail
        .split_once('/')
        .map(|(broker, _)| broker)
        .filter(|broker| !broker.contains(' '))
        .unwrap_or("kafka")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_message_names_its_broker() {
        assert_eq!(
            broker_of(
                "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused"
            ),
            "127.0.0.1:9"
        );
        assert_eq!(
            broker_of("kafka-0.kafka:9092/0: Disconnected"),
            "kafka-0.kafka:9092"
        );
        assert_eq!(broker_of("no broker named here"), "kafka");
    }

    #[test]
    fn an_outage_is_counted_until_its_broker_answers_and_the_last_failure_is_kept() {
        let connectivity = Connectivity::new(true);
        for _ in 0..3 {
            connectivity.connection_failed("relay", "b:1/bootstrap: Connection refused");
        }
        connectivity.connection_failed("relay", "c:1/bootstrap: Connection refused");
        {
            let state = connectivity.state.lock().unwrap();
            assert_eq!(state.outages["b:1"].failures, 3);
            assert_eq!(state.outages["c:1"].failures, 1);
        }
        connectivity.broker_up("b:1");
        connectivity.broker_up("d:1");
        let state = connectivity.state.lock().unwrap();
        assert_eq!(state.outages.keys().collect::<Vec<_>>(), ["c:1"]);
        assert_eq!(
            state.last_failure.as_deref(),
            Some("c:1/bootstrap: Connection refused")
        );
    }
}
