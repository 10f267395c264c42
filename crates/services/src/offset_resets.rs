//! What a consumer does about an offset reset — records of its partition
//! deleted before it read them (see `taskstream_kafka::OffsetReset`): it
//! says so, in an ERROR line, in two counters, in its process's readiness
//! and in its commits (which `taskstream lag` reads), and, where the events
//! are still in the outbox, it repairs the gap.
//!
//! The repair asks the outbox to publish again every event the group has
//! not handled ([`OutboxRepair`]). The relay republishes them in their
//! original order, after the records the group is reading now, so a
//! repaired event can arrive after later events of the same task; the
//! group's de-duplication by event id absorbs every event it did handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use async_trait::async_trait;
use taskstream_kafka::OffsetReset;
use taskstream_store::{HandledBy, Store};

/// How many resets a process remembers (the newest are kept).
const REMEMBERED: usize = 64;

/// What was done about a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Not yet attempted.
    Pending,
    /// The outbox requeued this many events the group had not handled.
    Republished(u64),
    /// The outbox could not be asked.
    Failed(String),
    /// No outbox holds this group's events: the skipped events are lost to it.
    Unavailable,
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pending => f.write_str("repair pending"),
            Self::Republished(0) => {
                f.write_str("the outbox holds no event this group has not handled")
            }
            Self::Republished(n) => write!(f, "{n} unhandled events republished from the outbox"),
            Self::Failed(e) => write!(f, "repair failed: {e}"),
            Self::Unavailable => f.write_str("no outbox to repair from: the events are lost"),
        }
    }
}

/// One reset as a process reports it.
#[derive(Debug, Clone)]
pub struct ReportedReset {
    pub reset: OffsetReset,
    pub noticed: Instant,
    pub repair: Repair,
}

impl std::fmt::Display for ReportedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.reset;
        write!(
            f,
            "group {} skipped {} events of {}[{}] (offsets {}..{}, deleted before it read them) {} s ago; {}",
            r.group,
            r.skipped(),
            r.topic,
            r.partition,
            r.from,
            r.to,
            self.noticed.elapsed().as_secs(),
            self.repair
        )
    }
}

/// The offset resets a process's consumers noticed, newest last; shared by
/// its consumer services and its readiness check.
#[derive(Debug, Default)]
pub struct OffsetResets {
    entries: Mutex<VecDeque<ReportedReset>>,
}

impl OffsetResets {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Remembers a reset just noticed.
    pub fn record(&self, reset: &OffsetReset) {
        let mut entries = self.entries.lock().expect("never poisoned");
        entries.push_back(ReportedReset {
            reset: reset.clone(),
            noticed: Instant::now(),
            repair: Repair::Pending,
        });
        while entries.len() > REMEMBERED {
            entries.pop_front();
        }
    }

    /// Records what was done about `reset`.
    pub fn repaired(&self, reset: &OffsetReset, repair: &Repair) {
        let mut entries = self.entries.lock().expect("never poisoned");
        if let Some(entry) = entries.iter_mut().rev().find(|e| &e.reset == reset) {
            entry.repair = repair.clone();
        }
    }

    /// The resets noticed within `window`, newest first.
    pub fn within(&self, window: std::time::Duration) -> Vec<ReportedReset> {
        let entries = self.entries.lock().expect("never poisoned");
        entries
            .iter()
            .rev()
            .filter(|e| e.noticed.elapsed() < window)
            .cloned()
            .collect()
    }
}

/// Gets the events an offset reset skipped delivered again.
#[async_trait]
pub trait GapRepair: Send + Sync + 'static {
    /// Arranges for every event the group has not handled to be published
    /// again; returns how many were requeued.
    async fn repair(&self, resets: &[OffsetReset]) -> Result<u64, String>;
}

/// Repairs from the outbox the group's events come from: every published
/// event on a topic it skipped records of that the group has not handled,
/// as its own database shows, is marked unpublished, and the relay
/// publishes it again (task events on `task-events`, saga events on
/// `task-sagas`). The outbox and the
/// group's database are one store where the components share a database
/// (PostgreSQL), two SQLite files under `taskstream up`, which gives every
/// service a database of its own.
pub struct OutboxRepair {
    outbox: Arc<Store>,
    /// The group's own database.
    handled_in: Arc<Store>,
    /// The group whose processed events count; `None`: the audit log.
    processed_by: Option<String>,
}

impl OutboxRepair {
    /// For the audit-log service, keeping its log in `audit`: an event is
    /// handled once it is audited.
    pub fn for_auditor(outbox: Arc<Store>, audit: Arc<Store>) -> Self {
        Self {
            outbox,
            handled_in: audit,
            processed_by: None,
        }
    }

    /// For the notification service in `group`, keeping its records in
    /// `notifications`: an event is handled once that group processed it.
    pub fn for_notifier(outbox: Arc<Store>, notifications: Arc<Store>, group: &str) -> Self {
        Self {
            outbox,
            handled_in: notifications,
            processed_by: Some(group.to_owned()),
        }
    }
}

#[async_trait]
impl GapRepair for OutboxRepair {
    /// Requeues, topic by topic, what the group has not handled on each
    /// topic it skipped records of.
    async fn repair(&self, resets: &[OffsetReset]) -> Result<u64, String> {
        let handled_by = match &self.processed_by {
            Some(group) => HandledBy::Processed(group),
            None => HandledBy::AuditLog,
        };
        let topics: std::collections::BTreeSet<&str> =
            resets.iter().map(|r| r.topic.as_str()).collect();
        let mut requeued = 0;
        for topic in topics {
            requeued += self
                .outbox
                .requeue_events_unhandled_by(handled_by, &self.handled_in, topic)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(requeued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(partition: i32) -> OffsetReset {
        OffsetReset {
            group: "auditor".into(),
            topic: "task-events".into(),
            partition,
            from: 10,
            to: 250,
            log_start: 240,
            detected_at_ms: 0,
        }
    }

    #[test]
    fn a_reset_is_reported_with_its_range_and_repair_within_the_window_only() {
        let resets = OffsetResets::new();
        resets.record(&reset(2));
        resets.repaired(&reset(2), &Repair::Republished(240));
        let recent = resets.within(std::time::Duration::from_secs(60));
        assert_eq!(recent.len(), 1);
        let text = recent[0].to_string();
        assert!(
            text.contains("group auditor skipped 240 events of task-events[2] (offsets 10..250"),
            "{text}"
        );
        assert!(text.contains("240 unhandled events republished"), "{text}");
        assert!(resets.within(std::time::Duration::ZERO).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_leaves_the_report_window_once_the_window_has_passed() {
        let resets = OffsetResets::new();
        resets.record(&reset(1));
        let window = std::time::Duration::from_secs(15 * 60);
        tokio::time::advance(window - std::time::Duration::from_secs(1)).await;
        let recent = resets.within(window);
        assert_eq!(recent.len(), 1);
        assert!(recent[0].to_string().contains("899 s ago"), "{}", recent[0]);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(resets.within(window).is_empty());
    }

    #[test]
    fn only_the_newest_resets_are_remembered() {
        let resets = OffsetResets::new();
        for p in 0..(REMEMBERED as i32 + 5) {
            resets.record(&reset(p));
        }
        let recent = resets.within(std::time::Duration::from_secs(60));
        assert_eq!(recent.len(), REMEMBERED);
        assert_eq!(recent[0].reset.partition, REMEMBERED as i32 + 4);
    }
}
