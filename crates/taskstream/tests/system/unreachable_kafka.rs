//! A Kafka cluster that does not answer: components say so once and then
//! now and then (not several times a second), may be told to give up at
//! start, and one-shot commands fail within their timeout with one line.
//! Bad bootstrap addresses are refused before anything connects.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use taskstream_kafka::DevBroker;
use taskstream_services::topics::declared_topics;

use crate::binary::{launch, ChildGuard};
use crate::exclusive_data_dir::run_to_exit;
use crate::helpers::{client, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// A loopback address nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// Starts `taskstream args` with the default log level; returns it, the
/// first line of its stdout, and its stderr lines as they come.
fn start_logging(args: &[&str]) -> (ChildGuard, String, mpsc::Receiver<String>) {
    let mut child = ChildGuard(
        Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines, received) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    std::thread::spawn(move || stdout.for_each(drop));
    (child, first, received)
}

/// Waits up to `timeout` for a line containing `needle`, returning the
/// lines seen until then (that one included).
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?} within {timeout:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn up_against_a_closed_port_says_kafka_is_unreachable_once_not_many_times_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = closed_port();
    let (mut up, first, lines) = start_logging(&[
        "up",
        "--http",
        "127.0.0.1:0",
        "--registry-http",
        "127.0.0.1:0",
        "--kafka-bootstrap",
        &kafka,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(first.starts_with("http: "), "{first}");
    // Five seconds of a dead cluster: every client has failed to connect
    // several times by then (librdkafka retries after 0.1 s, then longer).
    std::thread::sleep(Duration::from_secs(5));
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    let logged: Vec<String> = lines.try_iter().collect();
    let text = logged.join("\n");
    assert!(logged.len() <= 10, "{} lines in 5 s:\n{text}", logged.len());
    let unreachable: Vec<&String> = logged
        .iter()
        .filter(|l| l.contains("kafka unreachable"))
        .collect();
    assert_eq!(unreachable.len(), 1, "{text}");
    assert!(unreachable[0].contains(&kafka), "{text}");
}

#[test]
fn a_broker_that_comes_back_is_reported_reachable_again_and_events_flow() {
    let broker = DevBroker::start(&declared_topics(1)).unwrap(); // The mock: taken down and up.
    broker.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_up, first, lines) = start_logging(&[
        "up",
        "--http",
        "127.0.0.1:0",
        "--event-format",
        "json",
        "--kafka-bootstrap",
        broker.bootstrap_servers(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let http = first.strip_prefix("http: ").unwrap().to_owned();
    wait_for_line(&lines, "kafka unreachable", Duration::from_secs(30));
    broker.broker_up(1).unwrap();
    let seen = wait_for_line(&lines, "kafka reachable again", Duration::from_secs(60));
    assert!(
        !seen.iter().any(|l| l.contains("kafka unreachable")),
        "said twice: {seen:?}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = client();
        let created = client
            .post(format!("{http}/tasks"))
            .json(&serde_json::json!({ "title": "after the outage" }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        eventually("the event audited", Duration::from_secs(60), || async {
            let body: serde_json::Value = client
                .get(format!("{http}/audit"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["items"].as_array()?.len() == 1).then_some(())
        })
        .await;
    });
}

#[test]
fn components_told_to_wait_for_kafka_at_start_give_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let kafka = closed_port();
    let commands: [&[&str]; 4] = [
        &[
            "up",
            "--http",
            "127.0.0.1:0",
            "--registry-http",
            "127.0.0.1:0",
        ],
        &["relay", "--event-format", "json"],
        &["auditor"],
        &["notifier"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend([
            "--kafka-bootstrap",
            &kafka,
            "--kafka-wait-at-start",
            "1500ms",
            "--data-dir",
            data_dir,
        ]);
        let (ok, stderr) = run_to_exit(&args);
        assert!(!ok, "{command:?} started without a broker");
        assert_eq!(stderr.lines().count(), 1, "{command:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no Kafka broker answered at {kafka} within 1.5s")),
            "{command:?}: {stderr}"
        );
    }

    // With a broker that answers (taskstream's own), the same setting lets it start.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime.block_on(crate::helpers::own_broker());
    let (relay, line) = launch(
        &[
            "relay",
            "--http",
            "127.0.0.1:0",
            "--event-format",
            "json",
            "--kafka-bootstrap",
            broker.bootstrap_servers(),
            "--kafka-wait-at-start",
            "30s",
            "--data-dir",
            data_dir,
        ],
        "warn",
        Stdio::inherit(),
    );
    assert!(line.starts_with("http: "), "{line}");
    drop(relay);
    broker.shutdown(Duration::ZERO);
}

#[test]
fn one_shot_kafka_commands_fail_within_their_timeout_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let kafka = closed_port();
    let commands: [&[&str]; 4] = [
        &["dlq", "list"],
        &["dlq", "replay", "--all"],
        &["lag"],
        &["topics", "apply"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend([
            "--kafka-bootstrap",
            &kafka,
            "--timeout",
            "1s",
            "--data-dir",
            data_dir,
        ]);
        if command[0] == "topics" {
            args.truncate(args.len() - 2);
        }
        let (ok, stderr) = run_to_exit(&args);
        assert!(!ok, "{command:?} succeeded without a broker");
        assert_eq!(stderr.lines().count(), 1, "{command:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no Kafka broker answered at {kafka} within 1s")),
            "{command:?}: {stderr}"
        );
    }
    for bad in ["0", "-1s", "soon", "25h"] {
        let flag = format!("--timeout={bad}");
        let (ok, stderr) = run_to_exit(&["lag", "--kafka-bootstrap", &kafka, &flag]);
        assert!(!ok, "--timeout {bad} was accepted");
        assert!(stderr.contains("--timeout"), "{bad}: {stderr}");
    }
}

#[test]
fn malformed_bootstrap_addresses_are_refused_with_one_line_before_connecting() {
    let cases = [
        ("http://127.0.0.1:9092", "without `http://`"),
        (
            "PLAINTEXT://broker:9092",
            "--kafka-security-protocol plaintext",
        ),
        (
            "SASL_SSL://broker:9093",
            "--kafka-security-protocol sasl_ssl",
        ),
        ("broker", "has no port"),
        ("broker:0", "a port is a number from 1 to 65535"),
        ("broker:65536", "a port is a number from 1 to 65535"),
        ("broker:http", "a port is a number from 1 to 65535"),
        ("a:9092,,b:9092", "an empty entry"),
        ("a:9092,", "an empty entry"),
        (":9092", "has no valid host"),
        ("::1:9092", "IPv6 address in brackets"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    for (bootstrap, expected) in cases {
        for command in [&["relay", "--event-format", "json"][..], &["lag"]] {
            let mut args = command.to_vec();
            args.extend(["--kafka-bootstrap", bootstrap, "--data-dir", data_dir]);
            let (ok, stderr) = run_to_exit(&args);
            assert!(!ok, "{bootstrap:?} accepted by {command:?}");
            assert_eq!(stderr.lines().count(), 1, "{bootstrap:?}: {stderr}");
            assert!(
                stderr.contains("invalid --kafka-bootstrap") && stderr.contains(expected),
                "{bootstrap:?}: {stderr}"
            );
        }
    }
    // Well-formed lists get as far as connecting.
    for bootstrap in ["[::1]:9", " 127.0.0.1:9 , localhost:9 "] {
        let (ok, stderr) = run_to_exit(&[
            "lag",
            "--kafka-bootstrap",
            bootstrap,
            "--timeout",
            "500ms",
            "--data-dir",
            data_dir,
        ]);
        assert!(!ok);
        assert!(
            stderr.contains("no Kafka broker answered"),
            "{bootstrap:?}: {stderr}"
        );
    }
}
