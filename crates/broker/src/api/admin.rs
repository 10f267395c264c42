//! CreateTopics and DeleteTopics.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
};

use super::str_bytes;
use crate::broker::Shared;
use crate::topics::TopicError;

/// `config_source` of a config set on the topic itself.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;

pub(crate) fn create_topics(
    shared: &Arc<Shared>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.as_str().to_owned();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            let fail = |code: ResponseError, message: String| {
                result
                    .clone()
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            };
            if !t.assignments.is_empty() {
                return fail(
                    ResponseError::InvalidRequest,
                    "manual replica assignments are not supported".into(),
                );
            }
            let mut configs = BTreeMap::new();
            for c in &t.configs {
                let Some(value) = &c.value else {
                    return fail(
                        ResponseError::InvalidConfig,
                        format!("config {} has no value", c.name.as_str()),
                    );
                };
                configs.insert(c.name.as_str().to_owned(), value.as_str().to_owned());
            }
            let partitions = match t.num_partitions {
                -1 => shared.config.default_partitions,
                n => n,
            };
            let outcome = if request.validate_only {
                shared
                    .topics
                    .validate(&name, partitions, t.replication_factor, &configs)
                    .map(|()| uuid::Uuid::nil())
            } else {
                shared
                    .topics
                    .create(&name, partitions, t.replication_factor, configs.clone())
                    .map(|topic| topic.id)
            };
            match outcome {
                Ok(id) => result
                    .with_topic_id(id)
                    .with_num_partitions(partitions)
                    .with_replication_factor(1)
                    .with_configs(Some(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(v)))
                                    .with_config_source(DYNAMIC_TOPIC_CONFIG)
                            })
                            .collect(),
                    )),
                Err(e) => {
                    let code = match &e {
                        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
                        TopicError::InvalidName(_) => ResponseError::InvalidTopicException,
                        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
                        TopicError::InvalidReplicationFactor(_) => {
                            ResponseError::InvalidReplicationFactor
                        }
                        TopicError::InvalidConfig(..) => ResponseError::InvalidConfig,
                        TopicError::Io(_) => {
                            tracing::error!(topic = name, error = %e, "creating a topic failed");
                            ResponseError::UnknownServerError
                        }
                    };
                    fail(code, e.to_string())
                }
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

pub(crate) fn delete_topics(
    shared: &Arc<Shared>,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let responses = request
        .topic_names
        .into_iter()
        .map(|name| {
            let result = DeletableTopicResult::default().with_name(Some(name.clone()));
            match shared.topics.delete(name.0.as_str()) {
                Ok(true) => result,
                Ok(false) => result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                Err(e) => {
                    tracing::error!(topic = name.0.as_str(), error = %e, "deleting a topic failed");
                    result.with_error_code(ResponseError::UnknownServerError.code())
                }
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
