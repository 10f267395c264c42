//! Bad input gets a problem document and changes nothing.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem responses use RFC 7807's media type"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["type"].is_string() && body["detail"].is_string());
    body
}

/// Everything a client can observe about the stored state.
async fn snapshot(app: &TestApp) -> (Vec<Value>, i64) {
    let mut tasks = Vec::new();
    for status in ["open", "completed", "deleted"] {
        tasks.extend(
            app.items(&format!("/tasks?status={status}&limit=200"))
                .await,
        );
    }
    (tasks, app.outbox_total().await)
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
async fn rejected_requests_answer_with_problems_and_write_nothing() {
    let app = spawn_app().await;
    let open = app.created("open one", Some("ana")).await;
    let open_id = open["id"].as_str().unwrap().to_owned();
    let done = app.created("done one", None).await;
    let done_id = done["id"].as_str().unwrap().to_owned();
    assert_eq!(app.complete(&done_id).await.status(), 200);
    let gone = app.created("gone one", None).await;
    let gone_id = gone["id"].as_str().unwrap().to_owned();
    assert_eq!(app.delete(&gone_id).await.status(), 200);
    let before = snapshot(&app).await;
    assert_eq!(before.1, 5);

    let post_raw = |body: &'static str| {
        app.client
            .post(app.url("/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 400: not JSON, wrong types, unknown fields, empty body.
    assert_problem(post_raw("{\"title\":").await.unwrap(), 400).await;
    let wrong_type = assert_problem(post_raw("{\"title\": 5}").await.unwrap(), 400).await;
    assert!(
        wrong_type["detail"].as_str().unwrap().contains("title"),
        "{wrong_type}"
    );
    assert_problem(
        post_raw("{\"title\": \"a\", \"stauts\": \"x\"}")
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(post_raw("").await.unwrap(), 400).await;
    assert_problem(post_raw("[1, 2]").await.unwrap(), 400).await;
    assert_problem(post_raw("{\"title\": \"a\"} trailing").await.unwrap(), 400).await;
    // 415: not declared as JSON.
    let plain = app
        .client
        .post(app.url("/tasks"))
        .body("{\"title\":\"a\"}")
        .send()
        .await
        .unwrap();
    assert_problem(plain, 415).await;

    // 422: validation, naming every failing field.
    let missing = assert_problem(app.create_task(json!({})).await, 422).await;
    assert_eq!(fields(&missing), ["title"]);
    let long = assert_problem(
        app.create_task(json!({ "title": "x".repeat(201) })).await,
        422,
    )
    .await;
    assert_eq!(fields(&long), ["title"]);
    let many = assert_problem(
        app.create_task(
            json!({ "title": "", "priority": "urgent", "due_at": "tomorrow", "assignee": "" }),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&many), ["title", "priority", "due_at", "assignee"]);

    // 404: unknown or malformed ids.
    let unknown = uuid::Uuid::now_v7();
    assert_problem(
        app.client
            .get(app.url(&format!("/tasks/{unknown}")))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.client
            .get(app.url("/tasks/not-a-uuid"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(app.complete(&unknown.to_string()).await, 404).await;
    assert_problem(app.delete(&unknown.to_string()).await, 404).await;
    let patch_unknown = app
        .client
        .patch(app.url(&format!("/tasks/{unknown}")))
        .json(&json!({ "title": "x" }))
        .send()
        .await
        .unwrap();
    assert_problem(patch_unknown, 404).await;

    // 409: completing a completed or deleted task, changing a deleted one.
    assert_problem(app.complete(&done_id).await, 409).await;
    assert_problem(app.complete(&gone_id).await, 409).await;
    assert_problem(app.delete(&gone_id).await, 409).await;
    let patch = |id: &str, body: Value| {
        app.client
            .patch(app.url(&format!("/tasks/{id}")))
            .json(&body)
            .send()
    };
    assert_problem(
        patch(&gone_id, json!({ "title": "back" })).await.unwrap(),
        409,
    )
    .await;

    // 422 on PATCH: a required field cannot be cleared.
    let null_title = assert_problem(
        patch(&open_id, json!({ "title": null })).await.unwrap(),
        422,
    )
    .await;
    assert_eq!(fields(&null_title), ["title"]);
    assert_problem(
        patch(&open_id, json!({ "priority": "urgent" }))
            .await
            .unwrap(),
        422,
    )
    .await;

    // 412: a stale If-Match.
    let stale = app
        .client
        .post(app.url(&format!("/tasks/{open_id}/complete")))
        .header("if-match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_problem(stale, 412).await;

    // Query parameters.
    assert_problem(
        app.client
            .get(app.url("/tasks?status=bogus"))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_problem(
        app.client
            .get(app.url("/tasks?limit=0"))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_problem(
        app.client
            .get(app.url("/tasks?limit=abc"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        app.client
            .get(app.url("/tasks?cursor=zzz"))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;

    // Unknown routes and methods are problems too.
    assert_problem(app.client.get(app.url("/nope")).send().await.unwrap(), 404).await;
    assert_problem(app.client.put(app.url("/tasks")).send().await.unwrap(), 405).await;

    assert_eq!(
        snapshot(&app).await,
        before,
        "no rejected request changed anything"
    );
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tasks_have_a_location_an_etag_and_the_documented_fields() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/tasks"))
        .header("x-request-id", "req-42")
        .json(&json!({
            "title": "  Write chapter 52  ",
            "description": "events vs commands",
            "priority": "high",
            "due_at": "2026-12-01T17:00:00+01:00",
            "assignee": "ana"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(response.headers()["etag"], "\"1\"");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/tasks/{}", task["id"].as_str().unwrap()));
    assert_eq!(task["title"], "Write chapter 52");
    assert_eq!(task["status"], "open");
    assert_eq!(task["version"], 1);
    assert_eq!(task["priority"], "high");
    assert_eq!(task["due_at"], "2026-12-01T16:00:00Z");
    assert!(task["created_at"].is_string() && task["updated_at"].is_string());

    let fetched: Value = app
        .client
        .get(app.url(&location))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, task);
    // The request id becomes the event's correlation id.
    let audit = app.audit_when(1).await;
    assert_eq!(audit[0]["correlation_id"], "req-42");
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_served_routes() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut routes: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "DELETE /tasks/{id}",
            "GET /audit",
            "GET /healthz",
            "GET /metrics",
            "GET /notifications",
            "GET /readyz",
            "GET /sagas/{id}",
            "GET /tasks",
            "GET /tasks/{id}",
            "GET /tasks/{id}/suggestions",
            "PATCH /tasks/{id}",
            "POST /tasks",
            "POST /tasks/{id}/accept",
            "POST /tasks/{id}/complete",
            "POST /tasks/{id}/decline",
            "POST /tasks/{id}/suggestions/{sid}/accept",
            "POST /tasks/{id}/suggestions/{sid}/reject",
        ]
    );
    // Every documented GET without path parameters answers.
    for path in [
        "/audit",
        "/healthz",
        "/metrics",
        "/notifications",
        "/readyz",
        "/tasks",
    ] {
        assert_eq!(
            app.client.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert!(doc["components"]["schemas"]["Task"].is_object());
    app.system.shutdown().await;
}
