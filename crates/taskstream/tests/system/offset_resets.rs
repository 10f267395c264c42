//! Records deleted before a consumer group read them: the skip is logged,
//! counted, shown by readiness and by `taskstream lag`, and repaired from
//! the outbox — never a silent "OK, lag 0".

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, ConsumerOptions};
use taskstream_kafka::{group_offsets, KafkaConfig, PartitionOffsets};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_store::{AuditStore, OutboxStore, SqliteOptions, Synchronous};

use crate::helpers::{client, eventually, Pipeline};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// The auditor's offsets on the one partition that holds events.
async fn auditor_partition(kafka: &KafkaConfig) -> PartitionOffsets {
    let offsets = group_offsets(kafka, "auditor", TASK_EVENTS, Duration::from_secs(5))
        .await
        .expect("group offsets");
    let mut written: Vec<_> = offsets.into_iter().filter(|p| p.log_end > 0).collect();
    assert_eq!(written.len(), 1, "one task's events share one partition");
    written.remove(0)
}

/// `taskstream lag --json` for the auditor group: its one report.
async fn lag_report(bootstrap: &str) -> Value {
    let bootstrap = bootstrap.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "lag",
                "--json",
                "--group",
                "auditor",
                "--samples",
                "2",
                "--interval",
                "0.1",
                "--kafka-bootstrap",
                &bootstrap,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["groups"][0].clone()
}

fn partition_report(group: &Value, partition: i32) -> Value {
    group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"] == partition)
        .expect("the partition is reported")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_the_auditor_read_them_are_reported_and_republished() {
    let sqlite = SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    };
    let p = Pipeline::start(sqlite).await;
    let bootstrap = p
        .broker
        .as_ref()
        .expect("the dev broker")
        .bootstrap_servers()
        .to_owned();
    let http = client();
    let base = format!("http://{}", p.addr);

    // The auditor handles a first event, commits, and stops.
    let options = ConsumerOptions::for_dev_broker();
    let auditor = components::auditor(
        p.store.clone(),
        Some(p.store.clone()),
        &p.kafka,
        None,
        &options,
        &p.metrics,
    )
    .unwrap();
    let task: Value = http
        .post(format!("{base}/tasks"))
        .json(&json!({ "title": "a long story" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    let store = p.store.clone();
    eventually(
        "the first event audited",
        Duration::from_secs(30),
        || async { (store.audit_entries(None, 10).await.unwrap().len() == 1).then_some(()) },
    )
    .await;
    auditor.stop().await;
    let stopped_at = auditor_partition(&p.kafka).await;
    assert_eq!(stopped_at.committed, Some(1));

    // While it is away, its partition grows past what the dev broker keeps
    // (5 MiB): updates of the one task, each carrying 5,000 characters.
    let mut updates = 0;
    let deleted = loop {
        for _ in 0..100 {
            let letter = if updates % 2 == 0 { "a" } else { "b" };
            let response = http
                .patch(format!("{base}/tasks/{id}"))
                .json(&json!({ "description": letter.repeat(5000) }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            updates += 1;
        }
        eventually("the relay to publish", Duration::from_secs(30), || async {
            (store.outbox_stats().await.unwrap().pending == 0).then_some(())
        })
        .await;
        let now = auditor_partition(&p.kafka).await;
        if now.deleted_unread() > 0 {
            break now;
        }
        assert!(updates < 3000, "the dev broker kept {updates} large events");
    };
    let partition = deleted.partition;
    let events = 1 + updates;

    // Seen from outside the group: records it had not read are gone.
    let group = lag_report(&bootstrap).await;
    let report = partition_report(&group, partition);
    assert_eq!(report["status"], "LOST", "{group}");
    assert_eq!(group["status"], "ERR");
    assert_eq!(report["skipped_events"], deleted.deleted_unread());

    // The auditor comes back as its own process on the same database.
    let data_dir = tempfile::tempdir().unwrap();
    let database = format!(
        "sqlite:{}",
        p.store.sqlite().unwrap().path().to_str().unwrap()
    );
    let (mut child, first) = crate::binary::launch(
        &[
            "auditor",
            "--kafka-bootstrap",
            &bootstrap,
            "--database-url",
            &database,
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--session-timeout",
            "3",
            "--http",
            "127.0.0.1:0",
        ],
        "warn",
        Stdio::piped(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let auditor_http = first.strip_prefix("http: ").unwrap().to_owned();

    // Every event is audited in the end: the skipped ones were republished.
    eventually(
        &format!("all {events} events audited"),
        Duration::from_secs(120),
        || async {
            (store.audit_entries(None, 100_000).await.unwrap().len() == events).then_some(())
        },
    )
    .await;

    // Readiness names the group, the partition and the repair; repaired,
    // the process stays in service.
    let ready = http
        .get(format!("{auditor_http}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    let check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "offset_resets")
        .expect("an offset_resets check")
        .clone();
    assert_eq!(check["ok"], true, "{body}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("group auditor skipped")
            && detail.contains(&format!("of task-events[{partition}] (offsets 1..")),
        "{detail}"
    );
    assert!(detail.contains("republished from the outbox"), "{detail}");

    // The metrics count it.
    let metrics = http
        .get(format!("{auditor_http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!(r#"{{group="auditor",topic="task-events",partition="{partition}"}}"#);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.split_whitespace().last())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value(&format!("taskstream_consumer_offset_resets_total{labels}")) >= 1.0);
    assert!(
        value(&format!("taskstream_consumer_skipped_events_total{labels}"))
            >= deleted.deleted_unread() as f64
    );
    assert!(value(r#"taskstream_consumer_republished_events_total{group="auditor"}"#) >= 1.0);

    // `taskstream lag` reports the reset from the commit metadata, though
    // the group has caught up.
    let group = eventually("lag to show the reset", Duration::from_secs(30), || async {
        let group = lag_report(&bootstrap).await;
        (partition_report(&group, partition)["status"] == "RESET").then_some(group)
    })
    .await;
    let report = partition_report(&group, partition);
    assert_eq!(group["status"], "ERR", "never OK over lost events: {group}");
    assert!(report["skipped_events"].as_i64().unwrap() > 0, "{report}");

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = child.0.wait();
    let logs = logs.join().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("ERROR")
            && l.contains("offset reset: group auditor skipped offsets 1..")
            && l.contains(&format!("of task-events[{partition}]"))),
        "an ERROR line names the group, partition and range:\n{}",
        logs.join("\n")
    );
    p.stop().await;
}
