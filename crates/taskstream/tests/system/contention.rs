//! Many clients changing one task at once: without `If-Match` the last
//! writer wins, so every change succeeds and gets its own event, in order.

use std::path::PathBuf;

use serde_json::{json, Value};
use sqlx::Connection;

use crate::at_scale::{drop_database, scratch_database, start};
use crate::helpers::{client, spawn_app_with};

/// Clients sending PATCHes at once, and PATCHes each sends in turn.
const CLIENTS: usize = 10;
const PATCHES_PER_CLIENT: usize = 5;

/// Sends every client's PATCHes (client `c` to `apis[c % apis.len()]`),
/// returning each response's status and body.
async fn patch_concurrently(apis: &[String], id: &str) -> Vec<(u16, Value)> {
    let client = client();
    let clients = (0..CLIENTS).map(|c| {
        let client = client.clone();
        let url = format!("{}/tasks/{id}", apis[c % apis.len()]);
        async move {
            let mut answers = Vec::new();
            for p in 0..PATCHES_PER_CLIENT {
                let response = client
                    .patch(&url)
                    .json(&json!({ "title": format!("client {c} patch {p}") }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                answers.push((status, response.json::<Value>().await.unwrap()));
            }
            answers
        }
    });
    futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn assert_all_succeeded(answers: &[(u16, Value)]) {
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} PATCHes failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    // Every change is its own version: none was lost or merged.
    let mut versions: Vec<i64> = answers
        .iter()
        .map(|(_, task)| task["version"].as_i64().unwrap())
        .collect();
    versions.sort_unstable();
    let expected: Vec<i64> = (2..=(CLIENTS * PATCHES_PER_CLIENT) as i64 + 1).collect();
    assert_eq!(versions, expected);
}

/// The task's events in outbox order, as (type, version of the task after it).
fn events_in_order(rows: Vec<(String, Vec<u8>)>) -> Vec<(String, i64)> {
    rows.into_iter()
        .map(|(event_type, payload)| {
            let envelope: Value = serde_json::from_slice(&payload).unwrap();
            (
                event_type,
                envelope["data"]["task"]["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn expected_events() -> Vec<(String, i64)> {
    let n = (CLIENTS * PATCHES_PER_CLIENT) as i64;
    std::iter::once(("task.created".to_owned(), 1))
        .chain((2..=n + 1).map(|v| ("task.updated".to_owned(), v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_without_if_match_all_succeed_and_each_emits_one_event_in_order() {
    let mut data_dir = PathBuf::new();
    // JSON events, so that the outbox rows read back without a registry.
    let app = spawn_app_with(|config| {
        data_dir = config.data_dir.clone();
        config.registry = taskstream::system::RegistrySetting::Disabled;
    })
    .await;
    let task = app.created("contended", None).await;
    let id = task["id"].as_str().unwrap();

    let answers = patch_concurrently(std::slice::from_ref(&app.base), id).await;
    assert_all_succeeded(&answers);

    let now: Value = app
        .client
        .get(app.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["version"], (CLIENTS * PATCHES_PER_CLIENT + 1) as i64);

    let url = format!("sqlite:{}", data_dir.join("taskstream.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT type, payload FROM outbox WHERE aggregateid = ? ORDER BY seq")
            .bind(id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(events_in_order(rows), expected_events());

    // A stale If-Match is still refused, and changes nothing.
    let stale = app
        .client
        .patch(app.url(&format!("/tasks/{id}")))
        .header("if-match", "\"1\"")
        .json(&json!({ "title": "stale" }))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_through_two_api_processes_on_postgres_all_succeed_in_order() {
    let Some((admin, database)) = scratch_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = ["--event-format", "json"];
    let (_api_a, api_a) = start("api", &json, &database, &dir);
    let (_api_b, api_b) = start("api", &json, &database, &dir);
    let created: Value = client()
        .post(format!("{api_a}/tasks"))
        .json(&json!({ "title": "contended across processes" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    let answers = patch_concurrently(&[api_a, api_b], id).await;
    assert_all_succeeded(&answers);

    let mut db = sqlx::PgConnection::connect(&database).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT type, payload FROM outbox WHERE aggregateid = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    assert_eq!(events_in_order(rows), expected_events());
    drop_database(&admin, &database).await;
}
