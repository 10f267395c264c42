//! Test support for taskstream: Apache Kafka itself, as the reference broker.
//!
//! - [`KafkaRuntime`]: Java 17+ and Kafka's jars, fetched from Maven Central
//!   once (named by the repository's `kafka/pom.xml`) and cached.
//! - [`KafkaCluster`]: a KRaft cluster of one or three nodes on random
//!   loopback ports in a temporary directory; nodes can be killed and
//!   restarted, and Kafka's own command-line tools run against it.
//! - [`ConnectWorker`]: a Kafka Connect distributed worker on such a
//!   cluster, with the Debezium PostgreSQL connector as a plugin
//!   (`kafka/debezium/pom.xml`).
//! - [`FaultProxy`]: a Kafka-aware TCP proxy that loses the response to a
//!   chosen Produce request after the broker handled it.
//! - [`shared_cluster`] and [`kafka_or_skip`]: one cluster per test binary,
//!   skipped loudly (or failed, with `TASKSTREAM_REQUIRE_KAFKA=1`) when Java
//!   or Maven are missing.
//!
//! The broker conformance suite (`tests/conformance.rs`) runs the same
//! checks against this cluster and against taskstream's dev broker.

mod cluster;
mod connect;
mod coordinator;
mod error;
mod process;
mod proxy;
mod runtime;
mod shared;

pub use cluster::{KafkaCluster, Shape};
pub use connect::{ConnectWorker, POSTGRES_CONNECTOR};
pub use error::ClusterError;
pub use proxy::FaultProxy;
pub use runtime::{
    debezium_version, fetch_debezium_plugin, fetch_jars, kafka_version, KafkaRuntime, CACHE_ENV,
    DEBEZIUM_POM, KAFKA_POM,
};
pub use shared::{kafka_or_skip, shared_cluster, skip_or_fail, REQUIRE_KAFKA_ENV};
