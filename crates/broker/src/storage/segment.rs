//! One segment: a `.log` file of record batches stored exactly as produced
//! (offset assigned), plus its `.index` and `.timeindex` (see [`super::index`]).
//! Files are named after the segment's base offset, zero-padded to 20 digits.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::batch::{check_batch, BatchHeader, HEADER_LEN};
use super::index::{
    offset_entry, read_offset_entry, read_time_entry, time_entry, OffsetIndex, TimeIndex,
};

/// The file of one segment with the given extension (`log`, `index`, `timeindex`).
pub(crate) fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What recovery found at the end of the last segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whole, valid batches kept.
    pub batches: u64,
    /// Bytes cut off the end: a torn or corrupt tail.
    pub truncated_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    dir: PathBuf,
    log: File,
    size: u64,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    last_batch: Option<(u32, u32)>,
    pub max_timestamp: i64,
    pub next_offset: i64,
    /// When the segment got its first batch (ms), for `segment.ms` rolls;
    /// after a restart, the log file's last modification instead.
    pub created_ms: i64,
}

impl Segment {
    fn open_files(dir: &Path, base_offset: i64) -> io::Result<(File, OffsetIndex, TimeIndex)> {
        let log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(segment_path(dir, base_offset, "log"))?;
        let index = OffsetIndex::open(&segment_path(dir, base_offset, "index"))?;
        let time_index = TimeIndex::open(&segment_path(dir, base_offset, "timeindex"))?;
        Ok((log, index, time_index))
    }

    /// Creates an empty segment starting at `base_offset`.
    pub fn create(dir: &Path, base_offset: i64) -> io::Result<Self> {
        let (log, index, time_index) = Self::open_files(dir, base_offset)?;
        Ok(Self {
            base_offset,
            dir: dir.to_owned(),
            log,
            size: 0,
            index,
            time_index,
            bytes_since_index: 0,
            last_batch: None,
            max_timestamp: -1,
            next_offset: base_offset,
            created_ms: now_ms(),
        })
    }

    /// Opens a sealed (not last) segment whose successor starts at `next_offset`,
    /// trusting its files: only the last segment can have a torn tail.
    pub fn open_sealed(dir: &Path, base_offset: i64, next_offset: i64) -> io::Result<Self> {
        let (log, index, time_index) = Self::open_files(dir, base_offset)?;
        let size = log.metadata()?.len();
        let mut segment = Self {
            base_offset,
            dir: dir.to_owned(),
            log,
            size,
            index,
            time_index,
            bytes_since_index: 0,
            last_batch: None,
            max_timestamp: -1,
            next_offset,
            created_ms: 0,
        };
        segment.max_timestamp = match segment.time_index.len() {
            0 => segment.scan_max_timestamp()?,
            n => read_time_entry(&segment.time_index.get(n - 1)?).0,
        };
        Ok(segment)
    }

    fn scan_max_timestamp(&self) -> io::Result<i64> {
        let mut max = -1;
        let mut pos = 0;
        while pos < self.size {
            let Some(header) = self.header_at(pos)? else {
                break;
            };
            max = max.max(header.max_timestamp);
            match header.total_len() {
                Some(len) => pos += len as u64,
                None => break,
            }
        }
        Ok(max)
    }

    /// Opens the last segment, validating every batch (length, CRC, offsets
    /// increasing), truncating whatever follows the last valid batch, and
    /// rebuilding both indexes.
    /// `seen` is shown every valid batch (header and bytes), oldest first.
    pub fn recover(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        seen: &mut dyn FnMut(&BatchHeader, &[u8]),
    ) -> io::Result<(Self, RecoveryReport)> {
        let mut segment = Self::create(dir, base_offset)?;
        let file_len = segment.log.metadata()?.len();
        segment.created_ms = segment
            .log
            .metadata()?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or_else(now_ms, |d| d.as_millis() as i64);
        segment.index.clear()?;
        segment.time_index.clear()?;
        let mut report = RecoveryReport::default();
        let mut pos = 0u64;
        let mut buf = Vec::new();
        while let Some(header) = segment.header_at(pos)? {
            let Some(len) = header.total_len() else { break };
            if pos + len as u64 > file_len || header.base_offset < segment.next_offset {
                break;
            }
            buf.resize(len, 0);
            segment.log.read_exact_at(&mut buf, pos)?;
            if check_batch(&buf).is_err() {
                break;
            }
            segment.index_batch(&header, pos, len as u64, index_interval)?;
            seen(&header, &buf);
            segment.next_offset = header.last_offset() + 1;
            pos += len as u64;
            report.batches += 1;
        }
        if pos < file_len {
            segment.log.set_len(pos)?;
            segment.log.sync_all()?;
            report.truncated_bytes = file_len - pos;
        }
        segment.size = pos;
        Ok((segment, report))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn header_at(&self, pos: u64) -> io::Result<Option<BatchHeader>> {
        let mut buf = [0u8; HEADER_LEN];
        match self.log.read_exact_at(&mut buf, pos) {
            Ok(()) => Ok(BatchHeader::parse(&buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn index_batch(
        &mut self,
        header: &BatchHeader,
        pos: u64,
        len: u64,
        index_interval: u64,
    ) -> io::Result<()> {
        let relative = (header.base_offset - self.base_offset) as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.index.len() == 0 || self.bytes_since_index >= index_interval {
            self.index.push(offset_entry(relative, pos as u32))?;
            self.time_index
                .push(time_entry(self.max_timestamp, relative, pos as u32))?;
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.last_batch = Some((relative, pos as u32));
        Ok(())
    }

    /// Appends one batch whose offset is already assigned. On a failed
    /// write the file is cut back to its previous length.
    pub fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval: u64,
    ) -> io::Result<()> {
        if self.is_empty() {
            self.created_ms = now_ms();
        }
        let pos = self.size;
        if let Err(e) = self.log.write_all(batch) {
            let _ = self.log.set_len(pos);
            return Err(e);
        }
        self.size += batch.len() as u64;
        self.next_offset = header.last_offset() + 1;
        self.index_batch(header, pos, batch.len() as u64, index_interval)
    }

    /// The position of the batch holding `offset` (or the first one after it).
    fn position_of(&self, offset: i64) -> io::Result<Option<u64>> {
        let target = (offset - self.base_offset).max(0) as u32;
        let mut pos = match self
            .index
            .last_where(|e| read_offset_entry(e).0 <= target)?
        {
            Some(i) => u64::from(read_offset_entry(&self.index.get(i)?).1),
            None => 0,
        };
        while pos < self.size {
            let Some(header) = self.header_at(pos)? else {
                return Ok(None);
            };
            if header.last_offset() >= offset {
                return Ok(Some(pos));
            }
            pos += header.total_len().unwrap_or(usize::MAX) as u64;
        }
        Ok(None)
    }

    /// Whole batches starting with the one holding `offset`, up to
    /// `max_bytes`; the first batch is returned whole even when larger, if
    /// `first_whole` is set (so a consumer can always make progress).
    pub fn read(&self, offset: i64, max_bytes: usize, first_whole: bool) -> io::Result<Vec<u8>> {
        let Some(pos) = self.position_of(offset)? else {
            return Ok(Vec::new());
        };
        let available = (self.size - pos) as usize;
        let mut buf = vec![0u8; available.min(max_bytes.max(HEADER_LEN))];
        self.log.read_exact_at(&mut buf, pos)?;
        let mut end = 0;
        while let Some(header) = BatchHeader::parse(&buf[end..]) {
            let len = header.total_len().unwrap_or(usize::MAX);
            if end + len > buf.len() {
                if end == 0 && first_whole && len <= available {
                    buf.resize(len, 0);
                    self.log.read_exact_at(&mut buf, pos)?;
                    end = len;
                }
                break;
            }
            end += len;
        }
        buf.truncate(end);
        Ok(buf)
    }

    /// The first record at or after `timestamp` in this segment:
    /// `(its timestamp, its offset)`.
    pub fn find_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let mut pos = match self
            .time_index
            .last_where(|e| read_time_entry(e).0 < timestamp)?
        {
            Some(i) => u64::from(read_time_entry(&self.time_index.get(i)?).2),
            None => 0,
        };
        while pos < self.size {
            let Some(header) = self.header_at(pos)? else {
                break;
            };
            let len = header.total_len().unwrap_or(usize::MAX);
            if header.max_timestamp >= timestamp {
                let mut batch = vec![0u8; len];
                self.log.read_exact_at(&mut batch, pos)?;
                return Ok(Some(first_record_at_or_after(&batch, &header, timestamp)));
            }
            pos += len as u64;
        }
        Ok(None)
    }

    /// Marks the segment as no longer written: a last `.timeindex` entry
    /// carries its maximum timestamp, and everything is synced.
    pub fn seal(&mut self) -> io::Result<()> {
        if let Some((relative, pos)) = self.last_batch {
            self.time_index
                .push(time_entry(self.max_timestamp, relative, pos))?;
        }
        self.sync()
    }

    pub fn sync(&self) -> io::Result<()> {
        self.log.sync_data()?;
        self.index.sync()?;
        self.time_index.sync()
    }

    /// Other handles on the segment's files (log and indexes), to fsync
    /// them without the log's lock.
    pub fn file_handles(&self) -> io::Result<[File; 3]> {
        Ok([
            self.log.try_clone()?,
            self.index.file_handle()?,
            self.time_index.file_handle()?,
        ])
    }

    /// Deletes the segment's files.
    pub fn delete(self) -> io::Result<()> {
        for ext in ["log", "index", "timeindex", "txns"] {
            match fs::remove_file(segment_path(&self.dir, self.base_offset, ext)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Decodes the batch's records to find the first with a timestamp at or
/// after `timestamp`; falls back to the batch's base offset when the records
/// cannot be decoded (e.g. a compression codec not built in).
fn first_record_at_or_after(batch: &[u8], header: &BatchHeader, timestamp: i64) -> (i64, i64) {
    let mut bytes = bytes::Bytes::copy_from_slice(batch);
    if let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes) {
        if let Some(record) = set.records.iter().find(|r| r.timestamp >= timestamp) {
            return (record.timestamp, record.offset);
        }
    }
    (header.max_timestamp, header.base_offset)
}
