//! `taskstream bench --url` drives a running service from outside and
//! watches its consumer groups catch up: the chapter's own FastAPI +
//! confluent-kafka-python stack (`bench/chapter-stack`) on taskstream's
//! broker, and `taskstream up` itself, as BENCHMARKS.md runs them side by
//! side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::binary::{launch, ChildGuard};
use crate::helpers::{client, eventually};
use crate::interop::{python, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

fn chapter_stack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/chapter-stack")
}

/// The Python that also has FastAPI and uvicorn (`bench/chapter-stack/requirements.txt`).
fn python_with_fastapi() -> Option<PathBuf> {
    let python = python()?;
    let ok = Command::new(&python)
        .args(["-c", "import fastapi, uvicorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the chapter's API and audit consumer against `bootstrap`, with
/// their SQLite files in `dir`; returns them and the API's base URL.
async fn start_chapter_stack(
    python: &Path,
    bootstrap: &str,
    dir: &Path,
) -> (ChildGuard, ChildGuard, String) {
    let port = free_port();
    let spawn = |args: &[&str]| {
        ChildGuard(
            Command::new(python)
                .args(args)
                .current_dir(chapter_stack())
                .env("KAFKA_BOOTSTRAP", bootstrap)
                .env("CHAPTER_DB", dir.join("tasks.db"))
                .env("CHAPTER_AUDIT_DB", dir.join("audit.db"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let port_arg = port.to_string();
    let api = spawn(&[
        "-m",
        "uvicorn",
        "app:app",
        "--host",
        "127.0.0.1",
        "--port",
        &port_arg,
        "--no-access-log",
        "--log-level",
        "warning",
    ]);
    let audit = spawn(&["audit.py"]);
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    eventually("the chapter's API answers", Duration::from_secs(60), || {
        let request = http.get(format!("{base}/healthz"));
        async move {
            request
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    (api, audit, base)
}

/// Runs `taskstream bench --url base --json` with `args` and returns its report.
async fn bench_url(base: &str, args: &[&str]) -> Value {
    let mut command = Command::new(BIN);
    command
        .args(["bench", "--url", base, "--json"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "bench failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_watches_the_chapter_stacks_audit_group_catch_up_and_a_group_that_never_reads() {
    let Some(python) = python_with_fastapi() else {
        skip_or_fail(
            "the chapter's FastAPI stack (pip install -r bench/chapter-stack/requirements.txt)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_broker, line) = launch(&["dev-broker"], "warn", Stdio::inherit());
    let bootstrap = line.strip_prefix("kafka: ").unwrap().to_owned();
    let (_api, _audit, base) = start_chapter_stack(&python, &bootstrap, dir.path()).await;

    let report = bench_url(
        &base,
        &[
            "--requests",
            "300",
            "--concurrency",
            "8",
            "--updates",
            "0",
            "--completions",
            "0",
            "--kafka-bootstrap",
            &bootstrap,
            "--watch-topic",
            "chapter-task-events",
            "--watch-group",
            "chapter-audit",
            "--watch-group",
            "nobody-reads-this",
            "--catch-up-timeout",
            "20",
        ],
    )
    .await;
    assert_eq!(report["acknowledged_changes"], 300, "{report}");
    let catch_up = &report["catch_up"];
    assert_eq!(catch_up["expected"], 300, "{report}");
    assert_eq!(catch_up["published"], 300, "{report}");
    assert!(catch_up["published_after_ms"].is_u64(), "{report}");
    let audit = &catch_up["groups"]["chapter-audit"];
    assert!(audit["caught_up_after_ms"].is_u64(), "{report}");
    let nobody = &catch_up["groups"]["nobody-reads-this"];
    assert!(nobody["caught_up_after_ms"].is_null(), "{report}");
    assert!(nobody["lag_at_end"].as_i64().unwrap() >= 300, "{report}");
    // The chapter's service serves no /metrics: no memory, but the lag.
    let first = &report["samples"][0];
    assert!(first["resident_bytes"].is_null(), "{report}");
    assert!(first["lag"]["chapter-audit"].is_i64(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_from_outside_sees_both_of_ups_groups_consume_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (_up, line) = launch(
        &["up", "--http", "127.0.0.1:0", "--data-dir", data_dir],
        "warn",
        Stdio::inherit(),
    );
    let base = line.strip_prefix("http: ").unwrap().to_owned();
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("endpoints.json")).unwrap()).unwrap();
    let bootstrap = endpoints["kafka"].as_str().unwrap().to_owned();

    let report = bench_url(
        &base,
        &[
            "--requests",
            "300",
            "--concurrency",
            "8",
            "--kafka-bootstrap",
            &bootstrap,
            "--watch-group",
            "auditor",
            "--watch-group",
            "notifier",
        ],
    )
    .await;
    let changes = report["acknowledged_changes"].as_u64().unwrap();
    assert!(changes >= 290, "{report}");
    let catch_up = &report["catch_up"];
    assert_eq!(catch_up["published"].as_u64(), Some(changes), "{report}");
    for group in ["auditor", "notifier"] {
        assert!(
            catch_up["groups"][group]["caught_up_after_ms"].is_u64(),
            "{group} never caught up: {report}"
        );
    }
    // Sampled during the load: the service's memory, the groups' lag.
    let first = &report["samples"][0];
    assert!(
        first["resident_bytes"].as_i64().unwrap() > 1 << 20,
        "{report}"
    );
    assert!(first["lag"]["auditor"].is_i64(), "{report}");
}
