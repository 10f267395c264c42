//! Shutdown stays bounded when the broker is gone: SIGTERM ends `up` and
//! each component within `SHUTDOWN_BOUND` (10 s), a second signal ends them
//! at once, and nothing acknowledged is lost — unpublished events wait in
//! the outbox for the next start.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::binary::{launch, ChildGuard};
use crate::helpers::{client, items_when};

/// The bound the binary promises, plus room for a loaded test machine.
const BOUND_WITH_SLACK: Duration = Duration::from_secs(14);

fn signal(child: &ChildGuard, name: &str) {
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap()
        .success());
}

/// Waits for the child to exit, for at most `limit`.
fn wait_at_most(child: &mut ChildGuard, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a standalone dev broker and `up` against it; creates a task and
/// waits until it is audited, then kills the broker.
async fn up_whose_broker_died(dir: &std::path::Path) -> (ChildGuard, String) {
    let (mut broker, line) = launch(&["dev-broker"], "warn", Stdio::null());
    let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();
    let data_dir = dir.to_str().unwrap();
    let (up, http) = launch(
        &[
            "up",
            "--http",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            &kafka,
            "--event-format",
            "json",
            // Only the task's own event may wait in the outbox, not a suggestion.
            "--no-agent",
            "--data-dir",
            data_dir,
        ],
        "warn",
        Stdio::inherit(),
    );
    let http = http.strip_prefix("http: ").unwrap().to_owned();
    let client = client();
    let created = client
        .post(format!("{http}/tasks"))
        .json(&json!({"title": "before the broker died"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    items_when(&client, &http, "/audit", 1).await;
    broker.0.kill().unwrap();
    broker.0.wait().unwrap();
    // Writes are still acknowledged: they wait in the outbox.
    let created = client
        .post(format!("{http}/tasks"))
        .json(&json!({"title": "after the broker died"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    (up, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_up_within_the_bound_when_the_broker_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, _http) = up_whose_broker_died(dir.path()).await;
    // Let the clients notice the broker is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&up, "TERM");
    let (_status, took) = wait_at_most(&mut up, BOUND_WITH_SLACK);
    eprintln!("up stopped {took:?} after SIGTERM with its broker gone");

    // The event that could not be published is still in the outbox.
    use taskstream_store::OutboxStore;
    let store =
        taskstream_store::SqliteStore::open(&dir.path().join("taskstream.db"), &Default::default())
            .await
            .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, _http) = up_whose_broker_died(dir.path()).await;
    signal(&up, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&up, "INT");
    let (status, took) = wait_at_most(&mut up, Duration::from_secs(3));
    eprintln!("up ended {took:?} after the second signal");
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[test]
fn a_one_shot_command_ends_at_once_on_ctrl_c() {
    // `dlq list` against a broker that never answers would wait; Ctrl-C
    // must end it at once, as if no handler were installed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let mut child = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_taskstream"))
            .args(["dlq", "list", "--kafka-bootstrap", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "INT");
    let (status, _) = wait_at_most(&mut child, Duration::from_secs(3));
    assert_eq!(status.code(), Some(130), "{status:?}");
    drop(silent);
}
