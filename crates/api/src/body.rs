//! Reading JSON request bodies with errors that say where the problem is.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::Problem;

/// A JSON body of type `T`. Unlike `axum::Json`, every rejection is a
/// problem document, and type errors name the offending field.
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(Problem::unsupported_media_type(format!(
                "expected Content-Type: application/json, got {:?}",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::payload_too_large(e.body_text())
            } else {
                Problem::bad_request(e.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Problem::bad_request(format!("invalid JSON: {inner}"))
        } else {
            Problem::bad_request(format!("invalid JSON at `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Problem::bad_request(format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Deserializes a field that distinguishes "absent" (`None`) from "null"
/// (`Some(None)`), for PATCH bodies. Use with `#[serde(default)]`.
pub(crate) fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}
