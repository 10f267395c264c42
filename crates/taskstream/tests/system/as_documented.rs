//! What the API accepts matches what README and `/openapi.json` say:
//! invisible titles are empty, If-Match compares strongly, the read-only
//! views check their parameters, the document states the real bounds, and
//! a corrupt endpoints file is reported as corrupt.

use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::spawn_app;

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_and_assignees_of_invisible_characters_only_are_refused_like_blank_ones() {
    let app = spawn_app().await;
    for invisible in [
        "\u{200B}",
        "\u{200C}\u{200D}",
        "\u{2060}\u{FEFF}",
        " \u{200B} ",
    ] {
        let refused = problem(app.create_task(json!({ "title": invisible })).await, 422).await;
        assert_eq!(fields(&refused), ["title"], "{invisible:?}");
        let refused = problem(
            app.create_task(json!({ "title": "fine", "assignee": invisible }))
                .await,
            422,
        )
        .await;
        assert_eq!(fields(&refused), ["assignee"], "{invisible:?}");
    }
    let task = app.created("visible", None).await;
    let id = task["id"].as_str().unwrap();
    let patched = app
        .client
        .patch(app.url(&format!("/tasks/{id}")))
        .json(&json!({ "title": "\u{FEFF}\u{200B}" }))
        .send()
        .await
        .unwrap();
    assert_eq!(fields(&problem(patched, 422).await), ["title"]);
    // Surrounding invisible characters are trimmed like spaces.
    let trimmed = app.created("\u{200B}Ship it\u{FEFF}", None).await;
    assert_eq!(trimmed["title"], "Ship it");
    assert_eq!(app.outbox_total().await, 2, "only the two valid tasks");
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_compares_strongly_so_weak_tags_never_match() {
    let app = spawn_app().await;
    let task = app.created("guarded", None).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let patch = |if_match: &'static str, title: &'static str| {
        app.client
            .patch(app.url(&format!("/tasks/{id}")))
            .header("if-match", if_match)
            .json(&json!({ "title": title }))
            .send()
    };
    // The current ETag is "1"; its weak form does not match.
    let weak = problem(patch("W/\"1\"", "weak").await.unwrap(), 412).await;
    assert!(weak["detail"].as_str().unwrap().contains("weak"), "{weak}");
    let weak_list = patch("W/\"1\", W/\"2\"", "weak").await.unwrap();
    assert_eq!(weak_list.status(), 412);
    let complete_weak = app
        .client
        .post(app.url(&format!("/tasks/{id}/complete")))
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(complete_weak.status(), 412);
    let delete_weak = app
        .client
        .delete(app.url(&format!("/tasks/{id}")))
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(delete_weak.status(), 412);
    // A tag that is no version of ours is well-formed, and does not match.
    assert_eq!(patch("\"one\"", "x").await.unwrap().status(), 412);
    // Malformed headers are 400.
    for malformed in ["1", "\"1", "*, \"1\""] {
        assert_eq!(
            patch(malformed, "x").await.unwrap().status(),
            400,
            "{malformed}"
        );
    }
    let unchanged: Value = app
        .client
        .get(app.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (unchanged["version"].as_i64(), unchanged["status"].as_str()),
        (Some(1), Some("open"))
    );

    // A list matches when any strong tag is the current one.
    let listed = patch("\"7\", W/\"1\", \"1\"", "listed").await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["etag"], "\"2\"");
    // Several If-Match fields form one list.
    let fields_list = app
        .client
        .patch(app.url(&format!("/tasks/{id}")))
        .header("if-match", "\"9\"")
        .header("if-match", "\"2\"")
        .json(&json!({ "title": "two fields" }))
        .send()
        .await
        .unwrap();
    assert_eq!(fields_list.status(), 200);
    assert_eq!(patch("\"1\", \"2\"", "stale").await.unwrap().status(), 412);
    // `*` matches whatever version the task is at.
    assert_eq!(patch("*", "any").await.unwrap().status(), 200);
    // Three changes, plus the creation.
    assert_eq!(app.outbox_total().await, 4);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_views_refuse_a_task_id_that_is_not_one() {
    let app = spawn_app().await;
    let task = app.created("audited", Some("ana")).await;
    let id = task["id"].as_str().unwrap().to_owned();
    app.audit_when(1).await;
    for view in ["/audit", "/notifications"] {
        let refused = problem(
            app.client
                .get(app.url(&format!("{view}?task_id=not-a-uuid")))
                .send()
                .await
                .unwrap(),
            422,
        )
        .await;
        assert_eq!(fields(&refused), ["task_id"], "{view}");
        let both = problem(
            app.client
                .get(app.url(&format!("{view}?task_id=nope&limit=0")))
                .send()
                .await
                .unwrap(),
            422,
        )
        .await;
        assert_eq!(fields(&both), ["task_id", "limit"], "{view}");
    }
    // A task id in capitals names the same task.
    let upper = app
        .items(&format!("/audit?task_id={}", id.to_uppercase()))
        .await;
    assert_eq!(upper.len(), 1);
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_states_the_bounds_the_server_enforces() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parameter = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} documents {name}"))["schema"]
            .clone()
    };
    for (path, max) in [
        ("/tasks", 200),
        ("/audit", 10_000),
        ("/notifications", 10_000),
    ] {
        let limit = parameter(path, "limit");
        assert_eq!(limit["minimum"], 1, "{path}: {limit}");
        assert_eq!(limit["maximum"], max, "{path}: {limit}");
        // The server agrees with both ends.
        for (value, status) in [(0, 422), (1, 200), (max, 200), (max + 1, 422)] {
            let response = app
                .client
                .get(app.url(&format!("{path}?limit={value}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path}?limit={value}");
        }
    }
    for path in ["/audit", "/notifications"] {
        assert_eq!(parameter(path, "task_id")["format"], "uuid", "{path}");
        let statuses = doc["paths"][path]["get"]["responses"].as_object().unwrap();
        assert!(statuses.contains_key("422"), "{path} documents 422");
    }
    app.system.shutdown().await;
}

#[test]
fn a_corrupt_endpoints_file_is_reported_as_corrupt_with_the_parse_error() {
    let bin = env!("CARGO_BIN_EXE_taskstream");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("SCHEMA_REGISTRY_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    // No file: the message says there is none.
    let missing = run(&["lag"]);
    assert!(missing.contains("there is no"), "{missing}");
    // A truncated file: corrupt, and why.
    std::fs::write(
        dir.path().join("endpoints.json"),
        "{\"kafka\": \"127.0.0.1:9",
    )
    .unwrap();
    for args in [&["lag"][..], &["auditor"], &["relay"]] {
        let corrupt = run(args);
        assert!(
            corrupt.contains("endpoints.json is corrupt") && corrupt.contains("EOF while parsing"),
            "{args:?}: {corrupt}"
        );
    }
    // Valid JSON of the wrong shape is corrupt too.
    std::fs::write(dir.path().join("endpoints.json"), "[1, 2]").unwrap();
    let shape = run(&["lag"]);
    assert!(shape.contains("is corrupt"), "{shape}");
}
