//! The topics taskstream uses, declared once. The dev broker, `taskstream
//! topics apply` and `taskstream topics list` all read these declarations.

use std::collections::BTreeMap;

use taskstream_kafka::TopicSpec;

/// Every task event, keyed by task id.
pub const TASK_EVENTS: &str = "task-events";

/// Partitions of the task-event topic: the most consumer instances per group
/// that can share the work.
pub const TASK_EVENTS_PARTITIONS: i32 = 6;

/// The workload processor's output: each assignee's open and overdue task
/// counts, keyed by assignee; compacted, so it holds the latest per assignee.
pub const ASSIGNEE_WORKLOAD: &str = "assignee-workload";

/// The workload processor's alerts: an assignee became overloaded.
pub const WORKLOAD_ALERTS: &str = "workload-alerts";

/// The workload processor's own state (what it knows of each task), keyed by
/// task id; compacted. It is read back on start, so that state and input
/// offsets always come from the same transaction.
pub const WORKLOAD_TASK_STATE: &str = "workload-task-state";

/// The assignment saga's events (`saga.started`, `saga.accepted`,
/// `saga.escalated`...), keyed by saga id; see [`crate::saga`].
pub const TASK_SAGAS: &str = "task-sagas";

/// Partitions of the saga topic.
pub const TASK_SAGAS_PARTITIONS: i32 = 3;

/// The triage agent's suggestions (`task.triage_suggested`, JSON), keyed by task id.
pub const TASK_SUGGESTIONS: &str = "task-suggestions";

/// Requests to the triage agent from synchronous callers (`taskstream agent ask`).
pub const TASK_TRIAGE_REQUESTS: &str = "task-triage-requests";

/// The default topic the agent's replies go to (a request names its own in `reply-to`).
pub const TASK_TRIAGE_REPLIES: &str = "task-triage-replies";

/// The topic a Confluent Schema Registry keeps its schemas in (`kafkastore.topic`).
pub const SCHEMA_REGISTRY_TOPIC: &str = "_schemas";

/// The group id a Confluent Schema Registry is configured with, for leader
/// election (`schema.registry.group.id`) and its store reader (`kafkastore.group.id`).
pub const SCHEMA_REGISTRY_GROUP: &str = "schema-registry";

/// The schema registry's topic, for a cluster where it must be created ahead
/// of time (its user is not allowed to create topics): one partition,
/// compacted, as the registry requires.
pub fn schema_registry_topic(replication_factor: i32) -> TopicSpec {
    TopicSpec {
        name: SCHEMA_REGISTRY_TOPIC.to_owned(),
        partitions: 1,
        replication_factor,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            (
                "min.insync.replicas".to_owned(),
                replication_factor.clamp(1, 2).to_string(),
            ),
        ]),
    }
}

/// Every topic taskstream declares, for a cluster with `replication_factor`
/// brokers holding each partition (3 in production).
pub fn declared_topics(replication_factor: i32) -> Vec<TopicSpec> {
    let min_insync = replication_factor.clamp(1, 2);
    vec![
        TopicSpec {
            name: TASK_EVENTS.to_owned(),
            partitions: TASK_EVENTS_PARTITIONS,
            replication_factor,
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("min.insync.replicas".to_owned(), min_insync.to_string()),
                // A week: long enough to replay after a consumer outage.
                (
                    "retention.ms".to_owned(),
                    (7 * 24 * 3600 * 1000_i64).to_string(),
                ),
            ]),
        },
        dead_letters(TASK_EVENTS, replication_factor),
        compacted(ASSIGNEE_WORKLOAD, 3, replication_factor),
        TopicSpec {
            name: WORKLOAD_ALERTS.to_owned(),
            partitions: 1,
            replication_factor,
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("min.insync.replicas".to_owned(), min_insync.to_string()),
            ]),
        },
        compacted(WORKLOAD_TASK_STATE, 1, replication_factor),
        TopicSpec {
            name: TASK_SAGAS.to_owned(),
            partitions: TASK_SAGAS_PARTITIONS,
            replication_factor,
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("min.insync.replicas".to_owned(), min_insync.to_string()),
                (
                    "retention.ms".to_owned(),
                    (7 * 24 * 3600 * 1000_i64).to_string(),
                ),
            ]),
        },
        // The notifier reads the saga's events too, and parks those it
        // cannot read.
        dead_letters(TASK_SAGAS, replication_factor),
        plain(TASK_SUGGESTIONS, TASK_EVENTS_PARTITIONS, replication_factor),
        plain(TASK_TRIAGE_REQUESTS, 3, replication_factor),
        plain(TASK_TRIAGE_REPLIES, 3, replication_factor),
    ]
}

/// The dead-letter topic of `topic`.
fn dead_letters(topic: &str, replication_factor: i32) -> TopicSpec {
    TopicSpec {
        name: crate::dead_letter_topic(topic),
        partitions: 1,
        replication_factor,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "delete".to_owned()),
            (
                "min.insync.replicas".to_owned(),
                replication_factor.clamp(1, 2).to_string(),
            ),
            // A month: dead letters wait for a person.
            (
                "retention.ms".to_owned(),
                (30 * 24 * 3600 * 1000_i64).to_string(),
            ),
        ]),
    }
}

/// A topic that deletes old records (the broker's retention).
fn plain(name: &str, partitions: i32, replication_factor: i32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions,
        replication_factor,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "delete".to_owned()),
            (
                "min.insync.replicas".to_owned(),
                replication_factor.clamp(1, 2).to_string(),
            ),
        ]),
    }
}

/// A compacted topic: it keeps the latest record of each key.
fn compacted(name: &str, partitions: i32, replication_factor: i32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions,
        replication_factor,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            (
                "min.insync.replicas".to_owned(),
                replication_factor.clamp(1, 2).to_string(),
            ),
        ]),
    }
}
