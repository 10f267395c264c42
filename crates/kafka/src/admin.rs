//! Creating declared topics on a real cluster, and explaining why it has
//! no transaction coordinator.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
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

/// The topic holding the transaction coordinators' state.
const TRANSACTION_LOG: &str = "__transaction_state";

/// What the cluster says about its transaction log: enough to tell why
/// `init_transactions` finds no coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransactionLogFacts {
    /// Brokers in the cluster's metadata.
    pub brokers: usize,
    /// A broker's `transaction.state.log.replication.factor`.
    pub replication_factor: Option<i32>,
    /// A broker's `transaction.state.log.min.isr`.
    pub min_isr: Option<i32>,
    /// `__transaction_state`'s partitions, as (leader, in-sync replicas),
    /// when the topic exists.
    pub partitions: Option<Vec<(i32, usize)>>,
}

/// Why the cluster cannot coordinate transactions, with how to fix it, as
/// one sentence; `None` when its transaction log looks usable (the cause
/// is elsewhere: a slow or restarting cluster, the network).
pub(crate) fn explain_transaction_log(facts: &TransactionLogFacts) -> Option<String> {
    let brokers = facts.brokers;
    let fix = |setting: &str| {
        format!(
            "set {setting} to at most {brokers} in the brokers' configuration (server.properties) \
             and restart them, or add brokers"
        )
    };
    match &facts.partitions {
        None => {
            let rf = facts.replication_factor?;
            (usize::try_from(rf).unwrap_or(0) > brokers).then(|| {
                format!(
                    "the cluster has {brokers} broker(s) but transaction.state.log.replication.factor is {rf}, \
                     so {TRANSACTION_LOG} cannot be created and there is no transaction coordinator: {}",
                    fix("transaction.state.log.replication.factor (and transaction.state.log.min.isr)")
                )
            })
        }
        Some(partitions) => {
            let leaderless = partitions.iter().filter(|(leader, _)| *leader < 0).count();
            if leaderless > 0 {
                return Some(format!(
                    "{leaderless} of the {} partitions of {TRANSACTION_LOG} have no leader, so their \
                     transactions have no coordinator: bring their brokers back",
                    partitions.len()
                ));
            }
            let min_isr = usize::try_from(facts.min_isr?).unwrap_or(0);
            let short = partitions.iter().filter(|(_, isr)| *isr < min_isr).count();
            let smallest = partitions.iter().map(|(_, isr)| *isr).min().unwrap_or(0);
            (short > 0).then(|| {
                // More brokers than min.isr: the replicas are down or behind,
                // and lowering the setting is the last resort, not the fix.
                let what_to_do = match min_isr > brokers {
                    true => fix("transaction.state.log.min.isr"),
                    false => format!(
                        "bring their replicas' brokers back in sync, or lower \
                         transaction.state.log.min.isr to at most {smallest}"
                    ),
                };
                format!(
                    "{short} of the {} partitions of {TRANSACTION_LOG} have fewer in-sync replicas than \
                     transaction.state.log.min.isr ({min_isr}), so their coordinators cannot write: {what_to_do}",
                    partitions.len(),
                )
            })
        }
    }
}

/// Asks the cluster about its transaction log (metadata, and a broker's
/// configuration) and explains why it cannot coordinate transactions, if
/// that is what it shows.
pub(crate) async fn diagnose_transaction_log(
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<Option<String>, KafkaError> {
    let admin: AdminClient<TracingContext> = config
        .client_config()
        .create_with_context(TracingContext::of("admin", config))
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let admin = std::sync::Arc::new(admin);
    let metadata = {
        let admin = std::sync::Arc::clone(&admin);
        // All topics: asking for the one topic could create it.
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| KafkaError::Admin {
                operation: "Metadata",
                message: e.to_string(),
            })?
            .map_err(|e| KafkaError::Admin {
                operation: "Metadata",
                message: e.to_string(),
            })?
    };
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == TRANSACTION_LOG && t.error().is_none())
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| (p.leader(), p.isr().len()))
                .collect::<Vec<_>>()
        });
    let Some(broker) = metadata.brokers().first().map(|b| b.id()) else {
        return Ok(None);
    };
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin
        .describe_configs([&ResourceSpecifier::Broker(broker)], &options)
        .await
        .map_err(|e| KafkaError::Admin {
            operation: "DescribeConfigs",
            message: e.to_string(),
        })?;
    let resource = described.into_iter().next().and_then(Result::ok);
    let setting = |name: &str| {
        resource
            .as_ref()
            .and_then(|r| r.get(name))
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.trim().parse::<i32>().ok())
    };
    Ok(explain_transaction_log(&TransactionLogFacts {
        brokers: metadata.brokers().len(),
        replication_factor: setting("transaction.state.log.replication.factor"),
        min_isr: setting("transaction.state.log.min.isr"),
        partitions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        brokers: usize,
        rf: i32,
        min_isr: i32,
        partitions: Option<Vec<(i32, usize)>>,
    ) -> TransactionLogFacts {
        TransactionLogFacts {
            brokers,
            replication_factor: Some(rf),
            min_isr: Some(min_isr),
            partitions,
        }
    }

    #[test]
    fn a_transaction_log_replicated_more_than_the_cluster_has_brokers_is_named_with_its_fix() {
        let why = explain_transaction_log(&facts(1, 3, 2, None)).expect("explained");
        assert_eq!(
            why,
            "the cluster has 1 broker(s) but transaction.state.log.replication.factor is 3, \
             so __transaction_state cannot be created and there is no transaction coordinator: \
             set transaction.state.log.replication.factor (and transaction.state.log.min.isr) to at most 1 \
             in the brokers' configuration (server.properties) and restart them, or add brokers"
        );
    }

    #[test]
    fn a_transaction_log_that_fits_the_cluster_explains_nothing() {
        // Not created yet, but it can be (the first init_transactions creates it).
        assert_eq!(explain_transaction_log(&facts(1, 1, 1, None)), None);
        assert_eq!(explain_transaction_log(&facts(3, 3, 2, None)), None);
        // Created, led and in sync.
        assert_eq!(
            explain_transaction_log(&facts(3, 3, 2, Some(vec![(1, 3), (2, 2)]))),
            None
        );
        // The broker's settings unknown: no guess.
        let unknown = TransactionLogFacts {
            brokers: 1,
            replication_factor: None,
            min_isr: None,
            partitions: None,
        };
        assert_eq!(explain_transaction_log(&unknown), None);
    }

    #[test]
    fn partitions_of_the_transaction_log_without_a_leader_or_enough_in_sync_replicas_are_counted() {
        let why = explain_transaction_log(&facts(3, 3, 2, Some(vec![(1, 3), (-1, 0), (2, 1)])))
            .expect("explained");
        assert!(
            why.starts_with("1 of the 3 partitions of __transaction_state have no leader"),
            "{why}"
        );
        let why = explain_transaction_log(&facts(3, 3, 2, Some(vec![(1, 3), (2, 1), (3, 1)])))
            .expect("explained");
        assert!(
            why.starts_with("2 of the 3 partitions of __transaction_state have fewer in-sync replicas than transaction.state.log.min.isr (2)"),
            "{why}"
        );
        // Three brokers, min.isr 2: the replicas are behind, not the setting too high.
        assert!(why.ends_with("bring their replicas' brokers back in sync, or lower transaction.state.log.min.isr to at most 1"), "{why}");
    }
}
