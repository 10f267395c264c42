//! Dead-lettering: the layer that parks a record the group gives up on, on
//! the dead-letter topic (see [`crate::dead_letter`] for its headers),
//! before the record is acknowledged.

use async_trait::async_trait;
use taskstream_kafka::{InboundRecord, KafkaError};

use super::HandleError;
use crate::{Backoff, DeadLetterPublisher, ErrorClass, Shutdown};

/// Where a record is given up to.
#[async_trait]
pub(crate) trait DeadLetters: Send + Sync {
    async fn publish(
        &self,
        record: &InboundRecord,
        group: &str,
        class: ErrorClass,
        error: &str,
        attempts: u32,
    ) -> Result<(), KafkaError>;
}

#[async_trait]
impl DeadLetters for DeadLetterPublisher {
    async fn publish(
        &self,
        record: &InboundRecord,
        group: &str,
        class: ErrorClass,
        error: &str,
        attempts: u32,
    ) -> Result<(), KafkaError> {
        DeadLetterPublisher::publish(self, record, group, class, error, attempts).await
    }
}

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Decode,
    Handle,
}

/// Why a record that failed with `error` at `stage` is dead-lettered.
pub(crate) fn class_of(stage: Stage, error: &HandleError) -> ErrorClass {
    match (stage, error.is_retriable()) {
        (_, true) => ErrorClass::RetriesExhausted,
        (Stage::Decode, false) => ErrorClass::Undecodable,
        (Stage::Handle, false) => ErrorClass::Permanent,
    }
}

/// Parks `record` on the dead-letter topic, trying again until the broker
/// takes it: nothing may be acknowledged before. `false` if shutdown came
/// first (the record stays unacknowledged and comes again).
pub(crate) async fn park(
    dead_letters: &impl DeadLetters,
    record: &InboundRecord,
    group: &str,
    class: ErrorClass,
    error: &str,
    attempts: u32,
    shutdown: &mut Shutdown,
) -> bool {
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    loop {
        match dead_letters
            .publish(record, group, class, error, attempts)
            .await
        {
            Ok(()) => {
                tracing::warn!(
                    group,
                    class = class.as_str(),
                    partition = record.partition,
                    offset = record.offset,
                    "record sent to the dead-letter topic"
                );
                return true;
            }
            Err(publish_error) => {
                let delay = backoff.next_delay();
                tracing::warn!(group, error = %publish_error, "cannot publish a dead letter; retrying");
                tokio::select! {
                    _ = shutdown.wait() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Refuses the first `refusals` dead letters, then keeps what it is given.
    struct Topic {
        refusals: Mutex<u32>,
        parked: Mutex<Vec<(String, &'static str, String, u32)>>,
    }

    impl Topic {
        fn refusing(refusals: u32) -> Self {
            Self {
                refusals: Mutex::new(refusals),
                parked: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl DeadLetters for Topic {
        async fn publish(
            &self,
            _record: &InboundRecord,
            group: &str,
            class: ErrorClass,
            error: &str,
            attempts: u32,
        ) -> Result<(), KafkaError> {
            let mut refusals = self.refusals.lock().unwrap();
            if *refusals > 0 {
                *refusals -= 1;
                return Err(KafkaError::Consume("broker away".into()));
            }
            self.parked.lock().unwrap().push((
                group.to_owned(),
                class.as_str(),
                error.to_owned(),
                attempts,
            ));
            Ok(())
        }
    }

    fn record() -> InboundRecord {
        InboundRecord {
            topic: "task-events".into(),
            partition: 2,
            offset: 9,
            key: None,
            payload: Some(b"{oops".to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_is_retried_until_the_broker_takes_it() {
        let (_trigger, mut shutdown) = Shutdown::new();
        let topic = Topic::refusing(3);
        let started = tokio::time::Instant::now();
        let parked = park(
            &topic,
            &record(),
            "auditor",
            ErrorClass::Undecodable,
            "not json",
            1,
            &mut shutdown,
        )
        .await;
        assert!(parked);
        assert!(
            started.elapsed() > std::time::Duration::ZERO,
            "it waited between tries"
        );
        assert_eq!(
            *topic.parked.lock().unwrap(),
            [(
                "auditor".to_owned(),
                "undecodable",
                "not json".to_owned(),
                1
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_trying_and_leaves_the_record_unacknowledged() {
        let (trigger, mut shutdown) = Shutdown::new();
        let topic = Topic::refusing(u32::MAX);
        trigger.trigger();
        let parked = park(
            &topic,
            &record(),
            "notifier",
            ErrorClass::Permanent,
            "410",
            1,
            &mut shutdown,
        )
        .await;
        assert!(!parked);
        assert!(topic.parked.lock().unwrap().is_empty());
    }

    #[test]
    fn the_class_says_where_and_how_the_record_failed() {
        let transient = HandleError::transient("away");
        let permanent = HandleError::permanent("bad");
        assert_eq!(
            class_of(Stage::Decode, &transient),
            ErrorClass::RetriesExhausted
        );
        assert_eq!(
            class_of(Stage::Handle, &transient),
            ErrorClass::RetriesExhausted
        );
        assert_eq!(class_of(Stage::Decode, &permanent), ErrorClass::Undecodable);
        assert_eq!(class_of(Stage::Handle, &permanent), ErrorClass::Permanent);
    }
}
