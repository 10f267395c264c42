//! Static group membership: `up` is a static member of its consumer groups
//! (`group.instance.id` kept in its data directory), so after a crash the
//! restarted process takes its partitions back at once instead of waiting
//! for the killed process's session to expire.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{launch, up_args, ChildGuard};
use crate::brokers::Broker;
use crate::helpers::{client, eventually, try_items};
use taskstream_testkit::Shape;

const SESSION_TIMEOUT_S: u64 = 60;

/// Starts `up` on `data_dir` against the broker at `kafka`, which outlives it.
async fn start(data_dir: &str, kafka: &str) -> (ChildGuard, String) {
    let mut args: Vec<String> = up_args(data_dir).into_iter().map(String::from).collect();
    args.extend([
        "--kafka-bootstrap".into(),
        kafka.into(),
        "--session-timeout".into(),
        SESSION_TIMEOUT_S.to_string(),
        "--static-membership".into(),
    ]);
    let (child, line) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        launch(&args, "warn,librdkafka=off", Stdio::inherit())
    })
    .await
    .unwrap();
    (child, line.strip_prefix("http: ").unwrap().to_owned())
}

async fn create(http: &str, title: &str) -> String {
    let task: Value = client()
        .post(format!("{http}/tasks"))
        .json(&json!({ "title": title, "assignee": "ana" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    task["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_up_killed_and_restarted_on_its_data_dir_consumes_again_well_before_its_session_timeout()
{
    // The broker must outlive `up` (an embedded one would forget the
    // killed members with the process): taskstream's broker on its own.
    let (_broker, line) =
        tokio::task::spawn_blocking(|| launch(&["dev-broker"], "warn", Stdio::null()))
            .await
            .unwrap();
    let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();
    restarted_up_consumes_before_the_session_timeout(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_up_killed_and_restarted_on_its_data_dir_consumes_again_well_before_its_session_timeout_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "static membership").await else {
        return;
    };
    let bootstrap = kafka.cluster().unwrap().bootstrap_servers().to_owned();
    restarted_up_consumes_before_the_session_timeout(&bootstrap).await;
}

async fn restarted_up_consumes_before_the_session_timeout(kafka: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let client = client();

    let (mut first, http) = start(data_dir, kafka).await;
    let before = create(&http, "before the crash").await;
    crate::helpers::items_when(&client, &http, &format!("/audit?task_id={before}"), 1).await;
    let instance_id = std::fs::read_to_string(dir.path().join("group-instance-id")).unwrap();
    assert!(instance_id.starts_with("taskstream-up-"), "{instance_id}");

    let pid = first.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    first.0.wait().unwrap();

    let (_second, http) = start(data_dir, kafka).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("group-instance-id")).unwrap(),
        instance_id,
        "the restarted up is the same static member"
    );
    let after = create(&http, "after the crash").await;
    // A dynamic member would get the partitions only once the killed
    // process's 60 s session expired; the static member replaces it.
    eventually(
        "the auditor to record a task created after the restart, within half the session timeout",
        Duration::from_secs(SESSION_TIMEOUT_S / 2),
        || async {
            try_items(&client, &http, &format!("/audit?task_id={after}"))
                .await
                .filter(|items| !items.is_empty())
        },
    )
    .await;
    eventually(
        "the notifier to notify the assignee of that task, within half the session timeout",
        Duration::from_secs(SESSION_TIMEOUT_S / 2),
        || async {
            try_items(&client, &http, &format!("/notifications?task_id={after}"))
                .await
                .filter(|items| !items.is_empty())
        },
    )
    .await;
}
