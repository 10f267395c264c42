//! The workload processor: task events in, per-assignee workload and
//! overload alerts out, exactly once (see `taskstream_services::processor`).

use std::sync::Arc;

use taskstream_avro::RegistryClient;
use taskstream_kafka::KafkaConfig;
use taskstream_services::{EventDecoder, ProcessorError, ProcessorSettings, WorkloadProcessor};
use taskstream_telemetry::Metrics;
use tokio::sync::oneshot;

use super::Component;

/// Starts the workload processor. The receiver resolves when it stops by
/// itself: with [`ProcessorError::Fenced`] when a newer processor took its
/// transactional id over (a process should then exit rather than restart
/// it, which would fence the newer one).
pub fn processor(
    kafka: &KafkaConfig,
    registry: Option<Arc<RegistryClient>>,
    settings: ProcessorSettings,
    metrics: &Arc<Metrics>,
) -> (Component, oneshot::Receiver<Result<(), ProcessorError>>) {
    let processor = WorkloadProcessor::new(
        kafka.clone(),
        Arc::new(EventDecoder::new(registry)),
        settings,
        Arc::clone(metrics),
    );
    let (done, finished) = oneshot::channel();
    let component = Component::spawn("processor", move |shutdown| async move {
        let _ = done.send(processor.run(shutdown).await);
    });
    (component, finished)
}
