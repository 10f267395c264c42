//! Topics declared in code.

use std::collections::BTreeMap;

use serde::Serialize;

/// A topic as taskstream needs it: the single source from which the dev
/// broker, `taskstream topics apply` and rendered manifests are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs (`retention.ms`, `min.insync.replicas`, ...).
    pub configs: BTreeMap<String, String>,
}
