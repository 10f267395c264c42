//! The registry's REST API, driven over HTTP as clients use it.

use serde_json::{json, Value};
use taskstream_registry::{router, RegistryStore};

struct Registry {
    base: String,
    client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

/// Serves the registry whose database is at `path`.
async fn spawn_at(path: &std::path::Path) -> Registry {
    let store = RegistryStore::open(path).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(store)).await.unwrap() });
    Registry {
        base,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _dir: None,
    }
}

async fn spawn() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let registry = spawn_at(&dir.path().join("registry.db")).await;
    Registry {
        _dir: Some(dir),
        ..registry
    }
}

impl Registry {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/vnd.schemaregistry.v1+json"),
            "{path}"
        );
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn register(&self, subject: &str, schema: &Value) -> (u16, Value) {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema.to_string() }),
        )
        .await
    }
}

fn record(fields: Value) -> Value {
    json!({ "type": "record", "name": "Thing", "namespace": "test", "fields": fields })
}

fn error_code(body: &Value) -> i64 {
    body["error_code"].as_i64().unwrap()
}

#[tokio::test]
async fn subjects_versions_ids_lookup_and_errors_behave_like_confluents() {
    let r = spawn().await;
    let v1 = record(json!([{ "name": "a", "type": "string" }]));
    let v2 = record(
        json!([{ "name": "a", "type": "string" }, { "name": "b", "type": "int", "default": 0 }]),
    );

    let (status, body) = r.register("things-value", &v1).await;
    assert_eq!((status, body["id"].as_i64()), (200, Some(1)));
    // The same schema again, even laid out differently, keeps its id.
    let pretty = serde_json::to_string_pretty(&v1).unwrap();
    let (_, again) = r
        .post(
            "/subjects/things-value/versions",
            json!({ "schema": pretty }),
        )
        .await;
    assert_eq!(again["id"], 1);
    let (_, body) = r.register("things-value", &v2).await;
    assert_eq!(body["id"], 2);
    // Under another subject, the same schema has the same id.
    let (_, other) = r.register("other-value", &v1).await;
    assert_eq!(other["id"], 1);

    assert_eq!(
        r.get("/subjects").await.1,
        json!(["other-value", "things-value"])
    );
    assert_eq!(
        r.get("/subjects/things-value/versions").await.1,
        json!([1, 2])
    );
    let (_, latest) = r.get("/subjects/things-value/versions/latest").await;
    assert_eq!(
        (latest["version"].as_i64(), latest["id"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(latest["subject"], "things-value");
    let (_, first) = r.get("/subjects/things-value/versions/1").await;
    assert_eq!(
        serde_json::from_str::<Value>(first["schema"].as_str().unwrap()).unwrap(),
        v1
    );
    let (_, by_id) = r.get("/schemas/ids/2").await;
    assert_eq!(
        serde_json::from_str::<Value>(by_id["schema"].as_str().unwrap()).unwrap(),
        v2
    );
    assert_eq!(
        r.get("/schemas/ids/1/versions").await.1,
        json!([
            { "subject": "other-value", "version": 1 },
            { "subject": "things-value", "version": 1 }
        ])
    );
    let (status, found) = r
        .post(
            "/subjects/things-value",
            json!({ "schema": v2.to_string() }),
        )
        .await;
    assert_eq!(
        (status, found["version"].as_i64(), found["id"].as_i64()),
        (200, Some(2), Some(2))
    );

    // Confluent's error codes.
    let unknown = record(json!([{ "name": "z", "type": "long" }]));
    let cases = [
        (r.get("/subjects/nope/versions").await, 404, 40401),
        (r.get("/subjects/things-value/versions/9").await, 404, 40402),
        (
            r.get("/subjects/things-value/versions/abc").await,
            422,
            42202,
        ),
        (r.get("/schemas/ids/99").await, 404, 40403),
        (
            r.post(
                "/subjects/things-value",
                json!({ "schema": unknown.to_string() }),
            )
            .await,
            404,
            40403,
        ),
        (
            r.post("/subjects/nope", json!({ "schema": v1.to_string() }))
                .await,
            404,
            40401,
        ),
        (
            r.post(
                "/subjects/x/versions",
                json!({ "schema": "{\"type\": \"recrod\"}" }),
            )
            .await,
            422,
            42201,
        ),
        (
            r.post("/subjects/x/versions", json!({ "schema": "not json" }))
                .await,
            422,
            42201,
        ),
        (
            r.put("/config", json!({ "compatibility": "SIDEWAYS" }))
                .await,
            422,
            42203,
        ),
        (r.get("/config/things-value").await, 404, 40408),
        (
            r.delete("/subjects/things-value?permanent=true").await,
            404,
            40405,
        ),
    ];
    for ((status, body), want_status, want_code) in cases {
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code),
            "{body}"
        );
        assert!(body["message"].is_string());
    }
}

#[tokio::test]
async fn deletes_are_soft_first_then_permanent() {
    let r = spawn().await;
    let v1 = record(json!([{ "name": "a", "type": "string" }]));
    r.register("s", &v1).await;
    // A version must be soft-deleted before it can be deleted for good.
    let (status, body) = r.delete("/subjects/s/versions/1?permanent=true").await;
    assert_eq!((status, error_code(&body)), (404, 40407), "{body}");
    assert_eq!(r.delete("/subjects/s").await, (200, json!([1])));
    assert_eq!(r.get("/subjects").await.1, json!([]));
    assert_eq!(r.get("/subjects?deleted=true").await.1, json!(["s"]));
    assert_eq!(error_code(&r.get("/subjects/s/versions").await.1), 40401);
    assert_eq!(
        r.delete("/subjects/s?permanent=true").await,
        (200, json!([1]))
    );
    assert_eq!(r.get("/subjects?deleted=true").await.1, json!([]));
    // The schema keeps its id for anyone who still holds records written with it.
    assert_eq!(r.get("/schemas/ids/1").await.0, 200);
    // Registering again starts a new life for the subject.
    assert_eq!(r.register("s", &v1).await.1["id"], 1);
}

#[tokio::test]
async fn config_is_global_with_per_subject_overrides_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let r = spawn_at(&path).await;
    assert_eq!(
        r.get("/config").await.1,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    assert_eq!(
        r.put("/config", json!({ "compatibility": "full" })).await.1,
        json!({ "compatibility": "FULL" })
    );
    assert_eq!(
        r.put("/config/s", json!({ "compatibility": "NONE" }))
            .await
            .1,
        json!({ "compatibility": "NONE" })
    );
    assert_eq!(
        r.get("/config/s").await.1,
        json!({ "compatibilityLevel": "NONE" })
    );
    assert_eq!(
        r.get("/config/t?defaultToGlobal=true").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    r.register("s", &record(json!([{ "name": "a", "type": "string" }])))
        .await;
    assert_eq!(
        r.delete("/config/s").await.1,
        json!({ "compatibilityLevel": "NONE" })
    );
    r.put("/config/s", json!({ "compatibility": "NONE" })).await;

    // A second server on the same database sees everything.
    let again = spawn_at(&path).await;
    assert_eq!(
        again.get("/config").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    assert_eq!(
        again.get("/config/s").await.1,
        json!({ "compatibilityLevel": "NONE" })
    );
    assert_eq!(again.get("/subjects").await.1, json!(["s"]));
    assert_eq!(again.get("/schemas/ids/1").await.0, 200);
}

/// One row of the compatibility matrix: versions registered first, then a
/// compatible and an incompatible candidate, and the field the refusal names.
struct Case {
    level: &'static str,
    earlier: Vec<Value>,
    compatible: Value,
    incompatible: Option<(Value, &'static str)>,
}

fn matrix() -> Vec<Case> {
    let f = |name: &str, t: &str| json!({ "name": name, "type": t });
    let fd = |name: &str, t: &str, d: Value| json!({ "name": name, "type": t, "default": d });
    vec![
        Case {
            level: "NONE",
            earlier: vec![record(json!([f("a", "string")]))],
            compatible: record(json!([f("z", "long")])),
            incompatible: None,
        },
        Case {
            level: "BACKWARD",
            earlier: vec![record(json!([f("a", "string")]))],
            compatible: record(json!([f("a", "string"), fd("b", "int", json!(0))])),
            incompatible: Some((record(json!([f("a", "string"), f("b", "int")])), "b")),
        },
        Case {
            level: "FORWARD",
            earlier: vec![record(json!([f("a", "string"), fd("b", "int", json!(0))]))],
            compatible: record(json!([f("a", "string")])),
            incompatible: Some((record(json!([fd("b", "int", json!(0))])), "a")),
        },
        Case {
            level: "FULL",
            earlier: vec![record(json!([f("a", "string")]))],
            compatible: record(json!([f("a", "string"), fd("c", "string", json!(""))])),
            incompatible: Some((record(json!([f("a", "long")])), "a")),
        },
        Case {
            level: "BACKWARD_TRANSITIVE",
            earlier: vec![
                record(json!([f("a", "string")])),
                record(json!([fd("b", "string", json!("x"))])),
            ],
            compatible: record(json!([
                fd("b", "string", json!("x")),
                fd("c", "int", json!(0))
            ])),
            // Fine against the latest version, not against the first.
            incompatible: Some((
                record(json!([
                    fd("b", "string", json!("x")),
                    fd("a", "int", json!(0))
                ])),
                "a",
            )),
        },
        Case {
            level: "FORWARD_TRANSITIVE",
            earlier: vec![
                record(json!([f("a", "string")])),
                record(json!([fd("a", "string", json!("d"))])),
            ],
            compatible: record(json!([
                fd("a", "string", json!("d")),
                fd("c", "int", json!(0))
            ])),
            incompatible: Some((record(json!([fd("c", "int", json!(0))])), "a")),
        },
        Case {
            level: "FULL_TRANSITIVE",
            earlier: vec![
                record(json!([fd("a", "string", json!("d"))])),
                record(json!([])),
            ],
            compatible: record(json!([fd("c", "int", json!(0))])),
            incompatible: Some((record(json!([fd("a", "int", json!(0))])), "a")),
        },
    ]
}

#[tokio::test]
async fn every_compatibility_level_accepts_a_compatible_change_and_refuses_an_incompatible_one() {
    let r = spawn().await;
    for case in matrix() {
        let subject = format!("matrix-{}", case.level.to_lowercase());
        r.put(
            &format!("/config/{subject}"),
            json!({ "compatibility": case.level }),
        )
        .await;
        for schema in &case.earlier {
            let (status, body) = r.register(&subject, schema).await;
            assert_eq!(
                status, 200,
                "{}: earlier version refused: {body}",
                case.level
            );
        }
        if let Some((bad, field)) = &case.incompatible {
            let check = format!("/compatibility/subjects/{subject}/versions?verbose=true");
            let (status, verdict) = r.post(&check, json!({ "schema": bad.to_string() })).await;
            assert_eq!(
                (status, &verdict["is_compatible"]),
                (200, &json!(false)),
                "{}",
                case.level
            );
            let reason = verdict["messages"][0].as_str().unwrap();
            assert!(
                reason.contains(&format!("'{field}'")),
                "{}: {reason}",
                case.level
            );
            if case.level.ends_with("_TRANSITIVE") {
                // Against the latest version alone the change is fine: only
                // an earlier version it breaks makes it incompatible.
                let latest = format!("/compatibility/subjects/{subject}/versions/latest");
                let (_, verdict) = r.post(&latest, json!({ "schema": bad.to_string() })).await;
                assert_eq!(verdict["is_compatible"], true, "{}", case.level);
            }
            let (status, body) = r.register(&subject, bad).await;
            assert_eq!(
                (status, error_code(&body)),
                (409, 40901),
                "{}: {body}",
                case.level
            );
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("'{field}'")),
                "{}: the refusal names `{field}`: {message}",
                case.level
            );
        }
        let check = format!("/compatibility/subjects/{subject}/versions");
        let (_, verdict) = r
            .post(&check, json!({ "schema": case.compatible.to_string() }))
            .await;
        assert_eq!(verdict["is_compatible"], true, "{}", case.level);
        let (status, body) = r.register(&subject, &case.compatible).await;
        assert_eq!(
            status, 200,
            "{}: compatible change refused: {body}",
            case.level
        );
    }
}

#[tokio::test]
async fn invalid_avro_names_are_refused_with_42201_not_a_dropped_connection() {
    let r = spawn().await;
    let cases = [
        json!({ "type": "record", "name": "bad-name", "fields": [] }),
        json!({ "type": "record", "name": "Ok", "aliases": ["bad-alias"], "fields": [] }),
        json!({ "type": "record", "name": "Outer", "fields": [
            { "name": "inner", "type": { "type": "fixed", "name": "bad name", "size": 4 } }
        ] }),
        json!({ "type": "enum", "name": "9lives", "symbols": ["A"] }),
    ];
    for schema in &cases {
        let (status, body) = r.register("names-value", schema).await;
        assert_eq!(
            (status, error_code(&body)),
            (422, 42201),
            "{schema}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("invalid"),
            "{body}"
        );
        // The compatibility check parses the same way.
        let (status, body) = r
            .post(
                "/compatibility/subjects/names-value/versions",
                json!({ "schema": schema.to_string() }),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (422, 42201),
            "{schema}: {body}"
        );
    }
    // Nothing was stored, and the registry still answers.
    let (status, body) = r.get("/subjects/names-value/versions").await;
    assert_eq!((status, error_code(&body)), (404, 40401));
}
