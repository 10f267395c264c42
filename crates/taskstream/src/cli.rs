//! The command line: one binary, a subcommand per component.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use taskstream_kafka::{apply_topics, ConsumerSettings, DevBroker, KafkaConfig, TopicOutcome};
use taskstream_services::topics::declared_topics;
use taskstream_services::RelaySettings;
use taskstream_store::{SqliteOptions, Synchronous};
use tokio::sync::Notify;

use crate::components::{self, Component};
use crate::system::{RunningSystem, SystemConfig};
use crate::telemetry::LogFormat;

/// taskstream: an event-driven Task system on Kafka.
#[derive(Debug, Parser)]
#[command(name = "taskstream", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        global = true,
        env = "TASKSTREAM_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: dev broker (unless --kafka-bootstrap), API, relay, notifier, auditor.
    Up(UpArgs),
    /// Run the Task API alone (it writes tasks and their events to the outbox).
    Api(ApiArgs),
    /// Run the outbox relay alone (publishes the outbox to Kafka).
    Relay(RelayArgs),
    /// Run the notification service alone (consumer group `notifier`).
    Notifier(ConsumerArgs),
    /// Run the audit-log service alone (consumer group `auditor`).
    Auditor(ConsumerArgs),
    /// Run the embedded Kafka-protocol dev broker alone and print its address.
    DevBroker,
    /// Show or create the topics taskstream declares.
    #[command(subcommand)]
    Topics(TopicsCommand),
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the database and endpoints.json.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    /// SQLite durability: `full` survives power loss, `normal` only a process crash.
    #[arg(long, env = "TASKSTREAM_SQLITE_SYNCHRONOUS", default_value = "full")]
    pub sqlite_synchronous: Synchronous,
}

impl StoreArgs {
    fn options(&self) -> SqliteOptions {
        SqliteOptions {
            synchronous: self.sqlite_synchronous,
            ..SqliteOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...). `up` starts a dev broker when absent.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap: Option<String>,
    /// Extra librdkafka property, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

impl KafkaArgs {
    fn config(&self) -> Option<KafkaConfig> {
        let bootstrap = self.kafka_bootstrap.as_deref()?.trim();
        let mut config = KafkaConfig::new(bootstrap);
        for (key, value) in &self.kafka_properties {
            config = config.with(key, value);
        }
        Some(config)
    }

    fn require(&self, component: &str) -> anyhow::Result<KafkaConfig> {
        match self.config() {
            Some(config) if !config.bootstrap_servers.is_empty() => Ok(config),
            _ => bail!(
                "the {component} needs Kafka: pass --kafka-bootstrap HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS \
                 (`taskstream dev-broker` starts a local one)"
            ),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASKSTREAM_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASKSTREAM_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    /// Serve the read-only view (/audit or /notifications) and /healthz here.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Consumer group to join (default: `auditor` or `notifier`). A new group
    /// starts from the earliest event, which replays history harmlessly.
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Print the declared topics.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Replication factor to declare (3 for production clusters).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
    /// Create the declared topics on a real cluster (existing ones are left alone).
    Apply {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Replication factor (at most the number of brokers).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

fn print_endpoints(endpoints: &[(&str, String)]) {
    for (name, address) in endpoints {
        println!("{name}: {address}");
    }
}

async fn stop_all(components: Vec<Component>) {
    for component in components {
        component.stop().await;
    }
}

/// Runs the parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Api(args) => {
            let store = components::open_store(&args.store.data_dir, &args.store.options()).await?;
            // A relay in another process finds new rows by polling.
            let api = components::task_api(Arc::clone(&store), Arc::new(Notify::new()));
            let (addr, http) = components::http(args.http, api).await?;
            print_endpoints(&[("http", format!("http://{addr}"))]);
            shutdown_signal().await;
            stop_all(vec![http]).await;
            store.close().await;
            Ok(())
        }
        Command::Relay(args) => {
            let kafka = args.kafka.require("relay")?;
            let store = components::open_store(&args.store.data_dir, &args.store.options()).await?;
            let relay = components::relay(
                Arc::clone(&store),
                &kafka,
                Arc::new(Notify::new()),
                RelaySettings::default(),
            )?;
            shutdown_signal().await;
            stop_all(vec![relay]).await;
            store.close().await;
            Ok(())
        }
        Command::Notifier(args) => consumer_process("notifier", args).await,
        Command::Auditor(args) => consumer_process("auditor", args).await,
        Command::DevBroker => {
            let broker =
                DevBroker::start(&declared_topics(1)).context("cannot start the dev broker")?;
            print_endpoints(&[("kafka", broker.bootstrap_servers().to_owned())]);
            shutdown_signal().await;
            broker.shutdown(std::time::Duration::from_secs(1));
            Ok(())
        }
        Command::Topics(TopicsCommand::List {
            json,
            replication_factor,
        }) => {
            let topics = declared_topics(replication_factor);
            if json {
                println!("{}", serde_json::to_string_pretty(&topics)?);
            } else {
                println!(
                    "{:<24} {:>10} {:>12}  configs",
                    "topic", "partitions", "replication"
                );
                for t in &topics {
                    let configs: Vec<String> =
                        t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<24} {:>10} {:>12}  {}",
                        t.name,
                        t.partitions,
                        t.replication_factor,
                        configs.join(" ")
                    );
                }
            }
            Ok(())
        }
        Command::Topics(TopicsCommand::Apply {
            kafka,
            replication_factor,
        }) => {
            let config = kafka.require("topics apply command")?;
            let outcomes = apply_topics(&config, &declared_topics(replication_factor))
                .await
                .with_context(|| format!("cannot create topics on {}", config.bootstrap_servers))?;
            for (name, outcome) in outcomes {
                match outcome {
                    TopicOutcome::Created => println!("created {name}"),
                    TopicOutcome::AlreadyExists => println!("exists  {name}"),
                }
            }
            Ok(())
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut config = SystemConfig::new(args.http, &args.store.data_dir);
    config.sqlite = args.store.options();
    config.kafka = args.kafka.config();
    config.consumer = ConsumerSettings::default();
    let system = RunningSystem::start(config).await?;
    let endpoints: Vec<(&str, String)> = system.endpoints().into_iter().collect();
    print_endpoints(&endpoints);
    tracing::info!(data_dir = %args.store.data_dir.display(), "taskstream is up; Ctrl-C stops it");
    shutdown_signal().await;
    system.shutdown().await;
    Ok(())
}

async fn consumer_process(which: &'static str, args: ConsumerArgs) -> anyhow::Result<()> {
    let kafka = args.kafka.require(which)?;
    let store = components::open_store(&args.store.data_dir, &args.store.options()).await?;
    let settings = ConsumerSettings::default();
    let group = args.group.as_deref();
    let (consumer, api) = match which {
        "auditor" => (
            components::auditor(Arc::clone(&store), &kafka, group, &settings)?,
            taskstream_api::ApiBuilder::new().audit(store.clone()),
        ),
        _ => (
            components::notifier(Arc::clone(&store), &kafka, group, &settings)?,
            taskstream_api::ApiBuilder::new().notifications(store.clone()),
        ),
    };
    let mut running = vec![consumer];
    if let Some(addr) = args.http {
        let (bound, http) = components::http(addr, api).await?;
        print_endpoints(&[("http", format!("http://{bound}"))]);
        running.insert(0, http);
    }
    shutdown_signal().await;
    stop_all(running).await;
    store.close().await;
    Ok(())
}
