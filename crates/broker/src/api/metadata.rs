//! Metadata: this one node, and the topics asked for (creating missing ones
//! when both the request and the broker allow it).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::str_bytes;
use crate::broker::Shared;
use crate::topics::{valid_name, Topic};

pub(crate) fn handle(
    shared: &Arc<Shared>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let node = BrokerId(shared.config.node_id);
    let names: Option<Vec<Option<String>>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|t| t.name.map(|n| n.0.as_str().to_owned()))
                .collect(),
        ),
    };
    // Before v4 every Metadata request allowed auto-creation.
    let may_create =
        shared.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let topics = match names {
        None => shared
            .topics
            .all()
            .iter()
            .map(|t| describe(t, node))
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match name {
                None => MetadataResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicId.code()),
                Some(name) => lookup(shared, &name, may_create, node),
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(str_bytes(&shared.advertised_host))
            .with_port(shared.advertised_port)])
        .with_cluster_id(Some(str_bytes(&shared.cluster_id)))
        .with_controller_id(node)
        .with_topics(topics)
}

fn lookup(
    shared: &Arc<Shared>,
    name: &str,
    may_create: bool,
    node: BrokerId,
) -> MetadataResponseTopic {
    let error = |code: ResponseError| {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(name))))
            .with_error_code(code.code())
    };
    if let Some(topic) = shared.topics.get(name) {
        return describe(&topic, node);
    }
    if !valid_name(name) {
        return error(ResponseError::InvalidTopicException);
    }
    if !may_create {
        return error(ResponseError::UnknownTopicOrPartition);
    }
    match shared
        .topics
        .create(name, shared.config.default_partitions, -1, BTreeMap::new())
    {
        Ok(topic) => describe(&topic, node),
        Err(crate::topics::TopicError::AlreadyExists(_)) => match shared.topics.get(name) {
            Some(topic) => describe(&topic, node),
            None => error(ResponseError::UnknownTopicOrPartition),
        },
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-creating a topic failed");
            error(ResponseError::UnknownServerError)
        }
    }
}

fn describe(topic: &Topic, node: BrokerId) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(topic.id)
        .with_partitions(
            (0..topic.partitions.len() as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(node)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}
