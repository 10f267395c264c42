//! A consumer-group member with at-least-once offset handling.
//!
//! The application acknowledges a record with [`EventConsumer::ack`] only
//! after its effect is durable; only acknowledged offsets are ever committed:
//! every `commit_interval` (even when unchanged, so that lag evaluation can
//! tell a live consumer from a stopped one), for partitions being revoked in
//! a rebalance, and on close. A crash therefore redelivers at most the
//! unacknowledged tail, which handlers absorb by being idempotent by event id.
//!
//! It also notices records it skipped because the broker deleted them before
//! they were read (see [`crate::offset_reset`]): [`EventConsumer::confirm_skips`]
//! names them, and the partition's commits say so for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::context::{now_ms, GroupState, TracingContext};
use crate::offset_reset::{ResetMark, Suspect};
use crate::{KafkaConfig, KafkaError, OffsetReset};

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
    /// How long an offset reset (records deleted before the group read
    /// them) is written into the partition's commit metadata, where
    /// `taskstream lag` reports it.
    pub reset_report_window: Duration,
    /// Static membership (KIP-345, `group.instance.id`): a member that
    /// restarts with the same id within the session timeout takes its
    /// partitions back at once, without a rebalance; `None` is a dynamic
    /// member, which leaves the group when it closes. Unique per group.
    pub group_instance_id: Option<String>,
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
            reset_report_window: Duration::from_secs(15 * 60),
            group_instance_id: None,
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
    /// A received message, copied out of the client's buffers.
    pub(crate) fn from_message<M: Message>(m: &M) -> Self {
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m
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
                .unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The first header named `name`, as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Where the next record of a partition is expected, within one assignment.
#[derive(Debug, Clone, Copy)]
struct Position {
    assignment: u64,
    next: i64,
}

/// How long a lookup that confirms a skip may wait for the broker.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// One member of a consumer group.
pub struct EventConsumer {
    inner: Arc<StreamConsumer<TracingContext>>,
    group: String,
    state: Arc<Mutex<GroupState>>,
    commit_interval: Duration,
    positions: Mutex<HashMap<(String, i32), Position>>,
    /// Partitions that may have skipped records, for [`EventConsumer::confirm_skips`].
    suspects: Mutex<Vec<Suspect>>,
    /// Per partition, the position past a transaction marker seen at the
    /// last commit (see [`EventConsumer::commit_acked`]).
    past_markers: Mutex<HashMap<(String, i32), i64>>,
}

/// librdkafka's pre-fetch limits for every consumer: 10,000 records (a
/// dozen seconds of a busy task stream, far more than a batch) or 16 MiB.
const PREFETCH_BOUNDS: [(&str, &str); 2] = [
    ("queued.min.messages", "10000"),
    ("queued.max.messages.kbytes", "16384"),
];

/// Sets [`PREFETCH_BOUNDS`] on a consumer's `rd`, except where `config`'s
/// properties (`--kafka-property`) say otherwise.
pub(crate) fn bound_prefetch(rd: &mut rdkafka::ClientConfig, config: &KafkaConfig) {
    for (key, value) in PREFETCH_BOUNDS {
        if !config.properties.contains_key(key) {
            rd.set(key, value);
        }
    }
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
        // ANCHOR: consumer_settings
        rd.set("group.id", group)
            .set("client.id", format!("taskstream-{group}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // librdkafka's default, stated: records of aborted (or still
            // open) transactions never reach a handler.
            .set("isolation.level", "read_committed")
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
        // ANCHOR_END: consumer_settings
        // A bound on what librdkafka fetches ahead of the handler (its
        // defaults: 100,000 records or 64 MiB per consumer): a group that
        // falls behind holds at most this much in memory, however far
        // behind it is, which keeps a process of six consumers flat under a
        // long load. `--kafka-property` overrides either.
        bound_prefetch(&mut rd, config);
        if let Some(id) = &settings.group_instance_id {
            rd.set("group.instance.id", id);
        }
        let mut state = GroupState::default();
        state.reset_window_ms = settings.reset_report_window.as_millis() as i64;
        let state = Arc::new(Mutex::new(state));
        let mut context = TracingContext::of(group, config);
        context.group = Some(Arc::clone(&state));
        let inner: StreamConsumer<TracingContext> = rd
            .create_with_context(context)
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        inner
            .subscribe(topics)
            .map_err(|e| KafkaError::Consume(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
            group: group.to_owned(),
            state,
            commit_interval: settings.commit_interval,
            positions: Mutex::new(HashMap::new()),
            suspects: Mutex::new(Vec::new()),
            past_markers: Mutex::new(HashMap::new()),
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
                Err(e) if crate::error::lost_brokers(&e) => {
                    tracing::debug!(target: "kafka", group = self.group.as_str(), error = %e, "consumer lost its brokers; librdkafka reconnects");
                }
                Err(e) => return Err(KafkaError::Consume(e.to_string())),
            }
        };
        let record = InboundRecord::from_message(&message);
        self.track(&record);
        Ok(record)
    }

    /// Follows each partition's next expected offset and notes a record
    /// that arrives past it, or the first record of a new assignment, for
    /// [`EventConsumer::confirm_skips`].
    fn track(&self, record: &InboundRecord) {
        let Some(assignment) = self.ownership(&record.topic, record.partition) else {
            return;
        };
        let key = (record.topic.clone(), record.partition);
        let mut positions = self.positions.lock().expect("positions poisoned");
        let suspect = match positions.get(&key) {
            Some(p) if p.assignment == assignment => {
                (record.offset > p.next).then(|| Suspect::Gap {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    expected: p.next,
                    received: record.offset,
                })
            }
            _ => Some(Suspect::FirstOfAssignment {
                topic: record.topic.clone(),
                partition: record.partition,
                assignment,
                received: record.offset,
            }),
        };
        positions.insert(
            key,
            Position {
                assignment,
                next: record.offset + 1,
            },
        );
        drop(positions);
        if let Some(suspect) = suspect {
            self.suspects
                .lock()
                .expect("suspects poisoned")
                .push(suspect);
        }
    }

    /// Asks the broker about every partition that may have skipped records
    /// since the last call, and returns the skips it confirms: records the
    /// group was to read next that the log no longer holds. Each confirmed
    /// reset is also written into the partition's commit metadata for the
    /// reset report window. A reset already marked in the committed
    /// metadata of a newly assigned partition is carried on.
    ///
    /// Call it after receiving records and before acknowledging them; it
    /// returns at once when nothing is suspect. Suspects the broker could
    /// not be asked about are kept for the next call.
    pub async fn confirm_skips(&self) -> Vec<OffsetReset> {
        let suspects = std::mem::take(&mut *self.suspects.lock().expect("suspects poisoned"));
        if suspects.is_empty() {
            return Vec::new();
        }
        let inner = Arc::clone(&self.inner);
        let group = self.group.clone();
        let outcome = tokio::task::spawn_blocking(move || confirm(&inner, &group, suspects)).await;
        let Ok(Confirmed {
            resets,
            carried,
            unresolved,
        }) = outcome
        else {
            return Vec::new();
        };
        if !unresolved.is_empty() {
            self.suspects
                .lock()
                .expect("suspects poisoned")
                .extend(unresolved);
        }
        let mut state = self.state.lock().expect("group state poisoned");
        let now = now_ms();
        for (key, assignment, mark) in carried {
            if state.assignment.get(&key) == Some(&assignment)
                && now.saturating_sub(mark.at_ms) < state.reset_window_ms
            {
                state.reset_marks.entry(key).or_insert(mark);
            }
        }
        // A partition that moved away meanwhile goes to its next owner at
        // the committed offset, before the skip: that owner reports it.
        let mut resets = resets;
        resets.retain(|reset| {
            let key = (reset.topic.clone(), reset.partition);
            let owned = state.assigned.contains(&key);
            if owned {
                state.reset_marks.insert(key, reset.mark());
            }
            owned
        });
        resets
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
        if let Some(p) = self
            .positions
            .lock()
            .expect("positions poisoned")
            .get_mut(&(topic.to_owned(), partition))
        {
            p.next = offset;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.inner
            .resume(&tpl)
            .map_err(|e| KafkaError::Consume(format!("resume {topic}[{partition}]: {e}")))
    }

    /// Commits every acknowledged offset of the partitions this member owns,
    /// stamped with the commit time. `wait` blocks until the broker answers.
    ///
    /// A transactional producer leaves a commit marker after each
    /// transaction's records: an offset no record is delivered at. A group
    /// that handled a partition's last record would stay one offset short
    /// of the end (a lag of 1 for ever), so when every record delivered
    /// from a partition is acknowledged and librdkafka's position is past
    /// the acknowledged offset — markers only, as no record came — the
    /// commit moves to that position. It does so only when the same
    /// position was seen at the previous commit too, so a record being
    /// delivered at that very moment (librdkafka's position moves before
    /// [`EventConsumer::recv`] notes the record) is never skipped.
    pub async fn commit_acked(&self, wait: bool) -> Result<(), KafkaError> {
        self.acknowledge_markers();
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

    /// Moves the acknowledged offset of fully handled partitions past the
    /// transaction markers that follow their last record (see
    /// [`EventConsumer::commit_acked`]).
    fn acknowledge_markers(&self) {
        let Ok(positions) = self.inner.position() else {
            return;
        };
        let delivered: HashMap<(String, i32), Position> =
            self.positions.lock().expect("positions poisoned").clone();
        let mut state = self.state.lock().expect("group state poisoned");
        let mut past_markers = self.past_markers.lock().expect("markers poisoned");
        let mut seen = HashMap::new();
        let mut moved = Vec::new();
        for elem in positions.elements() {
            let Offset::Offset(position) = elem.offset() else {
                continue;
            };
            let key = (elem.topic().to_owned(), elem.partition());
            let Some(&acked) = state.acked.get(&key) else {
                continue;
            };
            let handled_all = delivered.get(&key).is_some_and(|d| {
                d.next == acked && state.assignment.get(&key) == Some(&d.assignment)
            });
            if !handled_all || position <= acked {
                continue;
            }
            if past_markers.get(&key) == Some(&position) {
                state.acked.insert(key.clone(), position);
                moved.push((key, position));
            } else {
                seen.insert(key, position);
            }
        }
        *past_markers = seen;
        drop(past_markers);
        drop(state);
        // The next record is expected past the markers too: the offsets
        // they take are no gap, and a log start that moves past them
        // (retention) deleted nothing this group had still to read.
        let mut delivered = self.positions.lock().expect("positions poisoned");
        for (key, position) in moved {
            if let Some(p) = delivered.get_mut(&key) {
                p.next = p.next.max(position);
            }
        }
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
        // Serve the revoke that unsubscribing starts before the consumer is
        // destroyed: librdkafka aborts the process (`rd_kafka_cgrp_terminated:
        // assert: !rd_kafka_assignment_in_progress`) when the group is torn
        // down while an assignment change is still under way.
        let settle = tokio::time::Instant::now() + UNSUBSCRIBE_SETTLE;
        while self.inner.assignment().is_ok_and(|a| a.count() > 0)
            && tokio::time::Instant::now() < settle
        {
            // Records still delivered are not acknowledged, so not committed.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.inner.recv()).await;
        }
        result
    }
}

/// How long [`EventConsumer::close`] serves the revoke after unsubscribing.
const UNSUBSCRIBE_SETTLE: Duration = Duration::from_secs(2);

/// What [`confirm`] learned from the broker.
struct Confirmed {
    resets: Vec<OffsetReset>,
    /// Marks found in the committed metadata of newly assigned partitions.
    carried: Vec<((String, i32), u64, ResetMark)>,
    unresolved: Vec<Suspect>,
}

/// Resolves suspects against the broker (blocking): the committed offset
/// a new assignment started from, and the log start of each partition
/// whose records may have been skipped.
fn confirm(
    consumer: &StreamConsumer<TracingContext>,
    group: &str,
    suspects: Vec<Suspect>,
) -> Confirmed {
    let mut confirmed = Confirmed {
        resets: Vec::new(),
        carried: Vec::new(),
        unresolved: Vec::new(),
    };
    // Where each newly assigned partition started: its committed offset.
    let mut firsts = TopicPartitionList::new();
    for s in &suspects {
        if let Suspect::FirstOfAssignment {
            topic, partition, ..
        } = s
        {
            firsts.add_partition(topic, *partition);
        }
    }
    let committed = if firsts.count() > 0 {
        match consumer.committed_offsets(firsts, CONFIRM_TIMEOUT) {
            Ok(tpl) => Some(tpl),
            Err(error) => {
                tracing::warn!(group, %error, "cannot read the committed offsets of new partitions; checking for skipped records later");
                None
            }
        }
    } else {
        None
    };
    // The log start librdkafka learnt from the fetch that brought the
    // record after the gap, or a later one, answers without a round trip
    // (log starts only grow): records deleted unread were skipped only if
    // the log started past them then. A transactional topic has a gap (a
    // commit marker) after every transaction, so asking the broker at
    // every gap would pace the consumer at its round trip. Only when
    // librdkafka knows no log start yet is the broker asked, once per
    // partition.
    let mut log_starts: HashMap<(String, i32), Result<i64, String>> = HashMap::new();
    for suspect in suspects {
        let (topic, partition, expected, received) = match &suspect {
            Suspect::Gap {
                topic,
                partition,
                expected,
                received,
            } => (topic.clone(), *partition, *expected, *received),
            Suspect::FirstOfAssignment {
                topic,
                partition,
                assignment,
                received,
            } => {
                let Some(committed) = &committed else {
                    confirmed.unresolved.push(suspect);
                    continue;
                };
                let Some(elem) = committed.find_partition(topic, *partition) else {
                    continue;
                };
                if let Some(mark) = ResetMark::decode(elem.metadata()) {
                    confirmed
                        .carried
                        .push(((topic.clone(), *partition), *assignment, mark));
                }
                match elem.offset() {
                    // A group with no committed offset starts at the log's
                    // start by design: nothing it had to read was skipped.
                    Offset::Offset(start) => (topic.clone(), *partition, start, *received),
                    _ => continue,
                }
            }
        };
        if received <= expected {
            continue;
        }
        let log_start = log_starts
            .entry((topic.clone(), partition))
            .or_insert_with(|| match fetched_log_start(consumer, &topic, partition) {
                Some(low) => Ok(low),
                None => consumer
                    .fetch_watermarks(&topic, partition, CONFIRM_TIMEOUT)
                    .map(|(low, _)| low)
                    .map_err(|e| e.to_string()),
            })
            .clone();
        match log_start {
            // Only records deleted unread count; any other gap (such as a
            // transaction marker) is part of the log.
            Ok(log_start) if expected < log_start => confirmed.resets.push(OffsetReset {
                group: group.to_owned(),
                topic,
                partition,
                from: expected,
                to: received,
                log_start,
                detected_at_ms: now_ms(),
            }),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(group, topic, partition, %error, "cannot read the log start to check for skipped records; trying later");
                confirmed.unresolved.push(suspect);
            }
        }
    }
    confirmed
}

/// The log start of `topic`/`partition` in the last fetch response
/// librdkafka handled for it (`None` before the first, or from a broker
/// that does not send it).
fn fetched_log_start(
    consumer: &StreamConsumer<TracingContext>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid for the life of `consumer`; the
    // call only reads the partition's cached offsets into the two locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0)
        .then_some(low)
}
