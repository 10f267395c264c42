//! Record batches (magic v2) as they travel on the wire and sit in the log.
//!
//! The broker never re-encodes a batch: it validates the header and CRC and
//! rewrites only `baseOffset` (bytes 0..8) and `partitionLeaderEpoch`
//! (bytes 12..16). The batch CRC (crc32c) covers the bytes from
//! `attributes` (byte 21) to the end, so neither rewrite changes it.

use std::fmt;

/// Bytes of a v2 batch header, up to and including `recordsCount`.
pub(crate) const HEADER_LEN: usize = 61;
/// `baseOffset` (8) plus `batchLength` (4): the part not counted in `batchLength`.
pub(crate) const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

/// The fixed-size header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Reads a header from the first [`HEADER_LEN`] bytes, or `None` when
    /// fewer bytes are given.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let i64_at = |at: usize| i64::from_be_bytes(buf[at..at + 8].try_into().unwrap());
        let i32_at = |at: usize| i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        Some(Self {
            base_offset: i64_at(0),
            batch_length: i32_at(8),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().unwrap()),
            attributes: i16::from_be_bytes(buf[21..23].try_into().unwrap()),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: i64_at(43),
            producer_epoch: i16::from_be_bytes(buf[51..53].try_into().unwrap()),
            base_sequence: i32_at(53),
            records_count: i32_at(57),
        })
    }

    /// The whole batch's size in bytes, header included, if the length field is sane.
    pub fn total_len(&self) -> Option<usize> {
        let body = usize::try_from(self.batch_length).ok()?;
        (body >= HEADER_LEN - LOG_OVERHEAD).then_some(body + LOG_OVERHEAD)
    }

    /// The sequence number of the batch's last record (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }

    /// The offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// Truncated, bad length, bad magic, or CRC mismatch.
    Corrupt(&'static str),
    /// Well-formed but not something a producer may send (control batches).
    Unsupported(&'static str),
    /// Larger than the topic's `max.message.bytes`.
    TooLarge,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt(why) => write!(f, "corrupt record batch: {why}"),
            Self::Unsupported(why) => write!(f, "unsupported record batch: {why}"),
            Self::TooLarge => f.write_str("record batch larger than max.message.bytes"),
        }
    }
}

/// Checks one batch at the start of `buf`: header, length and CRC. Returns
/// its header and total length. Used both for produced data and when
/// recovering a log.
pub(crate) fn check_batch(buf: &[u8]) -> Result<(BatchHeader, usize), BatchError> {
    let header =
        BatchHeader::parse(buf).ok_or(BatchError::Corrupt("shorter than a batch header"))?;
    let len = header
        .total_len()
        .ok_or(BatchError::Corrupt("batch length out of range"))?;
    if len > buf.len() {
        return Err(BatchError::Corrupt("batch length beyond the data"));
    }
    if header.magic != 2 {
        return Err(BatchError::Corrupt(
            "only magic 2 record batches are accepted",
        ));
    }
    if crc32c::crc32c(&buf[CRC_START..len]) != header.crc {
        return Err(BatchError::Corrupt("CRC mismatch"));
    }
    if header.last_offset_delta < 0 || header.records_count < 0 {
        return Err(BatchError::Corrupt("negative record count"));
    }
    Ok((header, len))
}

/// Validates produced data: one or more whole batches, each with a correct
/// CRC, at least one record, a record count matching its offset delta, no
/// larger than `max_batch_bytes`, and not a control batch.
/// Returns each batch's header and byte range.
pub(crate) fn validate_produced(
    data: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (header, len) = check_batch(&data[at..])?;
        if header.records_count == 0 || header.records_count != header.last_offset_delta + 1 {
            return Err(BatchError::Corrupt(
                "record count does not match the offset delta",
            ));
        }
        if super::txn::is_control(&header) {
            return Err(BatchError::Unsupported(
                "control batches cannot be produced",
            ));
        }
        if len > max_batch_bytes {
            return Err(BatchError::TooLarge);
        }
        batches.push((header, at..at + len));
        at += len;
    }
    if batches.is_empty() {
        return Err(BatchError::Corrupt("no record batch"));
    }
    Ok(batches)
}

/// Sets a batch's `baseOffset` and `partitionLeaderEpoch` in place; neither
/// is covered by the CRC.
pub(crate) fn assign_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// Encodes one batch of `values` with the given timestamps, as a producer would.
    pub(crate) fn encode_batch(values: &[&str], timestamp: i64) -> Vec<u8> {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: timestamp + i as i64,
                key: None,
                value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn a_produced_batch_passes_and_keeps_its_crc_after_its_offset_is_assigned() {
        let mut batch = encode_batch(&["a", "b", "c"], 1_000);
        let found = validate_produced(&batch, 1 << 20).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.records_count, 3);
        assign_offset(&mut batch, 42, 0);
        let (header, len) = check_batch(&batch).unwrap();
        assert_eq!(
            (header.base_offset, header.last_offset(), len),
            (42, 44, batch.len())
        );
    }

    #[test]
    fn a_flipped_byte_in_the_records_fails_the_crc() {
        let mut batch = encode_batch(&["hello"], 1_000);
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
        assert_eq!(
            check_batch(&batch),
            Err(BatchError::Corrupt("CRC mismatch"))
        );
    }

    #[test]
    fn a_truncated_batch_is_corrupt_and_an_oversized_one_is_too_large() {
        let batch = encode_batch(&["hello"], 1_000);
        assert!(validate_produced(&batch[..batch.len() - 1], 1 << 20).is_err());
        assert_eq!(validate_produced(&batch, 10), Err(BatchError::TooLarge));
    }
}
