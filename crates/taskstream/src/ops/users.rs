//! `taskstream users`: each component's Kafka user and ACLs (declared in
//! [`super::access`]), as a table, JSON or Strimzi `KafkaUser` resources.

use clap::Subcommand;

use super::access::{components, render_strimzi_users};
use super::emit;

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

/// Runs the command.
pub fn run(command: UsersCommand) -> anyhow::Result<()> {
    use std::fmt::Write;
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
                    // A prefix grant covers every name that starts with it.
                    let name = match acl.resource.pattern_type {
                        "prefix" => format!("{}*", acl.resource.name),
                        _ => acl.resource.name.clone(),
                    };
                    writeln!(
                        text,
                        "  {:<6} {:<28} {}",
                        acl.resource.kind,
                        name,
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
