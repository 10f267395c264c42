//! Why a Kafka cluster could not be fetched, started or used.

use std::path::PathBuf;

/// What went wrong, with enough detail to act on: which tool is missing,
/// which command failed and where the node logs were kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No usable Java runtime (Kafka 4 brokers need Java 17 or newer).
    #[error("no Java 17+ runtime: {0} (install a JDK 17+, or set JAVA_HOME)")]
    Java(String),
    /// Maven is not installed, and the jars are not cached yet.
    #[error("Maven (mvn) is needed to fetch Kafka's jars the first time: {0}")]
    Maven(String),
    /// Maven ran but could not resolve the jars (offline, proxy, ...).
    #[error("fetching Kafka's jars with Maven failed ({status}); its output:\n{output}")]
    Fetch { status: String, output: String },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A node did not come up, or the cluster never became ready.
    #[error("Kafka did not start: {message} (node logs kept in {})", logs.display())]
    Start { message: String, logs: PathBuf },
    /// A request to the running cluster failed.
    #[error("{operation} failed: {message}")]
    Request {
        operation: &'static str,
        message: String,
    },
    /// One of Kafka's command-line tools exited with an error.
    #[error("{class} exited with {status}; stderr:\n{stderr}")]
    Tool {
        class: String,
        status: String,
        stderr: String,
    },
    /// A node index beyond the cluster's size.
    #[error("the cluster has {nodes} node(s); there is no node {index}")]
    NoSuchNode { index: usize, nodes: usize },
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
