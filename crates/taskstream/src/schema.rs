//! `taskstream schema check`: do the schemas in `schemas/` keep the
//! compatibility promise, against the registry or the recorded history?

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use taskstream_avro::{
    check_compatibility, subject, CompatibilityLevel, EventSchemas, RegistryClient, Schema,
};
use taskstream_services::topics::TASK_EVENTS;

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Check the event schemas in a folder: against a schema registry when
    /// one is named (under the level the registry has configured), otherwise
    /// against the versions recorded in `<dir>/history/` under --level.
    /// Exits non-zero, naming the field at fault, when a change is incompatible.
    Check {
        /// The schemas folder.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// Check against this registry instead of the recorded history.
        #[arg(long, env = "SCHEMA_REGISTRY_URL")]
        schema_registry: Option<String>,
        /// The compatibility level for the history check.
        #[arg(long, default_value = "BACKWARD")]
        level: CompatibilityLevel,
        /// The topic whose subjects are checked in the registry.
        #[arg(long, default_value = TASK_EVENTS)]
        topic: String,
    },
}

/// The recorded versions of a record, oldest first: `history/<Name>/vN.avsc`.
fn history(dir: &Path, record: &str) -> anyhow::Result<Vec<(u32, Schema)>> {
    let simple = record.rsplit('.').next().unwrap_or(record);
    let folder = dir.join("history").join(simple);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(Vec::new());
    };
    let mut versions = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(n) = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix('v')?
                .strip_suffix(".avsc")?
                .parse::<u32>()
                .ok()
        }) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let schema = Schema::parse_str(&text)
            .with_context(|| format!("{} is not a valid Avro schema", path.display()))?;
        versions.push((n, schema));
    }
    versions.sort_by_key(|(n, _)| *n);
    Ok(versions)
}

/// Runs a `schema` subcommand.
pub async fn run(command: SchemaCommand) -> anyhow::Result<()> {
    let SchemaCommand::Check {
        dir,
        schema_registry,
        level,
        topic,
    } = command;
    let schemas = EventSchemas::load_dir(&dir)?;
    let mut failures = Vec::new();
    match schema_registry {
        Some(url) => {
            let client = RegistryClient::new(&url);
            for s in schemas.iter() {
                let subject = subject(&topic, &s.record_name);
                match client
                    .check(&subject, &s.text)
                    .await
                    .with_context(|| format!("cannot check {subject}"))?
                {
                    Ok(()) => println!("ok    {} ({subject})", s.record_name),
                    Err(reasons) => {
                        println!(
                            "FAIL  {} ({subject}): {}",
                            s.record_name,
                            reasons.join("; ")
                        );
                        failures.push(s.record_name.clone());
                    }
                }
            }
        }
        None => {
            for s in schemas.iter() {
                let versions = history(&dir, &s.record_name)?;
                if versions.is_empty() {
                    println!(
                        "ok    {}: no recorded versions to compare with",
                        s.record_name
                    );
                    continue;
                }
                let earlier: Vec<Schema> =
                    versions.iter().map(|(_, schema)| schema.clone()).collect();
                match check_compatibility(level, &s.schema, &earlier) {
                    Ok(()) => {
                        let names: Vec<String> =
                            versions.iter().map(|(n, _)| format!("v{n}")).collect();
                        println!("ok    {}: {level} with {}", s.record_name, names.join(", "));
                    }
                    Err(e) => {
                        println!(
                            "FAIL  {}: {level} breaks against v{}: {}",
                            s.record_name, versions[e.against].0, e.reason
                        );
                        failures.push(s.record_name.clone());
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} schema(s) incompatible: {}",
            failures.len(),
            failures.join(", ")
        );
    }
    Ok(())
}
