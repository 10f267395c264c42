//! Reaching Kafka: the bootstrap list, the security protocol and its
//! credentials, checked for consistency before any client is created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use taskstream_kafka::{wait_for_cluster, KafkaConfig};

use super::durations::parse_duration;
use super::endpoints::Endpoints;
use super::secret::Secret;

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

/// Checks a bootstrap list — `HOST:PORT[,HOST:PORT...]`, a port from 1 to
/// 65535, no scheme, no empty entry — and returns it without blanks.
/// librdkafka would take a bad list and then retry it forever.
pub fn check_bootstrap(raw: &str) -> Result<String, String> {
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
    /// librdkafka's `max.poll.interval.ms` for these flags: the one given
    /// with --kafka-property, else librdkafka's default of five minutes.
    /// A consumer that does not poll for this long leaves its group.
    pub fn max_poll_interval(&self) -> anyhow::Result<std::time::Duration> {
        match self
            .kafka_properties
            .iter()
            .rev()
            .find(|(key, _)| key == "max.poll.interval.ms")
        {
            None => Ok(std::time::Duration::from_secs(300)),
            Some((_, value)) => value
                .parse::<u64>()
                .map(std::time::Duration::from_millis)
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--kafka-property max.poll.interval.ms={value}: expected milliseconds, a whole number"
                    )
                }),
        }
    }

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
    pub fn config(&self) -> anyhow::Result<Option<KafkaConfig>> {
        match self.kafka_bootstrap.as_deref().map(str::trim) {
            Some(bootstrap) if !bootstrap.is_empty() => {
                let bootstrap = check_bootstrap(bootstrap).map_err(anyhow::Error::msg)?;
                self.build(&bootstrap).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn require(&self, component: &str) -> anyhow::Result<KafkaConfig> {
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
    pub fn resolve(&self, data_dir: &Path, what: &str) -> anyhow::Result<(KafkaConfig, bool)> {
        if let Some(config) = self.config()? {
            return Ok((config, false));
        }
        let endpoints = Endpoints::read(data_dir)?.with_context(|| {
                format!(
                    "the {what} needs Kafka: pass --kafka-bootstrap HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS, \
                     or give the --data-dir of a running `taskstream up` (there is no {})",
                    Endpoints::path(data_dir).display()
                )
            })?;
        Ok((self.build(&endpoints.kafka)?, endpoints.kafka_is_dev_broker))
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
    pub async fn wait(&self, kafka: &KafkaConfig) -> anyhow::Result<()> {
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
    pub async fn reach(&self, kafka: &KafkaConfig) -> anyhow::Result<()> {
        Ok(wait_for_cluster(kafka, self.timeout).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
