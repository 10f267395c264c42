//! The Kafka Connect cluster that runs Debezium in place of the relay
//! (`publisher: debezium` in the Helm chart): its group, its three internal
//! topics and what its Kafka user may do. Declared once here; the chart's
//! `KafkaConnect`, the generated `KafkaTopic`s and `KafkaUser`, and the
//! deployment checks all follow it.

use std::collections::BTreeMap;

use taskstream_kafka::TopicSpec;

use super::access::{Acl, OUTBOX_TOPICS};

/// The Connect cluster's group id (`spec.groupId` of the `KafkaConnect`).
pub const CONNECT_GROUP: &str = "taskstream-connect";
/// Where the workers keep connector configurations.
pub const CONFIG_TOPIC: &str = "taskstream-connect-configs";
/// Where the source tasks keep their positions (Debezium's last LSN).
pub const OFFSET_TOPIC: &str = "taskstream-connect-offsets";
/// Where the workers publish connector and task states.
pub const STATUS_TOPIC: &str = "taskstream-connect-status";
/// The Kafka user the Connect workers authenticate as.
pub const CONNECT_USER: &str = "taskstream-connect";

/// The internal topics, compacted as Connect requires, with the partition
/// counts Connect itself would choose (the config topic must have one).
pub fn connect_topics(replication_factor: i32) -> Vec<TopicSpec> {
    let min_insync = replication_factor.clamp(1, 2).to_string();
    [(CONFIG_TOPIC, 1), (OFFSET_TOPIC, 25), (STATUS_TOPIC, 5)]
        .into_iter()
        .map(|(name, partitions)| TopicSpec {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("min.insync.replicas".to_owned(), min_insync.clone()),
            ]),
        })
        .collect()
}

/// Exactly what the Connect workers need: the group they coordinate in,
/// their internal topics (which the deployment creates as `KafkaTopic`s, so
/// no `Create` grant), and writing the events. Connect checks that its
/// internal topics are compacted, hence `DescribeConfigs`.
pub fn connect_acls() -> Vec<Acl> {
    let mut acls = vec![Acl::literal("group", CONNECT_GROUP, &["Read"])];
    for topic in [CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC] {
        acls.push(Acl::literal(
            "topic",
            topic,
            &["Read", "Write", "DescribeConfigs"],
        ));
    }
    // The outbox event router's destinations (each row's `topic`), the
    // relay's grants.
    for topic in OUTBOX_TOPICS {
        acls.push(Acl::literal("topic", topic, &["Write"]));
    }
    acls
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskstream_services::topics::TASK_EVENTS;

    #[test]
    fn the_internal_topics_are_compacted_and_the_config_topic_has_one_partition() {
        let topics = connect_topics(3);
        assert_eq!(topics.len(), 3);
        for t in &topics {
            assert_eq!(t.configs["cleanup.policy"], "compact", "{}", t.name);
            assert_eq!(t.configs["min.insync.replicas"], "2", "{}", t.name);
        }
        let config = topics.iter().find(|t| t.name == CONFIG_TOPIC).unwrap();
        assert_eq!(config.partitions, 1);
    }

    #[test]
    fn connect_may_write_events_but_never_read_them() {
        let acls = connect_acls();
        let events: Vec<_> = acls
            .iter()
            .filter(|a| a.resource.name == TASK_EVENTS)
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].operations, ["Write"]);
    }
}
