//! The embedded Kafka-protocol dev broker, with the declared topics.

use anyhow::Context;
use taskstream_kafka::DevBroker;
use taskstream_services::topics::declared_topics;

/// Starts the dev broker with the declared topics (one replica each).
/// Its address is [`DevBroker::bootstrap_servers`]; stop it with
/// [`DevBroker::shutdown`] after the clients that use it.
pub fn dev_broker() -> anyhow::Result<DevBroker> {
    DevBroker::start(&declared_topics(1)).context("cannot start the dev broker")
}
