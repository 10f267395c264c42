//! `taskstream dlq`: inspect dead letters and re-drive them to the topic they
//! came from, once the cause is fixed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use taskstream_kafka::{
    read_topic, EventProducer, InboundRecord, OutboundRecord, ProducerSettings,
};
use taskstream_services::dead_letter::headers;
use taskstream_services::dead_letter_topic;
use taskstream_services::topics::TASK_EVENTS;

use crate::config::{KafkaArgs, KafkaTimeoutArgs};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters of a topic.
    List {
        #[command(flatten)]
        target: DlqTarget,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their original topic (consumers that already
    /// handled an event recognise it and do nothing).
    Replay {
        #[command(flatten)]
        target: DlqTarget,
        /// A dead letter's position, PARTITION:OFFSET as `dlq list` shows it (repeatable).
        #[arg(
            long = "position",
            value_name = "PARTITION:OFFSET",
            required_unless_present = "all"
        )]
        positions: Vec<Position>,
        /// Every dead letter (of --group, if given).
        #[arg(long, conflicts_with = "positions")]
        all: bool,
        /// Only dead letters of this consumer group.
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DlqTarget {
    /// The consumed topic whose dead letters (`<topic>.dlq`) to use.
    #[arg(long, default_value = TASK_EVENTS)]
    pub topic: String,
    /// Where to find a running `taskstream up`'s endpoints.json when no --kafka-bootstrap is given.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub timeout: KafkaTimeoutArgs,
}

/// A record's place in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .split_once(':')
            .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
            .filter(|(p, o): &(i32, i64)| *p >= 0 && *o >= 0);
        parsed
            .map(|(partition, offset)| Self { partition, offset })
            .ok_or_else(|| format!("expected PARTITION:OFFSET such as 0:12, got {s:?}"))
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// One dead letter, as listed.
#[derive(Debug, Serialize)]
struct DeadLetter {
    position: String,
    group: Option<String>,
    class: Option<String>,
    error: Option<String>,
    attempts: Option<u32>,
    failed_at: Option<String>,
    original_topic: Option<String>,
    original_partition: Option<i32>,
    original_offset: Option<i64>,
    key: Option<String>,
    event_type: Option<String>,
    event_id: Option<String>,
    replayed_from: Option<String>,
}

impl DeadLetter {
    fn from_record(r: &InboundRecord) -> Self {
        let h = |name: &str| r.header_str(name).map(str::to_owned);
        Self {
            position: Position {
                partition: r.partition,
                offset: r.offset,
            }
            .to_string(),
            group: h(headers::CONSUMER_GROUP),
            class: h(headers::ERROR_CLASS),
            error: h(headers::ERROR_MESSAGE),
            attempts: h(headers::ATTEMPTS).and_then(|a| a.parse().ok()),
            failed_at: h(headers::FAILED_AT),
            original_topic: h(headers::ORIGINAL_TOPIC),
            original_partition: h(headers::ORIGINAL_PARTITION).and_then(|p| p.parse().ok()),
            original_offset: h(headers::ORIGINAL_OFFSET).and_then(|o| o.parse().ok()),
            key: r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            event_type: h(taskstream_domain::headers::EVENT_TYPE),
            event_id: h(taskstream_domain::headers::EVENT_ID),
            replayed_from: h(headers::REPLAYED_FROM),
        }
    }
}

fn cell(v: &Option<impl ToString>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// Runs a `dlq` subcommand.
pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { target, json } => {
            let (records, _) = read(&target).await?;
            let letters: Vec<DeadLetter> = records.iter().map(DeadLetter::from_record).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters on {}", dead_letter_topic(&target.topic));
                return Ok(());
            }
            println!(
                "{:<10} {:<12} {:<18} {:<22} {:>8}  {:<25}  ERROR",
                "POSITION", "GROUP", "CLASS", "ORIGINAL", "ATTEMPTS", "FAILED AT"
            );
            for l in &letters {
                let original = format!(
                    "{}[{}]@{}",
                    cell(&l.original_topic),
                    cell(&l.original_partition),
                    cell(&l.original_offset)
                );
                let mut error = cell(&l.error);
                if error.chars().count() > 80 {
                    error = error.chars().take(77).collect::<String>() + "...";
                }
                println!(
                    "{:<10} {:<12} {:<18} {:<22} {:>8}  {:<25}  {}",
                    l.position,
                    cell(&l.group),
                    cell(&l.class),
                    original,
                    cell(&l.attempts),
                    cell(&l.failed_at),
                    error
                );
            }
            Ok(())
        }
        DlqCommand::Replay {
            target,
            positions,
            all,
            group,
        } => {
            let (records, kafka) = read(&target).await?;
            let selected: Vec<&InboundRecord> = if all {
                records
                    .iter()
                    .filter(|r| {
                        group
                            .as_deref()
                            .is_none_or(|g| r.header_str(headers::CONSUMER_GROUP) == Some(g))
                    })
                    .collect()
            } else {
                let mut chosen = Vec::new();
                for p in &positions {
                    let found = records
                        .iter()
                        .find(|r| r.partition == p.partition && r.offset == p.offset);
                    match found {
                        Some(r) => chosen.push(r),
                        None => bail!(
                            "no dead letter at {p} on {}",
                            dead_letter_topic(&target.topic)
                        ),
                    }
                }
                chosen
            };
            let producer = EventProducer::new(&kafka, "dlq-replay", &ProducerSettings::default())
                .context("cannot create a producer for the replay")?;
            // Several groups may have dead-lettered the same record: send it once.
            let mut sent = HashSet::new();
            let mut replayed = 0;
            for record in selected {
                let original = record
                    .header_str(headers::ORIGINAL_TOPIC)
                    .unwrap_or(&target.topic)
                    .to_owned();
                let origin = (
                    original.clone(),
                    record
                        .header_str(headers::ORIGINAL_PARTITION)
                        .map(str::to_owned),
                    record
                        .header_str(headers::ORIGINAL_OFFSET)
                        .map(str::to_owned),
                );
                let position = Position {
                    partition: record.partition,
                    offset: record.offset,
                }
                .to_string();
                if !sent.insert(origin) {
                    println!("skipped  {position} (same original record already replayed)");
                    continue;
                }
                let mut hs: Vec<(&str, &[u8])> = record
                    .headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(headers::PREFIX))
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                hs.push((headers::REPLAYED_FROM, position.as_bytes()));
                let delivery = producer
                    .enqueue(OutboundRecord {
                        topic: &original,
                        key: record.key.as_deref().unwrap_or_default(),
                        payload: record.payload.as_deref().unwrap_or_default(),
                        headers: &hs,
                    })
                    .await?
                    .await
                    .with_context(|| format!("cannot replay {position} to {original}"))?;
                println!(
                    "replayed {position} -> {original}[{}]@{}",
                    delivery.partition, delivery.offset
                );
                replayed += 1;
            }
            println!("{replayed} dead letter(s) replayed");
            Ok(())
        }
    }
}

async fn read(
    target: &DlqTarget,
) -> anyhow::Result<(Vec<InboundRecord>, taskstream_kafka::KafkaConfig)> {
    let (kafka, _) = target.kafka.resolve(&target.data_dir, "dlq command")?;
    let kafka = kafka.quiet();
    target.timeout.reach(&kafka).await?;
    let topic = dead_letter_topic(&target.topic);
    let records = read_topic(&kafka, &topic, target.timeout.timeout)
        .await
        .with_context(|| format!("cannot read {topic} on {}", kafka.bootstrap_servers))?;
    Ok((records, kafka))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_print() {
        let p: Position = "2:17".parse().unwrap();
        assert_eq!((p.partition, p.offset), (2, 17));
        assert_eq!(p.to_string(), "2:17");
        for bad in ["", "2", "a:1", "1:-3", "1:2:3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
