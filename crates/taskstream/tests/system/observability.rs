//! Lag, metrics, readiness and trace propagation, checked from outside.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, ConsumerOptions};
use taskstream_kafka::group_offsets;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_store::AuditStore;

use crate::helpers::{client, eventually, spawn_app_on_mock};
use crate::interop::python;

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_agrees_with_confluent_kafka_python_and_flags_a_stopped_group() {
    let p = crate::helpers::Pipeline::start(taskstream_store::SqliteOptions::default()).await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let broker = p.broker.as_ref().unwrap();
    let settings = ConsumerOptions::for_dev_broker();
    let auditor = components::auditor(
        store.clone(),
        Some(store.clone()),
        &kafka,
        None,
        &settings,
        &metrics,
    )
    .unwrap();
    let client = client();
    let create = |i: usize| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/tasks"))
                .json(&json!({ "title": format!("t{i}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
    };
    for i in 0..30 {
        create(i).await;
    }
    let audited = || async { store.audit_entries(None, 1000).await.unwrap().len() };
    eventually("30 audited", Duration::from_secs(20), || async {
        (audited().await == 30).then_some(())
    })
    .await;
    // Stop the auditor (it commits what it did), then write more: its lag grows and stays.
    auditor.stop().await;
    for i in 30..50 {
        create(i).await;
    }
    eventually("50 published", Duration::from_secs(20), || async {
        let offsets = group_offsets(&kafka, "auditor", TASK_EVENTS, Duration::from_secs(5))
            .await
            .ok()?;
        (offsets.iter().map(|p| p.log_end).sum::<i64>() == 50).then_some(())
    })
    .await;

    let out = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap_servers().to_owned();
        move || {
            Command::new(BIN)
                .args([
                    "lag",
                    "--json",
                    "--group",
                    "auditor",
                    "--samples",
                    "3",
                    "--interval",
                    "0.2",
                    "--kafka-bootstrap",
                ])
                .arg(&bootstrap)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = &report["groups"][0];
    assert_eq!(group["group"], "auditor");
    assert_eq!(group["total_lag"], 20);
    assert_eq!(
        group["status"], "ERR",
        "a group that stopped committing with lag is in error: {group}"
    );
    let ours: HashMap<i64, (Value, Value)> = group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                (p["committed_offset"].clone(), p["log_end_offset"].clone()),
            )
        })
        .collect();
    for p in group["partitions"].as_array().unwrap() {
        if p["lag"].as_i64().unwrap() > 0 {
            assert_eq!(p["status"], "STOP", "{p}");
            assert!(p["lag_seconds"].as_f64().unwrap() > 0.0, "{p}");
        } else {
            assert_eq!(p["status"], "OK", "{p}");
        }
    }

    let Some(python) = python() else {
        crate::interop::skip_or_fail("lag figures against confluent-kafka-python");
        return;
    };
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/group_offsets.py");
    let bootstrap = broker.bootstrap_servers().to_owned();
    let theirs = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--bootstrap", &bootstrap, "--group", "auditor"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&theirs.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for p in theirs {
        let partition = p["partition"].as_i64().unwrap();
        assert_eq!(
            ours[&partition],
            (p["committed"].clone(), p["log_end"].clone()),
            "partition {partition}"
        );
    }

    p.stop().await;
}

fn sample(metrics: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_and_readiness_names_each_check() {
    // On the mock, whose broker_down shows readiness degrading.
    let app = spawn_app_on_mock().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let assignee = (i < 10).then_some("ana");
        ids.push(
            app.created(&format!("t{i}"), assignee).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids[..5] {
        assert_eq!(app.complete(id).await.status(), 200);
    }
    assert_eq!(app.create_task(json!({ "title": "" })).await.status(), 422);
    app.audit_when(30).await;
    app.notifications_when(15).await;

    let scrape = |app: &crate::helpers::TestApp| {
        let url = app.url("/metrics");
        let client = app.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"));
            let text = response.text().await.unwrap();
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
        }
    };
    // Consumers count an event after the effect is stored; wait for the last count.
    let metrics = eventually("every event counted", Duration::from_secs(10), || async {
        let m = scrape(&app).await;
        let handled = sample(&m, "taskstream_consumer_events_total", &[("outcome", "ok")]);
        (handled == 60.0).then_some(m)
    })
    .await;
    assert_eq!(
        sample(&metrics, "taskstream_relay_events_published_total", &[]),
        30.0
    );
    assert_eq!(
        sample(&metrics, "taskstream_relay_publish_errors_total", &[]),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "taskstream_relay_publish_latency_seconds_count",
            &[]
        ),
        30.0
    );
    for group in ["auditor", "notifier"] {
        assert_eq!(
            sample(
                &metrics,
                "taskstream_consumer_events_total",
                &[("group", group), ("outcome", "ok")]
            ),
            30.0
        );
        assert_eq!(
            sample(
                &metrics,
                "taskstream_consumer_events_total",
                &[("group", group), ("event_type", "task.completed")]
            ),
            5.0
        );
        assert_eq!(
            sample(
                &metrics,
                "taskstream_consumer_handler_duration_seconds_count",
                &[("group", group)]
            ),
            30.0
        );
    }
    let posts = [("method", "POST"), ("route", "/tasks")];
    assert_eq!(
        sample(
            &metrics,
            "taskstream_http_requests_total",
            &[posts[0], posts[1], ("status", "201")]
        ),
        25.0
    );
    assert_eq!(
        sample(
            &metrics,
            "taskstream_http_requests_total",
            &[posts[0], posts[1], ("status", "422")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "taskstream_http_requests_total",
            &[("route", "/tasks/:id/complete"), ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        sample(
            &metrics,
            "taskstream_http_request_duration_seconds_count",
            &posts
        ),
        26.0
    );
    assert_eq!(
        sample(&metrics, "taskstream_outbox_pending_events", &[]),
        0.0
    );

    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "store",
            "schemas",
            "kafka",
            "outbox_age",
            "offset_resets",
            "schema_registry"
        ]
    );

    // With the broker down the API still takes writes, and readiness says why it is degraded.
    app.system.dev_broker().unwrap().broker_down(1).unwrap();
    let body: Value = eventually(
        "readiness to notice the broker is down",
        Duration::from_secs(20),
        || async {
            let response = app.client.get(app.url("/readyz")).send().await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json().await.ok()
        },
    )
    .await;
    assert_eq!(body["status"], "not_ready");
    let kafka = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kafka")
        .unwrap();
    assert_eq!(kafka["ok"], false);
    assert_eq!(
        app.create_task(json!({ "title": "while down" }))
            .await
            .status(),
        201
    );
    app.system.dev_broker().unwrap().broker_up(1).unwrap();
    app.audit_when(31).await;
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_traceparent_reaches_every_consumers_log_records() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "up",
        "--log-format",
        "json",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    // Per-request and per-event lines are at DEBUG; these targets show them.
    let (mut child, first) = crate::binary::launch(
        &args,
        "info,taskstream_api::service=debug,audit=debug,notifications=debug",
        Stdio::piped(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let http = first.strip_prefix("http: ").unwrap().to_owned();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client = client();
    let response = client
        .post(format!("{http}/tasks"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({ "title": "traced", "assignee": "ana" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let echoed = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(echoed.starts_with(&format!("00-{trace_id}-")), "{echoed}");
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        "the audit record and the notification",
        Duration::from_secs(20),
        || async {
            let get = |path: String| client.get(path).send();
            let audit: Value = get(format!("{http}/audit?task_id={id}"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let notes: Value = get(format!("{http}/notifications?task_id={id}"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            // The notifier's one notification of the task event (it
            // announces the assignment saga's request for acceptance too).
            let notified = notes["items"]
                .as_array()?
                .iter()
                .filter(|n| n["event_type"] == "task.created")
                .count();
            (audit["items"].as_array()?.len() == 1 && notified == 1).then_some(())
        },
    )
    .await;
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = child.0.wait();
    let records: Vec<Value> = logs
        .join()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let traced = |target: &str, group: Option<&str>| {
        records.iter().any(|r| {
            r["target"] == target
                && r["span"]["trace_id"] == trace_id
                && group.is_none_or(|g| r["span"]["group"] == g)
        })
    };
    assert!(
        traced("taskstream_api::service", None),
        "the API's record of the change carries the trace id"
    );
    assert!(
        traced("audit", Some("auditor")),
        "the auditor's record carries the trace id"
    );
    assert!(
        traced("notifications", Some("notifier")),
        "the notifier's record carries the trace id"
    );
}
