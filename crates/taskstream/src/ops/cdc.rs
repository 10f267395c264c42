//! `taskstream cdc`: publishing the outbox with Debezium instead of the
//! relay. The Debezium PostgreSQL connector reads the outbox table through
//! logical decoding (`pgoutput`), and its outbox `EventRouter` turns each
//! inserted row into the record the relay would send: the row's
//! `aggregateid` as the key, its `payload` bytes unchanged as the value
//! (the byte-array converter; the API stored them as they go on the topic,
//! Avro framed with its schema id or JSON), its `topic` column as the topic, and the
//! `id`, `type`, `content_type` and `traceparent` columns as the headers the
//! relay sets (`taskstream_domain::headers`). Consumers cannot tell which
//! one published.
//!
//! The configuration is generated here, once, for every place that needs
//! it (the `cdc connector-config` command, the tests, the deployment).

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Map, Value};
use taskstream_domain::headers;

use super::emit;

/// The table the API writes events to, and Debezium reads.
pub const OUTBOX_TABLE: &str = "public.outbox";

/// The connector's name on the Connect cluster.
pub const CONNECTOR_NAME: &str = "taskstream-outbox";

#[derive(Debug, Subcommand)]
pub enum CdcCommand {
    /// Print the Debezium connector's configuration as JSON, ready for
    /// `POST /connectors` on a Kafka Connect worker.
    ConnectorConfig(ConnectorArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConnectorArgs {
    /// The PostgreSQL database holding the outbox, as
    /// `postgres://USER@HOST[:PORT]/DATABASE`. USER needs the REPLICATION
    /// attribute. A password here is refused: pass `--password-ref`.
    #[arg(long, env = "TASKSTREAM_CDC_DATABASE_URL")]
    pub database_url: String,
    /// Where Connect reads the password, as a config-provider reference, e.g.
    /// `${secrets:taskstream/postgres:password}` (Strimzi) or
    /// `${file:/opt/connect/postgres.properties:password}`; the password
    /// itself never appears in the configuration.
    #[arg(long, env = "TASKSTREAM_CDC_PASSWORD_REF", value_parser = parse_password_ref)]
    pub password_ref: Option<String>,
    /// The replication slot Debezium creates and reads.
    #[arg(long, default_value = "taskstream_outbox", value_parser = parse_identifier)]
    pub slot: String,
    /// The publication Debezium creates, limited to the outbox table.
    #[arg(long, default_value = "taskstream_outbox", value_parser = parse_identifier)]
    pub publication: String,
    /// The connector's name.
    #[arg(long, default_value = CONNECTOR_NAME)]
    pub name: String,
}

/// Runs the command.
pub fn run(command: CdcCommand) -> anyhow::Result<()> {
    match command {
        CdcCommand::ConnectorConfig(args) => {
            let connector = OutboxConnector::from_args(&args)?;
            let doc = json!({ "name": args.name, "config": connector.config() });
            emit(&(serde_json::to_string_pretty(&doc)? + "\n"))
        }
    }
}

/// Where Debezium connects, and the names it uses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConnector {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// A config-provider reference for the password, if one is needed.
    pub password_ref: Option<String>,
    pub slot: String,
    pub publication: String,
}

impl OutboxConnector {
    /// The connector for the database at `url`
    /// (`postgres://USER@HOST[:PORT]/DATABASE`), with the default slot and
    /// publication names.
    pub fn for_database(url: &str) -> anyhow::Result<Self> {
        let (host, port, user, database) = parse_database_url(url)?;
        Ok(Self {
            host,
            port,
            user,
            database,
            password_ref: None,
            slot: "taskstream_outbox".into(),
            publication: "taskstream_outbox".into(),
        })
    }

    fn from_args(args: &ConnectorArgs) -> anyhow::Result<Self> {
        Ok(Self {
            password_ref: args.password_ref.clone(),
            slot: args.slot.clone(),
            publication: args.publication.clone(),
            ..Self::for_database(&args.database_url)?
        })
    }

    /// The connector configuration (the `config` object of
    /// `POST /connectors`).
    pub fn config(&self) -> Map<String, Value> {
        let header = |column: &str, name: &str| format!("{column}:header:{name}");
        let placement = [
            header("type", headers::EVENT_TYPE),
            header("content_type", headers::CONTENT_TYPE),
            header("traceparent", headers::TRACEPARENT),
        ]
        .join(",");
        let mut config = json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": self.host,
            "database.port": self.port.to_string(),
            "database.user": self.user,
            "database.dbname": self.database,
            // Names Debezium's own topics (none is used with the router).
            "topic.prefix": format!("taskstream-cdc-{}", self.database),
            "plugin.name": "pgoutput",
            "slot.name": self.slot,
            "publication.name": self.publication,
            "publication.autocreate.mode": "filtered",
            "table.include.list": OUTBOX_TABLE,
            // Rows written before the slot existed were the relay's to
            // publish: switch over with the relay drained (no pending row).
            "snapshot.mode": "no_data",
            // The outbox is insert-only for Debezium; the relay's
            // bookkeeping updates and pruning deletes are not events.
            "skipped.operations": "u,d,t",
            "tombstones.on.delete": "false",
            // No `__debezium.context.*` headers: the record carries exactly
            // the headers the relay sets.
            "extended.headers.enabled": "false",
            "transforms": "outbox",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": "id",
            "transforms.outbox.table.field.event.key": "aggregateid",
            "transforms.outbox.table.field.event.payload": "payload",
            "transforms.outbox.table.expand.json.payload": "false",
            "transforms.outbox.route.by.field": "topic",
            "transforms.outbox.route.topic.replacement": "${routedByValue}",
            "transforms.outbox.table.fields.additional.placement": placement,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        });
        let map = config.as_object_mut().expect("an object");
        if let Some(reference) = &self.password_ref {
            map.insert("database.password".into(), Value::from(reference.as_str()));
        }
        map.clone()
    }
}

/// `postgres://USER@HOST[:PORT]/DATABASE` into its parts; refuses a
/// password, query parameters and anything else Debezium would not get.
fn parse_database_url(url: &str) -> anyhow::Result<(String, u16, String, String)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .context("the database URL must start with postgres:// or postgresql://")?;
    if rest.contains('?') {
        bail!(
            "the database URL must not carry parameters (Debezium takes its settings separately)"
        );
    }
    let (user, rest) = rest.split_once('@').context(
        "the database URL must name the user Debezium connects as (postgres://USER@HOST/DATABASE)",
    )?;
    if user.contains(':') {
        bail!("the database URL must not contain a password: pass --password-ref with a config-provider reference");
    }
    if user.is_empty() {
        bail!("the database URL names no user");
    }
    let (hostport, database) = rest
        .split_once('/')
        .context("the database URL names no database (postgres://USER@HOST/DATABASE)")?;
    if database.is_empty() || database.contains('/') {
        bail!("the database URL must end with one database name");
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{port:?} is not a port"))?,
        ),
        None => (hostport, 5432),
    };
    if host.is_empty() {
        bail!("the database URL names no host");
    }
    Ok((host.to_owned(), port, user.to_owned(), database.to_owned()))
}

fn parse_password_ref(value: &str) -> Result<String, String> {
    if value.starts_with("${") && value.ends_with('}') && value.contains(':') {
        Ok(value.to_owned())
    } else {
        Err("expected a config-provider reference such as ${secrets:NAMESPACE/SECRET:KEY}, not a password".into())
    }
}

fn parse_identifier(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !value.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(
            "use 1 to 63 lowercase letters, digits and underscores, not starting with a digit"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_gives_host_port_user_and_database() {
        let c =
            OutboxConnector::for_database("postgres://debezium@db.internal:6543/tasks").unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.user.as_str(),
                c.database.as_str()
            ),
            ("db.internal", 6543, "debezium", "tasks")
        );
        let c = OutboxConnector::for_database("postgresql://cdc@localhost/taskstream").unwrap();
        assert_eq!(c.port, 5432);
    }

    #[test]
    fn passwords_parameters_and_missing_parts_are_refused_with_a_reason() {
        for (url, reason) in [
            ("postgres://u:secret@h/db", "password"),
            ("postgres://u@h/db?sslmode=require", "parameters"),
            ("postgres://h/db", "user"),
            ("postgres://u@h", "database"),
            ("postgres://u@h:0/db", "port"),
            ("mysql://u@h/db", "postgres://"),
        ] {
            let error = OutboxConnector::for_database(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(!error.contains("secret"), "{url}: {error}");
        }
        assert!(parse_password_ref("hunter2").is_err());
        assert!(parse_password_ref("${secrets:ns/pg:password}").is_ok());
        assert!(parse_identifier("taskstream_outbox").is_ok());
        assert!(parse_identifier("Bad-Name").is_err());
    }

    #[test]
    fn the_router_maps_the_outbox_columns_to_the_relays_key_value_and_headers() {
        let config = OutboxConnector::for_database("postgres://cdc@h/db")
            .unwrap()
            .config();
        assert_eq!(config["table.include.list"], OUTBOX_TABLE);
        assert_eq!(
            config["transforms.outbox.table.field.event.key"],
            "aggregateid"
        );
        assert_eq!(config["transforms.outbox.route.by.field"], "topic");
        assert_eq!(
            config["transforms.outbox.table.fields.additional.placement"],
            "type:header:type,content_type:header:content-type,traceparent:header:traceparent"
        );
        assert!(!config.contains_key("database.password"));
        let with_ref = OutboxConnector {
            password_ref: Some("${secrets:ns/pg:password}".into()),
            ..OutboxConnector::for_database("postgres://cdc@h/db").unwrap()
        }
        .config();
        assert_eq!(with_ref["database.password"], "${secrets:ns/pg:password}");
    }
}
