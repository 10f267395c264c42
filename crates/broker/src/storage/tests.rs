use std::fs::OpenOptions;
use std::io::Write;

use super::batch::tests::encode_batch;
use super::batch::BatchHeader;
use super::*;

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// The base offsets and record counts of the batches in `data`.
fn batches_in(mut data: &[u8]) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    while let Some(h) = BatchHeader::parse(data) {
        out.push((h.base_offset, h.records_count));
        data = &data[h.total_len().unwrap()..];
    }
    out
}

fn append_values(log: &mut PartitionLog, n: usize, timestamp: i64) {
    for i in 0..n {
        let value = format!("value-{i:04}");
        let mut batch = encode_batch(&[&value, &value], timestamp + i as i64 * 10);
        log.append(&mut batch).unwrap();
    }
}

#[test]
fn appended_batches_get_consecutive_offsets_and_read_back_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    append_values(&mut log, 100, 1_000);
    assert_eq!(log.next_offset(), 200);
    assert!(log.segment_count() > 5, "1 KiB segments roll");
    for offset in [0, 1, 57, 58, 101, 199] {
        let data = log.read(offset, 1 << 20, true).unwrap();
        let batches = batches_in(&data);
        assert_eq!(
            batches[0].0,
            offset - offset % 2,
            "the batch holding {offset} comes first"
        );
        for pair in batches.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 2);
        }
    }
    assert!(log.read(200, 1 << 20, true).unwrap().is_empty());
    assert!(matches!(
        log.read(201, 1 << 20, true),
        Err(ReadError::OutOfRange { .. })
    ));
}

#[test]
fn a_read_returns_whole_batches_within_max_bytes_but_always_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append_values(&mut log, 10, 1_000);
    let one = log.read(0, 1 << 20, true).unwrap();
    let batch_len = one.len() / 10;
    assert_eq!(
        batches_in(&log.read(0, batch_len * 3 + 5, true).unwrap()).len(),
        3
    );
    assert_eq!(batches_in(&log.read(4, 1, true).unwrap()).len(), 1);
    assert!(log.read(4, 1, false).unwrap().is_empty());
}

#[test]
fn a_reopened_log_keeps_everything_and_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
        append_values(&mut log, 50, 1_000);
    }
    let (mut log, report) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.next_offset(), 100);
    append_values(&mut log, 1, 5_000);
    assert_eq!(
        batches_in(&log.read(100, 1 << 20, true).unwrap()),
        vec![(100, 2)]
    );
    assert_eq!(
        batches_in(&log.read(37, 1 << 20, true).unwrap())[0],
        (36, 2)
    );
}

#[test]
fn recovery_cuts_a_torn_tail_and_the_next_append_continues_from_the_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        append_values(&mut log, 5, 1_000);
    }
    // A crash in the middle of writing a sixth batch: half of it reached the file.
    let torn = encode_batch(&["torn", "torn"], 2_000);
    let path = dir.path().join(format!("{:020}.log", 0));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(file);

    let (mut log, report) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(report.batches, 5);
    assert_eq!(report.truncated_bytes, (torn.len() / 2) as u64);
    assert_eq!(log.next_offset(), 10);
    append_values(&mut log, 1, 3_000);
    let batches = batches_in(&log.read(0, 1 << 20, true).unwrap());
    assert_eq!(batches.len(), 6);
    assert_eq!(batches[5], (10, 2));
}

#[test]
fn recovery_cuts_a_batch_whose_bytes_were_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        append_values(&mut log, 3, 1_000);
    }
    let path = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(report.batches, 2);
    assert_eq!(log.next_offset(), 4);
}

#[test]
fn a_bad_batch_is_refused_and_leaves_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut good = encode_batch(&["a"], 1_000);
    let mut bad = encode_batch(&["b"], 1_000);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut both = [good.clone(), bad].concat();
    assert!(matches!(
        log.append(&mut both),
        Err(AppendError::Corrupt(_))
    ));
    assert_eq!(log.next_offset(), 0);
    log.append(&mut good).unwrap();
    assert_eq!(log.next_offset(), 1);
}

#[test]
fn offsets_for_a_timestamp_find_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    // Batch i holds two records stamped 1000 + 10 i and 1001 + 10 i.
    append_values(&mut log, 100, 1_000);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((1_000, 0)));
    assert_eq!(log.offset_for_timestamp(1_001).unwrap(), Some((1_001, 1)));
    assert_eq!(log.offset_for_timestamp(1_005).unwrap(), Some((1_010, 2)));
    assert_eq!(log.offset_for_timestamp(1_732).unwrap(), Some((1_740, 148)));
    assert_eq!(log.offset_for_timestamp(1_991).unwrap(), Some((1_991, 199)));
    assert_eq!(log.offset_for_timestamp(1_992).unwrap(), None);
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.offset_for_timestamp(1_732).unwrap(), Some((1_740, 148)));
}

#[test]
fn retention_by_time_deletes_old_sealed_segments_and_advances_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 1_000,
        ..small_segments()
    };
    let (mut log, _) = PartitionLog::open(dir.path(), config).unwrap();
    append_values(&mut log, 30, 10_000); // old records
    let old_segments = log.segment_count();
    log.roll().unwrap();
    append_values(&mut log, 3, 100_000); // new records
    assert_eq!(log.enforce_retention(100_500).unwrap(), old_segments);
    assert_eq!(log.log_start_offset(), 60);
    assert!(matches!(
        log.read(0, 100, true),
        Err(ReadError::OutOfRange { .. })
    ));
    assert_eq!(batches_in(&log.read(60, 1 << 20, true).unwrap()).len(), 3);
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (60, 66));
}

#[test]
fn retention_by_size_keeps_the_newest_segments_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 2048,
        ..small_segments()
    };
    let (mut log, _) = PartitionLog::open(dir.path(), config).unwrap();
    append_values(&mut log, 100, 1_000);
    let before = log.segment_count();
    let deleted = log.enforce_retention(2_000).unwrap();
    assert!(deleted > 0 && log.segment_count() == before - deleted);
    assert!(
        log.size() <= 2048 + 1024,
        "size {} is within a segment of the limit",
        log.size()
    );
    assert!(log.log_start_offset() > 0);
    assert_eq!(log.next_offset(), 200);
}

#[test]
fn deleting_records_moves_the_log_start_for_good_and_drops_whole_segments_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    append_values(&mut log, 100, 1_000);
    let segments = log.segment_count();
    assert_eq!(
        log.delete_records_before(201).unwrap(),
        None,
        "beyond the end"
    );
    assert_eq!(log.delete_records_before(121).unwrap(), Some(121));
    assert!(log.segment_count() < segments);
    assert!(matches!(
        log.read(120, 100, true),
        Err(ReadError::OutOfRange { .. })
    ));
    assert_eq!(
        batches_in(&log.read(121, 1 << 20, true).unwrap())[0],
        (120, 2)
    );
    assert_eq!(
        log.delete_records_before(50).unwrap(),
        Some(121),
        "never moves back"
    );
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.log_start_offset(), 121);
}

/// A batch as an idempotent producer sends it.
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, values: &[&str]) -> Vec<u8> {
    let mut batch = encode_batch(values, 1_000);
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[test]
fn a_retried_idempotent_batch_gets_its_first_offset_and_is_not_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let first = idempotent_batch(7, 0, 0, &["a", "b"]);
    let second = idempotent_batch(7, 0, 2, &["c"]);
    assert_eq!(log.append(&mut first.clone()).unwrap().base_offset, 0);
    assert_eq!(log.append(&mut second.clone()).unwrap().base_offset, 2);
    assert_eq!(
        log.append(&mut first.clone()).unwrap().base_offset,
        0,
        "a retry"
    );
    assert_eq!(log.next_offset(), 3, "nothing appended twice");
    let gap = idempotent_batch(7, 0, 5, &["d"]);
    assert!(matches!(
        log.append(&mut gap.clone()),
        Err(AppendError::OutOfOrderSequence)
    ));
    drop(log);

    // After a restart the state comes back from the log.
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        log.append(&mut second.clone()).unwrap().base_offset,
        2,
        "a retry after a restart"
    );
    assert_eq!(log.next_offset(), 3);
    let bumped = idempotent_batch(7, 1, 0, &["e"]);
    assert_eq!(log.append(&mut bumped.clone()).unwrap().base_offset, 3);
    let fenced = idempotent_batch(7, 0, 3, &["f"]);
    assert!(matches!(
        log.append(&mut fenced.clone()),
        Err(AppendError::FencedEpoch)
    ));
}

/// A batch as a transactional producer sends it.
fn transactional_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    values: &[&str],
) -> Vec<u8> {
    let mut batch = encode_batch(values, 1_000);
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | txn::TRANSACTIONAL_FLAG;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[test]
fn an_open_transaction_holds_the_last_stable_offset_until_its_marker_and_an_abort_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append_values(&mut log, 1, 1_000); // offsets 0-1
    log.append(&mut transactional_batch(7, 0, 0, &["a", "b"]))
        .unwrap(); // 2-3
    append_values(&mut log, 1, 2_000); // 4-5, not in the transaction
    assert_eq!((log.last_stable_offset(), log.next_offset()), (2, 6));
    assert_eq!(
        batches_in(&log.read_below(0, 1 << 20, true, 2).unwrap()),
        [(0, 2)]
    );

    let marker = log.append_marker(7, 0, false).unwrap();
    assert_eq!(marker, 6);
    assert_eq!(log.last_stable_offset(), 7);
    assert_eq!(
        batches_in(&log.read_below(0, 1 << 20, true, 7).unwrap()).len(),
        4,
        "the marker is a batch of its own"
    );
    assert_eq!(log.aborted_between(0, 7), [(7, 2)]);
    assert_eq!(log.aborted_between(7, 8), []);

    // A committed transaction is not listed.
    log.append(&mut transactional_batch(7, 0, 2, &["c"]))
        .unwrap();
    log.append_marker(7, 0, true).unwrap();
    assert_eq!(log.aborted_between(0, 100), [(7, 2)]);
    assert_eq!(log.last_stable_offset(), log.next_offset());
}

#[test]
fn a_marker_with_a_newer_epoch_fences_the_producers_older_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&mut transactional_batch(7, 0, 0, &["zombie"]))
        .unwrap();
    log.append_marker(7, 1, false).unwrap();
    assert!(matches!(
        log.append(&mut transactional_batch(7, 0, 1, &["late"])),
        Err(AppendError::FencedEpoch)
    ));
    log.append(&mut transactional_batch(7, 1, 0, &["successor"]))
        .unwrap();
}

#[test]
fn open_and_aborted_transactions_survive_a_reopen_even_across_a_segment_roll() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
        log.append(&mut transactional_batch(1, 0, 0, &["aborted"]))
            .unwrap(); // 0
        log.append_marker(1, 0, false).unwrap(); // 1
        log.append(&mut transactional_batch(2, 0, 0, &["open"]))
            .unwrap(); // 2
                       // Fill past a roll, so that the open transaction began in an older segment.
        append_values(&mut log, 30, 1_000);
        assert!(log.segment_count() > 1);
        assert_eq!(log.last_stable_offset(), 2);
    }
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        log.last_stable_offset(),
        2,
        "the open transaction is remembered"
    );
    assert_eq!(log.aborted_between(0, 2), [(1, 0)]);
    let marker = log.append_marker(2, 0, false).unwrap();
    assert_eq!(log.last_stable_offset(), log.next_offset());
    assert_eq!(log.aborted_between(0, marker + 1), [(1, 0), (2, 2)]);
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.aborted_between(0, marker + 1), [(1, 0), (2, 2)]);
    assert_eq!(log.last_stable_offset(), log.next_offset());
}

#[test]
fn aborted_transactions_below_the_log_start_are_forgotten_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&mut transactional_batch(1, 0, 0, &["a"]))
        .unwrap(); // 0
    log.append_marker(1, 0, false).unwrap(); // 1
    log.append(&mut transactional_batch(1, 0, 1, &["b"]))
        .unwrap(); // 2
    log.append_marker(1, 0, false).unwrap(); // 3
    assert_eq!(log.aborted_between(0, 4), [(1, 0), (1, 2)]);
    log.delete_records_before(2).unwrap();
    assert_eq!(log.aborted_between(0, 4), [(1, 2)]);
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.aborted_between(0, 4), [(1, 2)]);
}

#[test]
fn an_append_made_while_an_fsync_runs_awaits_the_next_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert!(log.begin_sync().unwrap().is_none(), "nothing to sync");
    append_values(&mut log, 1, 1_000);
    let pending = log.begin_sync().unwrap().expect("an fsync is due");
    // The lock is free while the fsync runs: another append lands.
    append_values(&mut log, 1, 2_000);
    pending.run().unwrap();
    log.finish_sync(&pending);
    assert!(log.has_unsynced(), "the later append was not covered");
    let next = log.begin_sync().unwrap().expect("another fsync is due");
    next.run().unwrap();
    log.finish_sync(&next);
    assert!(!log.has_unsynced());
    // An fsync that finishes late does not undo a later one's record.
    log.finish_sync(&pending);
    assert!(!log.has_unsynced());
}

#[test]
fn under_durable_visibility_readers_see_only_what_an_fsync_covered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.set_visibility(Visibility::Durable);
    append_values(&mut log, 1, 1_000);
    assert_eq!(log.next_offset(), 2, "the batch is written");
    assert_eq!(log.high_watermark(), 0, "but not fsynced, so not shown");
    assert_eq!(log.last_stable_offset(), 0);
    assert!(log
        .read_below(0, 1 << 20, true, log.high_watermark())
        .unwrap()
        .is_empty());

    // An fsync covers what was appended when it was taken; a batch
    // appended while it runs waits for the next one.
    let pending = log.begin_sync().unwrap().expect("an fsync is due");
    append_values(&mut log, 1, 2_000);
    pending.run().unwrap();
    log.finish_sync(&pending);
    assert_eq!(log.durable_offset(), 2);
    assert_eq!((log.high_watermark(), log.last_stable_offset()), (2, 2));
    let shown = log
        .read_below(0, 1 << 20, true, log.high_watermark())
        .unwrap();
    assert_eq!(batches_in(&shown), [(0, 2)], "only the fsynced batch");

    let pending = log.begin_sync().unwrap().expect("the second batch is due");
    pending.run().unwrap();
    log.finish_sync(&pending);
    assert_eq!(log.high_watermark(), 4);

    // Under the default, written is visible.
    log.set_visibility(Visibility::Written);
    append_values(&mut log, 1, 3_000);
    assert_eq!((log.high_watermark(), log.durable_offset()), (6, 4));
}

#[test]
fn a_roll_and_a_restart_make_everything_before_them_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    log.set_visibility(Visibility::Durable);
    append_values(&mut log, 50, 1_000);
    assert!(log.segment_count() > 1, "1 KiB segments roll");
    let rolled_at = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".log")?.parse::<i64>().ok())
        .max()
        .unwrap();
    assert!(rolled_at > 0);
    assert_eq!(
        log.high_watermark(),
        rolled_at,
        "sealed segments were fsynced"
    );
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        log.durable_offset(),
        100,
        "recovery fsyncs the last segment"
    );
}
