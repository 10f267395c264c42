//! A Kafka Connect distributed worker on a test cluster, with the Debezium
//! PostgreSQL connector installed as a plugin.
//!
//! The worker runs from the same jars as the brokers (`kafka/pom.xml` names
//! Connect's runtime too) and loads Debezium from its own `plugin.path`
//! (`kafka/debezium/pom.xml`), in its own class loader, as a production
//! worker does. It keeps its configurations, source offsets (for Debezium:
//! the PostgreSQL LSN it has published up to) and statuses in three topics
//! on the cluster, so a worker killed and started again resumes where its
//! last offset commit left it. Its REST API listens on a random loopback
//! port; [`ConnectWorker::url`] gives it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{free_ports, tail, BROKER_LOG_CONFIG};
use crate::runtime::fetch_debezium_plugin;
use crate::{process, ClusterError, KafkaCluster, KafkaRuntime};

/// The class of Debezium's PostgreSQL source connector.
pub const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";

/// How long a worker may take to start and load its plugins.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a worker runs: its brokers, and the directory and jars it uses.
struct Site<'a> {
    bootstrap: &'a str,
    dir: &'a Path,
    runtime: &'a KafkaRuntime,
    replication: usize,
    log_config: PathBuf,
    /// More `key=value` lines for `worker.properties`.
    extra: String,
}

/// A running Connect worker. Dropping it kills the JVM; its files go with
/// the cluster's directory.
pub struct ConnectWorker {
    java: PathBuf,
    classpath: std::ffi::OsString,
    log_config: PathBuf,
    dir: PathBuf,
    url: String,
    child: Mutex<Option<Child>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ConnectWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectWorker")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish()
    }
}

impl ConnectWorker {
    /// Fetches the Debezium plugin (first time only), starts a distributed
    /// worker in group `group` on `cluster`, and returns once its REST API
    /// lists the PostgreSQL connector among its plugins. Workers started
    /// with the same `group` share their connectors and topics.
    pub async fn start(cluster: &KafkaCluster, group: &str) -> Result<Self, ClusterError> {
        Self::start_in(
            Site {
                bootstrap: cluster.bootstrap_servers(),
                dir: cluster.dir(),
                runtime: cluster.runtime(),
                replication: cluster.replication_factor(),
                log_config: cluster.dir().join("log4j2.properties"),
                extra: String::new(),
            },
            group,
        )
        .await
    }

    /// Like [`ConnectWorker::start`], on any single-node broker at
    /// `bootstrap` (taskstream's, for one), running from `runtime` with its
    /// files under `dir`, and with `properties` added to its configuration
    /// (for example `exactly.once.source.support=enabled`).
    pub async fn start_on(
        bootstrap: &str,
        dir: &Path,
        runtime: &KafkaRuntime,
        group: &str,
        properties: &[(&str, &str)],
    ) -> Result<Self, ClusterError> {
        let log_config = dir.join("connect-log4j2.properties");
        std::fs::write(&log_config, BROKER_LOG_CONFIG)
            .map_err(ClusterError::io("writing the log configuration"))?;
        Self::start_in(
            Site {
                bootstrap,
                dir,
                runtime,
                replication: 1,
                log_config,
                extra: properties
                    .iter()
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect(),
            },
            group,
        )
        .await
    }

    async fn start_in(site: Site<'_>, group: &str) -> Result<Self, ClusterError> {
        let plugins = tokio::task::spawn_blocking(fetch_debezium_plugin)
            .await
            .map_err(|e| ClusterError::Maven(e.to_string()))??;
        let port = free_ports(1)?[0];
        let dir = site.dir.join(format!("connect-{group}-{port}"));
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(ClusterError::io(format!("creating {}", dir.display())))?;
        let replication = site.replication;
        let properties = format!(
            "# Written by taskstream-testkit for one Connect worker.
bootstrap.servers={bootstrap}
group.id={group}
config.storage.topic={group}-configs
offset.storage.topic={group}-offsets
status.storage.topic={group}-status
config.storage.replication.factor={replication}
offset.storage.replication.factor={replication}
status.storage.replication.factor={replication}
offset.storage.partitions=1
status.storage.partitions=1
listeners=http://127.0.0.1:{port}
rest.advertised.host.name=127.0.0.1
rest.advertised.port={port}
plugin.path={plugins}
key.converter=org.apache.kafka.connect.converters.ByteArrayConverter
value.converter=org.apache.kafka.connect.converters.ByteArrayConverter
# Source offsets (Debezium's LSN) are committed every second, so a killed
# worker repeats at most about a second of changes.
offset.flush.interval.ms=1000
# Only this worker is in its group: no need to wait for others to join.
scheduled.rebalance.max.delay.ms=0
",
            bootstrap = site.bootstrap,
            plugins = plugins.display(),
        ) + &site.extra;
        std::fs::write(dir.join("worker.properties"), properties)
            .map_err(ClusterError::io("writing worker.properties"))?;
        let worker = Self {
            java: site.runtime.java().to_owned(),
            classpath: site.runtime.classpath().to_owned(),
            log_config: site.log_config,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            child: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| ClusterError::Request {
                    operation: "creating an HTTP client",
                    message: e.to_string(),
                })?,
        };
        worker.launch()?;
        worker.wait_until_ready().await?;
        Ok(worker)
    }

    /// The worker's REST API, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The worker's directory (`worker.properties`, `logs/server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of the worker's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("logs").join("server.log"), lines)
    }

    /// Kills the worker at once (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed worker again with the same configuration, and
    /// waits until its REST API answers.
    pub async fn restart(&self) -> Result<(), ClusterError> {
        self.kill();
        self.launch()?;
        self.wait_until_ready().await
    }

    /// Creates (or reconfigures) connector `name` with `config`.
    pub async fn put_connector(&self, name: &str, config: &Value) -> Result<(), ClusterError> {
        let response = self
            .http
            .put(format!("{}/connectors/{name}/config", self.url))
            .json(config)
            .send()
            .await
            .map_err(request_error("PUT connector config"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(ClusterError::Request {
            operation: "PUT connector config",
            message: format!("{status}: {body}"),
        })
    }

    /// Deletes connector `name` (its stored offsets stay).
    pub async fn delete_connector(&self, name: &str) -> Result<(), ClusterError> {
        let response = self
            .http
            .delete(format!("{}/connectors/{name}", self.url))
            .send()
            .await
            .map_err(request_error("DELETE connector"))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(ClusterError::Request {
                operation: "DELETE connector",
                message: format!("{status}: {}", response.text().await.unwrap_or_default()),
            }),
        }
    }

    /// The connector's status document (`GET /connectors/<name>/status`),
    /// or `None` while the worker does not know it.
    pub async fn connector_status(&self, name: &str) -> Result<Option<Value>, ClusterError> {
        let response = self
            .http
            .get(format!("{}/connectors/{name}/status", self.url))
            .send()
            .await
            .map_err(request_error("GET connector status"))?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(request_error("GET connector status"))
    }

    /// Waits until the connector and its task run, or fails with the
    /// trace Connect gives when one of them failed.
    pub async fn wait_until_running(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no status yet");
        loop {
            if let Some(status) = self.connector_status(name).await.ok().flatten() {
                let connector = status["connector"]["state"].as_str().unwrap_or_default();
                let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
                if let Some(failed) = std::iter::once(&status["connector"])
                    .chain(tasks.iter())
                    .find(|s| s["state"] == "FAILED")
                {
                    return Err(ClusterError::Request {
                        operation: "running the connector",
                        message: failed["trace"]
                            .as_str()
                            .unwrap_or("failed without a trace")
                            .lines()
                            .take(12)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    });
                }
                if connector == "RUNNING"
                    && !tasks.is_empty()
                    && tasks.iter().all(|t| t["state"] == "RUNNING")
                {
                    return Ok(());
                }
                last = status.to_string();
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Request {
                    operation: "waiting for the connector to run",
                    message: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn launch(&self) -> Result<(), ClusterError> {
        let logs = self.dir.join("logs");
        let stdout = File::options()
            .create(true)
            .append(true)
            .open(logs.join("stdout.log"))
            .map_err(ClusterError::io("opening stdout.log"))?;
        let stderr = stdout
            .try_clone()
            .map_err(ClusterError::io("opening stdout.log"))?;
        let mut command = Command::new(&self.java);
        command
            .args([
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log_config.display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", logs.display()))
            .arg("-cp")
            .arg(&self.classpath)
            .arg("org.apache.kafka.connect.cli.ConnectDistributed")
            .arg(self.dir.join("worker.properties"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = process::spawn(command).map_err(|e| ClusterError::Start {
            message: format!("starting the Connect worker: {e}"),
            logs: self.dir.clone(),
        })?;
        *self.lock_child() = Some(child);
        Ok(())
    }

    async fn wait_until_ready(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .lock_child()
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(ClusterError::Start {
                    message: format!(
                        "the Connect worker exited ({status}); last lines of its log:\n{}",
                        self.log_tail(20)
                    ),
                    logs: self.dir.clone(),
                });
            }
            let plugins = self
                .http
                .get(format!("{}/connector-plugins", self.url))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = plugins {
                if let Ok(list) = response.json::<Vec<Value>>().await {
                    if list.iter().any(|p| p["class"] == POSTGRES_CONNECTOR) {
                        return Ok(());
                    }
                    return Err(ClusterError::Start {
                        message: format!(
                            "the Connect worker does not list {POSTGRES_CONNECTOR} among its plugins: {}",
                            Value::from(list)
                        ),
                        logs: self.dir.clone(),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Start {
                    message: format!(
                        "the Connect worker did not answer within {} s; last lines of its log:\n{}",
                        START_TIMEOUT.as_secs(),
                        self.log_tail(20)
                    ),
                    logs: self.dir.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn request_error(operation: &'static str) -> impl FnOnce(reqwest::Error) -> ClusterError {
    move |e| ClusterError::Request {
        operation,
        message: e.to_string(),
    }
}
