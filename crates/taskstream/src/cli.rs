//! The command line: clap types and the validation of their values. What
//! each command does lives elsewhere ([`crate::commands`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use taskstream_api::HttpLimits;
use taskstream_services::{RelayDelivery, RelaySettings};
use taskstream_store::{Database, PgOptions, SqliteOptions, Synchronous};

use taskstream_services::agent::{
    AssigneeMap, LocalModel, OpenAiModel, OpenAiSettings, TriageModel,
};

use crate::components::{parse_broker_flush, AgentSettings, AutoAccept, DevBrokerKind};
use crate::config::{
    parse_http_timeout, parse_millis, parse_seconds, Endpoints, KafkaArgs, KafkaStartArgs, Secret,
};
#[cfg(feature = "bench")]
use crate::ops::bench::BenchArgs;
use crate::ops::cdc::CdcCommand;
#[cfg(feature = "bench")]
use crate::ops::demo::DemoCommand;
use crate::ops::dlq::DlqCommand;
use crate::ops::endpoints::EndpointsArgs;
use crate::ops::lag::LagArgs;
use crate::ops::topics::TopicsCommand;
use crate::ops::users::UsersCommand;
use crate::schema::SchemaCommand;
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
    /// Run everything in one process: dev broker (unless --kafka-bootstrap), API, relay, notifier, auditor, saga.
    Up(UpArgs),
    /// Run the Task API alone (it writes tasks and their events to the outbox).
    Api(ApiArgs),
    /// Run the outbox relay alone (publishes the outbox to Kafka).
    Relay(RelayArgs),
    /// Run the notification service alone (consumer group `notifier`).
    Notifier(NotifierArgs),
    /// Run the audit-log service alone (consumer group `auditor`).
    Auditor(ConsumerArgs),
    /// Run the assignment saga alone (consumer group `saga` and its deadline timer).
    Saga(SagaCmdArgs),
    /// Run the triage agent alone (consumer group `triage-agent`), or ask it (`ask`), or evaluate it on history (`replay`).
    Agent(Box<AgentArgs>),
    /// Run the workload processor: per-assignee open/overdue counts and overload alerts, exactly once.
    Processor(ProcessorArgs),
    /// Run the embedded Kafka-protocol dev broker alone and print its address.
    DevBroker(DevBrokerArgs),
    /// Print where a running `taskstream up` listens (all, or one address for scripts).
    Endpoints(EndpointsArgs),
    /// Show consumer lag per partition, in events and seconds, with a health verdict.
    Lag(LagArgs),
    /// Inspect and replay dead letters (records a consumer group gave up on).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show or create the topics taskstream declares.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Show each component's Kafka user and exactly what it may do (its ACLs).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Publish the outbox with Debezium instead of the relay: its connector configuration.
    #[command(subcommand)]
    Cdc(CdcCommand),
    /// Run the embedded, Confluent-compatible schema registry alone.
    Registry(RegistryServerArgs),
    /// Measure the system under load against this machine's own ceilings.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Runnable demonstrations for the book (`taskstream demo coupling`).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Work with the event schemas in `schemas/`.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// An external schema registry (Confluent-compatible) instead of the embedded one.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", value_parser = parse_registry_url)]
    pub schema_registry: Option<String>,
}

fn parse_registry_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(url.to_owned()),
        Some(("https", _)) => Err(
            "https registries are not supported yet; use http:// (e.g. inside the cluster)".into(),
        ),
        _ => Err(format!(
            "expected a URL such as http://127.0.0.1:8081, got {raw:?}"
        )),
    }
}

impl RegistryArgs {
    /// The configured registry, or the one a `taskstream up` in `data_dir` announced.
    pub fn resolve(&self, data_dir: &Path) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.schema_registry {
            return Ok(Some(url.clone()));
        }
        Ok(Endpoints::read(data_dir)?.and_then(|endpoints| endpoints.schema_registry))
    }
}

/// How events are written: the Task API stores each event in the outbox
/// in this format, exactly as it goes on the topic; the relay publishes
/// rows as stored, converting rows that earlier versions stored as JSON
/// when the format is Avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// Avro in the Confluent wire format, schemas in the registry.
    Avro,
    /// The JSON envelope.
    Json,
}

#[derive(Debug, Args)]
pub struct RegistryServerArgs {
    /// Listen address; port 0 picks a free port.
    #[arg(
        long,
        env = "TASKSTREAM_REGISTRY_HTTP",
        default_value = "127.0.0.1:8081"
    )]
    pub http: SocketAddr,
    /// Directory for the registry's database.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the database and endpoints.json.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    /// The database: postgres://USER:PASSWORD@HOST:PORT/DB (components in
    /// separate processes or pods share it) or sqlite:PATH. Default: SQLite in --data-dir.
    #[arg(long, env = "TASKSTREAM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Most PostgreSQL connections this process opens (its pool's size).
    #[arg(long, env = "TASKSTREAM_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=1000))]
    pub database_max_connections: u32,
    /// SQLite durability: `full` survives power loss, `normal` only a process crash.
    #[arg(long, env = "TASKSTREAM_SQLITE_SYNCHRONOUS", default_value = "full")]
    pub sqlite_synchronous: Synchronous,
}

impl StoreArgs {
    /// The SQLite options.
    pub fn options(&self) -> SqliteOptions {
        SqliteOptions {
            synchronous: self.sqlite_synchronous,
            ..SqliteOptions::default()
        }
    }

    /// The configured database; the value never appears in an error (it
    /// may hold a password).
    pub fn database(&self) -> anyhow::Result<Option<Database>> {
        self.database_url
            .as_ref()
            .map(|url| url.expose().parse::<Database>().map_err(anyhow::Error::msg))
            .transpose()
            .context("invalid --database-url / TASKSTREAM_DATABASE_URL")
    }

    /// The PostgreSQL options.
    pub fn postgres_options(&self) -> PgOptions {
        PgOptions {
            max_connections: self.database_max_connections,
            ..PgOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// Hours a published event stays in the outbox before it is deleted (the
    /// topic keeps it); 0 keeps every event forever.
    #[arg(long, env = "TASKSTREAM_OUTBOX_RETENTION_HOURS", default_value_t = 168)]
    pub outbox_retention_hours: u64,
    /// How the relay publishes: `exactly-once` (each batch in one Kafka
    /// transaction; a restarted relay never republishes) or `at-least-once`
    /// (idempotent producer; consumers de-duplicate). Default: exactly-once
    /// on a broker with transactions, at-least-once on `--dev-broker mock`.
    #[arg(long, env = "TASKSTREAM_RELAY_DELIVERY", value_enum)]
    pub relay_delivery: Option<RelayDeliveryArg>,
    /// The relay's `transactional.id` (exactly-once): one per deployment;
    /// a relay starting with it fences an older one.
    #[arg(long, env = "TASKSTREAM_RELAY_TRANSACTIONAL_ID", default_value = taskstream_services::RELAY_TRANSACTIONAL_ID, value_parser = parse_transactional_id)]
    pub relay_transactional_id: String,
}

/// `--relay-delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayDeliveryArg {
    /// One Kafka transaction per batch.
    ExactlyOnce,
    /// An idempotent producer; a crash can publish a batch twice.
    AtLeastOnce,
}

impl OutboxArgs {
    /// How long published events stay in the outbox; `None`: for ever.
    pub fn retention(&self) -> Option<Duration> {
        (self.outbox_retention_hours > 0)
            .then(|| Duration::from_secs(self.outbox_retention_hours.saturating_mul(3600)))
    }

    /// The relay's settings; `transactions` says whether the broker has
    /// them (all but librdkafka's mock). Without `--relay-delivery`, the
    /// relay publishes exactly once where it can, at least once on the mock;
    /// asking for exactly-once without transactions is an error.
    pub fn relay_settings(&self, transactions: bool) -> anyhow::Result<RelaySettings> {
        let delivery = match (self.relay_delivery, transactions) {
            (Some(RelayDeliveryArg::ExactlyOnce), false) => anyhow::bail!(
                "--relay-delivery exactly-once needs a broker with transactions, and librdkafka's mock cluster (--dev-broker mock) has none: use --relay-delivery at-least-once, or taskstream's broker"
            ),
            (Some(RelayDeliveryArg::AtLeastOnce), _) | (None, false) => RelayDelivery::AtLeastOnce,
            (Some(RelayDeliveryArg::ExactlyOnce), true) | (None, true) => RelayDelivery::ExactlyOnce {
                transactional_id: self.relay_transactional_id.clone(),
            },
        };
        Ok(RelaySettings {
            retention: self.retention(),
            delivery,
            ..RelaySettings::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct ReadinessArgs {
    /// /readyz fails when the oldest unpublished event is older than this many seconds.
    #[arg(long, env = "TASKSTREAM_READY_MAX_OUTBOX_AGE", default_value = "30", value_parser = parse_seconds)]
    pub ready_max_outbox_age: Duration,
}

/// The limits every HTTP port of the process applies to its clients (see
/// `taskstream_api::server`).
#[derive(Debug, Clone, Args)]
pub struct HttpLimitArgs {
    /// Seconds a client has to send a request's line and headers, from
    /// connecting or from the request's first byte; then the connection is closed.
    #[arg(long, env = "TASKSTREAM_HTTP_HEADER_TIMEOUT", default_value = "10", value_parser = parse_http_timeout)]
    pub http_header_timeout: Duration,
    /// Seconds a kept-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "TASKSTREAM_HTTP_IDLE_TIMEOUT", default_value = "60", value_parser = parse_http_timeout)]
    pub http_idle_timeout: Duration,
    /// Seconds a request body may bring no data (answered 408), or a client
    /// may leave its response unread, before the connection is closed.
    #[arg(long, env = "TASKSTREAM_HTTP_BODY_TIMEOUT", default_value = "30", value_parser = parse_http_timeout)]
    pub http_body_timeout: Duration,
    /// Connections each HTTP port serves at once; further ones wait in the
    /// kernel's accept backlog until one closes.
    #[arg(long, env = "TASKSTREAM_HTTP_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http_max_connections: u32,
}

impl HttpLimitArgs {
    /// The limits as the HTTP server takes them.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            body_timeout: self.http_body_timeout,
            max_connections: self.http_max_connections as usize,
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASKSTREAM_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Where the embedded schema registry listens (unless --schema-registry names another).
    #[arg(
        long,
        env = "TASKSTREAM_REGISTRY_HTTP",
        default_value = "127.0.0.1:8081"
    )]
    pub registry_http: SocketAddr,
    /// How events are written to Kafka.
    #[arg(long, value_enum, default_value = "avro")]
    pub event_format: EventFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Make the notifier wait this many milliseconds per notification (to watch lag build up).
    #[arg(long, default_value = "0", value_parser = parse_millis)]
    pub notifier_delay_ms: Duration,
    /// POST every notification to this http URL (JSON, with an Idempotency-Key header) instead of logging it.
    #[arg(long, env = "TASKSTREAM_NOTIFIER_WEBHOOK_URL", hide_env_values = true)]
    pub notifier_webhook_url: Option<String>,
    /// Dead-letter an event whose transient failure lasts this many seconds
    /// (until then its partition is held, in order).
    #[arg(long, env = "TASKSTREAM_RETRY_GIVE_UP_AFTER", default_value = "900", value_parser = parse_seconds)]
    pub give_up_after: Duration,
    /// Seconds without a heartbeat before the consumer groups hand this
    /// process's partitions to other members (`session.timeout.ms`).
    /// Default: 45 (3 on `--dev-broker mock`).
    #[arg(long, env = "TASKSTREAM_SESSION_TIMEOUT", value_parser = parse_seconds)]
    pub session_timeout: Option<Duration>,
    /// Do not run the workload processor (which runs exactly once, through
    /// transactions, on every broker but `--dev-broker mock`).
    #[arg(long)]
    pub no_processor: bool,
    /// Do not run the assignment saga (its endpoints still answer; nothing
    /// starts sagas or acts on their deadlines).
    #[arg(long)]
    pub no_saga: bool,
    #[command(flatten)]
    pub saga: SagaArgs,
    /// Do not run the triage agent.
    #[arg(long, env = "TASKSTREAM_NO_AGENT")]
    pub no_agent: bool,
    /// Make this process's consumers static group members (KIP-345,
    /// `group.instance.id` kept in `<data-dir>/group-instance-id`): after a
    /// crash, a restart on the same data directory takes its partitions back
    /// at once instead of waiting out the old session. Off by default: on a
    /// three-node Apache Kafka cluster losing two brokers, static members
    /// were seen to stop consuming.
    #[arg(long, env = "TASKSTREAM_STATIC_MEMBERSHIP")]
    pub static_membership: bool,
    #[command(flatten)]
    pub agent: Box<AgentModelArgs>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub embedded_broker: EmbeddedBrokerArgs,
    #[command(flatten)]
    pub kafka_start: KafkaStartArgs,
    #[command(flatten)]
    pub readiness: ReadinessArgs,
    #[command(flatten)]
    pub outbox: OutboxArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
}

/// The embedded broker of `up` (when no --kafka-bootstrap is given) and of
/// `dev-broker`.
#[derive(Debug, Args)]
pub struct EmbeddedBrokerArgs {
    /// Which broker runs: `taskstream` (its own broker; topics, records and
    /// group offsets kept on disk) or `mock` (librdkafka's mock cluster:
    /// memory only, drops data beyond about 5 MiB per partition).
    #[arg(
        long,
        env = "TASKSTREAM_DEV_BROKER",
        value_enum,
        default_value_t = DevBrokerKind::Taskstream
    )]
    pub dev_broker: DevBrokerKind,
    /// When taskstream's broker fsyncs its logs: `ack` (before each
    /// acknowledgement; survives power loss) or every this many
    /// milliseconds. Acknowledged data survives the process being killed either way.
    #[arg(long, env = "TASKSTREAM_BROKER_FLUSH", default_value = "1000", value_parser = parse_broker_flush)]
    pub broker_flush: taskstream_broker::FlushPolicy,
}

#[derive(Debug, Args)]
pub struct DevBrokerArgs {
    /// Keep the broker's data in `<DATA_DIR>/broker` (the same place as
    /// `up` with this --data-dir). Default: a temporary directory removed at exit.
    #[arg(long, env = "TASKSTREAM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where taskstream's broker listens; port 0 picks a free port (the mock always does).
    #[arg(long, env = "TASKSTREAM_BROKER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub broker: EmbeddedBrokerArgs,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASKSTREAM_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// How events are stored in the outbox, as they go on the topic (Avro
    /// needs a schema registry; the event schemas are registered at start-up).
    #[arg(long, value_enum, default_value = "avro")]
    pub event_format: EventFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
    #[command(flatten)]
    pub publisher: PublisherArgs,
}

/// Who publishes the outbox, as far as the Task API is concerned.
#[derive(Debug, Args)]
pub struct PublisherArgs {
    /// Who publishes the outbox: `relay` (`taskstream relay` marks rows and
    /// prunes them), or `debezium`: this API then marks rows published once
    /// Debezium's replication slot confirmed them, and prunes them past
    /// the retention (needs PostgreSQL).
    #[arg(
        long,
        env = "TASKSTREAM_PUBLISHER",
        value_enum,
        default_value = "relay"
    )]
    pub publisher: Publisher,
    /// Debezium's replication slot (the connector's `slot.name`), with
    /// `--publisher debezium`.
    #[arg(long, env = "TASKSTREAM_CDC_SLOT", default_value = "taskstream_outbox")]
    pub cdc_slot: String,
    #[command(flatten)]
    pub outbox: OutboxArgs,
}

/// See [`PublisherArgs::publisher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Publisher {
    Relay,
    Debezium,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Serve /healthz, /readyz and /metrics here.
    #[arg(long, env = "TASKSTREAM_HTTP")]
    pub http: Option<SocketAddr>,
    /// How events are written to Kafka (Avro needs a schema registry).
    #[arg(long, value_enum, default_value = "avro")]
    pub event_format: EventFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub kafka_start: KafkaStartArgs,
    #[command(flatten)]
    pub readiness: ReadinessArgs,
    #[command(flatten)]
    pub outbox: OutboxArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
}

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    /// Serve the read-only view (/audit or /notifications), /healthz, /readyz and /metrics here.
    #[arg(long, env = "TASKSTREAM_HTTP")]
    pub http: Option<SocketAddr>,
    /// Consumer group to join (default: `auditor` or `notifier`). A new group
    /// starts from the earliest event, which replays history harmlessly.
    #[arg(long, env = "TASKSTREAM_GROUP")]
    pub group: Option<String>,
    /// Dead-letter an event whose transient failure (database, registry or
    /// webhook outage) lasts this many seconds; until then its partition is
    /// held, in order.
    #[arg(long, env = "TASKSTREAM_RETRY_GIVE_UP_AFTER", default_value = "900", value_parser = parse_seconds)]
    pub give_up_after: Duration,
    /// Seconds without a heartbeat before the group hands a member's
    /// partitions to the others (`session.timeout.ms`): a crashed replica's
    /// partitions wait this long. Default: 45 (3 on `--dev-broker mock`).
    #[arg(long, env = "TASKSTREAM_SESSION_TIMEOUT", value_parser = parse_seconds)]
    pub session_timeout: Option<Duration>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub kafka_start: KafkaStartArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
}

#[derive(Debug, Args)]
pub struct NotifierArgs {
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Wait this many milliseconds per notification (a slow notifier on purpose).
    #[arg(long, default_value = "0", value_parser = parse_millis)]
    pub delay_ms: Duration,
    /// POST every notification to this http URL (JSON, with an Idempotency-Key header) instead of logging it.
    #[arg(long, env = "TASKSTREAM_NOTIFIER_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
}

/// How the assignment saga behaves (`up` and `saga`).
#[derive(Debug, Clone, Args)]
pub struct SagaArgs {
    /// The most assignment sagas that may hold an assignee's capacity at
    /// once (waiting for acceptance, or accepted and not yet completed); an
    /// assignment beyond it is compensated at once.
    #[arg(long, env = "TASKSTREAM_SAGA_MAX_OPEN_PER_ASSIGNEE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub saga_max_open_per_assignee: u32,
    /// How long an assignee has to accept (`POST /tasks/{id}/accept`)
    /// before the assignment is compensated: 10s, 30m, 24h (at most 24h).
    #[arg(long, env = "TASKSTREAM_SAGA_ACCEPT_TIMEOUT", default_value = "24h", value_parser = crate::config::parse_duration)]
    pub saga_accept_timeout: Duration,
    /// Who compensated tasks are escalated to (an assignee name that never
    /// starts a saga itself).
    #[arg(long, env = "TASKSTREAM_SAGA_TEAM_QUEUE", default_value = "team-queue", value_parser = parse_team_queue)]
    pub saga_team_queue: taskstream_domain::Assignee,
    /// How often the saga timer looks for deadlines that passed (10s, 500ms...).
    #[arg(long, env = "TASKSTREAM_SAGA_POLL_INTERVAL", default_value = "1s", value_parser = crate::config::parse_duration)]
    pub saga_poll_interval: Duration,
}

fn parse_team_queue(raw: &str) -> Result<taskstream_domain::Assignee, String> {
    taskstream_domain::Assignee::parse(raw).map_err(|e| e.message)
}

impl SagaArgs {
    /// The saga's settings.
    pub fn settings(&self) -> taskstream_services::saga::SagaSettings {
        taskstream_services::saga::SagaSettings {
            max_open_per_assignee: self.saga_max_open_per_assignee,
            accept_timeout: self.saga_accept_timeout,
            team_queue: self.saga_team_queue.clone(),
            poll_interval: self.saga_poll_interval,
        }
    }
}

/// `taskstream saga`.
#[derive(Debug, Args)]
pub struct SagaCmdArgs {
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// How task events it writes while compensating are stored (Avro needs
    /// a schema registry).
    #[arg(long, value_enum, default_value = "avro")]
    pub event_format: EventFormat,
    #[command(flatten)]
    pub saga: SagaArgs,
}

#[derive(Debug, Args)]
pub struct ProcessorArgs {
    /// Serve /healthz and /metrics here.
    #[arg(long, env = "TASKSTREAM_HTTP")]
    pub http: Option<SocketAddr>,
    /// The transactional id: one processor is active per id; starting a
    /// second one with the same id fences (stops) the first.
    #[arg(long, env = "TASKSTREAM_PROCESSOR_TRANSACTIONAL_ID", default_value = taskstream_services::processor::PROCESSOR_TRANSACTIONAL_ID, value_parser = parse_transactional_id)]
    pub transactional_id: String,
    /// The consumer group its input offsets are committed under.
    #[arg(long, env = "TASKSTREAM_PROCESSOR_GROUP", default_value = taskstream_services::processor::PROCESSOR_GROUP, value_parser = parse_transactional_id)]
    pub group: String,
    /// An assignee with this many open tasks is overloaded (alerted once on reaching it).
    #[arg(long, env = "TASKSTREAM_PROCESSOR_MAX_OPEN_TASKS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_open_tasks: u32,
    /// The most input events one transaction covers.
    #[arg(long, env = "TASKSTREAM_PROCESSOR_MAX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// Milliseconds a transaction gathers input after its first event.
    #[arg(long, env = "TASKSTREAM_PROCESSOR_BATCH_LINGER_MS", default_value = "100", value_parser = parse_millis)]
    pub batch_linger_ms: Duration,
    /// Directory of a `taskstream up` whose broker and registry to use when
    /// none are given.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub kafka_start: KafkaStartArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
}

impl ProcessorArgs {
    /// The processor's settings.
    pub fn settings(&self) -> taskstream_services::ProcessorSettings {
        taskstream_services::ProcessorSettings {
            transactional_id: self.transactional_id.clone(),
            group: self.group.clone(),
            max_open_tasks: self.max_open_tasks,
            max_batch: self.max_batch as usize,
            batch_linger: self.batch_linger_ms,
            ..taskstream_services::ProcessorSettings::default()
        }
    }
}

/// A transactional id or group id: 1 to 249 printable ASCII characters.
fn parse_transactional_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 249 || !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "expected 1 to 249 printable ASCII characters without spaces, got {raw:?}"
        ));
    }
    Ok(raw.to_owned())
}

/// How the triage agent answers (see `taskstream_services::agent`).
#[derive(Debug, Clone, Args)]
pub struct AgentModelArgs {
    /// Which words name which assignee for the local model:
    /// `keyword=assignee,...` (one word per keyword, matched case-insensitively).
    #[arg(long, env = "TASKSTREAM_AGENT_ASSIGNEES", default_value = "", value_parser = AssigneeMap::parse)]
    pub agent_assignees: AssigneeMap,
    /// Accept suggestions without a person when they satisfy this rule:
    /// `min-confidence=N` (0 to 100), through the same command as
    /// `POST /tasks/{id}/suggestions/{sid}/accept`. Default: never.
    #[arg(long, env = "TASKSTREAM_AGENT_AUTO_ACCEPT")]
    pub agent_auto_accept: Option<AutoAccept>,
    /// An OpenAI-compatible API to ask instead of the local model
    /// (`POST {URL}/chat/completions`, JSON mode), e.g. http://127.0.0.1:11434/v1.
    /// Checked at start-up, without repeating it (it might hold a key).
    #[arg(long, env = "TASKSTREAM_AGENT_MODEL_URL", hide_env_values = true)]
    pub agent_model_url: Option<String>,
    /// The model the API is asked for (the request's `model`).
    #[arg(
        long,
        env = "TASKSTREAM_AGENT_MODEL_NAME",
        default_value = "gpt-4o-mini"
    )]
    pub agent_model_name: String,
    /// Seconds one request to the model may take.
    #[arg(long, env = "TASKSTREAM_AGENT_MODEL_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub agent_model_timeout: Duration,
    /// Retries (with backoff) of a request that timed out or was answered 429 or 5xx.
    #[arg(long, env = "TASKSTREAM_AGENT_MODEL_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub agent_model_retries: u32,
    /// The most requests to the model in any minute; past it, the agent
    /// holds the event's partition and asks again with backoff, and
    /// dead-letters the event only after --give-up-after.
    #[arg(long, env = "TASKSTREAM_AGENT_MAX_REQUESTS_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub agent_max_requests_per_minute: u32,
    /// The API key (sent as a bearer token; never logged).
    #[arg(
        long,
        env = "TASKSTREAM_AGENT_API_KEY",
        hide_env_values = true,
        conflicts_with = "agent_api_key_file"
    )]
    pub agent_api_key: Option<Secret>,
    /// A file holding the API key (a mounted secret); surrounding whitespace is ignored.
    #[arg(long, env = "TASKSTREAM_AGENT_API_KEY_FILE")]
    pub agent_api_key_file: Option<PathBuf>,
}

/// The backoff before a remote model's first retry; it doubles up to
/// [`MODEL_MAX_BACKOFF`].
const MODEL_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest backoff between two requests to a remote model (the
/// model's own cap, `taskstream_services::agent::OpenAiModel`).
const MODEL_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An http(s) base URL for the model's API.
fn parse_model_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains('@') => {
            Ok(url.to_owned())
        }
        _ => Err(
            "expected an http(s) URL without credentials, such as http://127.0.0.1:11434/v1 (the key goes in --agent-api-key or --agent-api-key-file)".into(),
        ),
    }
}

impl AgentModelArgs {
    /// The model these flags ask for, as the running agent asks it: a
    /// remote model past its requests per minute fails at once (the agent
    /// holds the event's partition and asks again later).
    pub fn model(&self) -> anyhow::Result<std::sync::Arc<dyn TriageModel>> {
        self.build_model(None)
    }

    /// The model these flags ask for, as a replay asks it: a remote model
    /// waits for room in its requests per minute, and makes at most
    /// `max_requests` requests in all (then it answers
    /// `ModelError::RequestLimitReached`).
    pub fn replay_model(
        &self,
        max_requests: u64,
    ) -> anyhow::Result<std::sync::Arc<dyn TriageModel>> {
        self.build_model(Some(max_requests))
    }

    fn build_model(
        &self,
        max_requests: Option<u64>,
    ) -> anyhow::Result<std::sync::Arc<dyn TriageModel>> {
        let Some(url) = &self.agent_model_url else {
            return Ok(std::sync::Arc::new(LocalModel::new(
                self.agent_assignees.clone(),
            )));
        };
        let url = parse_model_url(url).map_err(|e| {
            anyhow::anyhow!("invalid --agent-model-url / TASKSTREAM_AGENT_MODEL_URL: {e}")
        })?;
        let api_key = match (&self.agent_api_key, &self.agent_api_key_file) {
            (Some(key), _) => Some(key.expose().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| {
                        format!("cannot read --agent-api-key-file {}", path.display())
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let model = OpenAiModel::new(OpenAiSettings {
            url,
            model: self.agent_model_name.clone(),
            api_key,
            timeout: self.agent_model_timeout,
            retries: self.agent_model_retries,
            max_requests_per_minute: self.agent_max_requests_per_minute,
            wait_for_rate: max_requests.is_some(),
            max_requests,
            initial_backoff: MODEL_INITIAL_BACKOFF,
        })
        .map_err(anyhow::Error::msg)?;
        Ok(std::sync::Arc::new(model))
    }

    /// The longest one event's triage can take with these flags: every
    /// attempt timing out, and the longest backoff before each retry.
    pub fn worst_case_triage(&self) -> Duration {
        let attempts = self.agent_model_retries + 1;
        let mut backoff = MODEL_INITIAL_BACKOFF;
        let mut total = self.agent_model_timeout * attempts;
        for _ in 0..self.agent_model_retries {
            total += backoff;
            backoff = (backoff * 2).min(MODEL_MAX_BACKOFF);
        }
        total
    }

    /// The longest the consumer can spend on one event without polling:
    /// it calls the agent up to `retry.max_attempts` times in a row, with
    /// `retry`'s backoff between the calls, before it holds the partition
    /// (and polls again).
    pub fn worst_case_event(&self, retry: &taskstream_services::RetryPolicy) -> Duration {
        let attempts = retry.max_attempts.max(1);
        let mut backoff = retry.initial_backoff;
        let mut total = self.worst_case_triage() * attempts;
        for _ in 1..attempts {
            total += backoff;
            backoff = (backoff * 2).min(retry.max_backoff);
        }
        total
    }

    /// The agent's settings, for a consumer that must poll at least every
    /// `max_poll_interval` and retries a failed event as `retry` says: a
    /// remote model's worst case must fit in it, or the group would remove
    /// the agent while it waits on the model, and the event would be
    /// retried by the next member, and the next.
    pub fn settings(
        &self,
        max_poll_interval: Duration,
        retry: &taskstream_services::RetryPolicy,
    ) -> anyhow::Result<AgentSettings> {
        if self.agent_model_url.is_some() {
            let worst = self.worst_case_event(retry);
            if worst >= max_poll_interval {
                anyhow::bail!(
                    "--agent-model-timeout ({} s) over {} attempt(s), each event tried {} time(s) in a row, \
                     can take {} s with the backoffs, not under the consumer's max.poll.interval.ms ({} s): \
                     lower --agent-model-timeout or --agent-model-retries, or raise it with \
                     --kafka-property max.poll.interval.ms=N",
                    self.agent_model_timeout.as_secs_f64(),
                    self.agent_model_retries + 1,
                    retry.max_attempts.max(1),
                    worst.as_secs_f64(),
                    max_poll_interval.as_secs_f64(),
                );
            }
        }
        Ok(AgentSettings {
            model: self.model()?,
            auto_accept: self.agent_auto_accept,
        })
    }
}

/// `taskstream agent`: run the agent, or one of its tools.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub run: AgentRunArgs,
}

/// What `taskstream agent` can do besides running.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Ask the running agent for a suggestion over Kafka (request-reply) and wait for its answer.
    Ask(crate::ops::agent::AskArgs),
    /// Re-run the agent over the task-event history and compare its suggestions with what people did.
    Replay(crate::ops::agent::ReplayArgs),
}

/// `taskstream agent` (running).
#[derive(Debug, Args)]
pub struct AgentRunArgs {
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// How the task events the auto-accept rule writes are stored, as they
    /// go on the topic: the API's --event-format (Avro needs a schema
    /// registry). Reading accepts either.
    #[arg(long, value_enum, default_value = "avro")]
    pub event_format: EventFormat,
    #[command(flatten)]
    pub model: AgentModelArgs,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn agent_args(extra: &[&str]) -> AgentArgs {
        let mut args = vec!["taskstream", "agent"];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args).expect("the flags parse").command {
            Command::Agent(agent) => *agent,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn a_remote_models_worst_case_counts_every_attempt_and_the_backoffs_between_them() {
        let args = agent_args(&["--agent-model-timeout", "30", "--agent-model-retries", "2"]);
        // 3 attempts of 30 s, backoffs of 0.5 s and 1 s.
        assert_eq!(
            args.run.model.worst_case_triage(),
            Duration::from_millis(91_500)
        );
        let args = agent_args(&["--agent-model-timeout", "1", "--agent-model-retries", "7"]);
        // 8 s of attempts; 0.5 + 1 + 2 + 4 + 8 + 10 + 10 s of backoff (capped at 10 s).
        assert_eq!(
            args.run.model.worst_case_triage(),
            Duration::from_millis(43_500)
        );
    }

    #[test]
    fn a_remote_model_that_could_outlast_max_poll_interval_is_refused_at_start_up() {
        let url = "http://127.0.0.1:9/v1";
        let slow = agent_args(&[
            "--agent-model-url",
            url,
            "--agent-model-timeout",
            "120",
            "--agent-model-retries",
            "2",
        ]);
        let poll = slow.run.consumer.kafka.max_poll_interval().unwrap();
        assert_eq!(poll, Duration::from_secs(300));
        let retry = taskstream_services::RetryPolicy::default();
        // Each event is tried 3 times in a row (0.2 s and 0.4 s apart).
        assert_eq!(
            slow.run.model.worst_case_event(&retry),
            Duration::from_millis(3 * 361_500 + 600)
        );
        let Err(error) = slow.run.model.settings(poll, &retry) else {
            panic!("a worst case over max.poll.interval.ms is refused");
        };
        let message = error.to_string();
        assert!(
            message.contains("max.poll.interval.ms (300 s)") && message.contains("1085.1 s"),
            "{message}"
        );
        // Raising max.poll.interval.ms is the documented way out.
        let raised = agent_args(&[
            "--agent-model-url",
            url,
            "--agent-model-timeout",
            "120",
            "--kafka-property",
            "max.poll.interval.ms=1200000",
        ]);
        let poll = raised.run.consumer.kafka.max_poll_interval().unwrap();
        assert_eq!(poll, Duration::from_secs(1200));
        assert!(raised.run.model.settings(poll, &retry).is_ok());
        // The defaults fit: 3 × (3 × 30 s + 1.5 s) + 0.6 s = 275.1 s.
        let defaults = agent_args(&["--agent-model-url", url]);
        assert_eq!(
            defaults.run.model.worst_case_event(&retry),
            Duration::from_millis(275_100)
        );
        assert!(defaults
            .run
            .model
            .settings(Duration::from_secs(300), &retry)
            .is_ok());
        // The local model never waits on a network.
        let local = agent_args(&["--agent-model-timeout", "1000"]);
        assert!(local
            .run
            .model
            .settings(Duration::from_secs(300), &retry)
            .is_ok());
        // A max.poll.interval.ms that is not a number is one clear line.
        let bad = agent_args(&["--kafka-property", "max.poll.interval.ms=5m"]);
        let error = bad.run.consumer.kafka.max_poll_interval().unwrap_err();
        assert!(
            error.to_string().contains("expected milliseconds"),
            "{error}"
        );
    }
}
