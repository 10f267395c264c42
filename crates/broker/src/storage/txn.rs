//! One partition's view of transactions: which producers have a
//! transaction open on it (and from which offset), the last stable offset
//! that follows, and the aborted transactions that `read_committed`
//! fetches must be told about.
//!
//! Files beside the segments:
//! * `aborted-transactions`: one line `producer id, first offset, last
//!   offset (the abort marker)` per aborted transaction, appended when the
//!   abort marker is written and rewritten on recovery;
//! * `<base offset>.txns`: the transactions open when a segment was rolled
//!   (`producer id, first offset` per line), written and fsynced with the
//!   roll, so that recovery, which scans only the last segment, knows about
//!   transactions that began in an older one.
//!
//! Control batches (markers) hold one record whose key is `version: i16,
//! type: i16` (0 abort, 1 commit) and whose value is `version: i16,
//! coordinator epoch: i32`.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::batch::{BatchHeader, HEADER_LEN};

pub(crate) const TRANSACTIONAL_FLAG: i16 = 0x10;
pub(crate) const CONTROL_FLAG: i16 = 0x20;
const ABORTED_FILE: &str = "aborted-transactions";

/// A transaction that ended with an abort marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Whether a batch is a control batch (a transaction marker).
pub(crate) fn is_control(header: &BatchHeader) -> bool {
    header.attributes & CONTROL_FLAG != 0
}

/// Whether a batch belongs to a transaction (its data or its markers).
pub(crate) fn is_transactional(header: &BatchHeader) -> bool {
    header.attributes & TRANSACTIONAL_FLAG != 0
}

/// Encodes a commit or abort marker for `producer_id` at `epoch` (offset 0,
/// to be assigned when appended).
pub(crate) fn marker_batch(producer_id: i64, epoch: i16, commit: bool, timestamp: i64) -> Vec<u8> {
    let kind: i16 = if commit { 1 } else { 0 };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&0i32.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch: epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(key.into()),
        value: Some(value.into()),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a control record always encodes");
    buf.to_vec()
}

/// Reads an unsigned varint at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether a control batch is a commit marker (`Some(true)`), an abort
/// marker (`Some(false)`), or something else.
pub(crate) fn marker_kind(batch: &[u8]) -> Option<bool> {
    let mut at = HEADER_LEN;
    varint(batch, &mut at)?; // record length
    at += 1; // attributes
    varint(batch, &mut at)?; // timestamp delta
    varint(batch, &mut at)?; // offset delta
                             // The key is 4 bytes: its length is the zigzag varint of 4, i.e. 8.
    let key_len = varint(batch, &mut at)?;
    if key_len != 8 {
        return None;
    }
    let key = batch.get(at..at + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// The transaction state of one partition.
#[derive(Debug)]
pub(crate) struct PartitionTxns {
    dir: PathBuf,
    /// Producer id to the first offset of its open transaction.
    ongoing: BTreeMap<i64, i64>,
    /// Ordered by `last_offset`.
    aborted: Vec<AbortedTxn>,
}

fn snapshot_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.txns"))
}

impl PartitionTxns {
    /// Loads what is known before the last segment (based at
    /// `last_base`); the caller then replays the last segment's batches.
    pub fn load(dir: &Path, last_base: i64) -> io::Result<Self> {
        let mut ongoing = BTreeMap::new();
        match fs::read_to_string(snapshot_path(dir, last_base)) {
            Ok(text) => {
                for line in text.lines() {
                    let mut f = line.split_whitespace().map(str::parse::<i64>);
                    if let (Some(Ok(pid)), Some(Ok(first))) = (f.next(), f.next()) {
                        ongoing.insert(pid, first);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut aborted = Vec::new();
        match fs::read_to_string(dir.join(ABORTED_FILE)) {
            Ok(text) => {
                for line in text.lines() {
                    let f: Vec<i64> = line
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    // Entries from the last segment are rebuilt by the replay.
                    if let [pid, first, last] = f[..] {
                        if last < last_base {
                            aborted.push(AbortedTxn {
                                producer_id: pid,
                                first_offset: first,
                                last_offset: last,
                            });
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir: dir.to_owned(),
            ongoing,
            aborted,
        })
    }

    /// Rewrites `aborted-transactions` with what is known (after recovery).
    pub fn rewrite(&self) -> io::Result<()> {
        if self.aborted.is_empty() && !self.dir.join(ABORTED_FILE).exists() {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{ABORTED_FILE}.tmp"));
        let text: String = self
            .aborted
            .iter()
            .map(|a| format!("{} {} {}\n", a.producer_id, a.first_offset, a.last_offset))
            .collect();
        fs::write(&tmp, text)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, self.dir.join(ABORTED_FILE))
    }

    /// A data batch was appended.
    pub fn on_batch(&mut self, header: &BatchHeader) {
        if is_transactional(header) && !is_control(header) {
            self.ongoing
                .entry(header.producer_id)
                .or_insert(header.base_offset);
        }
    }

    /// A marker was appended at `offset`; returns the aborted transaction
    /// it closed, if it was an abort of an open one.
    pub fn on_marker(&mut self, producer_id: i64, commit: bool, offset: i64) -> Option<AbortedTxn> {
        let first = self.ongoing.remove(&producer_id)?;
        if commit {
            return None;
        }
        let aborted = AbortedTxn {
            producer_id,
            first_offset: first,
            last_offset: offset,
        };
        self.aborted.push(aborted);
        Some(aborted)
    }

    /// Appends an aborted transaction to `aborted-transactions`, fsynced
    /// (the segment holding its marker may be rolled and trusted before
    /// the next flush).
    pub fn persist(&self, aborted: &AbortedTxn) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(ABORTED_FILE))?;
        file.write_all(
            format!(
                "{} {} {}\n",
                aborted.producer_id, aborted.first_offset, aborted.last_offset
            )
            .as_bytes(),
        )?;
        file.sync_data()
    }

    /// Writes (and fsyncs) the open transactions for a segment starting at `base_offset`.
    pub fn snapshot(&self, base_offset: i64) -> io::Result<()> {
        let path = snapshot_path(&self.dir, base_offset);
        if self.ongoing.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let text: String = self
            .ongoing
            .iter()
            .map(|(pid, first)| format!("{pid} {first}\n"))
            .collect();
        fs::write(&path, text)?;
        fs::File::open(&path)?.sync_all()
    }

    /// Forgets aborted transactions that ended below `offset` (the new log
    /// start), so that their list does not grow with the log's history.
    pub fn forget_before(&mut self, offset: i64) -> io::Result<()> {
        let before = self.aborted.len();
        self.aborted.retain(|a| a.last_offset >= offset);
        if self.aborted.len() != before {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Deletes the snapshot of a deleted segment.
    pub fn forget_segment(dir: &Path, base_offset: i64) -> io::Result<()> {
        match fs::remove_file(snapshot_path(dir, base_offset)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The last stable offset: the first offset of the oldest open
    /// transaction, or `next_offset` when none is open.
    pub fn last_stable_offset(&self, next_offset: i64) -> i64 {
        self.ongoing
            .values()
            .copied()
            .min()
            .map_or(next_offset, |first| first.min(next_offset))
    }

    /// Aborted transactions overlapping the offsets `from..to`, as
    /// `(producer id, first offset)`, oldest first.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::check_batch;

    #[test]
    fn a_marker_batch_is_a_valid_control_batch_that_says_what_it_marks() {
        for commit in [true, false] {
            let batch = marker_batch(42, 3, commit, 1_000);
            let (header, len) = check_batch(&batch).unwrap();
            assert_eq!(len, batch.len());
            assert!(is_control(&header) && is_transactional(&header));
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!(marker_kind(&batch), Some(commit));
        }
    }

    #[test]
    fn the_last_stable_offset_stops_at_the_oldest_open_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut txns = PartitionTxns::load(dir.path(), 0).unwrap();
        let batch = |pid, base| {
            let mut h = BatchHeader::parse(&marker_batch(pid, 0, true, 0)).unwrap();
            h.attributes = TRANSACTIONAL_FLAG;
            h.base_offset = base;
            h
        };
        assert_eq!(txns.last_stable_offset(10), 10);
        txns.on_batch(&batch(1, 10));
        txns.on_batch(&batch(2, 11));
        txns.on_batch(&batch(1, 12));
        assert_eq!(txns.last_stable_offset(13), 10);
        assert_eq!(txns.on_marker(1, false, 13).unwrap().first_offset, 10);
        assert_eq!(txns.last_stable_offset(14), 11);
        assert_eq!(txns.on_marker(2, true, 14), None);
        assert_eq!(txns.last_stable_offset(15), 15);
        assert_eq!(txns.aborted_between(0, 15), [(1, 10)]);
        assert_eq!(txns.aborted_between(14, 15), []);
    }
}
