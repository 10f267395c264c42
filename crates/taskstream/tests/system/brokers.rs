//! The broker a system test runs on: the dev broker each system starts for
//! itself, or Apache Kafka — one single-node and one three-node cluster per
//! test binary, started by the first test that asks for it.
//!
//! taskstream's topic and group names are fixed (`task-events`, `auditor`,
//! `notifier`), so two systems on one cluster at once would read each
//! other's events. A test on Apache Kafka therefore has the clusters to
//! itself for its whole run ([`Broker::apache_kafka`] waits for its turn),
//! and starts from an empty cluster: the topics and groups of the test
//! before it deleted, and the declared topics created as `taskstream topics
//! apply` creates them.

use std::time::Duration;

use taskstream::components::ConsumerOptions;
use taskstream::system::SystemConfig;
use taskstream_kafka::{apply_topics, ConsumerSettings, KafkaConfig};
use taskstream_services::topics::{declared_topics, TASK_EVENTS, TASK_EVENTS_PARTITIONS};
use taskstream_testkit::{kafka_or_skip, KafkaCluster, Shape};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::eventually;

/// The consumers' session timeout on Apache Kafka and on taskstream's
/// broker: the least a broker accepts by default
/// (`group.min.session.timeout.ms`), so the partitions of a killed member
/// move on within seconds. (The mock's 3 s is refused.)
pub const KAFKA_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Held by the test that is using the Apache Kafka clusters.
static TURN: Mutex<()> = Mutex::const_new(());

/// Where a test's system sends its events.
pub enum Broker {
    /// Each system starts its own in-process dev broker.
    Dev,
    /// A shared Apache Kafka cluster, this test's alone until it ends.
    Kafka {
        cluster: &'static KafkaCluster,
        _turn: MutexGuard<'static, ()>,
    },
}

impl Broker {
    /// The binary's Apache Kafka cluster of `shape`, once every test before
    /// has finished with it, emptied, with taskstream's topics created
    /// (replicated to every node). `None`, after printing `SKIPPED: ...`,
    /// when Kafka cannot run here (a failure instead with
    /// `TASKSTREAM_REQUIRE_KAFKA=1`).
    pub async fn apache_kafka(shape: Shape, what: &str) -> Option<Self> {
        let broker = Self::empty_apache_kafka(shape, what).await?;
        let config = broker.kafka_config().expect("a cluster");
        let created = apply_topics(
            &config,
            &declared_topics(broker.replication_factor()),
            Duration::from_secs(30),
        )
        .await
        .expect("the declared topics are created");
        assert_eq!(
            created.len(),
            declared_topics(broker.replication_factor()).len(),
            "{created:?}"
        );
        let cluster = broker.cluster().expect("a cluster");
        eventually(
            "every partition of task-events to have a leader",
            Duration::from_secs(60),
            || async {
                (0..TASK_EVENTS_PARTITIONS)
                    .all(|p| matches!(cluster.partition_leader(TASK_EVENTS, p), Ok(Some(_))))
                    .then_some(())
            },
        )
        .await;
        Some(broker)
    }

    /// [`Broker::apache_kafka`] without any topic: the test creates them.
    pub async fn empty_apache_kafka(shape: Shape, what: &str) -> Option<Self> {
        let what = what.to_owned();
        let cluster = tokio::task::spawn_blocking(move || kafka_or_skip(shape, &what))
            .await
            .unwrap()?;
        let turn = TURN.lock().await;
        tokio::task::spawn_blocking(move || cluster.reset())
            .await
            .unwrap()
            .expect("the cluster is emptied for the next test");
        Some(Self::Kafka {
            cluster,
            _turn: turn,
        })
    }

    /// How summary lines name the broker.
    pub fn name(&self) -> &'static str {
        match self.cluster().map(|c| c.shape()) {
            None => "dev",
            Some(Shape::SingleNode) => "kafka",
            Some(Shape::ThreeNodes) => "kafka-3-nodes",
        }
    }

    /// The Apache Kafka cluster, if that is the broker.
    pub fn cluster(&self) -> Option<&'static KafkaCluster> {
        match self {
            Self::Dev => None,
            Self::Kafka { cluster, .. } => Some(cluster),
        }
    }

    /// The cluster to connect to; `None` for the dev broker, which each
    /// system starts for itself.
    pub fn kafka_config(&self) -> Option<KafkaConfig> {
        self.cluster()
            .map(|c| KafkaConfig::new(c.bootstrap_servers()))
    }

    /// How many copies of each partition the cluster keeps.
    pub fn replication_factor(&self) -> i32 {
        self.cluster()
            .map_or(1, |c| i32::try_from(c.nodes()).unwrap())
    }

    /// Points a system at this broker.
    pub fn configure(&self, config: &mut SystemConfig) {
        config.kafka = self.kafka_config();
        config.session_timeout = Some(KAFKA_SESSION_TIMEOUT);
    }

    /// Consumer settings for this broker (taskstream's or Apache Kafka):
    /// the defaults with the shortest session a broker accepts.
    pub fn consumer_options(&self) -> ConsumerOptions {
        ConsumerOptions {
            kafka: ConsumerSettings {
                session_timeout: KAFKA_SESSION_TIMEOUT,
                ..ConsumerSettings::default()
            },
            ..ConsumerOptions::default()
        }
    }

    /// The flags that point `taskstream up` (or a consumer process) at this
    /// broker: none for the dev broker, which `up` starts itself.
    pub fn up_args(&self) -> Vec<String> {
        match self.cluster() {
            None => Vec::new(),
            Some(cluster) => vec![
                "--kafka-bootstrap".into(),
                cluster.bootstrap_servers().into(),
                "--session-timeout".into(),
                KAFKA_SESSION_TIMEOUT.as_secs().to_string(),
            ],
        }
    }
}
