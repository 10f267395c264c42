//! A consumer-group member with at-least-once offset handling.
//!
//! The application acknowledges a record with [`EventConsumer::ack`] only
//! after its effect is durable; only acknowledged offsets are ever committed:
//! every `commit_interval` (even when unchanged, so that lag evaluation can
//! tell a live consumer from a stopped one), for partitions being revoked in
//! a rebalance, and on close. A crash therefore redelivers at most the
//! unacknowledged tail, which handlers absorb by being idempotent by event id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::{GroupState, TracingContext};
use crate::{KafkaConfig, KafkaError};

/// Consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// How often acknowledged offsets are committed.
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
    state: Arc<Mutex<GroupState>>,
    commit_interval: Duration,
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
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
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
        let state = Arc::new(Mutex::new(GroupState::default()));
        let mut context = TracingContext::of(group, config);
        context.group = Some(Arc::clone(&state));
        let inner: StreamConsumer<TracingContext> = rd
            .create_with_context(context)
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        inner
            .subscribe(topics)
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
        Ok(Self {
            inner,
            group: group.to_owned(),
            state,
            commit_interval: settings.commit_interval,
        })
    }

    /// The consumer group's id.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How often [`EventConsumer::commit_acked`] should be called.
    pub fn commit_interval(&self) -> Duration {
        self.commit_interval
    }

    /// Waits for the next record. Lost or failed broker connections are not
    /// errors here: librdkafka reconnects by itself, and the connectivity
    /// log (see [`KafkaConfig`]) reports the outage once.
    pub async fn recv(&self) -> Result<InboundRecord, KafkaError> {
        let message = loop {
            match self.inner.recv().await {
                Ok(message) => break message,
                Err(RdError::MessageConsumption(
                    code @ (RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Resolve),
                )) => {
                    tracing::debug!(target: "kafka", group = self.group.as_str(), %code, "consumer lost its brokers; librdkafka reconnects");
                }
                Err(e) => return Err(KafkaError::Consume(e.to_string())),
            }
        };
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
    /// Returns `false` if the partition was revoked meanwhile: its new owner
    /// will see the record again.
    pub fn ack(&self, record: &InboundRecord) -> bool {
        let mut state = self.state.lock().expect("group state poisoned");
        let key = (record.topic.clone(), record.partition);
        if !state.assigned.contains(&key) {
            return false;
        }
        state.acked.insert(key, record.offset + 1);
        true
    }

    /// Which assignment of the partition this member holds now (a number
    /// that changes whenever the partition is lost and assigned again), or
    /// `None` if it does not own it.
    pub fn ownership(&self, topic: &str, partition: i32) -> Option<u64> {
        self.state
            .lock()
            .expect("group state poisoned")
            .assignment
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Stops fetching a partition (records already received are the
    /// caller's to drop). Resume it with [`EventConsumer::resume_at`].
    pub fn pause(&self, topic: &str, partition: i32) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.inner
            .pause(&tpl)
            .map_err(|e| KafkaError::Consume(format!("pause {topic}[{partition}]: {e}")))
    }

    /// Moves a paused partition to `offset` and fetches it again from there,
    /// so the record at `offset` is delivered again and nothing after it is
    /// skipped. On error the partition stays paused; call again.
    pub fn resume_at(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        self.inner
            .seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
            .map_err(|e| KafkaError::Consume(format!("seek {topic}[{partition}]: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.inner
            .resume(&tpl)
            .map_err(|e| KafkaError::Consume(format!("resume {topic}[{partition}]: {e}")))
    }

    /// Commits every acknowledged offset of the partitions this member owns,
    /// stamped with the commit time. `wait` blocks until the broker answers.
    pub async fn commit_acked(&self, wait: bool) -> Result<(), KafkaError> {
        let tpl = self
            .state
            .lock()
            .expect("group state poisoned")
            .commit_list(None);
        if tpl.count() == 0 {
            return Ok(());
        }
        let mode = if wait {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.inner
            .commit(&tpl, mode)
            .map_err(|e| KafkaError::Commit(e.to_string()))
    }

    /// Leaves the group cleanly: the acknowledged offsets are committed first
    /// so the partitions' next owner starts right after them.
    pub async fn close(self, timeout: Duration) -> Result<(), KafkaError> {
        let result = tokio::time::timeout(timeout, self.commit_acked(true))
            .await
            .unwrap_or_else(|_| Err(KafkaError::Commit("timed out committing offsets".into())));
        // Nothing is acknowledged after this point; the revoke that
        // unsubscribing triggers has nothing left to commit.
        self.state
            .lock()
            .expect("group state poisoned")
            .acked
            .clear();
        self.inner.unsubscribe();
        result
    }
}
