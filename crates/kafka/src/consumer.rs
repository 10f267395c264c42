//! A consumer-group member with at-least-once offset handling.
//!
//! Offsets are *stored* only when the application calls [`EventConsumer::ack`]
//! after its effect is durable (`enable.auto.offset.store=false`), and
//! librdkafka commits stored offsets periodically, on rebalance and on close.
//! A crash therefore redelivers at most the unacknowledged tail; handlers stay
//! idempotent by event id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError};

/// Consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    pub commit_interval: Duration,
    /// Where a group with no committed offset starts (`auto.offset.reset`).
    pub start_from_earliest: bool,
    /// How long the group waits for a silent member before reassigning its
    /// partitions (`session.timeout.ms`); heartbeats go at a third of it.
    pub session_timeout: Duration,
    /// The longest a fetch waits on the broker for new records
    /// (`fetch.wait.max.ms`). A real broker answers as soon as a record
    /// arrives, so this only bounds idle polling there.
    pub fetch_wait: Duration,
}

impl ConsumerSettings {
    /// Settings for the dev broker. After a member leaves, the dev broker
    /// holds the group's next rebalance for almost a session timeout (a real
    /// broker does not), so a restarted consumer would wait ~45 s with the
    /// default; a short session keeps restarts quick on one machine. The dev
    /// broker also holds every fetch for the full `fetch_wait` even when
    /// records arrive, so a short wait is what keeps end-to-end latency low.
    pub fn for_dev_broker() -> Self {
        Self {
            session_timeout: Duration::from_secs(3),
            fetch_wait: Duration::from_millis(5),
            ..Self::default()
        }
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(500),
            start_from_earliest: true,
            session_timeout: Duration::from_secs(45),
            fetch_wait: Duration::from_millis(100),
        }
    }
}

/// A record as received, detached from the client's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Producer or broker timestamp, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl InboundRecord {
    /// The first header named `name`, as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// One member of a consumer group.
pub struct EventConsumer {
    inner: StreamConsumer<TracingContext>,
    group: String,
    /// The next offset to commit per partition: what was acknowledged, plus one.
    acked: Mutex<HashMap<(String, i32), i64>>,
}

impl EventConsumer {
    /// Joins `group` and subscribes to `topics` (cooperative-sticky assignment).
    pub fn subscribe(
        config: &KafkaConfig,
        group: &str,
        topics: &[&str],
        settings: &ConsumerSettings,
    ) -> Result<Self, KafkaError> {
        let mut rd = config.client_config();
        rd.set("group.id", group)
            .set("client.id", format!("taskstream-{group}"))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                settings.commit_interval.as_millis().to_string(),
            )
            .set(
                "auto.offset.reset",
                if settings.start_from_earliest {
                    "earliest"
                } else {
                    "latest"
                },
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout.as_millis() / 3)
                    .max(100)
                    .to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                settings.fetch_wait.as_millis().to_string(),
            );
        let inner: StreamConsumer<TracingContext> = rd
            .create_with_context(TracingContext {
                client: group.to_owned(),
            })
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        inner
            .subscribe(topics)
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
        Ok(Self {
            inner,
            group: group.to_owned(),
            acked: Mutex::new(HashMap::new()),
        })
    }

    /// The consumer group's id.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Waits for the next record.
    pub async fn recv(&self) -> Result<InboundRecord, KafkaError> {
        let message = self
            .inner
            .recv()
            .await
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(InboundRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        })
    }

    /// Marks `record` (and everything before it in its partition) as done, so
    /// the next commit moves past it. Call only once its effect is durable.
    pub fn ack(&self, record: &InboundRecord) -> Result<(), KafkaError> {
        self.inner
            .store_offset(&record.topic, record.partition, record.offset)
            .map_err(|e| KafkaError::Commit(e.to_string()))?;
        self.acked
            .lock()
            .expect("ack map poisoned")
            .insert((record.topic.clone(), record.partition), record.offset + 1);
        Ok(())
    }

    /// Commits every acknowledged offset now and waits for the broker's answer.
    pub async fn commit_acked(&self) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in self.acked.lock().expect("ack map poisoned").iter() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| KafkaError::Commit(e.to_string()))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.inner
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| KafkaError::Commit(e.to_string()))
    }

    /// Leaves the group cleanly: the acknowledged offsets are committed first
    /// so the partitions' next owner starts right after them.
    pub async fn close(self, timeout: Duration) -> Result<(), KafkaError> {
        let result = tokio::time::timeout(timeout, self.commit_acked())
            .await
            .unwrap_or_else(|_| Err(KafkaError::Commit("timed out committing offsets".into())));
        self.inner.unsubscribe();
        result
    }
}
