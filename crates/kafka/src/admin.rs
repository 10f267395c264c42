//! Creating declared topics on a real cluster.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::context::TracingContext;
use crate::{KafkaConfig, KafkaError, TopicSpec};

/// What [`apply_topics`] did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Creates each declared topic that does not exist yet. Existing topics are
/// left untouched (their partitions and configs are not changed). Fails when
/// the cluster does not answer within `timeout`.
pub async fn apply_topics(
    config: &KafkaConfig,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, TopicOutcome)>, KafkaError> {
    let admin: AdminClient<TracingContext> = config
        .client_config()
        .create_with_context(TracingContext::of("admin", config))
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            for (key, value) in &t.configs {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| KafkaError::Admin {
            operation: "CreateTopics",
            message: e.to_string(),
        })?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(name) => Ok((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((name, TopicOutcome::AlreadyExists))
            }
            Err((name, code)) => Err(KafkaError::Admin {
                operation: "CreateTopics",
                message: format!("topic {name}: {code}"),
            }),
        })
        .collect()
}
