//! `taskstream schema check`: do the schemas in `schemas/` keep the
//! compatibility promise, against the registry or the recorded history?

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use taskstream_avro::{
    check_compatibility, subject, Checked, CompatibilityLevel, EventSchemas, RegistryClient, Schema,
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
    let folder = dir.join("history").join(simple_name(record));
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

/// `Name` of `namespace.Name`.
fn simple_name(record: &str) -> &str {
    record.rsplit('.').next().unwrap_or(record)
}

/// A record schema's full name (`namespace.Name`).
fn full_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(record) => Some(record.name.fullname(None)),
        _ => None,
    }
}

/// The records with a folder of recorded versions in `<dir>/history/`.
fn recorded_records(dir: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir.join("history")) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
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
                    Ok(Checked::Compatible) => println!("ok    {} ({subject})", s.record_name),
                    Ok(Checked::NewSubject) => println!(
                        "new   {} ({subject}): the registry has no version of it, nothing to \
                         compare with (a new event type; if it is a renamed one, its readers \
                         will not find it)",
                        s.record_name
                    ),
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
            // An event type recorded in history/ must still have a schema:
            // its records stay on the topic, and a reader finds the
            // writer's schema by name.
            for recorded in recorded_records(&dir)? {
                if !schemas
                    .iter()
                    .any(|s| simple_name(&s.record_name) == recorded)
                {
                    println!(
                        "FAIL  {recorded}: recorded in history/, but no schema in {} declares it; \
                         records of a removed or renamed event type can no longer be read",
                        dir.display()
                    );
                    failures.push(recorded);
                }
            }
            for s in schemas.iter() {
                let versions = history(&dir, &s.record_name)?;
                if let Some((n, latest)) = versions.last() {
                    let recorded = full_name(latest);
                    if recorded.as_deref() != Some(s.record_name.as_str()) {
                        println!(
                            "FAIL  {}: v{n} is {}; a reader finds the writer's schema by its \
                             full name, so a renamed record or namespace is a new event type",
                            s.record_name,
                            recorded.as_deref().unwrap_or("not a record"),
                        );
                        failures.push(s.record_name.clone());
                        continue;
                    }
                }
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
