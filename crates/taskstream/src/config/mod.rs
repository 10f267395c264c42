//! Typed configuration shared by the commands, validated at start-up: the
//! Kafka connection and its security settings, secrets that never reach a
//! log, durations, and the endpoints file a running `taskstream up` writes.

mod durations;
mod endpoints;
mod kafka;
mod secret;

pub use durations::{parse_duration, parse_http_timeout, parse_millis, parse_seconds};
pub use endpoints::{Endpoints, ENDPOINTS_FILE};
pub use kafka::{
    check_bootstrap, KafkaArgs, KafkaStartArgs, KafkaTimeoutArgs, SaslMechanism, SecurityProtocol,
};
pub use secret::Secret;
