//! Errors from this crate, without leaking `rdkafka`'s types.

/// Why a Kafka operation failed. `retriable` tells callers whether trying the
/// same thing again later can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The client could not be created (bad configuration).
    #[error("invalid Kafka client configuration: {0}")]
    Config(String),
    /// The broker did not acknowledge a record.
    #[error("delivery to {topic} failed: {message}")]
    Delivery {
        topic: String,
        message: String,
        retriable: bool,
    },
    /// Receiving from the consumer group failed.
    #[error("consume failed: {0}")]
    Consume(String),
    /// Committing or storing offsets failed.
    #[error("offset commit failed: {0}")]
    Commit(String),
    /// The topic does not exist on the cluster.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// An admin or metadata request failed.
    #[error("{operation} failed: {message}")]
    Admin {
        operation: &'static str,
        message: String,
    },
    /// No broker answered a metadata request in time.
    #[error("no Kafka broker answered at {bootstrap} within {} (last error: {last_failure})", seconds(.waited))]
    Unreachable {
        bootstrap: String,
        waited: std::time::Duration,
        last_failure: String,
    },
    /// The dev broker could not be started or changed.
    #[error("dev broker: {0}")]
    DevBroker(String),
}

impl KafkaError {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Delivery { retriable, .. } => *retriable,
            // A missing topic may be created meanwhile.
            Self::Consume(_)
            | Self::Commit(_)
            | Self::Admin { .. }
            | Self::Unreachable { .. }
            | Self::UnknownTopic(_) => true,
            Self::Config(_) | Self::DevBroker(_) => false,
        }
    }
}

/// `5s`, `1.5s`: a duration as a person writes it.
fn seconds(d: &std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The client lost its connection to the brokers, or cannot resolve them:
/// not an error for a consumer, since librdkafka reconnects by itself (or
/// fetches from a partition's next leader).
pub(crate) fn lost_brokers(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure, Resolve};
    matches!(
        e,
        rdkafka::error::KafkaError::MessageConsumption(
            BrokerTransportFailure | AllBrokersDown | Resolve
        )
    )
}
