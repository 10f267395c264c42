//! An Apache Kafka cluster in KRaft mode on random loopback ports, in a
//! directory of its own that is deleted when the cluster stops.
//!
//! Every node is a combined broker and controller (`process.roles =
//! broker,controller`) with a static controller quorum. One node is the
//! development shape; three nodes replicate everything three ways with
//! `min.insync.replicas = 2`, so one node can be killed while `acks=all`
//! producers carry on.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::coordinator::partition_for;
use crate::process;
use crate::{ClusterError, KafkaRuntime};

/// The prefix of every cluster directory under the system's temp dir.
const DIR_PREFIX: &str = "taskstream-kafka-";
/// Partitions of `__consumer_offsets` and `__transaction_state` (Kafka's
/// default is 50; fewer make their first use quicker).
const INTERNAL_PARTITIONS: i32 = 10;
/// How long a cluster or a restarted node may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How many empty ListGroups answers in a row, half a second apart, [`KafkaCluster::reset`]
/// takes as "no group is left".
const EMPTY_GROUP_LISTINGS: u32 = 3;
/// The heap of each broker JVM.
const BROKER_HEAP: &str = "-Xmx512m";

/// How many nodes, and how durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// One combined broker/controller; replication factor 1.
    SingleNode,
    /// Three brokers — replication factor 3 for every topic (internal ones
    /// too) and `min.insync.replicas = 2` — and a dedicated KRaft controller
    /// (a fourth JVM, not counted as a node and never killed by the kit), so
    /// that with two brokers down the cluster still answers, refusing writes
    /// with `NOT_ENOUGH_REPLICAS` as a production cluster would.
    ThreeNodes,
}

impl Shape {
    /// The number of nodes.
    pub fn nodes(self) -> usize {
        match self {
            Self::SingleNode => 1,
            Self::ThreeNodes => 3,
        }
    }

    /// Whether the controller runs in a JVM of its own rather than inside
    /// the (single) broker.
    fn dedicated_controller(self) -> bool {
        matches!(self, Self::ThreeNodes)
    }

    fn replication_factor(self) -> usize {
        self.nodes()
    }

    fn min_insync_replicas(self) -> usize {
        match self {
            Self::SingleNode => 1,
            Self::ThreeNodes => 2,
        }
    }
}

/// What a node's JVM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Broker and controller in one process.
    Combined,
    Broker,
    Controller,
}

struct Node {
    id: i32,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running Kafka cluster. Dropping it kills its JVMs and deletes its
/// directory; when dropped during a panic, the node logs are kept and their
/// path printed.
pub struct KafkaCluster {
    runtime: KafkaRuntime,
    shape: Shape,
    dir: PathBuf,
    bootstrap: String,
    nodes: Mutex<Vec<Node>>,
    admin: AdminClient<DefaultClientContext>,
    stopped: Mutex<bool>,
}

impl std::fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("shape", &self.shape)
            .field("bootstrap", &self.bootstrap)
            .field("dir", &self.dir)
            .finish()
    }
}

impl KafkaCluster {
    /// Fetches Kafka (first time only), starts a cluster of `shape` and
    /// returns once every node is registered and a topic with the shape's
    /// replication factor can be created.
    pub fn start(shape: Shape) -> Result<Self, ClusterError> {
        let runtime = KafkaRuntime::locate()?;
        sweep_abandoned_dirs();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&runtime, shape) {
                Ok(cluster) => return Ok(cluster),
                Err(StartFailure::Failed(e)) => return Err(e),
                // Ports are picked free but handed to the JVM later; another
                // process can take one in between. Try again with new ones.
                Err(StartFailure::PortTaken(dir)) if attempt < 3 => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Err(StartFailure::PortTaken(dir)) => {
                    return Err(ClusterError::Start {
                        message: "a listener port was taken three times in a row".into(),
                        logs: dir,
                    })
                }
            }
        }
    }

    fn start_once(runtime: &KafkaRuntime, shape: Shape) -> Result<Self, StartFailure> {
        let dir = new_cluster_dir()?;
        // One client port per broker, and one controller port.
        let ports = free_ports(shape.nodes() + 1)?;
        let (ports, controller_port) = ports.split_at(shape.nodes());
        let controller_port = controller_port[0];
        let controller_id = if shape.dedicated_controller() {
            i32::try_from(shape.nodes() + 1).unwrap_or(i32::MAX)
        } else {
            1
        };
        let voters = format!("{controller_id}@127.0.0.1:{controller_port}");
        let bootstrap = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        std::fs::write(dir.join("log4j2.properties"), BROKER_LOG_CONFIG)
            .map_err(ClusterError::io("writing the log configuration"))?;
        std::fs::write(dir.join("tools-log4j2.properties"), TOOLS_LOG_CONFIG)
            .map_err(ClusterError::io("writing the tools' log configuration"))?;
        let mut roles: Vec<(Role, i32, Option<u16>)> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let role = if shape.dedicated_controller() {
                    Role::Broker
                } else {
                    Role::Combined
                };
                (role, i32::try_from(i + 1).unwrap_or(i32::MAX), Some(*port))
            })
            .collect();
        if shape.dedicated_controller() {
            roles.push((Role::Controller, controller_id, None));
        }
        for (role, id, port) in roles {
            let node_dir = dir.join(format!("node-{id}"));
            for sub in ["data", "logs"] {
                std::fs::create_dir_all(node_dir.join(sub))
                    .map_err(ClusterError::io(format!("creating {}", node_dir.display())))?;
            }
            let properties = server_properties(
                shape,
                role,
                id,
                port,
                controller_port,
                &voters,
                &node_dir.join("data"),
            );
            std::fs::write(node_dir.join("server.properties"), properties)
                .map_err(ClusterError::io("writing server.properties"))?;
            nodes.push(Node {
                id,
                dir: node_dir,
                child: None,
            });
        }
        format_storage(runtime, &dir, &nodes)?;
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("client.id", "taskstream-testkit")
            // Asking who leads a topic must never create it.
            .set("allow.auto.create.topics", "false")
            .set("socket.connection.setup.timeout.ms", "2000")
            .set("log_level", "0")
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|e| ClusterError::Request {
                operation: "creating an admin client",
                message: e.to_string(),
            })?;
        let cluster = Self {
            runtime: runtime.clone(),
            shape,
            dir,
            bootstrap,
            nodes: Mutex::new(nodes),
            admin,
            stopped: Mutex::new(false),
        };
        // The controller (last, when dedicated) first: brokers register with it.
        let processes = cluster.lock_nodes().len();
        let started = (0..processes)
            .rev()
            .try_for_each(|index| cluster.launch(index))
            .and_then(|()| cluster.wait_until_ready());
        match started {
            Ok(()) => Ok(cluster),
            Err(_) if cluster.any_log_contains("Address already in use") => {
                cluster.stop_in_place(false);
                Err(StartFailure::PortTaken(cluster.dir.clone()))
            }
            Err(e) => {
                cluster.stop_in_place(true);
                Err(StartFailure::Failed(e))
            }
        }
    }

    /// The `host:port,...` list clients bootstrap from (every node).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The cluster's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.shape.nodes()
    }

    /// The directory holding every node's configuration, data and logs
    /// (`node-<n>/logs/server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Java runtime and jars the nodes run on.
    pub(crate) fn runtime(&self) -> &KafkaRuntime {
        &self.runtime
    }

    /// The number of replicas of every topic the cluster creates.
    pub(crate) fn replication_factor(&self) -> usize {
        self.shape.replication_factor()
    }

    /// The Kafka node id of node `index` (counted from 0).
    pub fn node_id(&self, index: usize) -> i32 {
        i32::try_from(index + 1).unwrap_or(i32::MAX)
    }

    /// The path of node `index`'s broker log.
    pub fn node_log(&self, index: usize) -> PathBuf {
        self.dir
            .join(format!("node-{}", index + 1))
            .join("logs")
            .join("server.log")
    }

    /// Kills node `index` at once (SIGKILL, no controlled shutdown), as a
    /// crash would.
    pub fn kill_node(&self, index: usize) -> Result<(), ClusterError> {
        let count = self.nodes();
        if index >= count {
            return Err(ClusterError::NoSuchNode {
                index,
                nodes: count,
            });
        }
        let mut nodes = self.lock_nodes();
        let node = &mut nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts node `index` again on its old ports and data, and waits until
    /// the cluster lists it among its brokers again.
    pub fn restart_node(&self, index: usize) -> Result<(), ClusterError> {
        let count = self.nodes();
        if index >= count {
            return Err(ClusterError::NoSuchNode {
                index,
                nodes: count,
            });
        }
        self.kill_node(index)?;
        self.launch(index)?;
        let id = self.node_id(index);
        self.wait_for(&format!("node {id} to rejoin"), |metadata| {
            metadata.brokers().iter().any(|b| b.id() == id)
        })
    }

    /// Whether node `index`'s JVM is running.
    pub fn node_running(&self, index: usize) -> bool {
        index < self.nodes()
            && self
                .lock_nodes()
                .get_mut(index)
                .and_then(|n| n.child.as_mut())
                .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The index of the node leading `topic`'s `partition`, if it has a leader.
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<usize>, ClusterError> {
        let metadata = self.metadata(Some(topic))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .and_then(|p| usize::try_from(p.leader() - 1).ok()))
    }

    /// The indexes of the nodes in `topic`'s `partition`'s in-sync replica set.
    pub fn in_sync_replicas(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<usize>, ClusterError> {
        let metadata = self.metadata(Some(topic))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .map(|p| {
                p.isr()
                    .iter()
                    .filter_map(|id| usize::try_from(id - 1).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The index of the node coordinating consumer group `group` (the leader
    /// of its `__consumer_offsets` partition); `None` before the group's
    /// first use created that topic.
    pub fn group_coordinator(&self, group: &str) -> Result<Option<usize>, ClusterError> {
        self.partition_leader(
            "__consumer_offsets",
            partition_for(group, INTERNAL_PARTITIONS),
        )
    }

    /// The index of the node coordinating `transactional_id`'s transactions
    /// (the leader of its `__transaction_state` partition).
    pub fn transaction_coordinator(
        &self,
        transactional_id: &str,
    ) -> Result<Option<usize>, ClusterError> {
        self.partition_leader(
            "__transaction_state",
            partition_for(transactional_id, INTERNAL_PARTITIONS),
        )
    }

    /// Runs one of Kafka's command-line tools by class name (for example
    /// `org.apache.kafka.tools.consumer.group.ConsumerGroupCommand`) with
    /// `args`, and returns what it printed on stdout. Pass
    /// [`KafkaCluster::bootstrap_servers`] as its `--bootstrap-server`.
    pub fn tool(&self, class: &str, args: &[&str]) -> Result<String, ClusterError> {
        let mut command = Command::new(self.runtime.java());
        command
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("tools-log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(self.runtime.classpath())
            .arg(class)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = process::spawn(command)
            .and_then(Child::wait_with_output)
            .map_err(ClusterError::io(format!("running {class}")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            stderr.push_str(&String::from_utf8_lossy(&output.stdout));
            Err(ClusterError::Tool {
                class: class.to_owned(),
                status: output.status.to_string(),
                stderr,
            })
        }
    }

    /// Brings the cluster back to its first state for the next test: every
    /// node running, and no topics (but Kafka's internal `__…` ones) and no
    /// consumer groups left. Tests that take turns on one cluster and use
    /// fixed topic and group names each start from an empty cluster.
    ///
    /// A group keeps a member that was killed until its session times out
    /// (a dead client never says goodbye), and Kafka refuses to delete a
    /// group with members: deleting is retried until they are gone.
    pub fn reset(&self) -> Result<(), ClusterError> {
        for index in 0..self.nodes() {
            if !self.node_running(index) {
                self.restart_node(index)?;
            }
        }
        // Groups live on the leaders of `__consumer_offsets`: let every one of
        // its partitions settle on a leader, with every replica in sync.
        self.wait_for("the group coordinators to settle", |metadata| {
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == "__consumer_offsets")
                .flat_map(|t| t.partitions())
                .all(|p| p.leader() >= 0 && p.isr().len() == p.replicas().len())
        })?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let deadline = Instant::now() + READY_TIMEOUT;
        // A coordinator that has just taken over a `__consumer_offsets`
        // partition (after a node was killed or restarted) may leave that
        // partition's groups out of ListGroups while it loads them, so one
        // empty answer proves nothing: it must stay empty a while.
        let mut empty_answers = 0;
        loop {
            // ListGroups asks every node: one that has just restarted may
            // not answer yet.
            let listed = self
                .admin
                .inner()
                .fetch_group_list(None, Duration::from_secs(10));
            let groups: Vec<String> = match listed {
                Ok(list) => list.groups().iter().map(|g| g.name().to_owned()).collect(),
                Err(e) if Instant::now() > deadline => {
                    return Err(ClusterError::Request {
                        operation: "ListGroups",
                        message: e.to_string(),
                    })
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            if groups.is_empty() {
                empty_answers += 1;
                if empty_answers >= EMPTY_GROUP_LISTINGS {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            empty_answers = 0;
            if Instant::now() > deadline {
                return Err(ClusterError::Request {
                    operation: "DeleteGroups",
                    message: format!("groups still listed: {}", groups.join(", ")),
                });
            }
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            let results = futures::executor::block_on(self.admin.delete_groups(&names, &options))
                .map_err(|e| ClusterError::Request {
                operation: "DeleteGroups",
                message: e.to_string(),
            })?;
            let left: Vec<String> = results
                .into_iter()
                .filter_map(|r| match r {
                    Err((name, code)) if code != RDKafkaErrorCode::GroupIdNotFound => {
                        Some(format!("{name}: {code}"))
                    }
                    _ => None,
                })
                .collect();
            if left.is_empty() {
                continue;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Request {
                    operation: "DeleteGroups",
                    message: format!("groups still there: {}", left.join(", ")),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let user_topics = |metadata: &Metadata| -> Vec<String> {
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| !name.starts_with("__"))
                .collect()
        };
        let topics = user_topics(&self.metadata(None)?);
        if !topics.is_empty() {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            futures::executor::block_on(self.admin.delete_topics(&names, &options)).map_err(
                |e| ClusterError::Request {
                    operation: "DeleteTopics",
                    message: e.to_string(),
                },
            )?;
            self.wait_for("the deleted topics to be gone", |m| {
                user_topics(m).is_empty()
            })?;
        }
        Ok(())
    }

    /// Stops every node and deletes the cluster's directory.
    pub fn stop(self) {
        self.stop_in_place(false);
    }

    /// Kills every JVM and deletes the directory, keeping the node logs when
    /// `keep_logs` (their path is printed). Safe to call more than once.
    pub(crate) fn stop_in_place(&self, keep_logs: bool) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        *stopped = true;
        for node in self.lock_nodes().iter_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if keep_logs {
            for node in self.lock_nodes().iter() {
                let _ = std::fs::remove_dir_all(node.dir.join("data"));
            }
            let _ = File::create(self.dir.join("KEPT"));
            eprintln!("Kafka node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts node `index`'s broker JVM.
    fn launch(&self, index: usize) -> Result<(), ClusterError> {
        let mut nodes = self.lock_nodes();
        let node = &mut nodes[index];
        let logs = node.dir.join("logs");
        let stdout = File::options()
            .create(true)
            .append(true)
            .open(logs.join("stdout.log"))
            .map_err(ClusterError::io("opening stdout.log"))?;
        let stderr = stdout
            .try_clone()
            .map_err(ClusterError::io("opening stdout.log"))?;
        let mut command = Command::new(self.runtime.java());
        command
            .args([
                BROKER_HEAP,
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", logs.display()))
            .arg("-cp")
            .arg(self.runtime.classpath())
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = process::spawn(command).map_err(|e| ClusterError::Start {
            message: format!("starting node {}: {e}", node.id),
            logs: self.dir.clone(),
        })?;
        node.child = Some(child);
        Ok(())
    }

    fn metadata(&self, topic: Option<&str>) -> Result<Metadata, ClusterError> {
        self.admin
            .inner()
            .fetch_metadata(topic, Duration::from_secs(5))
            .map_err(|e| ClusterError::Request {
                operation: "Metadata",
                message: e.to_string(),
            })
    }

    /// Fails early when a node's JVM has exited.
    fn check_nodes_alive(&self) -> Result<(), ClusterError> {
        for node in self.lock_nodes().iter_mut() {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(ClusterError::Start {
                        message: format!(
                            "node {} exited ({status}); last lines of its log:\n{}",
                            node.id,
                            tail(&node.dir.join("logs").join("server.log"), 15)
                        ),
                        logs: self.dir.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Polls the cluster's metadata until `ready` accepts it.
    fn wait_for(&self, what: &str, ready: impl Fn(&Metadata) -> bool) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            self.check_nodes_alive()?;
            match self.metadata(None) {
                Ok(metadata) if ready(&metadata) => return Ok(()),
                Ok(metadata) => {
                    last = format!(
                        "brokers registered: {:?}",
                        metadata
                            .brokers()
                            .iter()
                            .map(|b| b.id())
                            .collect::<Vec<_>>()
                    )
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Start {
                    message: format!("timed out waiting for {what} ({last})"),
                    logs: self.dir.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every node registered, and a topic replicated to all of them can be
    /// created and gets a full in-sync replica set.
    fn wait_until_ready(&self) -> Result<(), ClusterError> {
        let nodes = self.nodes();
        self.wait_for("every node to register", |m| m.brokers().len() == nodes)?;
        let probe = "__testkit-ready";
        let replication = i32::try_from(self.shape.replication_factor()).unwrap_or(1);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = futures::executor::block_on(self.admin.create_topics(
            &[NewTopic::new(
                probe,
                1,
                TopicReplication::Fixed(replication),
            )],
            &options,
        ));
        let outcome = created.map_err(|e| e.to_string()).and_then(|mut results| {
            results.pop().map_or(Ok(()), |r| {
                r.map(|_| ()).map_err(|(_, code)| code.to_string())
            })
        });
        if let Err(message) = outcome {
            return Err(ClusterError::Start {
                message: format!(
                    "creating a topic with replication factor {replication}: {message}"
                ),
                logs: self.dir.clone(),
            });
        }
        self.wait_for("the probe topic to be fully replicated", |m| {
            m.topics().iter().any(|t| {
                t.name() == probe
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.isr().len() == nodes)
            })
        })?;
        let _ = futures::executor::block_on(self.admin.delete_topics(&[probe], &options));
        Ok(())
    }

    fn any_log_contains(&self, needle: &str) -> bool {
        self.lock_nodes().iter().any(|node| {
            ["server.log", "stdout.log"].iter().any(|file| {
                std::fs::read_to_string(node.dir.join("logs").join(file))
                    .is_ok_and(|text| text.contains(needle))
            })
        })
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        self.stop_in_place(std::thread::panicking());
    }
}

/// Why one attempt at starting a cluster failed.
enum StartFailure {
    /// A listener port was taken before the JVM bound it; the directory to remove.
    PortTaken(PathBuf),
    Failed(ClusterError),
}

impl From<ClusterError> for StartFailure {
    fn from(error: ClusterError) -> Self {
        Self::Failed(error)
    }
}

/// Formats every node's storage with one cluster id, in parallel.
fn format_storage(runtime: &KafkaRuntime, dir: &Path, nodes: &[Node]) -> Result<(), ClusterError> {
    let cluster_id = random_kafka_uuid()?;
    let mut children = Vec::new();
    for node in nodes {
        let mut command = Command::new(runtime.java());
        command
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("tools-log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(runtime.classpath())
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
            ])
            .arg(&cluster_id)
            .arg("-c")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = process::spawn(command).map_err(|e| ClusterError::Start {
            message: format!("formatting node {}: {e}", node.id),
            logs: dir.to_owned(),
        })?;
        children.push((node.id, child));
    }
    let mut failures = Vec::new();
    for (id, child) in children {
        match child.wait_with_output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => failures.push(format!(
                "node {id}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(e) => failures.push(format!("node {id}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Start {
            message: format!("formatting storage failed: {}", failures.join("\n")),
            logs: dir.to_owned(),
        })
    }
}

fn server_properties(
    shape: Shape,
    role: Role,
    id: i32,
    port: Option<u16>,
    controller_port: u16,
    voters: &str,
    data: &Path,
) -> String {
    let rf = shape.replication_factor();
    let min_isr = shape.min_insync_replicas();
    let client = port.map(|p| format!("PLAINTEXT://127.0.0.1:{p}"));
    let controller = format!("CONTROLLER://127.0.0.1:{controller_port}");
    let (roles, listeners) = match role {
        Role::Combined => (
            "broker,controller",
            format!("{},{controller}", client.clone().unwrap_or_default()),
        ),
        Role::Broker => ("broker", client.clone().unwrap_or_default()),
        Role::Controller => ("controller", controller),
    };
    let broker_listeners = client.map_or_else(String::new, |client| {
        format!("advertised.listeners={client}\ninter.broker.listener.name=PLAINTEXT\n")
    });
    format!(
        "# Written by taskstream-testkit for one test cluster.
process.roles={roles}
node.id={id}
controller.quorum.voters={voters}
listeners={listeners}
{broker_listeners}controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions={INTERNAL_PARTITIONS}
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions={INTERNAL_PARTITIONS}
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={min_isr}
# Topics exist because a test (or `taskstream topics apply`) created them,
# as on a production cluster: a client asking for a missing one never
# creates it with default settings.
auto.create.topics.enable=false
# A test group starts at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# A killed node is fenced (and its partitions led elsewhere) within 3 s.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
controller.quorum.election.backoff.max.ms=200
num.io.threads=4
num.network.threads=2
",
        data = data.display(),
    )
}

/// Root logger to the node's `server.log`; the JVM's own output goes to
/// `stdout.log` beside it.
pub(crate) const BROKER_LOG_CONFIG: &str = "\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
";

/// Command-line tools log warnings to stderr only, keeping stdout for their answer.
const TOOLS_LOG_CONFIG: &str = "\
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
";

pub(crate) fn new_cluster_dir() -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(ClusterError::io(format!("creating {}", dir.display())))?;
    std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
        .map_err(ClusterError::io("writing owner.pid"))?;
    Ok(dir)
}

/// Deletes cluster directories whose owning process is gone (it was killed
/// before it could clean up), except those kept for diagnosis.
fn sweep_abandoned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(DIR_PREFIX));
        if !is_ours || path.join("KEPT").exists() {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !process::is_alive(pid)) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Binds `count` distinct free loopback ports, then releases them for the JVMs.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::io("finding free ports"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::io("finding free ports"))
}

/// A random Kafka `Uuid` in its text form: 16 bytes, URL-safe base64,
/// unpadded. Like Kafka's own `Uuid.randomUuid`, never one that starts with
/// `-` (a command line would read it as an option).
fn random_kafka_uuid() -> Result<String, ClusterError> {
    let mut urandom =
        File::open("/dev/urandom").map_err(ClusterError::io("opening /dev/urandom"))?;
    loop {
        let mut bytes = [0u8; 16];
        urandom
            .read_exact(&mut bytes)
            .map_err(ClusterError::io("reading /dev/urandom"))?;
        let text = base64_url(&bytes);
        if !text.starts_with('-') && bytes.iter().any(|b| *b != 0) {
            return Ok(text);
        }
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_url_matches_the_rfc_examples_without_padding() {
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_url(&[0u8; 16]).len(), 22);
    }

    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        for _ in 0..2_000 {
            let id = random_kafka_uuid().unwrap();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
