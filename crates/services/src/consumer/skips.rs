//! Offset resets: what a group does about records deleted before it read
//! them — an ERROR line, two counters, the readiness registry, and a repair
//! from the outbox where one is given (see [`crate::offset_resets`]).

use std::time::Duration;

use taskstream_kafka::OffsetReset;

use super::metrics::GroupMetrics;
use crate::offset_resets::{GapRepair, OffsetResets, Repair};
use crate::Backoff;

/// Attempts at a repair before it is reported failed.
const REPAIR_ATTEMPTS: u32 = 3;

/// Reports `resets` of `group` and repairs them with `repair`, when given,
/// trying a few times; `registry` (what readiness reads) learns both.
pub(crate) async fn report(
    group: &str,
    resets: &[OffsetReset],
    metrics: &GroupMetrics,
    registry: Option<&OffsetResets>,
    repair: Option<&dyn GapRepair>,
) {
    for reset in resets {
        tracing::error!(
            group,
            topic = reset.topic,
            partition = reset.partition,
            from_offset = reset.from,
            to_offset = reset.to,
            skipped = reset.skipped(),
            log_start = reset.log_start,
            "offset reset: group {group} skipped offsets {}..{} of {}[{}] ({} events), deleted before it read them",
            reset.from,
            reset.to,
            reset.topic,
            reset.partition,
            reset.skipped()
        );
        metrics.offset_reset(reset);
        if let Some(registry) = registry {
            registry.record(reset);
        }
    }
    let outcome = match repair {
        None => Repair::Unavailable,
        Some(repair) => {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
            let mut attempt = 1;
            loop {
                match repair.repair(resets).await {
                    Ok(requeued) => {
                        tracing::warn!(group, requeued, "repairing the offset reset: events this group has not handled are published again from the outbox");
                        metrics.republished(requeued);
                        break Repair::Republished(requeued);
                    }
                    Err(error) if attempt < REPAIR_ATTEMPTS => {
                        tracing::warn!(group, %error, attempt, "cannot repair the offset reset yet; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                        attempt += 1;
                    }
                    Err(error) => {
                        tracing::error!(group, %error, "cannot repair the offset reset: the skipped events stay lost to this group");
                        break Repair::Failed(error);
                    }
                }
            }
        }
    };
    if let Some(registry) = registry {
        for reset in resets {
            registry.repaired(reset, &outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use taskstream_telemetry::Metrics;

    use super::*;

    /// Fails its first `failures` repairs, then requeues 240 events.
    struct Outbox {
        failures: Mutex<u32>,
    }

    #[async_trait]
    impl GapRepair for Outbox {
        async fn repair(&self, _resets: &[OffsetReset]) -> Result<u64, String> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err("database away".into());
            }
            Ok(240)
        }
    }

    fn reset() -> OffsetReset {
        OffsetReset {
            group: "auditor".into(),
            topic: "task-events".into(),
            partition: 3,
            from: 10,
            to: 250,
            log_start: 240,
            detected_at_ms: 0,
        }
    }

    async fn reported(failures: u32) -> (String, String) {
        let metrics = Metrics::new();
        let group = GroupMetrics::new(Arc::clone(&metrics), "auditor");
        let registry = OffsetResets::new();
        let outbox = Outbox {
            failures: Mutex::new(failures),
        };
        report(
            "auditor",
            &[reset()],
            &group,
            Some(&registry),
            Some(&outbox),
        )
        .await;
        let recent = registry.within(Duration::from_secs(60));
        assert_eq!(recent.len(), 1);
        (recent[0].to_string(), metrics.render())
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_counted_registered_and_repaired_after_a_failed_attempt() {
        let (text, scraped) = reported(REPAIR_ATTEMPTS - 1).await;
        assert!(text.contains("240 unhandled events republished"), "{text}");
        let skipped = scraped
            .lines()
            .find(|l| l.contains("skipped_events") && l.contains("partition=\"3\""))
            .expect("skipped events counted");
        assert!(skipped.ends_with(" 240"), "{skipped}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_failing_every_attempt_is_reported_failed() {
        let (text, _) = reported(REPAIR_ATTEMPTS).await;
        assert!(text.contains("repair failed: database away"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_repair_the_events_are_reported_lost() {
        let metrics = Metrics::new();
        let group = GroupMetrics::new(metrics, "notifier");
        let registry = OffsetResets::new();
        report("notifier", &[reset()], &group, Some(&registry), None).await;
        let text = registry.within(Duration::from_secs(60))[0].to_string();
        assert!(text.contains("no outbox to repair from"), "{text}");
    }
}
