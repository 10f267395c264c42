//! Judging a consumer group's health from a sliding window of offset
//! observations, by the rules Burrow uses.
//!
//! Each observation pairs a partition's committed offset with its log's
//! start and end offsets at one moment. First, events lost to the group:
//!
//! - if the committed offset is below the log's start, records were deleted
//!   before the group read them (retention, `DeleteRecords`, or the dev
//!   broker's 5 MiB limit): `LOST`, whatever the consumer does next;
//! - if the consumer marked an offset reset in its commit metadata (it
//!   skipped records deleted unread, recently): `RESET`.
//!
//! Neither is ever `OK`, even with no lag left. Otherwise, over the window,
//! per partition:
//!
//! 1. if the lag was zero at any point, the partition is `OK`;
//! 2. if the committed offset ever went backwards, it is `REWIND`;
//! 3. if the time since the last commit exceeds the time the window's
//!    commits span, the consumer stopped committing: `STOP`;
//! 4. if the committed offset never moved (while commits kept coming), the
//!    consumer is stuck: `STALL`;
//! 5. if the offset moved but the lag never shrank between two observations,
//!    the consumer is falling behind: `WARN`;
//! 6. otherwise `OK`.
//!
//! A group is `ERR` if any partition is `LOST`, `RESET`, `STOP`, `STALL` or
//! `REWIND`, `WARN` if any is `WARN`, `OK` otherwise.
//!
//! Commit times come from the commit metadata taskstream's consumers write
//! with every commit (they re-commit at a steady pace even without progress,
//! which is what separates `STALL` from `STOP`). For other groups, the time
//! an offset was first observed stands in for its commit time, so a stuck
//! consumer of another application shows as `STOP`.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use taskstream_kafka::{PartitionOffsets, ResetMark};

/// A partition's verdict. Ordered from healthy to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PartitionStatus {
    Ok,
    Warn,
    Stall,
    Stop,
    Rewind,
    /// The consumer skipped records deleted before it read them (recently).
    Reset,
    /// Records the group has not read are deleted: its committed offset is
    /// below the log's start.
    Lost,
}

/// A group's verdict: its worst partition, folded into three levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GroupStatus {
    Ok,
    Warn,
    Err,
}

impl From<PartitionStatus> for GroupStatus {
    fn from(s: PartitionStatus) -> Self {
        match s {
            PartitionStatus::Ok => Self::Ok,
            PartitionStatus::Warn => Self::Warn,
            PartitionStatus::Stall
            | PartitionStatus::Stop
            | PartitionStatus::Rewind
            | PartitionStatus::Reset
            | PartitionStatus::Lost => Self::Err,
        }
    }
}

impl std::fmt::Display for PartitionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Stall => "STALL",
            Self::Stop => "STOP",
            Self::Rewind => "REWIND",
            Self::Reset => "RESET",
            Self::Lost => "LOST",
        })
    }
}

impl std::fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Err => "ERR",
        })
    }
}

/// One partition at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// When it was observed, ms since the epoch.
    pub at_ms: i64,
    pub committed: Option<i64>,
    /// When `committed` was committed, ms since the epoch.
    pub committed_at_ms: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// An offset reset the consumer marked in its commit metadata.
    pub reset: Option<ResetMark>,
}

impl Observation {
    pub fn lag(&self) -> i64 {
        (self.log_end - self.committed.unwrap_or(0)).max(0)
    }

    /// Records deleted before the group read them.
    pub fn deleted_unread(&self) -> i64 {
        self.committed
            .map_or(0, |committed| (self.log_start - committed).max(0))
    }
}

/// Applies the rules in the module docs to a window, oldest first.
pub fn evaluate(window: &[Observation], now_ms: i64) -> PartitionStatus {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return PartitionStatus::Ok;
    };
    if last.deleted_unread() > 0 {
        return PartitionStatus::Lost;
    }
    if last.reset.is_some() {
        return PartitionStatus::Reset;
    }
    if window.iter().any(|o| o.lag() == 0) {
        return PartitionStatus::Ok;
    }
    let offsets: Vec<i64> = window.iter().map(|o| o.committed.unwrap_or(0)).collect();
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return PartitionStatus::Rewind;
    }
    if now_ms - last.committed_at_ms > last.committed_at_ms - first.committed_at_ms {
        return PartitionStatus::Stop;
    }
    if offsets.iter().all(|o| *o == offsets[0]) {
        return PartitionStatus::Stall;
    }
    if window.windows(2).all(|w| w[1].lag() >= w[0].lag()) {
        return PartitionStatus::Warn;
    }
    PartitionStatus::Ok
}

/// One partition in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: Option<i64>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
    /// Records the group did not or cannot read because they were deleted
    /// first: those below the log's start (`LOST`), or those the consumer
    /// reported skipping (`RESET`).
    pub skipped_events: i64,
    /// The offsets skipped, `[from, to)`, when known.
    pub skipped_offsets: Option<[i64; 2]>,
    /// Age of the oldest record the group has not consumed, when known.
    pub lag_seconds: Option<f64>,
    pub status: PartitionStatus,
}

/// One group in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub status: GroupStatus,
    pub worst_partition_status: PartitionStatus,
    pub total_lag: i64,
    /// The largest `lag_seconds` of any partition.
    pub max_lag_seconds: Option<f64>,
    pub partitions: Vec<PartitionReport>,
}

type Key = (String, String, i32);

/// Keeps the last `window` observations of every partition of every group
/// and evaluates them.
#[derive(Debug)]
pub struct LagTracker {
    window: usize,
    history: BTreeMap<Key, VecDeque<Observation>>,
}

impl LagTracker {
    /// `window` observations per partition are kept (Burrow's default is 10).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            history: BTreeMap::new(),
        }
    }

    /// Records one poll of `group`'s offsets on `topic` taken at `at_ms`.
    pub fn observe(&mut self, group: &str, topic: &str, offsets: &[PartitionOffsets], at_ms: i64) {
        for p in offsets {
            let key = (group.to_owned(), topic.to_owned(), p.partition);
            let history = self.history.entry(key).or_default();
            // Without a commit time from the committer, an offset counts as
            // committed when it was first seen.
            let committed_at_ms = p.committed_at_ms.unwrap_or_else(|| {
                history
                    .back()
                    .filter(|prev| prev.committed == p.committed)
                    .map_or(at_ms, |prev| prev.committed_at_ms)
            });
            history.push_back(Observation {
                at_ms,
                committed: p.committed,
                committed_at_ms,
                log_start: p.log_start,
                log_end: p.log_end,
                reset: p.reset,
            });
            while history.len() > self.window {
                history.pop_front();
            }
        }
    }

    /// The verdict for every group observed, evaluated at `now_ms`.
    /// `lag_seconds(group, topic, partition)` supplies the age of the oldest
    /// unconsumed record where known.
    pub fn report(
        &self,
        now_ms: i64,
        lag_seconds: impl Fn(&str, &str, i32) -> Option<f64>,
    ) -> Vec<GroupReport> {
        let mut groups: BTreeMap<&str, Vec<PartitionReport>> = BTreeMap::new();
        for ((group, topic, partition), history) in &self.history {
            let window: Vec<Observation> = history.iter().copied().collect();
            let last = window.last().expect("histories are never empty");
            let lag = last.lag();
            let (skipped_events, skipped_offsets) = match (last.deleted_unread(), last.reset) {
                (0, Some(mark)) => (mark.skipped(), Some([mark.from, mark.to])),
                (0, None) => (0, None),
                (n, _) => (n, last.committed.map(|c| [c, last.log_start])),
            };
            groups.entry(group).or_default().push(PartitionReport {
                topic: topic.clone(),
                partition: *partition,
                committed_offset: last.committed,
                log_start_offset: last.log_start,
                log_end_offset: last.log_end,
                lag,
                skipped_events,
                skipped_offsets,
                lag_seconds: if lag == 0 {
                    Some(0.0)
                } else {
                    lag_seconds(group, topic, *partition)
                },
                status: evaluate(&window, now_ms),
            });
        }
        groups
            .into_iter()
            .map(|(group, partitions)| {
                let worst = partitions
                    .iter()
                    .map(|p| p.status)
                    .max()
                    .unwrap_or(PartitionStatus::Ok);
                GroupReport {
                    group: group.to_owned(),
                    status: worst.into(),
                    worst_partition_status: worst,
                    total_lag: partitions.iter().map(|p| p.lag).sum(),
                    max_lag_seconds: partitions
                        .iter()
                        .filter_map(|p| p.lag_seconds)
                        .reduce(f64::max),
                    partitions,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations one second apart: (committed, log_end, committed_at in s).
    fn window(points: &[(i64, i64, i64)]) -> Vec<Observation> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(committed, log_end, committed_at))| Observation {
                at_ms: i as i64 * 1000,
                committed: Some(committed),
                committed_at_ms: committed_at * 1000,
                log_start: 0,
                log_end,
                reset: None,
            })
            .collect()
    }

    fn now(points: &[(i64, i64, i64)]) -> i64 {
        (points.len() as i64 - 1) * 1000
    }

    #[test]
    fn zero_lag_anywhere_in_the_window_is_ok() {
        let p = [(10, 20, 0), (10, 10, 0), (10, 30, 0)];
        assert_eq!(evaluate(&window(&p), 60_000), PartitionStatus::Ok);
    }

    #[test]
    fn a_committed_offset_going_backwards_is_rewind() {
        let p = [(10, 20, 0), (12, 22, 1), (5, 22, 2)];
        assert_eq!(evaluate(&window(&p), now(&p)), PartitionStatus::Rewind);
    }

    #[test]
    fn commits_that_stopped_while_lagging_are_stop() {
        // Commits at 0..2 s, then nothing; evaluated at 10 s.
        let p = [(10, 20, 0), (11, 21, 1), (12, 22, 2)];
        assert_eq!(evaluate(&window(&p), 10_000), PartitionStatus::Stop);
    }

    #[test]
    fn fresh_commits_of_the_same_offset_while_lagging_are_stall() {
        let p = [(10, 20, 0), (10, 21, 1), (10, 25, 2)];
        assert_eq!(evaluate(&window(&p), now(&p)), PartitionStatus::Stall);
    }

    #[test]
    fn progress_with_lag_that_never_shrinks_is_warn() {
        let p = [(10, 20, 0), (12, 25, 1), (14, 30, 2), (16, 34, 3)];
        assert_eq!(evaluate(&window(&p), now(&p)), PartitionStatus::Warn);
    }

    #[test]
    fn progress_with_lag_shrinking_somewhere_is_ok() {
        let p = [(10, 20, 0), (12, 25, 1), (20, 26, 2), (22, 30, 3)];
        assert_eq!(evaluate(&window(&p), now(&p)), PartitionStatus::Ok);
    }

    #[test]
    fn without_commit_times_an_unmoving_offset_is_stop() {
        let mut tracker = LagTracker::new(10);
        for i in 0..5 {
            let offsets = [PartitionOffsets {
                partition: 0,
                committed: Some(3),
                committed_at_ms: None,
                log_start: 0,
                log_end: 10 + i,
                reset: None,
            }];
            tracker.observe("other-app", "t", &offsets, i * 1000);
        }
        let report = tracker.report(4000, |_, _, _| Some(7.5));
        assert_eq!(report[0].status, GroupStatus::Err);
        assert_eq!(report[0].worst_partition_status, PartitionStatus::Stop);
        assert_eq!(report[0].total_lag, 11);
        assert_eq!(report[0].partitions[0].lag_seconds, Some(7.5));
    }

    #[test]
    fn the_group_takes_its_worst_partition_and_the_window_slides() {
        let mut tracker = LagTracker::new(3);
        for i in 0..6_i64 {
            let offsets = [
                PartitionOffsets {
                    partition: 0,
                    committed: Some(i),
                    committed_at_ms: Some(i * 1000),
                    log_start: 0,
                    log_end: i,
                    reset: None,
                },
                PartitionOffsets {
                    partition: 1,
                    committed: Some(i),
                    committed_at_ms: Some(i * 1000),
                    log_start: 0,
                    log_end: 2 * i + 1,
                    reset: None,
                },
            ];
            tracker.observe("g", "t", &offsets, i * 1000);
        }
        let report = tracker.report(5000, |_, _, _| None);
        let statuses: Vec<_> = report[0].partitions.iter().map(|p| p.status).collect();
        assert_eq!(statuses, [PartitionStatus::Ok, PartitionStatus::Warn]);
        assert_eq!(report[0].status, GroupStatus::Warn);
        assert_eq!(report[0].partitions[1].lag, 6);
    }

    /// A taskstream consumer's partition: commits every second, no lag.
    fn caught_up(
        i: i64,
        log_start: i64,
        committed: i64,
        reset: Option<ResetMark>,
    ) -> PartitionOffsets {
        PartitionOffsets {
            partition: 3,
            committed: Some(committed),
            committed_at_ms: Some(i * 1000),
            log_start,
            log_end: committed,
            reset,
        }
    }

    #[test]
    fn a_committed_offset_below_the_log_start_is_lost_not_ok() {
        let mut tracker = LagTracker::new(5);
        for i in 0..3 {
            // Lag zero would say OK; the records between 100 and 9,000 are gone.
            let mut p = caught_up(i, 9_000, 100, None);
            p.log_end = 9_500;
            tracker.observe("auditor", "task-events", &[p], i * 1000);
        }
        let report = tracker.report(2000, |_, _, _| None);
        let p = &report[0].partitions[0];
        assert_eq!(p.status, PartitionStatus::Lost);
        assert_eq!(report[0].status, GroupStatus::Err);
        assert_eq!(p.skipped_events, 8_900);
        assert_eq!(p.skipped_offsets, Some([100, 9_000]));
    }

    #[test]
    fn a_reset_the_consumer_marked_is_reported_even_with_no_lag() {
        let mark = ResetMark {
            from: 100,
            to: 9_000,
            at_ms: 500,
        };
        let mut tracker = LagTracker::new(5);
        for i in 0..3 {
            tracker.observe(
                "auditor",
                "task-events",
                &[caught_up(i, 9_000, 9_400 + i, Some(mark))],
                i * 1000,
            );
        }
        let report = tracker.report(2000, |_, _, _| None);
        let p = &report[0].partitions[0];
        assert_eq!(p.lag, 0);
        assert_eq!(p.status, PartitionStatus::Reset);
        assert_eq!(report[0].status, GroupStatus::Err);
        assert_eq!(
            (p.skipped_events, p.skipped_offsets),
            (8_900, Some([100, 9_000]))
        );
        assert_eq!(PartitionStatus::Reset.to_string(), "RESET");
        assert_eq!(PartitionStatus::Lost.to_string(), "LOST");
    }
}
