//! Sparse indexes kept in files beside each segment, read with positioned
//! reads so that memory does not grow with the log.
//!
//! * `.index`: 8-byte entries `(relative offset: u32, position: u32)`,
//!   one per `index_interval_bytes` of log, in offset order.
//! * `.timeindex`: 16-byte entries `(max timestamp so far: i64, relative
//!   offset: u32, position: u32)`, written at the same points plus once when
//!   the segment is sealed; the timestamps never decrease.
//!
//! Both are rebuilt from the log when the last segment is recovered, so a
//! torn index write is harmless.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One index file of fixed-size entries.
#[derive(Debug)]
pub(crate) struct IndexFile<const N: usize> {
    file: File,
    entries: u64,
}

impl<const N: usize> IndexFile<N> {
    /// Opens (creating) the index, ignoring a torn trailing partial entry.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let entries = len / N as u64;
        if len % N as u64 != 0 {
            file.set_len(entries * N as u64)?;
        }
        Ok(Self { file, entries })
    }

    /// Removes every entry.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.entries = 0;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn push(&mut self, entry: [u8; N]) -> io::Result<()> {
        self.file.write_all(&entry)?;
        self.entries += 1;
        Ok(())
    }

    pub fn get(&self, i: u64) -> io::Result<[u8; N]> {
        let mut entry = [0u8; N];
        self.file.read_exact_at(&mut entry, i * N as u64)?;
        Ok(entry)
    }

    /// The index of the last entry for which `is_before` holds, assuming it
    /// holds for a prefix of the entries; `None` when it holds for none.
    pub fn last_where(&self, is_before: impl Fn(&[u8; N]) -> bool) -> io::Result<Option<u64>> {
        let (mut lo, mut hi) = (0u64, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if is_before(&self.get(mid)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo.checked_sub(1))
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Another handle on the file, to fsync it without the log's lock.
    pub fn file_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// `.index` entries.
pub(crate) type OffsetIndex = IndexFile<8>;
/// `.timeindex` entries.
pub(crate) type TimeIndex = IndexFile<16>;

pub(crate) fn offset_entry(relative_offset: u32, position: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&relative_offset.to_be_bytes());
    e[4..].copy_from_slice(&position.to_be_bytes());
    e
}

/// `(relative offset, position)` of an `.index` entry.
pub(crate) fn read_offset_entry(e: &[u8; 8]) -> (u32, u32) {
    (
        u32::from_be_bytes(e[..4].try_into().unwrap()),
        u32::from_be_bytes(e[4..].try_into().unwrap()),
    )
}

pub(crate) fn time_entry(timestamp: i64, relative_offset: u32, position: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&timestamp.to_be_bytes());
    e[8..12].copy_from_slice(&relative_offset.to_be_bytes());
    e[12..].copy_from_slice(&position.to_be_bytes());
    e
}

/// `(max timestamp so far, relative offset, position)` of a `.timeindex` entry.
pub(crate) fn read_time_entry(e: &[u8; 16]) -> (i64, u32, u32) {
    (
        i64::from_be_bytes(e[..8].try_into().unwrap()),
        u32::from_be_bytes(e[8..12].try_into().unwrap()),
        u32::from_be_bytes(e[12..].try_into().unwrap()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_finds_the_last_entry_at_or_before_the_offset_and_a_torn_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index = OffsetIndex::open(&path).unwrap();
        for (rel, pos) in [(0, 0), (10, 4096), (25, 8200)] {
            index.push(offset_entry(rel, pos)).unwrap();
        }
        let find = |index: &OffsetIndex, target: u32| {
            index
                .last_where(|e| read_offset_entry(e).0 <= target)
                .unwrap()
                .map(|i| read_offset_entry(&index.get(i).unwrap()))
        };
        assert_eq!(find(&index, 9), Some((0, 0)));
        assert_eq!(find(&index, 10), Some((10, 4096)));
        assert_eq!(find(&index, 1000), Some((25, 8200)));
        drop(index);
        // A crash in the middle of an entry leaves 3 stray bytes.
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        (&file).write_all(&[1, 2, 3]).unwrap();
        let index = OffsetIndex::open(&path).unwrap();
        assert_eq!(index.len(), 3);
        assert_eq!(find(&index, 30), Some((25, 8200)));
    }
}
