//! The REST API, routed the way Confluent's Schema Registry routes it.

use std::collections::HashMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use taskstream_avro::{CompatibilityLevel, Schema};

use crate::{RegistryApiError, RegistryStore, SubjectVersion};

/// The media type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Result<T> = std::result::Result<T, RegistryApiError>;
type Params = Query<HashMap<String, String>>;

fn ok(body: Value) -> Response {
    let mut response = body.to_string().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The registry's routes over `store`.
pub fn router(store: RegistryStore) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_schema_text))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_config).put(put_config).delete(delete_config),
        )
        .fallback(|| async { RegistryApiError::NoRoute })
        .with_state(store)
}

#[derive(Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_request(body: &Bytes) -> Result<SchemaRequest> {
    let request: SchemaRequest = serde_json::from_slice(body)
        .map_err(|e| RegistryApiError::BadRequest(format!("invalid request body: {e}")))?;
    if let Some(t) = request
        .schema_type
        .as_deref()
        .filter(|t| !t.eq_ignore_ascii_case("AVRO"))
    {
        return Err(RegistryApiError::InvalidSchema(format!(
            "schema type {t} is not supported; this registry holds AVRO"
        )));
    }
    if !request.references.is_empty() {
        return Err(RegistryApiError::InvalidSchema(
            "schema references are not supported".into(),
        ));
    }
    Ok(request)
}

fn version_body(v: &SubjectVersion) -> Value {
    json!({ "subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema })
}

/// Resolves `latest`, `-1` or a number to one of `versions`.
fn pick<'a>(
    versions: &'a [SubjectVersion],
    subject: &str,
    raw: &str,
) -> Result<&'a SubjectVersion> {
    if versions.is_empty() {
        return Err(RegistryApiError::SubjectNotFound(subject.to_owned()));
    }
    if raw == "latest" || raw == "-1" {
        return Ok(versions.last().expect("not empty"));
    }
    let n: i64 = raw
        .parse()
        .ok()
        .filter(|n| (1..=i64::from(i32::MAX)).contains(n))
        .ok_or_else(|| RegistryApiError::InvalidVersion(raw.to_owned()))?;
    versions
        .iter()
        .find(|v| v.version == n)
        .ok_or_else(|| RegistryApiError::VersionNotFound(raw.to_owned()))
}

async fn list_subjects(
    State(store): State<RegistryStore>,
    Query(params): Params,
) -> Result<Response> {
    Ok(ok(json!(store.subjects(flag(&params, "deleted")).await?)))
}

async fn list_versions(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    let versions = store.versions(&subject, flag(&params, "deleted")).await?;
    if versions.is_empty() {
        return Err(RegistryApiError::SubjectNotFound(subject));
    }
    Ok(ok(json!(versions
        .iter()
        .map(|v| v.version)
        .collect::<Vec<_>>())))
}

async fn register(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let request = schema_request(&body)?;
    let id = store.register(&subject, &request.schema).await?;
    Ok(ok(json!({ "id": id })))
}

async fn lookup(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let request = schema_request(&body)?;
    let found = store.lookup(&subject, &request.schema).await?;
    Ok(ok(version_body(&found)))
}

async fn get_version(
    State(store): State<RegistryStore>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response> {
    let versions = store.versions(&subject, flag(&params, "deleted")).await?;
    Ok(ok(version_body(pick(&versions, &subject, &version)?)))
}

async fn get_version_schema(
    State(store): State<RegistryStore>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let versions = store.versions(&subject, false).await?;
    let schema: Value =
        serde_json::from_str(&pick(&versions, &subject, &version)?.schema).unwrap_or(Value::Null);
    Ok(ok(schema))
}

async fn delete_subject(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    Ok(ok(json!(
        store
            .delete(&subject, None, flag(&params, "permanent"))
            .await?
    )))
}

async fn delete_version(
    State(store): State<RegistryStore>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response> {
    let permanent = flag(&params, "permanent");
    let versions = store.versions(&subject, permanent).await?;
    let number = pick(&versions, &subject, &version)?.version;
    let deleted = store.delete(&subject, Some(number), permanent).await?;
    Ok(ok(json!(deleted[0])))
}

fn schema_id(raw: &str) -> Result<i64> {
    raw.parse()
        .map_err(|_| RegistryApiError::SchemaNotFound(raw.to_owned()))
}

/// The id in a path and the schema stored under it.
async fn stored_schema(store: &RegistryStore, raw: String) -> Result<(i64, String)> {
    let id = schema_id(&raw)?;
    let schema = store
        .schema(id)
        .await?
        .ok_or(RegistryApiError::SchemaNotFound(raw))?;
    Ok((id, schema))
}

async fn get_schema(
    State(store): State<RegistryStore>,
    Path(id): Path<String>,
) -> Result<Response> {
    let (_, schema) = stored_schema(&store, id).await?;
    Ok(ok(json!({ "schema": schema })))
}

async fn get_schema_text(
    State(store): State<RegistryStore>,
    Path(id): Path<String>,
) -> Result<Response> {
    let (_, schema) = stored_schema(&store, id).await?;
    Ok(ok(serde_json::from_str(&schema).unwrap_or(Value::Null)))
}

async fn get_schema_versions(
    State(store): State<RegistryStore>,
    Path(id): Path<String>,
) -> Result<Response> {
    let (id, _) = stored_schema(&store, id).await?;
    let usages: Vec<Value> = store
        .usages(id)
        .await?
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(ok(json!(usages)))
}

/// The schema in a compatibility-check request.
fn schema_to_check(body: &Bytes) -> Result<Schema> {
    let request = schema_request(body)?;
    let json: Value = serde_json::from_str(&request.schema)
        .map_err(|e| RegistryApiError::InvalidSchema(e.to_string()))?;
    crate::names::parse_schema(&json)
}

fn verdict(reasons: Vec<String>, params: &HashMap<String, String>) -> Response {
    let mut body = json!({ "is_compatible": reasons.is_empty() });
    if flag(params, "verbose") {
        body["messages"] = json!(reasons);
    }
    ok(body)
}

/// Against one version (`latest` or a number), in the direction(s) the
/// subject's level names, as Confluent's registry checks it.
async fn check(
    State(store): State<RegistryStore>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response> {
    let schema = schema_to_check(&body)?;
    let versions = store.versions(&subject, false).await?;
    let chosen = pick(&versions, &subject, &version)?;
    let non_transitive = match store.level(Some(&subject)).await? {
        CompatibilityLevel::BackwardTransitive => CompatibilityLevel::Backward,
        CompatibilityLevel::ForwardTransitive => CompatibilityLevel::Forward,
        CompatibilityLevel::FullTransitive => CompatibilityLevel::Full,
        other => other,
    };
    let reasons = store
        .incompatibilities(
            &subject,
            &schema,
            std::slice::from_ref(chosen),
            Some(non_transitive),
        )
        .await?;
    Ok(verdict(reasons, &params))
}

/// Against every version the subject's level covers (all of them for the
/// transitive levels, the latest otherwise): what registering would check.
async fn check_all(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response> {
    let schema = schema_to_check(&body)?;
    let versions = store.versions(&subject, false).await?;
    if versions.is_empty() {
        return Err(RegistryApiError::SubjectNotFound(subject));
    }
    let reasons = store
        .incompatibilities(&subject, &schema, &versions, None)
        .await?;
    Ok(verdict(reasons, &params))
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

fn level_from(body: &Bytes) -> Result<CompatibilityLevel> {
    let request: ConfigRequest = serde_json::from_slice(body)
        .map_err(|e| RegistryApiError::BadRequest(format!("invalid request body: {e}")))?;
    CompatibilityLevel::from_str(&request.compatibility)
        .map_err(|_| RegistryApiError::InvalidCompatibility)
}

async fn get_global_config(State(store): State<RegistryStore>) -> Result<Response> {
    Ok(ok(
        json!({ "compatibilityLevel": store.level(None).await?.as_str() }),
    ))
}

async fn put_global_config(State(store): State<RegistryStore>, body: Bytes) -> Result<Response> {
    let level = level_from(&body)?;
    store.set_level("", level).await?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

async fn get_config(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    match store.subject_level(&subject).await? {
        Some(level) => Ok(ok(json!({ "compatibilityLevel": level.as_str() }))),
        None if flag(&params, "defaultToGlobal") => Ok(ok(
            json!({ "compatibilityLevel": store.level(None).await?.as_str() }),
        )),
        None => Err(RegistryApiError::NoSubjectConfig(subject)),
    }
}

async fn put_config(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let level = level_from(&body)?;
    store.set_level(&subject, level).await?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

async fn delete_config(
    State(store): State<RegistryStore>,
    Path(subject): Path<String>,
) -> Result<Response> {
    match store.delete_level(&subject).await? {
        Some(level) => Ok(ok(json!({ "compatibilityLevel": level.as_str() }))),
        None => Err(RegistryApiError::NoSubjectConfig(subject)),
    }
}
