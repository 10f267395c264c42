//! taskstream's Prometheus metrics: one [`Metrics`] per process, shared by
//! every component in it and rendered at `/metrics` in the OpenMetrics text
//! format. Names follow Prometheus conventions: a `taskstream_` prefix, base
//! units (`_seconds`), and `_total` on counters.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use taskstream_domain::EventType;
use taskstream_kafka::{ClientStats, StatsListener};

mod process;
mod trace_context;
pub use trace_context::TraceParent;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A standard method's name, or `other`: never a client's made-up token.
    pub method: String,
    /// The route template (`/tasks/:id`), never the raw path, to bound cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub group: String,
    /// A known event type (`task.created`...), or `other`: the type header
    /// of a record comes from whoever wrote it.
    pub event_type: String,
    /// `ok`, `duplicate`, `retried` or `undecodable`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub client: String,
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerErrorLabels {
    pub client: String,
    pub broker: String,
    /// `tx`, `rx` or `timeout`.
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A transaction's component (`processor`, `relay`) and outcome
/// (`committed`, `aborted`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransactionLabels {
    pub component: String,
    pub outcome: String,
}

/// A transactional component.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

/// Every metric taskstream exports. Cloning a field clones a handle to the
/// same series.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub outbox_pending: Gauge,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    pub relay_published: Counter,
    pub relay_errors: Counter,
    pub relay_producer_restarts: Counter,
    pub relay_latency: Histogram,
    pub events_handled: Family<HandledLabels, Counter>,
    pub handler_duration: Family<GroupLabels, Histogram, fn() -> Histogram>,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Offset resets: times a group found records deleted before it read them.
    pub consumer_offset_resets: Family<PartitionLabels, Counter>,
    /// Records skipped in those resets.
    pub consumer_skipped_events: Family<PartitionLabels, Counter>,
    /// Events requeued in the outbox to repair a reset.
    pub consumer_republished_events: Family<GroupLabels, Counter>,
    pub kafka_queue: Family<ClientLabels, Gauge>,
    pub kafka_rtt: Family<BrokerLabels, Gauge<f64, AtomicU64>>,
    pub kafka_errors: Family<BrokerErrorLabels, Counter>,
    /// WAL each logical replication slot makes PostgreSQL keep.
    pub replication_slot_retained: Family<SlotLabels, Gauge>,
    /// WAL written since each slot's reader last confirmed.
    pub replication_slot_unconfirmed: Family<SlotLabels, Gauge>,
    /// 1 while a reader is connected to the slot.
    pub replication_slot_active: Family<SlotLabels, Gauge>,
    /// Kafka transactions ended, by component and outcome.
    pub transactions: Family<TransactionLabels, Counter>,
    /// From beginning a transaction to its commit or abort.
    pub transaction_duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    /// Last cumulative error counts per (client, broker), to turn
    /// librdkafka's totals into counter increments.
    broker_totals: Mutex<HashMap<(String, String), [u64; 3]>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("taskstream");
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let http_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            http_duration.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending_events",
            "Outbox rows not yet published",
            outbox_pending.clone(),
        );
        let outbox_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest unpublished outbox row (0 when none)",
            Unit::Seconds,
            outbox_oldest_age.clone(),
        );
        let relay_published = Counter::default();
        registry.register(
            "relay_events_published",
            "Events the broker acknowledged",
            relay_published.clone(),
        );
        let relay_errors = Counter::default();
        registry.register(
            "relay_publish_errors",
            "Failed publish attempts",
            relay_errors.clone(),
        );
        let relay_producer_restarts = Counter::default();
        registry.register(
            "relay_producer_restarts",
            "Producers replaced after a fatal error",
            relay_producer_restarts.clone(),
        );
        let relay_latency = latency_histogram();
        registry.register_with_unit(
            "relay_publish_latency",
            "From the outbox commit to the broker's acknowledgement",
            Unit::Seconds,
            relay_latency.clone(),
        );
        let events_handled = Family::default();
        registry.register(
            "consumer_events",
            "Events a consumer group handled, by outcome",
            events_handled.clone(),
        );
        let handler_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "consumer_handler_duration",
            "Time a handler took for one event, retries included",
            Unit::Seconds,
            handler_duration.clone(),
        );
        let consumer_lag = Family::default();
        registry.register(
            "consumer_lag_events",
            "Records not yet committed by the group, per partition (librdkafka statistics)",
            consumer_lag.clone(),
        );
        let consumer_offset_resets = Family::default();
        registry.register(
            "consumer_offset_resets",
            "Times a consumer group found that records it was to read next had been deleted unread",
            consumer_offset_resets.clone(),
        );
        let consumer_skipped_events = Family::default();
        registry.register(
            "consumer_skipped_events",
            "Records a consumer group skipped because they were deleted before it read them",
            consumer_skipped_events.clone(),
        );
        let consumer_republished_events = Family::default();
        registry.register(
            "consumer_republished_events",
            "Events requeued in the outbox for publishing again, to repair an offset reset",
            consumer_republished_events.clone(),
        );
        let kafka_queue = Family::default();
        registry.register(
            "kafka_client_queue_messages",
            "Messages waiting in a client's local queue",
            kafka_queue.clone(),
        );
        let kafka_rtt = Family::<BrokerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "kafka_broker_rtt",
            "Average broker round-trip time over the last statistics interval",
            Unit::Seconds,
            kafka_rtt.clone(),
        );
        let kafka_errors = Family::default();
        registry.register(
            "kafka_broker_errors",
            "Transmit, receive and timeout errors per broker connection",
            kafka_errors.clone(),
        );
        let replication_slot_retained = Family::default();
        registry.register_with_unit(
            "replication_slot_retained_wal",
            "WAL the database keeps for a logical replication slot (Debezium's); grows without bound while the slot is stalled",
            Unit::Bytes,
            replication_slot_retained.clone(),
        );
        let replication_slot_unconfirmed = Family::default();
        registry.register_with_unit(
            "replication_slot_unconfirmed_wal",
            "WAL written since the slot's reader last confirmed what it read",
            Unit::Bytes,
            replication_slot_unconfirmed.clone(),
        );
        let replication_slot_active = Family::default();
        registry.register(
            "replication_slot_active",
            "1 while a reader is connected to the logical replication slot, else 0",
            replication_slot_active.clone(),
        );
        let transactions = Family::default();
        registry.register(
            "kafka_transactions",
            "Kafka transactions ended, by component and outcome (committed, aborted)",
            transactions.clone(),
        );
        let transaction_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "kafka_transaction_duration",
            "From beginning a Kafka transaction to its commit or abort",
            Unit::Seconds,
            transaction_duration.clone(),
        );
        Arc::new(Self {
            registry: root,
            http_requests,
            http_duration,
            outbox_pending,
            outbox_oldest_age,
            relay_published,
            relay_errors,
            relay_producer_restarts,
            relay_latency,
            events_handled,
            handler_duration,
            consumer_lag,
            consumer_offset_resets,
            consumer_skipped_events,
            consumer_republished_events,
            kafka_queue,
            kafka_rtt,
            kafka_errors,
            replication_slot_retained,
            replication_slot_unconfirmed,
            replication_slot_active,
            transactions,
            transaction_duration,
            broker_totals: Mutex::new(HashMap::new()),
        })
    }

    /// The logical replication slots as observed now, each as (name,
    /// active, retained WAL bytes, unconfirmed WAL bytes); a slot that is
    /// gone leaves the series.
    pub fn observe_replication_slots(&self, slots: &[(String, bool, i64, i64)]) {
        self.replication_slot_retained.clear();
        self.replication_slot_unconfirmed.clear();
        self.replication_slot_active.clear();
        for (name, active, retained, unconfirmed) in slots {
            let labels = SlotLabels { slot: name.clone() };
            self.replication_slot_retained
                .get_or_create(&labels)
                .set(*retained);
            self.replication_slot_unconfirmed
                .get_or_create(&labels)
                .set(*unconfirmed);
            self.replication_slot_active
                .get_or_create(&labels)
                .set(i64::from(*active));
        }
    }

    /// Counts one handled event. An `event_type` that names no known type
    /// is counted as `other`, so a producer cannot mint label values.
    pub fn handled(&self, group: &str, event_type: &str, outcome: &str) {
        let event_type = event_type
            .parse::<EventType>()
            .map_or("other", EventType::as_str);
        self.events_handled
            .get_or_create(&HandledLabels {
                group: group.to_owned(),
                event_type: event_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts an offset reset of `group` on `topic`'s `partition` that
    /// skipped `skipped` records.
    pub fn offset_reset(&self, group: &str, topic: &str, partition: i32, skipped: u64) {
        let labels = PartitionLabels {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition: partition.to_string(),
        };
        self.consumer_offset_resets.get_or_create(&labels).inc();
        self.consumer_skipped_events
            .get_or_create(&labels)
            .inc_by(skipped);
    }

    /// Counts one transaction of `component` that ended with `outcome`
    /// (`committed` or `aborted`) after `seconds`.
    pub fn transaction(&self, component: &str, outcome: &str, seconds: f64) {
        self.transactions
            .get_or_create(&TransactionLabels {
                component: component.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.transaction_duration
            .get_or_create(&ComponentLabels {
                component: component.to_owned(),
            })
            .observe(seconds);
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A listener that turns librdkafka statistics into metrics.
    pub fn stats_listener(self: &Arc<Self>) -> StatsListener {
        let metrics = Arc::clone(self);
        Arc::new(move |stats: &ClientStats| metrics.record_stats(stats))
    }

    fn record_stats(&self, stats: &ClientStats) {
        let client = stats.client.clone();
        self.kafka_queue
            .get_or_create(&ClientLabels {
                client: client.clone(),
            })
            .set(stats.queue_messages as i64);
        let mut totals = self.broker_totals.lock().expect("broker totals poisoned");
        for b in &stats.brokers {
            let labels = BrokerLabels {
                client: client.clone(),
                broker: b.name.clone(),
            };
            if let Some(rtt) = b.rtt_avg_micros {
                self.kafka_rtt.get_or_create(&labels).set(rtt as f64 / 1e6);
            }
            let now = [b.tx_errors, b.rx_errors, b.request_timeouts];
            let before = totals
                .insert((client.clone(), b.name.clone()), now)
                .unwrap_or([0; 3]);
            for ((kind, now), before) in ["tx", "rx", "timeout"].iter().zip(now).zip(before) {
                if now > before {
                    self.kafka_errors
                        .get_or_create(&BrokerErrorLabels {
                            client: client.clone(),
                            broker: b.name.clone(),
                            kind: (*kind).to_owned(),
                        })
                        .inc_by(now - before);
                }
            }
        }
        for p in &stats.partitions {
            self.consumer_lag
                .get_or_create(&PartitionLabels {
                    group: client.clone(),
                    topic: p.topic.clone(),
                    partition: p.partition.to_string(),
                })
                .set(p.lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_metrics_carry_their_conventional_unprefixed_names() {
        let metrics = Metrics::new();
        metrics.relay_published.inc();
        let text = metrics.render();
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_threads ",
            "process_open_fds ",
            "taskstream_relay_events_published_total 1",
        ] {
            assert!(text.contains(name), "no {name} in\n{text}");
        }
        assert!(!text.contains("taskstream_process_"), "{text}");
    }
    use taskstream_kafka::{BrokerStats, PartitionLag};

    #[test]
    fn made_up_event_types_share_one_label_value() {
        let metrics = Metrics::new();
        metrics.handled("auditor", "task.created", "ok");
        for i in 0..100 {
            metrics.handled("auditor", &format!("forged.{i}"), "dead_lettered");
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"taskstream_consumer_events_total{group="auditor",event_type="task.created",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"taskstream_consumer_events_total{group="auditor",event_type="other",outcome="dead_lettered"} 100"#),
            "{text}"
        );
        assert!(!text.contains("forged"), "{text}");
    }

    #[test]
    fn replication_slots_become_gauges_and_a_dropped_slot_leaves() {
        let metrics = Metrics::new();
        metrics.observe_replication_slots(&[
            ("taskstream_outbox".into(), false, 4096, 1024),
            ("old".into(), true, 10, 0),
        ]);
        let text = metrics.render();
        for line in [
            r#"taskstream_replication_slot_retained_wal_bytes{slot="taskstream_outbox"} 4096"#,
            r#"taskstream_replication_slot_unconfirmed_wal_bytes{slot="taskstream_outbox"} 1024"#,
            r#"taskstream_replication_slot_active{slot="taskstream_outbox"} 0"#,
            r#"taskstream_replication_slot_active{slot="old"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        metrics.observe_replication_slots(&[("taskstream_outbox".into(), true, 0, 0)]);
        let text = metrics.render();
        assert!(!text.contains(r#"slot="old""#), "{text}");
        assert!(
            text.contains(r#"taskstream_replication_slot_active{slot="taskstream_outbox"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn statistics_become_gauges_and_error_deltas() {
        let metrics = Metrics::new();
        let listener = metrics.stats_listener();
        let mut stats = ClientStats {
            client: "auditor".into(),
            queue_messages: 3,
            brokers: vec![BrokerStats {
                name: "b:9092/1".into(),
                rtt_avg_micros: Some(1500),
                tx_errors: 2,
                rx_errors: 0,
                request_timeouts: 0,
            }],
            partitions: vec![PartitionLag {
                topic: "t".into(),
                partition: 0,
                lag: 7,
            }],
        };
        listener(&stats);
        stats.brokers[0].tx_errors = 5;
        listener(&stats);
        let text = metrics.render();
        assert!(text.contains(r#"taskstream_kafka_broker_errors_total{client="auditor",broker="b:9092/1",kind="tx"} 5"#), "{text}");
        assert!(
            text.contains(
                r#"taskstream_consumer_lag_events{group="auditor",topic="t",partition="0"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"taskstream_kafka_broker_rtt_seconds{client="auditor",broker="b:9092/1"} 0.0015"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE taskstream_relay_events_published counter"),
            "{text}"
        );
    }

    #[test]
    fn an_offset_reset_counts_once_and_its_skipped_events_by_partition() {
        let metrics = Metrics::new();
        metrics.offset_reset("auditor", "task-events", 3, 1200);
        metrics.offset_reset("auditor", "task-events", 3, 34);
        let text = metrics.render();
        assert!(
            text.contains(r#"taskstream_consumer_offset_resets_total{group="auditor",topic="task-events",partition="3"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"taskstream_consumer_skipped_events_total{group="auditor",topic="task-events",partition="3"} 1234"#),
            "{text}"
        );
    }
}
