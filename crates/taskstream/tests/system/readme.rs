//! The README's walkthroughs run as written: its shell blocks for the
//! assignment saga and the triage agent, in bash, against a real `up`
//! (the README's `localhost:8080` pointed at the test's port, and its
//! `taskstream up ...` line started by the test with the same flags).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::launch;
use crate::helpers::{client, eventually};
use crate::sagas::get;

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// The first ```sh block after the heading `heading` in README.md.
fn block_after(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let from = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no heading {heading}"));
    let start = readme[from..].find("```sh\n").expect("a sh block") + from + "```sh\n".len();
    let end = readme[start..].find("```").expect("the block ends") + start;
    readme[start..end].to_owned()
}

/// Runs `script` in bash (stopping at the first failing command) in `dir`,
/// with the binary first on PATH; returns its standard output.
fn run_bash(script: &str, dir: &Path) -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the README block failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_saga_and_agent_walkthroughs_run_as_written() {
    let saga = block_after("### Watch an assignment saga compensate");
    let agent = block_after("### The triage agent: suggestions you accept");
    // The agent block starts `up` with the flags the walkthrough needs;
    // the test starts it (in the background) with the same ones.
    let up_line = agent
        .lines()
        .find(|l| l.starts_with("taskstream up"))
        .expect("the agent walkthrough starts up")
        .to_owned();
    let agent = agent.replace(&format!("{up_line}\n"), "");
    assert!(!saga.contains("taskstream up") && !agent.contains("taskstream up"));

    let work = tempfile::tempdir().unwrap();
    // The README's commands use the default data directory, `.taskstream`.
    let data_dir = work.path().join(".taskstream");
    let mut args: Vec<String> = [
        "up",
        "--http",
        "127.0.0.1:0",
        "--registry-http",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    args.extend(up_line.split_whitespace().skip(2).map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_up, line) = launch(&args, "warn,librdkafka=off", Stdio::null());
    let base = line.strip_prefix("http: ").unwrap().to_owned();
    let host = base.strip_prefix("http://").unwrap();

    let out = run_bash(&saga.replace("localhost:8080", host), work.path());
    // The last command of the block: the saga no longer waits.
    assert!(out.contains("HTTP/1.1 409"), "{out}");
    assert!(out.contains("\"awaiting_acceptance\""), "{out}");
    assert!(out.contains("\"compensated\""), "{out}");
    // And the saga compensated as the block's comments say: unassigned,
    // escalated, both people told.
    let client = client();
    let tasks = get(&client, format!("{base}/tasks")).await.unwrap();
    let id = tasks["items"][0]["id"].as_str().unwrap().to_owned();
    let task = eventually(
        "the task escalated to the team queue",
        Duration::from_secs(30),
        || async {
            let task = get(&client, format!("{base}/tasks/{id}")).await?;
            (task["assignee"] == "team-queue").then_some(task)
        },
    )
    .await;
    assert_eq!(task["version"], 3);
    let kinds = eventually(
        "both saga notifications",
        Duration::from_secs(30),
        || async {
            let notes = get(&client, format!("{base}/notifications?task_id={id}")).await?;
            let kinds: Vec<String> = notes["items"]
                .as_array()?
                .iter()
                .map(|n| {
                    format!(
                        "{}:{}",
                        n["kind"].as_str().unwrap(),
                        n["recipient"].as_str().unwrap()
                    )
                })
                .collect();
            (kinds.len() >= 3).then_some(kinds)
        },
    )
    .await;
    for expected in [
        "saga_acceptance_requested:bo",
        "saga_escalated:team-queue",
        "task_assigned:team-queue",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} in {kinds:?}"
        );
    }

    let out = run_bash(&agent.replace("localhost:8080", host), work.path());
    // The suggestion (high, ana, Friday), accepted once: the task takes
    // it at version 2; the second accept is refused; `agent ask` answers
    // and `agent replay` reports.
    assert!(
        out.contains("\"priority\":\"high\",\"assignee\":\"ana\""),
        "{out}"
    );
    assert!(out.contains("\"assignee\":\"ana\",\"version\":2"), "{out}");
    assert!(
        out.contains("\"status\":409,\"detail\":\"suggestion"),
        "{out}"
    );
    assert!(out.contains("is already accepted"), "{out}");
    assert!(
        out.contains("\"rationale\": \"priority high for \\\"blocker\\\"\""),
        "{out}"
    );
    assert!(out.contains("tasks evaluated"), "{out}");
}
