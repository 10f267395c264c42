//! 200 MB written through a broker running in its own process while the
//! only consumer group is stopped, then read back from offset 0: every
//! record arrives, in order, and the broker's resident memory stays far
//! below the size of its log (segments are read with positioned reads, not
//! held in memory).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const SERVE_DIR: &str = "TASKSTREAM_BROKER_LARGE_LOG_SERVE_DIR";
const RECORD_BYTES: usize = 1024;
const RECORDS: usize = 200 * 1024;
/// Far below the 200 MiB of log, well above what a broker needs to run.
const RSS_LIMIT_KIB: u64 = 128 * 1024;

/// In the child: serve on the directory named by [`SERVE_DIR`] until killed.
#[test]
fn serve_a_large_log_when_asked_by_the_parent_test() {
    let Ok(dir) = std::env::var(SERVE_DIR) else {
        return;
    };
    let broker = support::start(std::path::Path::new(&dir));
    println!("LISTENING {}", broker.addr());
    std::thread::sleep(Duration::from_secs(600));
}

/// The child's resident set size, from `/proc`.
fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:010}-").into_bytes();
    v.resize(RECORD_BYTES, b'a' + (i % 26) as u8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_megabytes_written_with_the_consumer_stopped_are_read_back_from_offset_zero_in_bounded_memory(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "serve_a_large_log_when_asked_by_the_parent_test",
            "--nocapture",
        ])
        .env(SERVE_DIR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child broker starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the child prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.to_owned();
        }
    };
    let mut peak_rss = rss_kib(&child);

    // The group reads nothing and commits offset 0, then stops.
    let group = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "stopped")
        .set("enable.auto.commit", "false")
        .create::<BaseConsumer>()
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to("large").payload(&value(0)),
            support::PATIENCE,
        )
        .await
        .expect("the first record");
    let mut start = TopicPartitionList::new();
    start
        .add_partition_offset("large", 0, Offset::Offset(0))
        .unwrap();
    group.commit(&start, CommitMode::Sync).expect("commit");
    drop(group);

    let mut pending = std::collections::VecDeque::new();
    for i in 1..RECORDS {
        let v = value(i);
        pending.push_back(
            producer
                .send_result(FutureRecord::<(), _>::to("large").payload(&v))
                .expect("queued"),
        );
        if pending.len() >= 10_000 {
            for _ in 0..5_000 {
                let delivery = pending.pop_front().unwrap();
                delivery.await.unwrap().expect("acknowledged");
            }
            peak_rss = peak_rss.max(rss_kib(&child));
        }
    }
    for delivery in pending {
        delivery.await.unwrap().expect("acknowledged");
    }
    peak_rss = peak_rss.max(rss_kib(&child));
    drop(producer);

    // The group comes back and reads everything from its committed offset 0.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "stopped")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    let mut from_committed = TopicPartitionList::new();
    from_committed
        .add_partition_offset("large", 0, Offset::Stored)
        .unwrap();
    consumer.assign(&from_committed).unwrap();
    let mut next = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while next < RECORDS {
        assert!(
            Instant::now() < deadline,
            "only {next} of {RECORDS} records came back"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            assert_eq!(m.offset(), next as i64);
            assert_eq!(m.payload(), Some(&value(next)[..]), "record {next}");
            next += 1;
            if next.is_multiple_of(20_000) {
                peak_rss = peak_rss.max(rss_kib(&child));
            }
        }
    }
    peak_rss = peak_rss.max(rss_kib(&child));
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} MiB of records read back; broker peak RSS {} MiB",
        (RECORDS * RECORD_BYTES) >> 20,
        peak_rss >> 10
    );
    assert!(
        peak_rss < RSS_LIMIT_KIB,
        "the broker's memory grew with its log: peak RSS {peak_rss} KiB"
    );
}
