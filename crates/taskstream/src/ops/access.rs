//! What each component may do on the cluster, declared once: the Kafka user
//! it authenticates as and exactly the topics, groups and transactional ids it
//! touches. `taskstream users render` turns this into Strimzi `KafkaUser`
//! resources; the deployment checks compare the Helm chart against it.
//!
//! Operations follow Kafka's ACL model, where Read, Write, Delete and Alter
//! each imply Describe, so a grant lists only the strongest operation needed.
//! Idempotent producers need no cluster-level `IdempotentWrite` grant since
//! Kafka 3.0 (KIP-679): Write on the topic is enough.

use serde::Serialize;
use taskstream_kafka::{LAG_PROBE_GROUP, TOPIC_READER_GROUP};

use taskstream_services::agent::{AGENT_GROUP, REQUESTS_GROUP};
use taskstream_services::processor::{PROCESSOR_GROUP, PROCESSOR_TRANSACTIONAL_ID};
use taskstream_services::saga::SAGA_GROUP;
use taskstream_services::topics::{
    ASSIGNEE_WORKLOAD, SCHEMA_REGISTRY_GROUP, SCHEMA_REGISTRY_TOPIC, TASK_EVENTS,
    TASK_EVENTS_PARTITIONS, TASK_SAGAS, TASK_SUGGESTIONS, TASK_TRIAGE_REPLIES,
    TASK_TRIAGE_REQUESTS, WORKLOAD_ALERTS, WORKLOAD_TASK_STATE,
};
use taskstream_services::{
    dead_letter_topic, AUDITOR_GROUP, NOTIFIER_GROUP, RELAY_TRANSACTIONAL_ID,
};

/// A Kafka resource an ACL names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AclResource {
    /// `topic`, `group`, `cluster` or `transactionalId` (Strimzi's spelling).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    /// `literal`, or `prefix` for the one family of topics named at run
    /// time: the triage agent's reply topics (`task-triage-replies.<name>`).
    pub pattern_type: &'static str,
}

/// One `simple` authorization rule of a Strimzi `KafkaUser`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub resource: AclResource,
    /// Strimzi's spelling: `Read`, `Write`, `Describe`, `DescribeConfigs`, ...
    pub operations: Vec<&'static str>,
}

impl Acl {
    pub(crate) fn literal(
        kind: &'static str,
        name: impl Into<String>,
        operations: &[&'static str],
    ) -> Self {
        Self {
            resource: AclResource {
                kind,
                name: name.into(),
                pattern_type: "literal",
            },
            operations: operations.to_vec(),
        }
    }

    /// Every resource whose name starts with `prefix`.
    pub(crate) fn prefixed(
        kind: &'static str,
        prefix: impl Into<String>,
        operations: &[&'static str],
    ) -> Self {
        Self {
            resource: AclResource {
                kind,
                name: prefix.into(),
                pattern_type: "prefix",
            },
            operations: operations.to_vec(),
        }
    }
}

/// The topics rows of the outbox are published to, by the relay or by
/// Debezium: task events (the API, the saga, the agent's auto-accept
/// rule), the saga's events and the triage agent's suggestions.
pub(crate) const OUTBOX_TOPICS: [&str; 3] = [TASK_EVENTS, TASK_SAGAS, TASK_SUGGESTIONS];

/// A component and its footprint on the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentAccess {
    pub name: &'static str,
    pub description: &'static str,
    /// The Kafka user it authenticates as; `None` if it never talks to Kafka.
    pub kafka_user: Option<&'static str>,
    /// Exactly what the user may do.
    pub acls: Vec<Acl>,
    /// HTTP paths it serves on its listener (probes, metrics, its API).
    pub http_paths: Vec<&'static str>,
    /// The most replicas that can do useful work at once, when there is a cap.
    pub max_replicas: Option<i32>,
    /// The topics the rows it writes to the outbox are published to:
    /// whoever publishes the outbox (the relay, or Kafka Connect) must be
    /// allowed to write them.
    pub outbox_topics: Vec<&'static str>,
}

/// Paths every taskstream component serves on its `--http` listener.
pub const OPERATIONAL_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Every component that runs in a deployment, taskstream's and the schema
/// registry it relies on.
pub fn components() -> Vec<ComponentAccess> {
    let dlq = dead_letter_topic(TASK_EVENTS);
    let consumer = |name, user, description, group: &str, view, outbox: &[_]| ComponentAccess {
        name,
        description,
        kafka_user: Some(user),
        acls: vec![
            Acl::literal("topic", TASK_EVENTS, &["Read"]),
            Acl::literal("group", group, &["Read"]),
            // Records it gives up on go to the dead-letter topic.
            Acl::literal("topic", dlq.clone(), &["Write"]),
        ],
        http_paths: [&OPERATIONAL_PATHS[..], &[view]].concat(),
        max_replicas: Some(TASK_EVENTS_PARTITIONS),
        outbox_topics: outbox.to_vec(),
    };
    vec![
        ComponentAccess {
            name: "api",
            description:
                "the Task API; writes tasks and their events to the outbox, never to Kafka",
            kafka_user: None,
            acls: vec![],
            http_paths: [
                &OPERATIONAL_PATHS[..],
                &[
                    "/tasks",
                    "/sagas",
                    "/audit",
                    "/notifications",
                    "/openapi.json",
                ],
            ]
            .concat(),
            max_replicas: None,
            outbox_topics: vec![TASK_EVENTS],
        },
        ComponentAccess {
            name: "relay",
            description: "publishes the outbox to the task-event topic, one Kafka transaction \
                          per batch",
            kafka_user: Some("taskstream-relay"),
            acls: OUTBOX_TOPICS
                .iter()
                // Read: after a restart it reads each topic's committed tail
                // back, to mark what a crash left published but unmarked.
                .map(|topic| Acl::literal("topic", *topic, &["Read", "Write"]))
                .chain([
                    // The group id that manually assigned reader carries.
                    Acl::literal("group", TOPIC_READER_GROUP, &["Read"]),
                    // Write (which implies Describe) covers InitProducerId,
                    // AddPartitionsToTxn and EndTxn for this id alone.
                    Acl::literal("transactionalId", RELAY_TRANSACTIONAL_ID, &["Write"]),
                ])
                .collect(),
            http_paths: OPERATIONAL_PATHS.to_vec(),
            // One publisher keeps the outbox's order on the topic.
            max_replicas: Some(1),
            outbox_topics: vec![],
        },
        {
            let mut notifier = consumer(
                "notifier",
                "taskstream-notifier",
                "the notification service (consumer group notifier), on task-events and the \
                 saga's task-sagas",
                NOTIFIER_GROUP,
                "/notifications",
                &[],
            );
            // It announces saga steps too, and parks the saga events it
            // cannot read on their own dead-letter topic.
            notifier.acls.extend([
                Acl::literal("topic", TASK_SAGAS, &["Read"]),
                Acl::literal("topic", dead_letter_topic(TASK_SAGAS), &["Write"]),
            ]);
            notifier
        },
        consumer(
            "auditor",
            "taskstream-auditor",
            "the audit-log service (consumer group auditor)",
            AUDITOR_GROUP,
            "/audit",
            &[],
        ),
        consumer(
            "saga",
            "taskstream-saga",
            "the assignment saga's orchestrator (consumer group saga) and its deadline timer; \
             its saga events and task changes go through the outbox",
            SAGA_GROUP,
            "/sagas",
            // Its saga events, and the task changes of its compensations.
            &[TASK_SAGAS, TASK_EVENTS],
        ),
        ComponentAccess {
            name: "agent",
            description: "the triage agent (consumer groups triage-agent and \
                          triage-agent-requests); its suggestions go through the outbox",
            kafka_user: Some("taskstream-agent"),
            acls: vec![
                Acl::literal("topic", TASK_EVENTS, &["Read"]),
                Acl::literal("group", AGENT_GROUP, &["Read"]),
                // Events the model cannot answer go to the dead-letter topic.
                Acl::literal("topic", dlq.clone(), &["Write"]),
                // Request-reply: it reads the requests in their own group and
                // answers on the default reply topic or a caller's own
                // `task-triage-replies.<name>`; it never produces, in a
                // transaction or otherwise, to any other topic.
                Acl::literal("topic", TASK_TRIAGE_REQUESTS, &["Read"]),
                Acl::literal("group", REQUESTS_GROUP, &["Read"]),
                Acl::literal("topic", TASK_TRIAGE_REPLIES, &["Write"]),
                Acl::prefixed("topic", format!("{TASK_TRIAGE_REPLIES}."), &["Write"]),
            ],
            http_paths: OPERATIONAL_PATHS.to_vec(),
            // Its group on task-events shares at most that many partitions.
            max_replicas: Some(TASK_EVENTS_PARTITIONS),
            // Its suggestions, and the task changes its auto-accept rule makes.
            outbox_topics: vec![TASK_SUGGESTIONS, TASK_EVENTS],
        },
        ComponentAccess {
            name: "processor",
            description: "the workload processor: task-events to per-assignee workload and \
                          overload alerts, exactly once through Kafka transactions",
            kafka_user: Some("taskstream-processor"),
            acls: vec![
                Acl::literal("topic", TASK_EVENTS, &["Read"]),
                // Its state topic is read back after every restart.
                Acl::literal("topic", WORKLOAD_TASK_STATE, &["Read", "Write"]),
                Acl::literal("topic", ASSIGNEE_WORKLOAD, &["Write"]),
                Acl::literal("topic", WORKLOAD_ALERTS, &["Write"]),
                // Input offsets are committed inside its transactions
                // (TxnOffsetCommit) and read back at start (OffsetFetch).
                Acl::literal("group", PROCESSOR_GROUP, &["Read"]),
                // Write covers InitProducerId, AddPartitionsToTxn,
                // AddOffsetsToTxn and EndTxn for this id alone.
                Acl::literal("transactionalId", PROCESSOR_TRANSACTIONAL_ID, &["Write"]),
            ],
            http_paths: OPERATIONAL_PATHS.to_vec(),
            // One processor is active per transactional id: a second fences the first.
            max_replicas: Some(1),
            outbox_topics: vec![],
        },
        ComponentAccess {
            name: "ops",
            description: "an operator running `taskstream lag` and `taskstream dlq list|replay`",
            kafka_user: Some("taskstream-ops"),
            acls: vec![
                // lag reads the oldest unconsumed record's timestamp; replay re-publishes.
                Acl::literal("topic", TASK_EVENTS, &["Read", "Write"]),
                Acl::literal("topic", TASK_SAGAS, &["Read", "Write"]),
                Acl::literal("topic", TASK_TRIAGE_REQUESTS, &["Read"]),
                Acl::literal("topic", dlq, &["Read"]),
                // The notifier's dead letters of saga events (`dlq --topic task-sagas`).
                Acl::literal("topic", dead_letter_topic(TASK_SAGAS), &["Read"]),
                // Committed offsets of the groups it watches by default, the
                // ones `up` runs (OffsetFetch).
                Acl::literal("group", NOTIFIER_GROUP, &["Describe"]),
                Acl::literal("group", AUDITOR_GROUP, &["Describe"]),
                Acl::literal("group", SAGA_GROUP, &["Describe"]),
                Acl::literal("group", AGENT_GROUP, &["Describe"]),
                Acl::literal("group", PROCESSOR_GROUP, &["Describe"]),
                Acl::literal("group", REQUESTS_GROUP, &["Describe"]),
                // The group ids its manually assigned readers carry.
                Acl::literal("group", LAG_PROBE_GROUP, &["Read"]),
                Acl::literal("group", TOPIC_READER_GROUP, &["Read"]),
            ],
            http_paths: vec![],
            max_replicas: None,
            outbox_topics: vec![],
        },
        ComponentAccess {
            name: "connect",
            description: "Kafka Connect running Debezium's outbox connector in place of the relay \
                          (chart value publisher: debezium)",
            kafka_user: Some(super::connect::CONNECT_USER),
            acls: super::connect::connect_acls(),
            // Its REST API and probes are Strimzi's, not taskstream's.
            http_paths: vec![],
            max_replicas: None,
            outbox_topics: vec![],
        },
        ComponentAccess {
            name: "schema-registry",
            description: "Confluent Schema Registry, storing schemas in its Kafka topic",
            kafka_user: Some("taskstream-schema-registry"),
            acls: vec![
                Acl::literal(
                    "topic",
                    SCHEMA_REGISTRY_TOPIC,
                    &["Read", "Write", "DescribeConfigs"],
                ),
                // Leader election and the store reader share one group id.
                Acl::literal("group", SCHEMA_REGISTRY_GROUP, &["Read"]),
            ],
            http_paths: vec!["/subjects", "/schemas/ids/{id}", "/config"],
            max_replicas: None,
            outbox_topics: vec![],
        },
    ]
}

/// The components as Strimzi `KafkaUser` resources (SCRAM-SHA-512, `simple`
/// authorization), one YAML document each.
pub fn render_strimzi_users(cluster: &str) -> String {
    let mut out = String::from(
        "# Generated by `taskstream users render`; do not edit.\n\
         # Each component's access is declared in crates/taskstream/src/ops/access.rs.\n",
    );
    for c in components() {
        let Some(user) = c.kafka_user else { continue };
        out.push_str("---\n");
        out.push_str("apiVersion: kafka.strimzi.io/v1\n");
        out.push_str("kind: KafkaUser\n");
        out.push_str("metadata:\n");
        out.push_str(&format!("  name: {user}\n"));
        out.push_str("  labels:\n");
        out.push_str(&format!("    strimzi.io/cluster: {cluster}\n"));
        out.push_str(&format!("    app.kubernetes.io/component: {}\n", c.name));
        out.push_str("spec:\n");
        out.push_str("  authentication:\n");
        out.push_str("    type: scram-sha-512\n");
        out.push_str("  authorization:\n");
        out.push_str("    type: simple\n");
        out.push_str("    acls:\n");
        for acl in &c.acls {
            out.push_str("      - resource:\n");
            out.push_str(&format!("          type: {}\n", acl.resource.kind));
            out.push_str(&format!("          name: {}\n", acl.resource.name));
            out.push_str(&format!(
                "          patternType: {}\n",
                acl.resource.pattern_type
            ));
            out.push_str(&format!(
                "        operations: [{}]\n",
                acl.operations.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `component`'s ACLs allow `operation` on the resource `kind` `name`.
    fn allows(component: &ComponentAccess, kind: &str, name: &str, operation: &str) -> bool {
        component.acls.iter().any(|acl| {
            acl.resource.kind == kind
                && match acl.resource.pattern_type {
                    "prefix" => name.starts_with(&acl.resource.name),
                    _ => name == acl.resource.name,
                }
                && acl.operations.contains(&operation)
        })
    }

    fn component(name: &str) -> ComponentAccess {
        components()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is declared"))
    }

    #[test]
    fn users_are_unique_and_grant_only_literal_resources_but_the_reply_topics() {
        let comps = components();
        let mut users: Vec<_> = comps.iter().filter_map(|c| c.kafka_user).collect();
        let n = users.len();
        users.sort_unstable();
        users.dedup();
        assert_eq!(users.len(), n, "two components share a Kafka user");
        for c in &comps {
            for acl in &c.acls {
                if acl.resource.pattern_type == "prefix" {
                    assert_eq!(
                        (c.name, acl.resource.kind, acl.resource.name.as_str()),
                        ("agent", "topic", "task-triage-replies."),
                        "only the agent's reply topics are granted by prefix"
                    );
                } else {
                    assert_eq!(acl.resource.pattern_type, "literal");
                }
                assert!(!acl.operations.is_empty(), "{}: empty grant", c.name);
                assert!(
                    !acl.operations.contains(&"All"),
                    "{}: All is never least privilege",
                    c.name
                );
            }
        }
    }

    #[test]
    fn the_relay_may_use_its_own_transactional_id_and_no_other() {
        let relay = components()
            .into_iter()
            .find(|c| c.name == "relay")
            .expect("the relay is declared");
        let transactional: Vec<_> = relay
            .acls
            .iter()
            .filter(|acl| acl.resource.kind == "transactionalId")
            .collect();
        assert_eq!(transactional.len(), 1);
        assert_eq!(transactional[0].resource.name, RELAY_TRANSACTIONAL_ID);
        assert_eq!(transactional[0].operations, ["Write"]);
    }

    #[test]
    fn the_notifier_reads_the_saga_events_and_parks_the_unreadable_ones() {
        let notifier = component("notifier");
        for topic in [TASK_EVENTS, TASK_SAGAS] {
            assert!(allows(&notifier, "topic", topic, "Read"), "{topic}");
            let dlq = dead_letter_topic(topic);
            assert!(allows(&notifier, "topic", &dlq, "Write"), "{dlq}");
            assert!(!allows(&notifier, "topic", topic, "Write"), "{topic}");
        }
    }

    #[test]
    fn consumers_are_capped_at_the_partition_count() {
        for c in components()
            .iter()
            .filter(|c| ["notifier", "auditor", "saga", "agent"].contains(&c.name))
        {
            assert_eq!(c.max_replicas, Some(TASK_EVENTS_PARTITIONS), "{}", c.name);
        }
    }

    #[test]
    fn the_agent_may_use_its_groups_and_answer_on_every_reply_topic_it_accepts_and_no_other() {
        use taskstream_services::agent::allowed_reply_topic;
        let agent = component("agent");
        assert_eq!(agent.kafka_user, Some("taskstream-agent"));
        for group in [AGENT_GROUP, REQUESTS_GROUP] {
            assert!(allows(&agent, "group", group, "Read"), "{group}");
        }
        for topic in [TASK_EVENTS, TASK_TRIAGE_REQUESTS] {
            assert!(allows(&agent, "topic", topic, "Read"), "{topic}");
        }
        assert!(allows(
            &agent,
            "topic",
            &dead_letter_topic(TASK_EVENTS),
            "Write"
        ));
        // The topics the agent answers on are exactly those it may write,
        // apart from the dead-letter topic.
        for (topic, answered) in [
            (TASK_TRIAGE_REPLIES, true),
            ("task-triage-replies.cli-7", true),
            ("task-triage-replies.team_a.v2", true),
            ("task-triage-replies.", false),
            ("task-triage-replies-other", false),
            ("task-triage-repliesx", false),
            (TASK_SUGGESTIONS, false),
            (TASK_EVENTS, false),
            (TASK_TRIAGE_REQUESTS, false),
        ] {
            assert_eq!(allowed_reply_topic(topic), answered, "{topic}");
            assert_eq!(
                allows(&agent, "topic", topic, "Write"),
                answered || topic == "task-triage-replies.",
                "{topic}"
            );
        }
        // Its suggestions and accepted changes go through the outbox: no
        // transactional id, and nothing else to write.
        assert!(agent
            .acls
            .iter()
            .all(|acl| ["topic", "group"].contains(&acl.resource.kind)));
    }

    #[test]
    fn whoever_publishes_the_outbox_may_write_every_topic_its_rows_name() {
        let relay = component("relay");
        let connect = component("connect");
        let written: Vec<_> = components()
            .into_iter()
            .flat_map(|c| c.outbox_topics)
            .collect();
        assert!(written.contains(&TASK_SUGGESTIONS), "{written:?}");
        for topic in written {
            assert!(OUTBOX_TOPICS.contains(&topic), "{topic}");
            for operation in ["Read", "Write"] {
                assert!(
                    allows(&relay, "topic", topic, operation),
                    "relay {operation} {topic}"
                );
            }
            assert!(allows(&connect, "topic", topic, "Write"), "connect {topic}");
        }
    }
}
