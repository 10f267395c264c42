//! Acknowledged records survive the broker process being killed with
//! SIGKILL: the broker runs in a child process (this test binary, re-run
//! in "serve" mode), is killed after acknowledging, and a new broker on the
//! same directory serves every acknowledged record.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use support::*;

const SERVE_DIR: &str = "TASKSTREAM_BROKER_TEST_SERVE_DIR";

/// In the child: serve on the directory named by [`SERVE_DIR`] until killed.
#[test]
fn serve_until_killed_when_asked_by_the_parent_test() {
    let Ok(dir) = std::env::var(SERVE_DIR) else {
        return;
    };
    let broker = start(std::path::Path::new(&dir));
    println!("LISTENING {}", broker.addr());
    std::thread::sleep(Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_acknowledged_before_a_sigkill_are_served_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "serve_until_killed_when_asked_by_the_parent_test",
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
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..500 {
        let value = format!("durable-{i}");
        deliveries.push(
            producer
                .send_result(FutureRecord::<(), _>::to("durable").payload(&value))
                .unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.unwrap().expect("acknowledged");
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    child.wait().unwrap();
    drop(producer);

    let broker = start(dir.path());
    let consumer = reader(&broker, "durable", 1, Offset::Beginning);
    let values: Vec<String> = by_partition(&poll_records(&consumer, 500))[&0]
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    let expected: Vec<String> = (0..500).map(|i| format!("durable-{i}")).collect();
    assert_eq!(values, expected);
}
