//! The command line: one binary, a subcommand per component.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use taskstream_api::{ApiBuilder, HttpLimits, ReadinessCheck};
use taskstream_avro::RegistryClient;
use taskstream_kafka::{apply_topics, wait_for_cluster, DevBroker, KafkaConfig, TopicOutcome};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::topics::{declared_topics, schema_registry_topic};
use taskstream_services::{EventEncoding, RelaySettings, RetryPolicy};
use taskstream_store::{Database, PgOptions, SqliteOptions, Store, Synchronous};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::components::{
    self, Component, ConsumerOptions, KafkaCheck, OutboxAgeCheck, RegistryCheck, StoreCheck,
};
use crate::dlq::DlqCommand;
use crate::lag::LagArgs;
use crate::schema::SchemaCommand;
use crate::system::{RegistrySetting, RunningSystem, SystemConfig, ENDPOINTS_FILE, STATS_INTERVAL};
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
    Notifier(NotifierArgs),
    /// Run the audit-log service alone (consumer group `auditor`).
    Auditor(ConsumerArgs),
    /// Run the embedded Kafka-protocol dev broker alone and print its address.
    DevBroker,
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
    /// Run the embedded, Confluent-compatible schema registry alone.
    Registry(RegistryServerArgs),
    /// Measure the system under load against this machine's own ceilings.
    Bench(crate::bench::BenchArgs),
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

/// The endpoints a `taskstream up` in `data_dir` announced: `None` when
/// there is no endpoints file; an error when it cannot be read or is
/// corrupt, saying which and why.
fn read_endpoints(data_dir: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let path = data_dir.join(ENDPOINTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(endpoints) if endpoints.is_object() => Ok(Some(endpoints)),
        Ok(_) => bail!(
            "{} is corrupt: expected the JSON object `taskstream up` writes",
            path.display()
        ),
        Err(e) => bail!(
            "{} is corrupt ({e}); a running `taskstream up` rewrites it when it starts",
            path.display()
        ),
    }
}

impl RegistryArgs {
    /// The configured registry, or the one a `taskstream up` in `data_dir` announced.
    pub(crate) fn resolve(&self, data_dir: &Path) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.schema_registry {
            return Ok(Some(url.clone()));
        }
        Ok(read_endpoints(data_dir)?
            .and_then(|endpoints| endpoints["schema-registry"].as_str().map(str::to_owned)))
    }
}

/// How the relay writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// Avro in the Confluent wire format, schemas in the registry.
    Avro,
    /// The JSON envelope, as stored in the outbox.
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
    fn options(&self) -> SqliteOptions {
        SqliteOptions {
            synchronous: self.sqlite_synchronous,
            ..SqliteOptions::default()
        }
    }

    /// The configured database; the value never appears in an error (it
    /// may hold a password).
    fn database(&self) -> anyhow::Result<Option<Database>> {
        self.database_url
            .as_ref()
            .map(|url| url.expose().parse::<Database>().map_err(anyhow::Error::msg))
            .transpose()
            .context("invalid --database-url / TASKSTREAM_DATABASE_URL")
    }

    fn postgres_options(&self) -> PgOptions {
        PgOptions {
            max_connections: self.database_max_connections,
            ..PgOptions::default()
        }
    }

    async fn open(&self) -> anyhow::Result<Arc<Store>> {
        components::open_store(
            &self.data_dir,
            self.database()?.as_ref(),
            &self.options(),
            &self.postgres_options(),
        )
        .await
    }
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...). `up` starts a dev broker when absent.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap: Option<String>,
    /// How to reach the brokers: plaintext, ssl (TLS), sasl_plaintext or sasl_ssl (SASL over TLS).
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: SecurityProtocol,
    /// SASL mechanism, for the sasl_* protocols (Strimzi's KafkaUsers use SCRAM-SHA-512).
    #[arg(
        long,
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        default_value = "SCRAM-SHA-512"
    )]
    pub kafka_sasl_mechanism: SaslMechanism,
    /// SASL user name, for the sasl_* protocols.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password; prefer the environment variable, which stays out of `ps`.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,
    /// PEM file with the CA certificate(s) that signed the brokers' certificates
    /// (Strimzi: the `ca.crt` of the `<cluster>-cluster-ca-cert` secret).
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Extra librdkafka property, KEY=VALUE (repeatable), e.g. client.rack=zone-a.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// A value that must never be printed: `Debug` shows `<redacted>`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `security.protocol`, as librdkafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[value(name = "plaintext")]
    Plaintext,
    #[value(name = "ssl")]
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism`, as librdkafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

fn parse_millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected a whole number of milliseconds, got {raw:?}"))
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match raw.parse::<f64>() {
        Ok(s) if s > 0.0 => {
            Duration::try_from_secs_f64(s).map_err(|_| format!("{raw:?} seconds is out of range"))
        }
        _ => Err(format!(
            "expected a positive number of seconds, got {raw:?}"
        )),
    }
}

/// The longest duration the duration flags take.
const LONGEST_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration such as `10s`, `500ms`, `2m` or `1h`; a bare number is seconds.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    match number.parse::<f64>().map(|n| n * scale) {
        Ok(secs) if secs.is_finite() && secs >= 0.001 && secs <= LONGEST_DURATION.as_secs_f64() => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "expected a duration between 1ms and 24h such as 10s, 500ms or 2m, got {raw:?}"
        )),
    }
}

/// Checks a bootstrap list — `HOST:PORT[,HOST:PORT...]`, a port from 1 to
/// 65535, no scheme, no empty entry — and returns it without blanks.
/// librdkafka would take a bad list and then retry it forever.
pub(crate) fn check_bootstrap(raw: &str) -> Result<String, String> {
    let invalid = |why: String| format!("invalid --kafka-bootstrap {raw:?}: {why}");
    let mut entries = Vec::new();
    for entry in raw.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(invalid(
                "an empty entry; expected HOST:PORT[,HOST:PORT...]".into(),
            ));
        }
        if let Some((scheme, rest)) = entry.split_once("://") {
            let protocol = scheme.to_ascii_lowercase();
            let hint = match protocol.as_str() {
                "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl" => {
                    format!("the protocol is set with --kafka-security-protocol {protocol}")
                }
                _ => "Kafka brokers speak the Kafka protocol, not a URL scheme".to_owned(),
            };
            return Err(invalid(format!(
                "give HOST:PORT without `{scheme}://`, e.g. {rest:?} ({hint})"
            )));
        }
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(invalid(format!(
                "{entry:?} has no port; expected HOST:PORT such as {entry}:9092"
            )));
        };
        let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
        if host.is_empty()
            || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
            || (host.contains([':', '[', ']']) && !bracketed)
        {
            return Err(invalid(format!(
                "{entry:?} has no valid host; expected HOST:PORT (an IPv6 address in brackets: [::1]:9092)"
            )));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(invalid(format!(
                    "{entry:?} has no valid port; a port is a number from 1 to 65535"
                )))
            }
        }
        entries.push(entry);
    }
    Ok(entries.join(","))
}

impl KafkaArgs {
    /// The client configuration for `bootstrap`: security settings checked
    /// for consistency, then the extra properties on top.
    fn build(&self, bootstrap: &str) -> anyhow::Result<KafkaConfig> {
        let protocol = self.kafka_security_protocol;
        let mut config =
            KafkaConfig::new(bootstrap.trim()).with("security.protocol", protocol.as_librdkafka());
        if protocol.uses_sasl() {
            let (Some(user), Some(password)) = (
                self.kafka_sasl_username
                    .as_deref()
                    .filter(|u| !u.is_empty()),
                self.kafka_sasl_password
                    .as_ref()
                    .map(Secret::expose)
                    .filter(|p| !p.is_empty()),
            ) else {
                bail!(
                    "--kafka-security-protocol {} needs a user name and a password: set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
                    protocol.as_librdkafka()
                );
            };
            config = config
                .with("sasl.mechanism", self.kafka_sasl_mechanism.as_librdkafka())
                .with("sasl.username", user)
                .with("sasl.password", password);
        } else if self.kafka_sasl_username.is_some() || self.kafka_sasl_password.is_some() {
            bail!(
                "a SASL user name or password is set but --kafka-security-protocol is {}; use sasl_ssl (or sasl_plaintext)",
                protocol.as_librdkafka()
            );
        }
        if let Some(ca) = &self.kafka_ssl_ca_location {
            if !protocol.uses_tls() {
                bail!(
                    "--kafka-ssl-ca-location is set but --kafka-security-protocol is {}; use ssl or sasl_ssl",
                    protocol.as_librdkafka()
                );
            }
            let pem = std::fs::read_to_string(ca)
                .with_context(|| format!("cannot read the Kafka CA file {}", ca.display()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                bail!("{} holds no PEM certificate", ca.display());
            }
            config = config.with("ssl.ca.location", ca.display().to_string());
        }
        for (key, value) in &self.kafka_properties {
            config = config.with(key, value);
        }
        Ok(config)
    }

    /// The configured cluster, if a bootstrap address was given.
    pub(crate) fn config(&self) -> anyhow::Result<Option<KafkaConfig>> {
        match self.kafka_bootstrap.as_deref().map(str::trim) {
            Some(bootstrap) if !bootstrap.is_empty() => {
                let bootstrap = check_bootstrap(bootstrap).map_err(anyhow::Error::msg)?;
                self.build(&bootstrap).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn require(&self, component: &str) -> anyhow::Result<KafkaConfig> {
        match self.config()? {
            Some(config) => Ok(config),
            None => bail!(
                "the {component} needs Kafka: pass --kafka-bootstrap HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS \
                 (`taskstream dev-broker` starts a local one)"
            ),
        }
    }

    /// The configured cluster, or the one a `taskstream up` in `data_dir`
    /// announced in its endpoints file; `true` when that is the dev broker.
    pub(crate) fn resolve(
        &self,
        data_dir: &Path,
        what: &str,
    ) -> anyhow::Result<(KafkaConfig, bool)> {
        if let Some(config) = self.config()? {
            return Ok((config, false));
        }
        let path = data_dir.join(ENDPOINTS_FILE);
        let endpoints = read_endpoints(data_dir)?.with_context(|| {
                format!(
                    "the {what} needs Kafka: pass --kafka-bootstrap HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS, \
                     or give the --data-dir of a running `taskstream up` (there is no {})",
                    path.display()
                )
            })?;
        let bootstrap = endpoints["kafka"]
            .as_str()
            .with_context(|| format!("{} names no kafka endpoint", path.display()))?;
        Ok((
            self.build(bootstrap)?,
            endpoints["kafka_is_dev_broker"] == true,
        ))
    }
}

#[derive(Debug, Args)]
pub struct KafkaStartArgs {
    /// Exit with an error unless a Kafka broker answers within this long at
    /// start (e.g. 30s, 2m). Default: wait for the cluster as long as it takes.
    #[arg(long, env = "TASKSTREAM_KAFKA_WAIT_AT_START", value_parser = parse_duration)]
    pub kafka_wait_at_start: Option<Duration>,
}

impl KafkaStartArgs {
    /// Waits for a broker of `kafka` to answer, if a deadline was given.
    async fn wait(&self, kafka: &KafkaConfig) -> anyhow::Result<()> {
        if let Some(deadline) = self.kafka_wait_at_start {
            wait_for_cluster(kafka, deadline).await?;
        }
        Ok(())
    }
}

/// How long a one-shot Kafka command waits for the cluster to answer.
#[derive(Debug, Args)]
pub struct KafkaTimeoutArgs {
    /// Give up when no broker answers within this long (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl KafkaTimeoutArgs {
    /// Fails with one line naming the bootstrap address when no broker of
    /// `kafka` answers within the timeout.
    pub(crate) async fn reach(&self, kafka: &KafkaConfig) -> anyhow::Result<()> {
        Ok(wait_for_cluster(kafka, self.timeout).await?)
    }
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// Hours a published event stays in the outbox before it is deleted (the
    /// topic keeps it); 0 keeps every event forever.
    #[arg(long, env = "TASKSTREAM_OUTBOX_RETENTION_HOURS", default_value_t = 168)]
    pub outbox_retention_hours: u64,
}

impl OutboxArgs {
    fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            retention: (self.outbox_retention_hours > 0)
                .then(|| Duration::from_secs(self.outbox_retention_hours.saturating_mul(3600))),
            ..RelaySettings::default()
        }
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
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            body_timeout: self.http_body_timeout,
            max_connections: self.http_max_connections as usize,
        }
    }
}

/// A positive number of seconds, at most a day.
fn parse_http_timeout(raw: &str) -> Result<Duration, String> {
    let max = taskstream_api::server::MAX_TIMEOUT;
    let duration = parse_seconds(raw)?;
    if duration > max {
        return Err(format!("at most {} seconds, got {raw:?}", max.as_secs()));
    }
    Ok(duration)
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
    /// Default: 45 (3 on the dev broker).
    #[arg(long, env = "TASKSTREAM_SESSION_TIMEOUT", value_parser = parse_seconds)]
    pub session_timeout: Option<Duration>,
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
pub struct ApiArgs {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASKSTREAM_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
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
    /// partitions wait this long. Default: 45 (3 on the dev broker).
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
    /// Print the declared topics as Kubernetes resources for the Strimzi Topic Operator.
    Render {
        /// The output format (`strimzi`: KafkaTopic resources, API kafka.strimzi.io/v1).
        #[arg(long, value_enum, default_value = "strimzi")]
        format: RenderFormat,
        /// The Strimzi `Kafka` cluster the topics belong to.
        #[arg(long, default_value = "taskstream")]
        cluster: String,
        /// Replication factor (at most the number of brokers).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
    /// Create the declared topics on a real cluster (existing ones are left alone).
    Apply {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        timeout: KafkaTimeoutArgs,
        /// Replication factor (at most the number of brokers).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Print every component with its Kafka user, ACLs and HTTP paths.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the Kafka users as Strimzi `KafkaUser` resources (SCRAM-SHA-512, least-privilege ACLs).
    Render {
        /// The Strimzi `Kafka` cluster the users belong to.
        #[arg(long, default_value = "taskstream")]
        cluster: String,
    },
}

/// Writes a command's report to stdout. A reader that went away early
/// (`| head`) ends the output quietly instead of a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run_users(command: UsersCommand) -> anyhow::Result<()> {
    use std::fmt::Write;
    use taskstream_services::access::{components, render_strimzi_users};
    let text = match command {
        UsersCommand::Render { cluster } => render_strimzi_users(&cluster),
        UsersCommand::List { json: true } => {
            let doc = serde_json::json!({ "components": components() });
            serde_json::to_string_pretty(&doc)? + "\n"
        }
        UsersCommand::List { json: false } => {
            let mut text = String::new();
            for c in components() {
                writeln!(text, "{}: {}", c.name, c.description)?;
                let user = c.kafka_user.unwrap_or("(none: no Kafka access)");
                writeln!(text, "  kafka user: {user}")?;
                for acl in &c.acls {
                    writeln!(
                        text,
                        "  {:<6} {:<28} {}",
                        acl.resource.kind,
                        acl.resource.name,
                        acl.operations.join(", ")
                    )?;
                }
                if let Some(max) = c.max_replicas {
                    writeln!(text, "  replicas: at most {max}")?;
                }
            }
            text
        }
    };
    emit(&text)
}

/// Formats `topics render` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    /// Strimzi `KafkaTopic` resources (YAML).
    Strimzi,
}

/// A topic name as a Kubernetes object name (lower case, `-` for `_`, no
/// leading or trailing punctuation); `spec.topicName` keeps the real one.
fn kubernetes_name(topic: &str) -> String {
    topic
        .to_ascii_lowercase()
        .replace('_', "-")
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The declared topics as Strimzi `KafkaTopic` resources, one YAML document each.
pub fn render_strimzi_topics(topics: &[taskstream_kafka::TopicSpec], cluster: &str) -> String {
    let mut out = String::from(
        "# Generated by `taskstream topics render --format strimzi`; do not edit.\n\
         # The topics are declared in crates/services/src/topics.rs.\n",
    );
    for t in topics {
        out.push_str("---\n");
        out.push_str("apiVersion: kafka.strimzi.io/v1\n");
        out.push_str("kind: KafkaTopic\n");
        out.push_str("metadata:\n");
        out.push_str(&format!("  name: {}\n", kubernetes_name(&t.name)));
        out.push_str("  labels:\n");
        out.push_str(&format!("    strimzi.io/cluster: {cluster}\n"));
        out.push_str("spec:\n");
        out.push_str(&format!("  topicName: {}\n", t.name));
        out.push_str(&format!("  partitions: {}\n", t.partitions));
        out.push_str(&format!("  replicas: {}\n", t.replication_factor));
        if !t.configs.is_empty() {
            out.push_str("  config:\n");
            for (key, value) in &t.configs {
                out.push_str(&format!("    {key}: \"{value}\"\n"));
            }
        }
    }
    out
}

/// Resolves on Ctrl-C or SIGTERM. From the first call on, the process stops
/// gracefully on the first signal, within
/// [`crate::shutdown_guard::SHUTDOWN_BOUND`]; a second signal ends it at once.
pub async fn shutdown_signal() {
    crate::shutdown_guard::handle_signals_gracefully();
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

/// Prints `name: address` lines. A closed stdout (the reader went away) must
/// not bring the service down, so write errors are ignored.
fn print_endpoints(endpoints: &[(&str, String)]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (name, address) in endpoints {
        let _ = writeln!(out, "{name}: {address}");
    }
    let _ = out.flush();
}

/// Waits for Ctrl-C or SIGTERM, then stops `running` in order and closes the store.
async fn run_until_signal(running: Vec<Component>, store: &Store) {
    shutdown_signal().await;
    components::stop_all(running).await;
    store.close().await;
}

/// Serves `api` (plus /metrics and /readyz) on `addr` and prints the address.
async fn serve(
    addr: SocketAddr,
    limits: &HttpLimitArgs,
    api: ApiBuilder,
    metrics: &Arc<Metrics>,
    store: &Arc<Store>,
    checks: Vec<Arc<dyn ReadinessCheck>>,
) -> anyhow::Result<Component> {
    let api = api.observability(Arc::clone(metrics), Some(store.clone()), checks);
    let (bound, http) = components::http(addr, api, &limits.limits()).await?;
    print_endpoints(&[("http", format!("http://{bound}"))]);
    Ok(http)
}

/// Runs the parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Api(args) => {
            let store = args.store.open().await?;
            let metrics = Metrics::new();
            // A relay in another process finds new rows by polling.
            let api = components::task_api(Arc::clone(&store), Arc::new(Notify::new()))
                .audit(store.clone())
                .notifications(store.clone());
            // Ready while it can take writes: a lagging relay is the relay's
            // readiness problem, and the outbox keeps the writes meanwhile.
            let checks: Vec<Arc<dyn ReadinessCheck>> =
                vec![Arc::new(StoreCheck::new(Arc::clone(&store)))];
            let http = serve(args.http, &args.http_limits, api, &metrics, &store, checks).await?;
            run_until_signal(vec![http], &store).await;
            Ok(())
        }
        Command::Relay(args) => {
            let metrics = Metrics::new();
            let (kafka, _) = args.kafka.resolve(&args.store.data_dir, "relay")?;
            let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
            args.kafka_start.wait(&kafka).await?;
            let registry = match args.event_format {
                EventFormat::Json => None,
                EventFormat::Avro => Some(Arc::new(RegistryClient::new(
                    &args.registry.resolve(&args.store.data_dir)?.context(
                        "Avro events need a schema registry: pass --schema-registry URL or set SCHEMA_REGISTRY_URL \
                         (or --event-format json)",
                    )?,
                ))),
            };
            let store = args.store.open().await?;
            let mut running = Vec::new();
            if let Some(addr) = args.http {
                let mut checks: Vec<Arc<dyn ReadinessCheck>> = vec![
                    Arc::new(StoreCheck::new(Arc::clone(&store))),
                    Arc::new(KafkaCheck::new(&kafka)?),
                    Arc::new(OutboxAgeCheck {
                        store: Arc::clone(&store),
                        max_age: args.readiness.ready_max_outbox_age,
                    }),
                ];
                checks.extend(
                    registry
                        .iter()
                        .map(|r| Arc::new(RegistryCheck(Arc::clone(r))) as Arc<dyn ReadinessCheck>),
                );
                running.push(
                    serve(
                        addr,
                        &args.http_limits,
                        ApiBuilder::new(),
                        &metrics,
                        &store,
                        checks,
                    )
                    .await?,
                );
            }
            let wake = Arc::new(Notify::new());
            running.extend(components::outbox_listener(&store, Arc::clone(&wake)));
            let relay = components::relay(
                Arc::clone(&store),
                &kafka,
                wake,
                args.outbox.relay_settings(),
                match &registry {
                    Some(client) => EventEncoding::avro(Arc::clone(client), TASK_EVENTS),
                    None => EventEncoding::Json,
                },
                &metrics,
            )?;
            running.push(relay);
            run_until_signal(running, &store).await;
            Ok(())
        }
        Command::Notifier(args) => {
            let sink = components::NotifierSink {
                webhook: args.webhook_url,
                delay: args.delay_ms,
            };
            consumer_process("notifier", args.consumer, sink).await
        }
        Command::Auditor(args) => consumer_process("auditor", args, Default::default()).await,
        Command::DevBroker => {
            let broker =
                DevBroker::start(&declared_topics(1)).context("cannot start the dev broker")?;
            print_endpoints(&[("kafka", broker.bootstrap_servers().to_owned())]);
            shutdown_signal().await;
            broker.shutdown(Duration::from_secs(1));
            Ok(())
        }
        Command::Lag(args) => crate::lag::run(args).await,
        Command::Registry(args) => {
            let (bound, registry) = components::registry(
                args.http,
                &args.data_dir,
                "registry",
                &args.http_limits.limits(),
            )
            .await?;
            print_endpoints(&[("schema-registry", format!("http://{bound}"))]);
            shutdown_signal().await;
            registry.stop().await;
            Ok(())
        }
        Command::Schema(command) => crate::schema::run(command).await,
        Command::Users(command) => run_users(command),
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Dlq(command) => crate::dlq::run(command).await,
        Command::Topics(TopicsCommand::List {
            json,
            replication_factor,
        }) => {
            use std::fmt::Write;
            let topics = declared_topics(replication_factor);
            let mut text = String::new();
            if json {
                text = serde_json::to_string_pretty(&topics)? + "\n";
            } else {
                let header = ("topic", "partitions", "replication");
                writeln!(
                    text,
                    "{:<24} {:>10} {:>12}  configs",
                    header.0, header.1, header.2
                )?;
                for t in &topics {
                    let configs: Vec<String> =
                        t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(
                        text,
                        "{:<24} {:>10} {:>12}  {}",
                        t.name,
                        t.partitions,
                        t.replication_factor,
                        configs.join(" ")
                    )?;
                }
            }
            emit(&text)
        }
        Command::Topics(TopicsCommand::Render {
            format: RenderFormat::Strimzi,
            cluster,
            replication_factor,
        }) => emit(&render_strimzi_topics(
            &[
                declared_topics(replication_factor),
                vec![schema_registry_topic(replication_factor)],
            ]
            .concat(),
            &cluster,
        )),
        Command::Topics(TopicsCommand::Apply {
            kafka,
            timeout,
            replication_factor,
        }) => {
            let config = kafka.require("topics apply command")?.quiet();
            timeout.reach(&config).await?;
            let outcomes = apply_topics(
                &config,
                &declared_topics(replication_factor),
                timeout.timeout,
            )
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
    config.database = args.store.database()?;
    config.postgres = args.store.postgres_options();
    config.kafka = args.kafka.config()?;
    config.kafka_wait_at_start = args.kafka_start.kafka_wait_at_start;
    config.ready_max_outbox_age = args.readiness.ready_max_outbox_age;
    config.notifier_delay = args.notifier_delay_ms;
    config.notifier_webhook = args.notifier_webhook_url.clone();
    config.relay = args.outbox.relay_settings();
    config.consumer.retry.give_up_after = args.give_up_after;
    config.http_limits = args.http_limits.limits();
    config.session_timeout = args.session_timeout;
    config.registry = match (args.event_format, args.registry.schema_registry) {
        (EventFormat::Json, _) => RegistrySetting::Disabled,
        (EventFormat::Avro, Some(url)) => RegistrySetting::External(url),
        (EventFormat::Avro, None) => RegistrySetting::Embedded(args.registry_http),
    };
    let system = RunningSystem::start(config).await?;
    let endpoints: Vec<(&str, String)> = system.endpoints().into_iter().collect();
    print_endpoints(&endpoints);
    tracing::info!(data_dir = %args.store.data_dir.display(), "taskstream is up; Ctrl-C stops it");
    shutdown_signal().await;
    system.shutdown().await;
    Ok(())
}

async fn consumer_process(
    which: &'static str,
    args: ConsumerArgs,
    sink: components::NotifierSink,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (kafka, dev_broker) = args.kafka.resolve(&args.store.data_dir, which)?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    args.kafka_start.wait(&kafka).await?;
    let store = args.store.open().await?;
    let base = if dev_broker {
        ConsumerOptions::for_dev_broker()
    } else {
        ConsumerOptions::default()
    };
    let registry = args.registry.resolve(&args.store.data_dir)?;
    if registry.is_none() {
        tracing::warn!("no schema registry configured: Avro records will be dead-lettered (pass --schema-registry URL)");
    }
    let registry = registry.map(|url| Arc::new(RegistryClient::new(&url)));
    let mut base = base;
    if let Some(timeout) = args.session_timeout {
        base.kafka.session_timeout = timeout;
    }
    let options = ConsumerOptions {
        registry: registry.clone(),
        retry: RetryPolicy {
            give_up_after: args.give_up_after,
            ..base.retry.clone()
        },
        ..base
    };
    let group = args.group.as_deref();
    let (consumer, api) = match which {
        "auditor" => (
            components::auditor(Arc::clone(&store), &kafka, group, &options, &metrics)?,
            ApiBuilder::new().audit(store.clone()),
        ),
        _ => (
            components::notifier(Arc::clone(&store), &kafka, group, &options, &sink, &metrics)?,
            ApiBuilder::new().notifications(store.clone()),
        ),
    };
    let mut running = Vec::new();
    if let Some(addr) = args.http {
        let mut checks: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(StoreCheck::new(Arc::clone(&store))),
            Arc::new(KafkaCheck::new(&kafka)?),
            Arc::new(components::OffsetResetCheck::new(&options)),
        ];
        checks.extend(
            registry
                .iter()
                .map(|r| Arc::new(RegistryCheck(Arc::clone(r))) as Arc<dyn ReadinessCheck>),
        );
        running.push(serve(addr, &args.http_limits, api, &metrics, &store, checks).await?);
    }
    running.push(consumer);
    run_until_signal(running, &store).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        let ok = [
            ("10", 10_000),
            ("10s", 10_000),
            ("1.5s", 1_500),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            (" 3s ", 3_000),
        ];
        for (raw, ms) in ok {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "0.0001s",
            "-1",
            "s",
            "10 parsecs",
            "1e3",
            "25h",
            "NaN",
            "inf",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bootstrap_lists_are_host_port_pairs_without_blanks() {
        assert_eq!(
            check_bootstrap(" a:9092 , [::1]:9093,b.example:1").as_deref(),
            Ok("a:9092,[::1]:9093,b.example:1")
        );
        for bad in [
            "http://a:9092",
            "a",
            "a:",
            "a:0",
            "a:99999",
            "a:9092,",
            ",a:9092",
            "a b:9092",
            "::1:9092",
            "[]:9092",
            "user@a:9092",
            "a:9092/x",
        ] {
            assert!(check_bootstrap(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
