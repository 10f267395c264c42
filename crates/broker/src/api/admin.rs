//! CreateTopics and DeleteTopics.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
};

use super::str_bytes;
use crate::broker::Shared;
use crate::topics::TopicError;

/// `config_source` of a config set on the topic itself.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
/// `config_source` of a broker default.
const DEFAULT_CONFIG: i8 = 5;
const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;

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

/// DescribeConfigs for topics: the configs set on the topic, then the
/// defaults of the ones this broker enforces. A broker resource is
/// answered with no configs.
pub(crate) fn describe_configs(
    shared: &Arc<Shared>,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                TOPIC_RESOURCE => {}
                BROKER_RESOURCE => return result,
                _ => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(
                            "only topic and broker resources are described",
                        )))
                }
            }
            let Some(topic) = shared.topics.get(resource.resource_name.as_str()) else {
                return result.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            };
            let d = shared.topics.defaults();
            let defaults = [
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", d.retention_ms.to_string()),
                ("retention.bytes", d.retention_bytes.to_string()),
                ("segment.bytes", d.segment_bytes.to_string()),
                ("segment.ms", d.segment_ms.to_string()),
                ("max.message.bytes", d.max_message_bytes.to_string()),
                ("index.interval.bytes", d.index_interval_bytes.to_string()),
            ];
            let mut entries: Vec<(String, String, i8)> = topic
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone(), DYNAMIC_TOPIC_CONFIG))
                .collect();
            for (k, v) in defaults {
                if !topic.configs.contains_key(k) {
                    entries.push((k.to_owned(), v, DEFAULT_CONFIG));
                }
            }
            let wanted = resource.configuration_keys.as_ref();
            result.with_configs(
                entries
                    .into_iter()
                    .filter(|(k, _, _)| {
                        wanted.is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
                    })
                    .map(|(k, v, source)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(&k))
                            .with_value(Some(str_bytes(&v)))
                            .with_config_source(source)
                    })
                    .collect(),
            )
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// DeleteRecords: moves each partition's log start up to the given offset
/// (-1 meaning the end of the log).
pub(crate) fn delete_records(
    shared: &Arc<Shared>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = shared.topics.get(t.name.0.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let result = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let mut log = partition.log();
                    // Up to the high watermark, as Kafka: under
                    // BeforeAcknowledge not past what is fsynced.
                    let offset = if p.offset == -1 {
                        log.high_watermark()
                    } else {
                        p.offset
                    };
                    if offset < 0 || offset > log.high_watermark() {
                        return result.with_error_code(ResponseError::OffsetOutOfRange.code());
                    }
                    match log.delete_records_before(offset) {
                        Ok(Some(low)) => result.with_low_watermark(low),
                        Ok(None) => result.with_error_code(ResponseError::OffsetOutOfRange.code()),
                        Err(e) => {
                            tracing::error!(error = %e, "deleting records failed");
                            result.with_error_code(ResponseError::KafkaStorageError.code())
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
