//! A full disk, from the client's side: writes the database cannot store are
//! refused with 507, never acknowledged; `/readyz` says why; service comes
//! back by itself once space is freed; and exactly the acknowledged changes
//! are stored, published and consumed.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app, TestApp};

/// Creates a task with a large description; answers the status and, on
/// 201, the new task's id.
async fn create_large(app: &TestApp, n: usize) -> (u16, Option<String>, Value) {
    let response = app
        .create_task(json!({
            "title": format!("large task {n}"),
            "description": "x".repeat(5000),
            "assignee": "ana",
        }))
        .await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    if status != 201 {
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{body}"
        );
    }
    let id = body["id"].as_str().map(str::to_owned);
    (status, id, body)
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_refuses_writes_with_507_and_acknowledges_only_what_it_stored() {
    let app = spawn_app().await;
    let first = app.created("before the disk filled", Some("ana")).await;
    let sqlite = app.system.store().sqlite().expect("up uses SQLite").clone();
    let pages = sqlite.page_count().await.unwrap();
    // Room for a few large tasks, then the "disk" is full.
    sqlite.limit_size(Some(pages + 12)).await.unwrap();

    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for round in 0..15 {
        let results = join_all((0..8).map(|i| create_large(&app, round * 8 + i))).await;
        for (status, id, body) in results {
            match status {
                201 => {
                    acknowledged.insert(id.expect("a created task has an id"));
                }
                507 => {
                    refused += 1;
                    assert_eq!(body["type"], "urn:taskstream:problem:insufficient-storage");
                }
                other => panic!("a write answered {other}: {body}"),
            }
        }
    }
    assert!(refused > 60, "the database filled up (refused {refused})");
    // Not a page to spare now, not even for readiness's small probe write.
    let full = sqlite.page_count().await.unwrap();
    sqlite.limit_size(Some(full)).await.unwrap();

    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    let store = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .unwrap();
    assert_eq!(store["ok"], false, "{body}");
    assert!(
        store["detail"].as_str().unwrap().contains("no space left"),
        "{body}"
    );

    // Every acknowledged task is readable; nothing else was stored.
    for id in &acknowledged {
        let response = app
            .client
            .get(app.url(&format!("/tasks/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "acknowledged task {id} is missing");
    }
    let listed = app.items("/tasks?limit=200").await;
    assert_eq!(listed.len(), acknowledged.len() + 1);

    // Space comes back: readiness recovers without any write from a client,
    // then writes succeed again.
    sqlite.limit_size(None).await.unwrap();
    eventually(
        "readiness after space is freed",
        Duration::from_secs(10),
        || async { (readiness(&app).await.0 == 200).then_some(()) },
    )
    .await;
    let after = app.created("after space was freed", None).await;

    // Exactly the acknowledged changes were published and consumed: no
    // event for a refused write, none lost for an acknowledged one.
    let expected = acknowledged.len() + 2;
    let audit = app.audit_when(expected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit_now = app.items("/audit?limit=10000").await;
    assert_eq!(audit_now.len(), expected, "audited only stored changes");
    let audited: BTreeSet<String> = audit
        .iter()
        .map(|e| e["task_id"].as_str().unwrap().to_owned())
        .collect();
    let mut stored = acknowledged.clone();
    stored.insert(first["id"].as_str().unwrap().to_owned());
    stored.insert(after["id"].as_str().unwrap().to_owned());
    assert_eq!(audited, stored);
    assert_eq!(app.outbox_total().await, expected as i64);
    app.system.shutdown().await;
}
