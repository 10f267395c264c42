//! Everything taskstream says to Kafka goes through this crate; it is the only
//! one that imports `rdkafka` (librdkafka, the client confluent-kafka-python
//! wraps too).
//!
//! - [`KafkaConfig`]: where the cluster is and how to authenticate.
//! - [`wait_for_cluster`]: whether a broker answers, within a deadline.
//! - [`DevBroker`]: an in-process, Kafka-protocol broker for development and tests.
//! - [`EventProducer`]: an idempotent producer (`acks=all`) with per-record delivery reports.
//! - [`TransactionalProducer`] and [`CommittedInput`]: exactly-once
//!   consume-transform-produce (outputs and input offsets in one transaction).
//! - [`EventConsumer`]: a consumer-group member that commits only what the application acknowledged.
//! - [`group_offsets`]: a group's committed offsets beside the log's start and end (lag).
//! - [`OffsetReset`]: records a consumer skipped because they were deleted unread.
//! - [`TopicSpec`] and [`apply_topics`]: topics declared in code, created with the admin API.
//! - [`TopicProbe`]: whether a topic can take writes (leaders answering, replicas in sync).

mod admin;
mod committed_input;
mod config;
mod connectivity;
mod consumer;
mod context;
mod dev_broker;
mod error;
mod health;
mod offset_reset;
mod offsets;
mod producer;
mod reader;
mod stats;
mod topic;
mod transactional;

pub use admin::{apply_topics, TopicOutcome};
pub use committed_input::{read_committed, read_uncommitted, CommittedInput};
pub use config::KafkaConfig;
pub use connectivity::wait_for_cluster;
pub use consumer::{ConsumerSettings, EventConsumer, InboundRecord};
pub use dev_broker::{DevBroker, InjectedError, KafkaApi};
pub use error::KafkaError;
pub use health::{PartitionHealth, TopicHealth, TopicProbe};
pub use offset_reset::{OffsetReset, ResetMark};
pub use offsets::{
    group_offsets, list_groups, record_timestamps, PartitionOffsets, LAG_PROBE_GROUP,
};
pub use producer::{Delivery, DeliveryFuture, EventProducer, OutboundRecord, ProducerSettings};
pub use reader::{
    await_record, end_offsets, read_published, read_topic, Arrival, ArrivalReader, Published,
    TOPIC_READER_GROUP,
};
pub use stats::{BrokerStats, ClientStats, PartitionLag, StatsListener};
pub use topic::TopicSpec;
pub use transactional::{
    CommittedTail, GroupMetadata, PartitionBounds, TransactionError, TransactionErrorKind,
    TransactionSettings, TransactionalProducer,
};
