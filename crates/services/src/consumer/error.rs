//! The one error a consumer's layers and handlers report: what went wrong,
//! its cause, and whether trying again can help.

use std::error::Error as StdError;

/// The cause of a [`HandleError`], kept for whoever walks the chain.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a record could not be decoded or handled.
///
/// The classification is the one thing the runtime acts on: a
/// [`HandleError::Transient`] failure is retried and then holds its
/// partition; a [`HandleError::Permanent`] one sends the record to the
/// dead-letter topic at once. The message is what logs and the
/// `dlq.error.message` header show.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// A failure that may pass: a database, registry or downstream outage.
    #[error("{message}")]
    Transient {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A failure that repeats on every attempt: the event itself is at fault,
    /// or the receiver refused it.
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl HandleError {
    /// A failure that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            source: None,
        }
    }

    /// A failure that will repeat on every attempt.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// Whether trying again can help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. } | Self::Permanent { message, .. } => message,
        }
    }

    /// The same failure, its message prefixed with `context` (`"sink log"`
    /// gives `"sink log: <message>"`); the classification and cause stay.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        match self {
            Self::Transient { message, source } => Self::Transient {
                message: format!("{context}: {message}"),
                source,
            },
            Self::Permanent { message, source } => Self::Permanent {
                message: format!("{context}: {message}"),
                source,
            },
        }
    }

    fn classified(retriable: bool, message: String, source: BoxError) -> Self {
        let source = Some(source);
        if retriable {
            Self::Transient { message, source }
        } else {
            Self::Permanent { message, source }
        }
    }
}

/// A store failure is an outage: it may pass.
impl From<taskstream_store::StoreError> for HandleError {
    fn from(e: taskstream_store::StoreError) -> Self {
        Self::Transient {
            message: format!("store: {e}"),
            source: Some(Box::new(e)),
        }
    }
}

/// Retriable while the schema registry is unreachable; otherwise the bytes
/// are not an event this build can read.
impl From<crate::EncodingError> for HandleError {
    fn from(e: crate::EncodingError) -> Self {
        Self::classified(e.is_retriable(), chain(&e), Box::new(e))
    }
}

impl From<taskstream_avro::AvroError> for HandleError {
    fn from(e: taskstream_avro::AvroError) -> Self {
        Self::classified(e.is_retriable(), chain(&e), Box::new(e))
    }
}

/// An error and its causes, `"outer: inner: ..."`: the whole story for the
/// message, since the dead-letter header carries no chain.
fn chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message = format!("{message}: {e}");
        cause = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EncodingError;

    #[test]
    fn a_store_failure_is_transient_and_keeps_its_cause() {
        let error = HandleError::from(taskstream_store::StoreError::Unavailable(
            "disk full".into(),
        ));
        assert!(error.is_retriable());
        assert!(error.to_string().starts_with("store: "), "{error}");
        assert!(error.source().is_some());
    }

    #[test]
    fn an_encoding_error_keeps_its_message_its_class_and_its_cause() {
        let undecodable = HandleError::from(EncodingError::Json(
            taskstream_domain::CodecError::Decode("not json".into()),
        ));
        assert!(!undecodable.is_retriable());
        assert_eq!(
            undecodable.to_string(),
            "the record value is not a task event: cannot decode event: not json"
        );
        assert_eq!(
            undecodable.source().unwrap().to_string(),
            "the record value is not a task event"
        );
        let registry_down = HandleError::from(EncodingError::from(
            taskstream_avro::AvroError::NotRegistered(taskstream_domain::EventType::TaskCreated),
        ));
        assert!(registry_down.is_retriable());
    }

    #[test]
    fn an_avro_error_is_classified_by_its_kind() {
        let error = HandleError::from(taskstream_avro::AvroError::UnknownRecord {
            id: 7,
            record: "other.Thing".into(),
        });
        assert!(!error.is_retriable());
        assert_eq!(
            error.message(),
            "schema 7 is other.Thing, which is no task event this build knows"
        );
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_class() {
        let error = HandleError::permanent("410 Gone").context("sink webhook");
        assert_eq!(error.to_string(), "sink webhook: 410 Gone");
        assert!(!error.is_retriable());
        let error = HandleError::transient("timeout").context("sink webhook");
        assert!(error.is_retriable());
    }
}
