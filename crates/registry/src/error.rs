//! Registry errors with Confluent's HTTP statuses and error codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error as the Confluent Schema Registry reports it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    NotSoftDeleted(String),
    #[error("Version {0} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(i64),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectConfig(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    #[error("Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive")]
    InvalidCompatibility,
    #[error("{0}")]
    BadRequest(String),
    #[error("HTTP 404 Not Found")]
    NoRoute,
    #[error("Error in the backend data store")]
    Store(#[from] sqlx::Error),
}

impl RegistryApiError {
    /// Confluent's HTTP status and error code.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Self::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Self::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            Self::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            Self::NotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            Self::VersionNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40407),
            Self::NoSubjectConfig(_) => (StatusCode::NOT_FOUND, 40408),
            Self::Incompatible(_) => (StatusCode::CONFLICT, 40901),
            Self::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Self::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Self::InvalidCompatibility => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Self::NoRoute => (StatusCode::NOT_FOUND, 404),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

impl IntoResponse for RegistryApiError {
    fn into_response(self) -> Response {
        if let Self::Store(e) = &self {
            tracing::error!(error = %e, "schema registry store failed");
        }
        let (status, code) = self.status_and_code();
        confluent_error(status, code, self.to_string())
    }
}

/// An error the HTTP server answers itself (a head too large, a body too
/// slow, an unknown method, a panic...), in Confluent's shape. Like
/// Confluent's registry for errors no handler names, the error code is the
/// HTTP status (`{"error_code":405,"message":...}`); a 500 is 50001.
pub fn error_response(status: StatusCode, message: String) -> Response {
    let code = if status == StatusCode::INTERNAL_SERVER_ERROR {
        50001
    } else {
        u32::from(status.as_u16())
    };
    confluent_error(status, code, message)
}

fn confluent_error(status: StatusCode, code: u32, message: String) -> Response {
    let body = serde_json::json!({ "error_code": code, "message": message });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::api::CONTENT_TYPE),
    );
    response
}
