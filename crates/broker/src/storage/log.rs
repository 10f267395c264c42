//! One partition's log: an ordered run of segments in one directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::batch::{assign_offset, validate_produced, BatchError};
use super::producers::{ProducerStates, Sequenced};
use super::segment::{now_ms, RecoveryReport, Segment};
use super::txn::{is_control, marker_batch, marker_kind, PartitionTxns};

/// How a partition's log is laid out and kept; per-topic values come from
/// the topic's configs (`segment.bytes`, `retention.ms`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before one would exceed this size (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old (`segment.ms`).
    pub segment_ms: i64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Delete sealed segments whose newest record is older than this; -1 keeps all (`retention.ms`).
    pub retention_ms: i64,
    /// Delete the oldest sealed segments while the log is larger; -1 for no limit (`retention.bytes`).
    pub retention_bytes: i64,
    /// The largest batch accepted (`max.message.bytes`).
    pub max_message_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1024 * 1024 + 12,
        }
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("record batch larger than max.message.bytes")]
    TooLarge,
    #[error("the batch's sequence number does not follow the producer's last one")]
    OutOfOrderSequence,
    #[error("the producer's epoch is older than one already seen (it was fenced)")]
    FencedEpoch,
    #[error("log write failed: {0}")]
    Io(#[from] io::Error),
}

impl From<BatchError> for AppendError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::TooLarge => Self::TooLarge,
            e @ BatchError::Corrupt(_) => Self::Corrupt(e.to_string()),
            e @ BatchError::Unsupported(_) => Self::Unsupported(e.to_string()),
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OutOfRange { offset: i64, start: i64, end: i64 },
    #[error("log read failed: {0}")]
    Io(#[from] io::Error),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What readers of a partition (Fetch, ListOffsets, the high watermark
/// and last stable offset) are shown of what was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Everything written to the segment file (the page cache): what a
    /// killed process keeps. Fits a flush policy that acknowledges before
    /// fsync.
    #[default]
    Written,
    /// Only what an fsync covered: what a power loss keeps. Fits a flush
    /// policy that fsyncs before acknowledging, so that no reader sees
    /// (and no consumer commits past) a record a crash could still lose.
    Durable,
}

/// A partition's log on disk. Not thread-safe: the caller holds a lock.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    /// Raised by DeleteRecords (kept in `log-start-offset`) and retention.
    log_start_offset: i64,
    producers: ProducerStates,
    txns: PartitionTxns,
    /// Appends so far, and how many of them are known fsynced.
    written: u64,
    synced: u64,
    /// Every offset below this one is fsynced (log and indexes). Raised
    /// by a finished [`PendingSync`] and by a roll; read under the same
    /// lock as the rest of the log, so fetches pay no extra lock for it.
    durable_offset: i64,
    visibility: Visibility,
}

/// An fsync of a log's active segment, taken under the log's lock
/// ([`PartitionLog::begin_sync`]) and run without it, so that appends and
/// reads go on while the disk works.
#[derive(Debug)]
pub struct PendingSync {
    files: [fs::File; 3],
    through: u64,
    /// The log's next offset when the sync was taken: it covers everything below.
    through_offset: i64,
}

impl PendingSync {
    /// fsyncs the segment's log and index files.
    pub fn run(&self) -> io::Result<()> {
        self.files.iter().try_for_each(fs::File::sync_data)
    }
}

const LOG_START_FILE: &str = "log-start-offset";

impl PartitionLog {
    /// Opens (creating) the log in `dir`, recovering its last segment.
    pub fn open(dir: &Path, config: LogConfig) -> io::Result<(Self, RecoveryReport)> {
        fs::create_dir_all(dir)?;
        let mut bases: Vec<i64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut report = RecoveryReport::default();
        let mut producers = ProducerStates::default();
        let mut txns = PartitionTxns::load(dir, bases.last().copied().unwrap_or(0))?;
        match bases.split_last() {
            None => {
                segments.insert(0, Segment::create(dir, 0)?);
            }
            Some((&last, sealed)) => {
                for (i, &base) in sealed.iter().enumerate() {
                    let next = bases[i + 1];
                    segments.insert(base, Segment::open_sealed(dir, base, next)?);
                }
                let (segment, r) = Segment::recover(
                    dir,
                    last,
                    config.index_interval_bytes,
                    &mut |header, batch| {
                        if is_control(header) {
                            producers.record_marker(header.producer_id, header.producer_epoch);
                            if let Some(commit) = marker_kind(batch) {
                                txns.on_marker(header.producer_id, commit, header.base_offset);
                            }
                        } else {
                            producers.record(header);
                            txns.on_batch(header);
                        }
                    },
                )?;
                // What a killed process left in the page cache may not be
                // on disk yet: make it durable before anyone reads it.
                segment.sync()?;
                report = r;
                segments.insert(last, segment);
            }
        }
        txns.rewrite()?;
        let first_base = *segments.keys().next().expect("a segment");
        let next = segments
            .values()
            .next_back()
            .expect("a segment")
            .next_offset;
        let recorded = match fs::read_to_string(dir.join(LOG_START_FILE)) {
            Ok(text) => text.trim().parse::<i64>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let log_start_offset = recorded.clamp(first_base, next.max(first_base));
        // The replay of the last segment may list aborts below the log start.
        txns.forget_before(log_start_offset)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                config,
                segments,
                log_start_offset,
                producers,
                txns,
                written: 0,
                synced: 0,
                durable_offset: next,
                visibility: Visibility::Written,
            },
            report,
        ))
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    /// Sets what readers are shown (see [`Visibility`]).
    pub fn set_visibility(&mut self, visibility: Visibility) {
        self.visibility = visibility;
    }

    /// What readers are shown.
    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// Every offset below this one is fsynced.
    #[cfg(test)]
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset
    }

    /// The high watermark readers are shown: the end of the log, or under
    /// [`Visibility::Durable`] the end of what an fsync covered. Fetch
    /// returns nothing at or beyond it.
    pub fn high_watermark(&self) -> i64 {
        match self.visibility {
            Visibility::Written => self.next_offset(),
            Visibility::Durable => self.durable_offset.min(self.next_offset()),
        }
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// DeleteRecords: makes `offset` the first readable offset (durably),
    /// deleting the sealed segments entirely below it. Returns the new log
    /// start, or `None` if `offset` is beyond the end of the log.
    pub fn delete_records_before(&mut self, offset: i64) -> io::Result<Option<i64>> {
        if offset > self.next_offset() {
            return Ok(None);
        }
        if offset <= self.log_start_offset {
            return Ok(Some(self.log_start_offset));
        }
        let tmp = self.dir.join(format!("{LOG_START_FILE}.tmp"));
        fs::write(&tmp, offset.to_string())?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, self.dir.join(LOG_START_FILE))?;
        sync_dir(&self.dir)?;
        self.log_start_offset = offset;
        while self.segments.len() > 1 {
            let oldest = self.segments.values().next().expect("a segment");
            if oldest.next_offset > offset {
                break;
            }
            let base = oldest.base_offset;
            self.segments.remove(&base).expect("the oldest").delete()?;
            PartitionTxns::forget_segment(&self.dir, base)?;
        }
        self.txns.forget_before(offset)?;
        Ok(Some(offset))
    }

    /// The offset the next record will get (the high watermark on a single node).
    pub fn next_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Total bytes of all segments.
    pub fn size(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Validates produced batches and appends them, assigning offsets from
    /// [`Self::next_offset`]. Either every batch is validated before any is
    /// written, so a bad batch leaves the log untouched.
    pub fn append(&mut self, data: &mut [u8]) -> Result<Appended, AppendError> {
        let batches = validate_produced(data, self.config.max_message_bytes)?;
        // Decide every batch before writing any, so that a refused batch
        // leaves the log untouched.
        let mut accepted = Vec::new();
        let mut pending = Vec::new();
        let mut duplicate_of = None;
        for (header, range) in batches {
            match self.producers.check(&header, &pending) {
                Sequenced::Append => {
                    pending.push(header);
                    accepted.push((header, range));
                }
                Sequenced::Duplicate(offset) => {
                    duplicate_of.get_or_insert(offset);
                }
                Sequenced::OutOfOrder => return Err(AppendError::OutOfOrderSequence),
                Sequenced::FencedEpoch => return Err(AppendError::FencedEpoch),
            }
        }
        let base_offset = duplicate_of.unwrap_or_else(|| self.next_offset());
        let mut last_offset = base_offset;
        for (header, range) in accepted {
            let len = range.len() as u64;
            self.maybe_roll(len, header.last_offset_delta)?;
            let offset = self.next_offset();
            let batch = &mut data[range];
            assign_offset(batch, offset, 0);
            let mut header = header;
            header.base_offset = offset;
            let interval = self.config.index_interval_bytes;
            self.active_mut().append(batch, &header, interval)?;
            self.producers.record(&header);
            self.txns.on_batch(&header);
            last_offset = header.last_offset();
        }
        self.written += 1;
        Ok(Appended {
            base_offset,
            last_offset,
        })
    }

    fn maybe_roll(&mut self, incoming: u64, last_offset_delta: i32) -> io::Result<()> {
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        let too_big = active.size() + incoming > self.config.segment_bytes;
        let too_old = now_ms() - active.created_ms >= self.config.segment_ms;
        let relative_overflow = active.next_offset + i64::from(last_offset_delta)
            - active.base_offset
            >= i64::from(u32::MAX);
        if too_big || too_old || relative_overflow {
            self.roll()?;
        }
        Ok(())
    }

    /// Appends a commit or abort marker for `producer_id`'s transaction,
    /// written with `epoch` (which fences older epochs of the producer).
    /// Returns the marker's offset.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<i64, AppendError> {
        let mut batch = marker_batch(producer_id, epoch, commit, now_ms());
        self.maybe_roll(batch.len() as u64, 0)?;
        let offset = self.next_offset();
        assign_offset(&mut batch, offset, 0);
        let (mut header, _) =
            super::batch::check_batch(&batch).map_err(|e| AppendError::Corrupt(e.to_string()))?;
        header.base_offset = offset;
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(&batch, &header, interval)?;
        self.producers.record_marker(producer_id, epoch);
        if let Some(aborted) = self.txns.on_marker(producer_id, commit, offset) {
            self.txns.persist(&aborted)?;
        }
        self.written += 1;
        Ok(offset)
    }

    /// The last stable offset: below it, every transaction has ended. It
    /// never passes the [`Self::high_watermark`].
    pub fn last_stable_offset(&self) -> i64 {
        self.txns
            .last_stable_offset(self.next_offset())
            .min(self.high_watermark())
    }

    /// Aborted transactions overlapping `from..to`: `(producer id, first offset)`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        self.txns.aborted_between(from, to)
    }

    /// Seals the active segment and starts a new one at the next offset.
    pub fn roll(&mut self) -> io::Result<()> {
        let next = self.next_offset();
        self.txns.snapshot(next)?;
        self.active_mut().seal()?;
        // Sealing fsynced the segment; the ones before were fsynced when
        // they were sealed.
        self.durable_offset = self.durable_offset.max(next);
        let segment = Segment::create(&self.dir, next)?;
        sync_dir(&self.dir)?;
        self.segments.insert(next, segment);
        Ok(())
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes`
    /// (see [`Segment::read`]). Empty at the end of the log.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        first_whole: bool,
    ) -> Result<Vec<u8>, ReadError> {
        let (start, end) = (self.log_start_offset(), self.next_offset());
        if offset < start || offset > end {
            return Err(ReadError::OutOfRange { offset, start, end });
        }
        let Some((_, segment)) = self.segments.range(..=offset).next_back() else {
            return Ok(Vec::new());
        };
        let data = segment.read(offset, max_bytes, first_whole)?;
        if data.is_empty() {
            // `offset` is the end of a sealed segment; continue in the next one.
            if let Some((_, next)) = self.segments.range(offset + 1..).next() {
                return Ok(next.read(offset, max_bytes, first_whole)?);
            }
        }
        Ok(data)
    }

    /// Like [`Self::read`], but only batches that end below `limit` (the
    /// high watermark, or the last stable offset for `read_committed`).
    pub fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        first_whole: bool,
        limit: i64,
    ) -> Result<Vec<u8>, ReadError> {
        let mut data = self.read(offset, max_bytes, first_whole)?;
        let mut end = 0;
        while let Some(header) = super::batch::BatchHeader::parse(&data[end..]) {
            let Some(len) = header.total_len() else { break };
            if header.last_offset() >= limit || end + len > data.len() {
                break;
            }
            end += len;
        }
        data.truncate(end);
        Ok(data)
    }

    /// The first record whose timestamp is at or after `timestamp`:
    /// `(timestamp, offset)`, or `None` when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        for segment in self.segments.values() {
            if let Some(found) = segment.find_timestamp(timestamp)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Deletes whole sealed segments past `retention.ms` (by their newest
    /// record) or beyond `retention.bytes`; the active segment is kept, so
    /// the log start offset only moves to a segment boundary. Returns how
    /// many segments went.
    pub fn enforce_retention(&mut self, now_ms: i64) -> io::Result<usize> {
        let mut deleted = 0;
        let mut size = self.size();
        while self.segments.len() > 1 {
            let oldest = self
                .segments
                .values()
                .next()
                .expect("more than one segment");
            let expired = self.config.retention_ms >= 0
                && oldest.max_timestamp >= 0
                && now_ms - oldest.max_timestamp > self.config.retention_ms;
            let oversized = self.config.retention_bytes >= 0
                && size - oldest.size() >= self.config.retention_bytes as u64;
            if !(expired || oversized) {
                break;
            }
            let base = oldest.base_offset;
            let segment = self.segments.remove(&base).expect("the oldest segment");
            size -= segment.size();
            segment.delete()?;
            PartitionTxns::forget_segment(&self.dir, base)?;
            deleted += 1;
        }
        let first_base = *self.segments.keys().next().expect("a segment");
        self.log_start_offset = self.log_start_offset.max(first_base);
        self.txns.forget_before(self.log_start_offset)?;
        Ok(deleted)
    }

    /// Whether appended data awaits an fsync.
    #[cfg(test)]
    pub fn has_unsynced(&self) -> bool {
        self.written > self.synced
    }

    /// The fsync that makes every append so far durable, if one is due.
    /// Segments rolled before are already synced ([`Self::roll`]); one
    /// rolled while the fsync runs is synced by its roll.
    pub fn begin_sync(&self) -> io::Result<Option<PendingSync>> {
        if self.synced >= self.written {
            return Ok(None);
        }
        Ok(Some(PendingSync {
            files: self.active().file_handles()?,
            through: self.written,
            through_offset: self.next_offset(),
        }))
    }

    /// Records a [`PendingSync`] that succeeded, making what it covered
    /// durable (and, under [`Visibility::Durable`], visible).
    pub fn finish_sync(&mut self, done: &PendingSync) {
        self.synced = self.synced.max(done.through);
        self.durable_offset = self.durable_offset.max(done.through_offset);
    }
}

/// fsyncs a directory so that files created in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
