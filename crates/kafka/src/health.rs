//! Whether the cluster can take writes to a topic, as a readiness check
//! needs to know: each partition's leader, whether that leader answers,
//! and how many replicas are in sync against `min.insync.replicas`.
//!
//! Asking one broker for metadata is not enough: with two of three brokers
//! down, the third still answers while `acks=all` writes to every partition
//! wait (for a leader that is gone, or for replicas that cannot follow).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError};

/// One partition as the cluster's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHealth {
    pub partition: i32,
    /// The leading broker's id; `None` when the partition has no leader.
    pub leader: Option<i32>,
    /// Whether the leader answered a request of its own (the log-end
    /// offset) in time.
    pub leader_answers: bool,
    /// Brokers holding a copy.
    pub replicas: usize,
    /// Copies in sync with the leader.
    pub in_sync: usize,
}

/// A topic's partitions and the brokers the cluster lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicHealth {
    pub topic: String,
    /// `(broker id, host:port)` of every broker in the metadata.
    pub brokers: Vec<(i32, String)>,
    pub partitions: Vec<PartitionHealth>,
    /// The topic's `min.insync.replicas`, read only when some partition has
    /// copies out of sync (the dev broker cannot answer it; `None` then).
    pub min_insync_replicas: Option<i32>,
}

impl TopicHealth {
    /// The `host:port` of broker `id`, or `?` if the metadata does not list it.
    pub fn address(&self, id: i32) -> &str {
        self.brokers
            .iter()
            .find(|(b, _)| *b == id)
            .map_or("?", |(_, a)| a.as_str())
    }
}

/// Probes one cluster; keeps its client (and what it learned of
/// `min.insync.replicas`) between probes.
pub struct TopicProbe {
    /// A producer that never produces: its client serves the queue of
    /// librdkafka's events from a thread of its own, which a client kept
    /// for a process's lifetime needs.
    client: FutureProducer<TracingContext>,
    config: KafkaConfig,
    name: String,
    min_insync: Mutex<Option<(String, i32)>>,
}

impl TopicProbe {
    /// A client for `config`, named `name` in logs. Connects lazily.
    pub fn new(config: &KafkaConfig, name: &str) -> Result<Self, KafkaError> {
        let mut rd = config.client_config();
        // Asking about a topic must never create it.
        rd.set("allow.auto.create.topics", "false");
        let client = rd
            .create_with_context(TracingContext::of(name, config))
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        Ok(Self {
            client,
            config: config.clone(),
            name: name.to_owned(),
            min_insync: Mutex::new(None),
        })
    }

    /// Reads `topic`'s metadata and asks each leader for a log-end offset,
    /// each step within `timeout`. `Ok(None)` when the topic does not exist;
    /// an error when no broker answers the metadata request.
    pub async fn probe(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<TopicHealth>, KafkaError> {
        let client = self.client.clone();
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            client.client().fetch_metadata(Some(&name), timeout)
        })
        .await
        .map_err(|e| KafkaError::Consume(e.to_string()))?
        .map_err(|e| KafkaError::Admin {
            operation: "Metadata",
            message: e.to_string(),
        })?;
        let brokers: Vec<(i32, String)> = metadata
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
            .collect();
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        else {
            return Ok(None);
        };
        let mut partitions: Vec<PartitionHealth> = found
            .partitions()
            .iter()
            .map(|p| PartitionHealth {
                partition: p.id(),
                leader: (p.leader() >= 0).then_some(p.leader()),
                leader_answers: false,
                replicas: p.replicas().len(),
                in_sync: p.isr().len(),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        drop(metadata);

        // One request per leader (to one of its partitions), all at once.
        let mut leaders: Vec<(i32, i32)> = Vec::new();
        for p in &partitions {
            if let Some(leader) = p.leader {
                if !leaders.iter().any(|(l, _)| *l == leader) {
                    leaders.push((leader, p.partition));
                }
            }
        }
        let asks = leaders.iter().map(|&(leader, partition)| {
            let client = self.client.clone();
            let topic = topic.to_owned();
            async move {
                let answered = tokio::task::spawn_blocking(move || {
                    match client.client().fetch_watermarks(&topic, partition, timeout) {
                        Ok(_) => true,
                        // The leader answered, without offsets: with fewer
                        // replicas in sync than `min.insync.replicas` Kafka
                        // (KIP-966) holds the high watermark, and a new
                        // leader has none until its followers catch up.
                        Err(e) => {
                            e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetNotAvailable)
                        }
                    }
                })
                .await
                .unwrap_or(false);
                (leader, answered)
            }
        });
        let answers = futures::future::join_all(asks).await;
        for p in &mut partitions {
            p.leader_answers = p
                .leader
                .is_some_and(|l| answers.iter().any(|(a, ok)| *a == l && *ok));
        }

        let min_insync_replicas = if partitions.iter().any(|p| p.in_sync < p.replicas) {
            self.min_insync_replicas(topic, timeout).await
        } else {
            None
        };
        Ok(Some(TopicHealth {
            topic: topic.to_owned(),
            brokers,
            partitions,
            min_insync_replicas,
        }))
    }

    /// `topic`'s `min.insync.replicas`, asked once and remembered; `None`
    /// when the cluster does not say in time.
    async fn min_insync_replicas(&self, topic: &str, timeout: Duration) -> Option<i32> {
        if let Some((known, value)) = self.min_insync.lock().ok()?.as_ref() {
            if known == topic {
                return Some(*value);
            }
        }
        // Needed rarely, so the admin client (whose events nobody serves)
        // lives only for the question.
        let admin: AdminClient<TracingContext> = self
            .config
            .client_config()
            .create_with_context(TracingContext::of(
                format!("{}-admin", self.name),
                &self.config,
            ))
            .ok()?;
        let options = AdminOptions::new().request_timeout(Some(timeout));
        let described = tokio::time::timeout(
            timeout,
            admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
        )
        .await
        .ok()?
        .ok()?;
        let value: i32 = described
            .first()?
            .as_ref()
            .ok()?
            .get("min.insync.replicas")?
            .value
            .as_deref()?
            .parse()
            .ok()?;
        *self.min_insync.lock().ok()? = Some((topic.to_owned(), value));
        Some(value)
    }
}
