//! Routes librdkafka's logs and rebalance callbacks into `tracing`.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::TopicPartitionList;

/// The context every taskstream client is created with.
#[derive(Debug, Clone, Default)]
pub(crate) struct TracingContext {
    /// Names the client in log lines (`relay`, `auditor`, ...).
    pub(crate) client: String,
}

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let client = self.client.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client, fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", client, fac, "{message}")
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Transport errors while a broker is down are expected and retried by
        // librdkafka; they are worth a warning, not an error.
        tracing::warn!(target: "librdkafka", client = self.client.as_str(), %error, "{reason}");
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ConsumerContext for TracingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(client = self.client.as_str(), partitions = %describe(tpl), "partitions revoked")
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(client = self.client.as_str(), partitions = %describe(tpl), "partitions assigned")
            }
            Rebalance::Error(e) => {
                tracing::warn!(client = self.client.as_str(), error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::trace!(client = self.client.as_str(), offsets = %describe(offsets), "offsets committed")
            }
            Err(e) => {
                tracing::warn!(client = self.client.as_str(), error = %e, "offset commit failed")
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for TracingContext {
    type DeliveryOpaque = ();
    // Only the dev broker's own client uses the base producer; it sends nothing.
    fn delivery(&self, _result: &rdkafka::producer::DeliveryResult<'_>, _opaque: ()) {}
}
