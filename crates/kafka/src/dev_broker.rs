//! An in-process Kafka-protocol broker for development and tests.
//!
//! This is librdkafka's mock cluster: real wire protocol on a random
//! 127.0.0.1 port, so any Kafka client can connect. It keeps everything in
//! memory, does not compact, and does not hide aborted transactions from
//! `read_committed` readers; see the README's notes on the dev broker.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::Client;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

use crate::context::TracingContext;
use crate::{KafkaError, TopicSpec};

/// Kafka APIs whose requests [`DevBroker::inject_errors`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum KafkaApi {
    Produce = 0,
    Fetch = 1,
    OffsetCommit = 8,
    OffsetFetch = 9,
    Heartbeat = 12,
}

/// Retriable broker errors to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedError {
    NotLeaderForPartition,
    RequestTimedOut,
    NotCoordinator,
    BrokerNotAvailable,
}

/// A running dev broker. Dropping it stops the broker.
pub struct DevBroker {
    /// The client that owns the mock cluster; the cluster lives as long as it.
    owner: BaseProducer<TracingContext>,
    bootstrap: String,
}

impl DevBroker {
    /// Starts a one-node broker with `topics` created.
    pub fn start(topics: &[TopicSpec]) -> Result<Self, KafkaError> {
        let owner: BaseProducer<TracingContext> = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("client.id", "taskstream-dev-broker")
            .create_with_context(TracingContext::new("dev-broker"))
            .map_err(|e| KafkaError::DevBroker(e.to_string()))?;
        let broker = Self {
            bootstrap: String::new(),
            owner,
        };
        let cluster = broker.cluster()?;
        // SAFETY: `cluster` is valid while `owner` lives; librdkafka copies the string.
        let bootstrap = unsafe { CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster)) }
            .to_string_lossy()
            .into_owned();
        // A real broker delays the first rebalance of a new group by 3 s to
        // let more members join; for one process that is only a wait.
        // SAFETY: as above.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0) };
        let broker = Self {
            bootstrap,
            ..broker
        };
        for topic in topics {
            broker.create_topic(topic)?;
        }
        Ok(broker)
    }

    fn client(&self) -> &Client<TracingContext> {
        self.owner.client()
    }

    fn cluster(&self) -> Result<*mut rdsys::rd_kafka_mock_cluster_t, KafkaError> {
        // SAFETY: the pointer comes from a live client handle.
        let cluster = unsafe { rdsys::rd_kafka_handle_mock_cluster(self.client().native_ptr()) };
        if cluster.is_null() {
            Err(KafkaError::DevBroker("client has no mock cluster".into()))
        } else {
            Ok(cluster)
        }
    }

    /// The `host:port` list clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the dev broker does not serve CreateTopics requests).
    pub fn create_topic(&self, topic: &TopicSpec) -> Result<(), KafkaError> {
        let name =
            CString::new(topic.name.as_str()).map_err(|e| KafkaError::DevBroker(e.to_string()))?;
        // The dev broker has one node: replication beyond it is meaningless.
        // SAFETY: valid cluster pointer and NUL-terminated name.
        let err = unsafe {
            rdsys::rd_kafka_mock_topic_create(self.cluster()?, name.as_ptr(), topic.partitions, 1)
        };
        check(err, "create topic")
    }

    /// Takes broker `id` (1 for the single node) offline, for failure tests.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        // SAFETY: valid cluster pointer.
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_down(self.cluster()?, id) },
            "broker down",
        )
    }

    /// Brings broker `id` back online.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        // SAFETY: valid cluster pointer.
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_up(self.cluster()?, id) },
            "broker up",
        )
    }

    /// Makes the broker answer the next `count` requests of `api` with
    /// `error`, as a real broker does during leader elections or overload.
    /// Clients are expected to retry; for failure tests.
    pub fn inject_errors(
        &self,
        api: KafkaApi,
        error: InjectedError,
        count: usize,
    ) -> Result<(), KafkaError> {
        use rdsys::rd_kafka_resp_err_t as E;
        let code = match error {
            InjectedError::NotLeaderForPartition => E::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            InjectedError::RequestTimedOut => E::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            InjectedError::NotCoordinator => E::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            InjectedError::BrokerNotAvailable => E::RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE,
        };
        let errors = vec![code; count];
        // SAFETY: valid cluster pointer; librdkafka copies the array.
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(
                self.cluster()?,
                api as i16,
                errors.len(),
                errors.as_ptr(),
            )
        };
        Ok(())
    }

    /// Waits for the broker's own client to settle, then stops the broker.
    pub fn shutdown(self, timeout: Duration) {
        let _ = self.owner.flush(timeout);
    }
}

fn check(err: rdsys::rd_kafka_resp_err_t, what: &str) -> Result<(), KafkaError> {
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::DevBroker(format!("{what}: {err:?}")))
    }
}
