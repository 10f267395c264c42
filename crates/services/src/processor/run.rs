//! The workload processor's loop: read task events `read_committed`,
//! compute the workload changes, and write them — state, workloads,
//! alerts — together with the input offsets in one Kafka transaction.
//! Offsets are never committed any other way.
//!
//! # Why a crash cannot double or lose an output
//!
//! Everything the processor knows is in Kafka and committed atomically:
//! its per-task state (the compacted state topic), its outputs, and how
//! far it read (its group's offsets, sent with the transaction). A new
//! producer's `init_transactions` aborts whatever a killed one left open;
//! then the state is read back `read_committed` and reading resumes at the
//! committed offsets, so the state and the position always belong to the
//! same transaction. The same restart runs after an abortable error.
//!
//! # Fencing
//!
//! One processor is active per transactional id. A second one started with
//! the same id fences the first: the first's next transactional call fails
//! fatally as fenced, and it stops ([`ProcessorError::Fenced`]) rather than
//! building a new producer, which would fence the newer one in turn. Any
//! other fatal error gets a new producer (never a retry on the dead one).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskstream_domain::headers;
use taskstream_kafka::{
    read_committed, CommittedInput, GroupMetadata, InboundRecord, KafkaConfig, OutboundRecord,
    TransactionError, TransactionErrorKind, TransactionSettings, TransactionalProducer,
};
use taskstream_telemetry::Metrics;

use super::workload::{Changes, TrackedTask, Workload};
use crate::topics::{ASSIGNEE_WORKLOAD, TASK_EVENTS, WORKLOAD_ALERTS, WORKLOAD_TASK_STATE};
use crate::{Backoff, EncodingError, EventDecoder, Shutdown};

/// The header naming the input event an output record was computed from.
pub const CAUSATION_ID: &str = "causation-id";

/// The name of the component in logs and metrics.
const COMPONENT: &str = "processor";

/// How many times a commit that failed retriably is made again before the
/// transaction is given up (aborted and done again).
const COMMIT_ATTEMPTS: u32 = 5;

/// How the processor runs.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// The stable id that fences an older processor (`transactional.id`).
    pub transactional_id: String,
    /// The consumer group its input offsets are committed under.
    pub group: String,
    /// An assignee with this many open tasks is overloaded.
    pub max_open_tasks: u32,
    /// The most input records one transaction covers.
    pub max_batch: usize,
    /// How long a transaction gathers input after its first record.
    pub batch_linger: Duration,
    /// How long a fetch waits on the broker for new records.
    pub fetch_wait: Duration,
    /// Timeouts of the transactional producer.
    pub transaction_timeout: Duration,
    pub operation_timeout: Duration,
}

/// The transactional id a processor uses unless told otherwise.
pub const PROCESSOR_TRANSACTIONAL_ID: &str = "taskstream-workload-processor";

/// The consumer group the processor's input offsets are committed under.
pub const PROCESSOR_GROUP: &str = "workload-processor";

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            transactional_id: PROCESSOR_TRANSACTIONAL_ID.to_owned(),
            group: PROCESSOR_GROUP.to_owned(),
            max_open_tasks: 20,
            max_batch: 500,
            batch_linger: Duration::from_millis(100),
            fetch_wait: Duration::from_millis(100),
            transaction_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A newer processor took over the transactional id.
    #[error("fenced: another processor took over transactional id {transactional_id} ({message})")]
    Fenced {
        transactional_id: String,
        message: String,
    },
    /// The processor could not be set up (bad configuration).
    #[error("{0}")]
    Setup(String),
}

/// The consume-transform-produce workload processor.
pub struct WorkloadProcessor {
    kafka: KafkaConfig,
    decoder: Arc<EventDecoder>,
    settings: ProcessorSettings,
    metrics: Arc<Metrics>,
}

/// How one transaction ended, when it did not commit.
enum Failed {
    /// Abort (if still possible) and start over on a new producer.
    Restart(TransactionError),
    /// Stop: fenced.
    Fenced(TransactionError),
}

impl WorkloadProcessor {
    /// A processor reading `task-events` from `kafka`.
    pub fn new(
        kafka: KafkaConfig,
        decoder: Arc<EventDecoder>,
        settings: ProcessorSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            kafka,
            decoder,
            settings,
            metrics,
        }
    }

    /// Runs until `shutdown`, or until fenced.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), ProcessorError> {
        let input = CommittedInput::new(
            &self.kafka,
            &self.settings.group,
            &[TASK_EVENTS],
            self.settings.fetch_wait,
        )
        .map_err(|e| ProcessorError::Setup(e.to_string()))?;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let transaction = TransactionSettings {
            transaction_timeout: self.settings.transaction_timeout,
            operation_timeout: self.settings.operation_timeout,
            ..TransactionSettings::new(&self.settings.transactional_id)
        };
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            // A new producer fences older ones and aborts what the last one
            // left open; only then are the state and offsets read back.
            let started = tokio::select! {
                started = TransactionalProducer::start(&self.kafka, COMPONENT, &transaction) => started,
                () = shutdown.wait() => return Ok(()),
            };
            let producer = match started {
                Ok(producer) => producer,
                Err(error) if error.fenced => return Err(self.fenced(&error)),
                Err(error) => {
                    tracing::warn!(component = COMPONENT, %error, "cannot start the transactional producer; trying again");
                    self.pause(&mut backoff, &mut shutdown).await;
                    continue;
                }
            };
            let prepared = async {
                let workload = self.restore().await?;
                input
                    .assign_from_committed(self.settings.operation_timeout)
                    .await?;
                let group = input.group_metadata()?;
                Ok::<_, taskstream_kafka::KafkaError>((workload, group))
            };
            let (mut workload, group) = match prepared.await {
                Ok(prepared) => prepared,
                Err(error) => {
                    tracing::warn!(component = COMPONENT, %error, "cannot read the processor's state back; trying again");
                    self.pause(&mut backoff, &mut shutdown).await;
                    continue;
                }
            };
            tracing::info!(
                component = COMPONENT,
                transactional_id = self.settings.transactional_id.as_str(),
                tasks = workload.tasks(),
                "processing from the last committed transaction"
            );
            loop {
                let Some(first) = self.first_record(&input, &mut shutdown).await else {
                    // Shut down between transactions; nothing is open.
                    return Ok(());
                };
                let began = Instant::now();
                match self
                    .transact(&producer, &group, &mut workload, &input, first)
                    .await
                {
                    Ok(()) => {
                        backoff.reset();
                        self.metrics.transaction(
                            COMPONENT,
                            "committed",
                            began.elapsed().as_secs_f64(),
                        );
                    }
                    Err(Failed::Fenced(error)) => {
                        self.metrics.transaction(
                            COMPONENT,
                            "aborted",
                            began.elapsed().as_secs_f64(),
                        );
                        return Err(self.fenced(&error));
                    }
                    Err(Failed::Restart(error)) => {
                        // Whatever the call that failed said, a producer that
                        // was fenced must not be replaced.
                        if let Some(fatal) = producer.fatal().filter(|f| f.fenced) {
                            self.metrics.transaction(
                                COMPONENT,
                                "aborted",
                                began.elapsed().as_secs_f64(),
                            );
                            return Err(self.fenced(&fatal));
                        }
                        if error.kind == TransactionErrorKind::Abortable
                            || error.kind == TransactionErrorKind::Retriable
                        {
                            if let Err(abort) = producer.abort().await {
                                tracing::warn!(component = COMPONENT, error = %abort, "abort failed; the next producer aborts the transaction");
                            }
                        }
                        self.metrics.transaction(
                            COMPONENT,
                            "aborted",
                            began.elapsed().as_secs_f64(),
                        );
                        tracing::warn!(component = COMPONENT, %error, "transaction aborted; starting again from the last committed one on a new producer");
                        break;
                    }
                }
            }
            drop(producer);
            self.pause(&mut backoff, &mut shutdown).await;
        }
    }

    fn fenced(&self, error: &TransactionError) -> ProcessorError {
        tracing::error!(component = COMPONENT, transactional_id = self.settings.transactional_id.as_str(), %error, "fenced by a newer processor with the same transactional id; stopping");
        ProcessorError::Fenced {
            transactional_id: self.settings.transactional_id.clone(),
            message: error.to_string(),
        }
    }

    async fn pause(&self, backoff: &mut Backoff, shutdown: &mut Shutdown) {
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {},
            () = shutdown.wait() => {},
        }
    }

    /// The workload as of the last committed transaction, from the state
    /// topic read `read_committed`.
    async fn restore(&self) -> Result<Workload, taskstream_kafka::KafkaError> {
        let records = read_committed(
            &self.kafka,
            WORKLOAD_TASK_STATE,
            self.settings.operation_timeout,
        )
        .await?;
        let mut latest: BTreeMap<String, TrackedTask> = BTreeMap::new();
        for record in records {
            let (Some(key), Some(value)) = (record.key, record.payload) else {
                continue;
            };
            let (Ok(task_id), Ok(task)) = (
                String::from_utf8(key),
                serde_json::from_slice::<TrackedTask>(&value),
            ) else {
                tracing::warn!(
                    component = COMPONENT,
                    offset = record.offset,
                    "unreadable record in the state topic; ignored"
                );
                continue;
            };
            latest.insert(task_id, task);
        }
        let mut workload = Workload::new(self.settings.max_open_tasks);
        for (task_id, task) in latest {
            workload.restore(&task_id, task);
        }
        Ok(workload)
    }

    /// Waits for the next record; `None` on shutdown.
    async fn first_record(
        &self,
        input: &CommittedInput,
        shutdown: &mut Shutdown,
    ) -> Option<InboundRecord> {
        loop {
            tokio::select! {
                received = input.recv() => match received {
                    Ok(record) => return Some(record),
                    Err(error) => {
                        tracing::warn!(component = COMPONENT, %error, "receiving failed; trying again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                () = shutdown.wait() => return None,
            }
        }
    }

    // ANCHOR: transact
    /// One transaction, from `first` on: each record's outputs are sent as
    /// it is processed, more records are taken until the batch is full or
    /// its linger time is over, then the offsets after them go into the
    /// transaction and it commits.
    async fn transact(
        &self,
        producer: &TransactionalProducer,
        group: &GroupMetadata,
        workload: &mut Workload,
        input: &CommittedInput,
        first: InboundRecord,
    ) -> Result<(), Failed> {
        let fail = |error: TransactionError| {
            if error.fenced {
                Failed::Fenced(error)
            } else {
                Failed::Restart(error)
            }
        };
        producer.begin().map_err(fail)?;
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + self.settings.batch_linger;
        let mut record = first;
        let mut taken = 0;
        loop {
            next_offsets.insert((record.topic.clone(), record.partition), record.offset + 1);
            self.process(producer, workload, &record).await?;
            taken += 1;
            if taken >= self.settings.max_batch {
                break;
            }
            match tokio::time::timeout_at(deadline, input.recv()).await {
                Ok(Ok(next)) => record = next,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let offsets: Vec<(String, i32, i64)> = next_offsets
            .into_iter()
            .map(|((topic, partition), next)| (topic, partition, next))
            .collect();
        producer.send_offsets(group, &offsets).await.map_err(fail)?;
        producer
            .commit_retrying(COMMIT_ATTEMPTS)
            .await
            .map_err(fail)
    }
    // ANCHOR_END: transact

    /// Applies one input record and sends its outputs in the open
    /// transaction.
    async fn process(
        &self,
        producer: &TransactionalProducer,
        workload: &mut Workload,
        record: &InboundRecord,
    ) -> Result<(), Failed> {
        let event_type = record.header_str(headers::EVENT_TYPE).unwrap_or("other");
        let Some(payload) = &record.payload else {
            self.metrics
                .handled(&self.settings.group, event_type, "skipped");
            return Ok(());
        };
        let event = match self.decoder.decode(payload).await {
            Ok(event) => event,
            Err(error) if decode_may_pass(&error) => {
                // The event is fine; the schema registry is not (or was not
                // given): abort, so the event is read again from the last
                // commit, rather than move its offset on without it.
                tracing::warn!(
                    component = COMPONENT,
                    topic = record.topic.as_str(),
                    partition = record.partition,
                    offset = record.offset,
                    error = &error as &dyn std::error::Error,
                    "cannot decode the event yet; aborting to read it again"
                );
                return Err(Failed::Restart(TransactionError {
                    operation: "decode",
                    kind: TransactionErrorKind::Abortable,
                    fenced: false,
                    message: error.to_string(),
                }));
            }
            Err(error) => {
                // An event no build of this processor can read is passed
                // over, loudly; its offset still moves on with the rest.
                tracing::error!(
                    component = COMPONENT,
                    topic = record.topic.as_str(),
                    partition = record.partition,
                    offset = record.offset,
                    error = &error as &dyn std::error::Error,
                    "undecodable event skipped"
                );
                self.metrics
                    .handled(&self.settings.group, event_type, "skipped");
                return Ok(());
            }
        };
        if let Some(changes) = workload.apply(&event) {
            self.publish(producer, &event.id.to_string(), &changes)
                .await
                .map_err(|e| match producer.fatal() {
                    // A record refused because the producer is dead (fenced,
                    // most likely) is no reason to abort and go on.
                    Some(fatal) if fatal.fenced => Failed::Fenced(fatal),
                    Some(fatal) => Failed::Restart(fatal),
                    None => Failed::Restart(TransactionError {
                        operation: "produce",
                        kind: TransactionErrorKind::Abortable,
                        fenced: false,
                        message: e.to_string(),
                    }),
                })?;
        }
        self.metrics
            .handled(&self.settings.group, event_type, "processed");
        Ok(())
    }

    /// Queues the records for one event's changes in the open transaction.
    async fn publish(
        &self,
        producer: &TransactionalProducer,
        cause: &str,
        changes: &Changes,
    ) -> Result<(), taskstream_kafka::KafkaError> {
        let mut records: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![(
            WORKLOAD_TASK_STATE,
            changes.task_id.clone().into_bytes(),
            json(&changes.task),
            "workload.task-state",
        )];
        for workload in &changes.workloads {
            records.push((
                ASSIGNEE_WORKLOAD,
                workload.assignee.clone().into_bytes(),
                json(workload),
                "workload.updated",
            ));
        }
        for alert in &changes.alerts {
            records.push((
                WORKLOAD_ALERTS,
                alert.assignee.clone().into_bytes(),
                json(alert),
                "workload.overloaded",
            ));
        }
        for (topic, key, value, kind) in &records {
            let headers: [(&str, &[u8]); 3] = [
                (CAUSATION_ID, cause.as_bytes()),
                (headers::EVENT_TYPE, kind.as_bytes()),
                (headers::CONTENT_TYPE, headers::JSON_CONTENT_TYPE.as_bytes()),
            ];
            // The delivery report is not awaited: a refused record makes
            // the commit fail (abortable), which restarts the transaction.
            drop(
                producer
                    .enqueue(OutboundRecord {
                        topic,
                        key,
                        payload: value,
                        headers: &headers,
                    })
                    .await?,
            );
        }
        Ok(())
    }
}

/// A processor output value as JSON.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and timestamps always encode.
    serde_json::to_vec(value).expect("output values encode as JSON")
}

/// Whether a decoding failure may pass, so the event must be read again
/// rather than skipped: the registry was unreachable, or no registry was
/// given for Avro records.
fn decode_may_pass(error: &EncodingError) -> bool {
    error.is_retriable() || matches!(error, EncodingError::NoRegistry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_the_registry_cannot_resolve_yet_is_read_again_not_skipped() {
        // Avro framing, schema id 7: the decoder must ask a registry.
        let framed = [0u8, 0, 0, 0, 7, 2, 4];
        let unreachable = Arc::new(taskstream_avro::RegistryClient::new("http://127.0.0.1:1"));
        let error = EventDecoder::new(Some(unreachable))
            .decode(&framed)
            .await
            .unwrap_err();
        assert!(decode_may_pass(&error), "{error:?}");
        let error = EventDecoder::new(None).decode(&framed).await.unwrap_err();
        assert!(decode_may_pass(&error), "{error:?}");
        let error = EventDecoder::new(None)
            .decode(b"{not json")
            .await
            .unwrap_err();
        assert!(!decode_may_pass(&error), "{error:?}");
    }
}
