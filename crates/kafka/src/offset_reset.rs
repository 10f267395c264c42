//! Noticing that a consumer skipped records because they were deleted
//! before it read them — an *offset reset* — and saying so.
//!
//! A broker deletes a partition's oldest records by retention, by
//! `DeleteRecords`, or (the dev broker) past 5 MiB per partition. A group
//! whose position falls behind the log's start can no longer read what lay
//! between; librdkafka then moves it to the log's start (taskstream's
//! consumers run with `auto.offset.reset=earliest`), silently. taskstream's
//! consumer watches for it: the offsets of one partition are dense on
//! taskstream's topics (no transactions, no compaction), so a record that
//! arrives further on than the next expected offset — the one after the
//! previous record, or the committed offset for the first record of an
//! assignment — means records were skipped, and a log start beyond the
//! expected offset confirms they were deleted unread (other gaps, such as
//! transaction markers, are left alone).
//!
//! A confirmed reset is marked in the partition's commit metadata for a
//! while (see [`ResetMark`]), so `taskstream lag`, another process, reports
//! it too.

use serde::Serialize;

/// Records one consumer group skipped in one partition because they were
/// deleted before it read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffsetReset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The first offset skipped: where the group was to read next.
    pub from: i64,
    /// The first offset read after the skip (exclusive end of the range).
    pub to: i64,
    /// The partition's first offset when the reset was confirmed.
    pub log_start: i64,
    /// When it was noticed, ms since the epoch.
    pub detected_at_ms: i64,
}

impl OffsetReset {
    /// How many records the group skipped.
    pub fn skipped(&self) -> i64 {
        (self.to - self.from).max(0)
    }

    /// The mark committed with the partition's offsets while the reset is
    /// reported.
    pub fn mark(&self) -> ResetMark {
        ResetMark {
            from: self.from,
            to: self.to,
            at_ms: self.detected_at_ms,
        }
    }
}

/// An offset reset as written into, and read back from, commit metadata:
/// `;reset=<from>-<to>@<ms>` after taskstream's commit-time stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResetMark {
    /// First offset skipped.
    pub from: i64,
    /// First offset read after the skip.
    pub to: i64,
    /// When the reset was noticed, ms since the epoch.
    pub at_ms: i64,
}

const MARK_KEY: &str = ";reset=";

impl ResetMark {
    /// How many records were skipped.
    pub fn skipped(&self) -> i64 {
        (self.to - self.from).max(0)
    }

    /// The text appended to the commit metadata.
    pub(crate) fn encode(&self) -> String {
        format!("{MARK_KEY}{}-{}@{}", self.from, self.to, self.at_ms)
    }

    /// The mark in commit `metadata`, if there is one.
    pub(crate) fn decode(metadata: &str) -> Option<Self> {
        let rest = &metadata[metadata.find(MARK_KEY)? + MARK_KEY.len()..];
        let rest = rest.split(';').next()?;
        let (range, at) = rest.split_once('@')?;
        let (from, to) = range.split_once('-')?;
        Some(Self {
            from: from.parse().ok()?,
            to: to.parse().ok()?,
            at_ms: at.parse().ok()?,
        })
    }
}

/// The commit time in taskstream's commit `metadata` (ms since the epoch).
pub(crate) fn committed_at_ms(metadata: &str) -> Option<i64> {
    metadata
        .strip_prefix(crate::context::COMMIT_METADATA_PREFIX)?
        .split(';')
        .next()?
        .parse()
        .ok()
}

/// A partition whose records may have been skipped; confirmed or dismissed
/// by [`crate::EventConsumer::confirm_skips`], which asks the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Suspect {
    /// A record arrived past the next expected offset.
    Gap {
        topic: String,
        partition: i32,
        expected: i64,
        received: i64,
    },
    /// The first record of a new assignment: was it the committed offset?
    FirstOfAssignment {
        topic: String,
        partition: i32,
        assignment: u64,
        received: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_survives_the_trip_through_commit_metadata() {
        let mark = ResetMark {
            from: 120,
            to: 15_004,
            at_ms: 1_700_000_000_123,
        };
        let metadata = format!(
            "{}{}{}",
            crate::context::COMMIT_METADATA_PREFIX,
            1_700_000_000_999_i64,
            mark.encode()
        );
        assert_eq!(ResetMark::decode(&metadata), Some(mark));
        assert_eq!(committed_at_ms(&metadata), Some(1_700_000_000_999));
        assert_eq!(mark.skipped(), 14_884);
    }

    #[test]
    fn metadata_without_a_mark_has_none_and_still_gives_its_commit_time() {
        let metadata = format!("{}42", crate::context::COMMIT_METADATA_PREFIX);
        assert_eq!(ResetMark::decode(&metadata), None);
        assert_eq!(committed_at_ms(&metadata), Some(42));
        assert_eq!(ResetMark::decode("some other application's metadata"), None);
        assert_eq!(ResetMark::decode(";reset=garbage"), None);
    }
}
