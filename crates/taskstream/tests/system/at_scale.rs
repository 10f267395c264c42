//! The deployment shape of a cluster, on one machine: every component its
//! own process (and several replicas), sharing a PostgreSQL database and
//! nothing else — no data directory, no endpoints file.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::binary::{launch, ChildGuard};
use crate::helpers::{client, eventually};

/// A fresh database on the server named by `TASKSTREAM_TEST_POSTGRES`
/// (default: the local one), dropped at the end; `None` (skipped loudly)
/// when there is no server, unless `TASKSTREAM_REQUIRE_POSTGRES=1`.
pub(crate) async fn scratch_database() -> Option<(String, String)> {
    let admin = std::env::var("TASKSTREAM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(conn) => conn,
        Err(e) => {
            assert!(
                std::env::var("TASKSTREAM_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "TASKSTREAM_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {e}"
            );
            eprintln!("SKIPPED: the PostgreSQL deployment test (no server: {e})");
            return None;
        }
    };
    let name = format!("taskstream_system_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some((admin.clone(), format!("{base}/{name}")))
}

pub(crate) async fn drop_database(admin: &str, url: &str) {
    let name = url.rsplit_once('/').unwrap().1;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Starts `component` against the shared database and its own empty data
/// directory; returns it with the address it serves.
pub(crate) fn start(
    component: &str,
    extra: &[&str],
    database: &str,
    dir: &tempfile::TempDir,
) -> (ChildGuard, String) {
    let data_dir = dir
        .path()
        .join(format!("{component}-{}", uuid::Uuid::new_v4()));
    let data_dir = data_dir.to_str().unwrap().to_owned();
    let mut args = vec![
        component,
        "--http",
        "127.0.0.1:0",
        "--database-url",
        database,
        "--data-dir",
        &data_dir,
    ];
    args.extend_from_slice(extra);
    let (child, line) = launch(&args, "warn", Stdio::inherit());
    let url = line
        .strip_prefix("http: ")
        .unwrap_or_else(|| panic!("{component} printed {line:?}"))
        .to_owned();
    (child, url)
}

async fn items(url: &str) -> Vec<Value> {
    let body: Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_in_separate_processes_share_postgres_and_a_standby_relay_takes_over() {
    let Some((admin, database)) = scratch_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_broker, line) = launch(&["dev-broker"], "warn", Stdio::null());
    let kafka = line.strip_prefix("kafka: ").unwrap().to_owned();
    let (_registry, line) = launch(
        &[
            "registry",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("registry").to_str().unwrap(),
        ],
        "warn",
        Stdio::inherit(),
    );
    let registry = line.strip_prefix("schema-registry: ").unwrap().to_owned();
    let kafka_args = [
        "--kafka-bootstrap",
        kafka.as_str(),
        "--schema-registry",
        registry.as_str(),
    ];

    let api_args = ["--schema-registry", registry.as_str()];
    let (_api_a, api_a) = start("api", &api_args, &database, &dir);
    let (_api_b, api_b) = start("api", &api_args, &database, &dir);
    let (mut relay_a, relay_a_url) = start("relay", &kafka_args, &database, &dir);
    let (_notifier_a, notifier) = start("notifier", &kafka_args, &database, &dir);
    let (_notifier_b, _) = start("notifier", &kafka_args, &database, &dir);
    let (_auditor_a, auditor) = start("auditor", &kafka_args, &database, &dir);
    let (_auditor_b, _) = start("auditor", &kafka_args, &database, &dir);

    // Writes through both API replicas; each completion is a second event.
    let client = client();
    let mut ids = Vec::new();
    for i in 0..20 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let task: Value = client
            .post(format!("{api}/tasks"))
            .json(&serde_json::json!({ "title": format!("task {i}"), "assignee": "ana" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in ids.iter().take(5) {
        let done = client
            .post(format!("{api_b}/tasks/{id}/complete"))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
    }

    // Every event is recorded once by the auditor group, whichever replica
    // had its partition, and every API replica shows the same log.
    let audit = eventually("25 audit entries", Duration::from_secs(60), || async {
        let got = items(&format!("{auditor}/audit?limit=1000")).await;
        (got.len() >= 25).then_some(got)
    })
    .await;
    assert_eq!(audit.len(), 25, "no event recorded twice");
    assert_eq!(items(&format!("{api_a}/audit?limit=1000")).await.len(), 25);
    // task.created with an assignee and task.completed each notify once.
    let notes = eventually("25 notifications", Duration::from_secs(60), || async {
        let got = items(&format!("{notifier}/notifications?limit=1000")).await;
        (got.len() >= 25).then_some(got)
    })
    .await;
    assert_eq!(notes.len(), 25, "no notification sent twice");

    // A second relay stands by while the first holds the publishing lock;
    // the first dies, and the standby wins the lock and carries on.
    let (_relay_b, _) = start("relay", &kafka_args, &database, &dir);
    let published = client
        .get(format!("{relay_a_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        published.contains("taskstream_relay_events_published_total 25"),
        "{published}"
    );
    relay_a.0.kill().unwrap();
    relay_a.0.wait().unwrap();
    let task: Value = client
        .post(format!("{api_a}/tasks"))
        .json(&serde_json::json!({ "title": "after the failover" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap();
    eventually(
        "the event published by the standby relay",
        Duration::from_secs(60),
        || async {
            (items(&format!("{auditor}/audit?task_id={id}")).await.len() == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        items(&format!("{auditor}/audit?limit=1000")).await.len(),
        26
    );

    drop_database(&admin, &database).await;
}
