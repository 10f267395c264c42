//! `taskstream lag`: consumer lag per partition, in events and in seconds,
//! with a Burrow-style verdict per partition and per group; with a
//! PostgreSQL `--database-url`, also the outbox's logical replication slots
//! (Debezium's): the WAL each keeps and how far its reader is behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use taskstream_kafka::{group_offsets, list_groups, record_timestamps, KafkaConfig};

use taskstream_services::agent::{AGENT_GROUP, REQUESTS_GROUP};
use taskstream_services::processor::PROCESSOR_GROUP;
use taskstream_services::saga::SAGA_GROUP;
use taskstream_services::topics::{TASK_EVENTS, TASK_SAGAS, TASK_TRIAGE_REQUESTS};
use taskstream_services::{AUDITOR_GROUP, NOTIFIER_GROUP};
use taskstream_store::ReplicationSlot;

use super::lag_rules::{GroupReport, LagTracker, PartitionStatus};
use crate::config::{KafkaArgs, KafkaTimeoutArgs};

#[derive(Debug, Args)]
pub struct LagArgs {
    /// A consumer group to show (repeatable); default: the groups `up` runs
    /// on --topic that have committed offsets on it (on task-events: auditor,
    /// notifier, saga, triage-agent, workload-processor; on task-sagas:
    /// notifier; on task-triage-requests: triage-agent-requests).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Every consumer group on the cluster (needs ListGroups; the dev broker lacks it).
    #[arg(long, conflicts_with = "groups")]
    pub all_groups: bool,
    /// The topic whose partitions are evaluated.
    #[arg(long, default_value = TASK_EVENTS)]
    pub topic: String,
    /// Observations in the evaluation window.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..=100))]
    pub samples: u16,
    /// Seconds between observations.
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print JSON instead of a table (one document per refresh with --watch).
    #[arg(long)]
    pub json: bool,
    /// Keep observing and refresh the output after every observation.
    #[arg(long)]
    pub watch: bool,
    /// The PostgreSQL database holding the outbox: also report its logical
    /// replication slots (Debezium reads the outbox through one). A SQLite
    /// URL has none. Read-only: nothing is migrated or changed.
    #[arg(long, env = "TASKSTREAM_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<taskstream_store::Database>,
    /// Where to find a running `taskstream up`'s endpoints.json when no --kafka-bootstrap is given.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub timeout: KafkaTimeoutArgs,
}

fn parse_interval(raw: &str) -> Result<Duration, String> {
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.05..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected seconds between 0.05 and 3600, got {raw:?}"
        )),
    }
}

fn now_ms() -> i64 {
    taskstream_domain::now().timestamp_millis()
}

/// Runs the command.
pub async fn run(args: LagArgs) -> anyhow::Result<()> {
    let (kafka, _) = args.kafka.resolve(&args.data_dir, "lag command")?;
    let kafka = kafka.quiet();
    let timeout = args.timeout.timeout;
    args.timeout.reach(&kafka).await?;
    let by_default = !args.all_groups && args.groups.is_empty();
    let groups = if args.all_groups {
        list_groups(&kafka, timeout).await.context(
            "cannot list consumer groups (the dev broker cannot; name them with --group)",
        )?
    } else if by_default {
        let groups = default_groups(&args.topic);
        if groups.is_empty() {
            anyhow::bail!(
                "no taskstream group reads topic {}; name the groups with --group",
                args.topic
            );
        }
        groups.iter().map(|g| (*g).to_owned()).collect()
    } else {
        args.groups.clone()
    };
    let mut tracker = LagTracker::new(args.samples as usize);
    let mut observations = 0usize;
    loop {
        // The groups the cluster knows now: a default group it does not know
        // and that never committed is one this deployment does not run.
        let known = match by_default {
            true => list_groups(&kafka, timeout).await.ok(),
            false => None,
        };
        for group in &groups {
            let offsets = group_offsets(&kafka, group, &args.topic, timeout)
                .await
                .with_context(|| {
                    format!(
                        "cannot read offsets of group {group} on {}",
                        kafka.bootstrap_servers
                    )
                })?;
            // A group `up` may run but this deployment does not (`--no-saga`,
            // `--no-agent`) has nothing to report, rather than a lag. One the
            // cluster knows (its members are up, but it never committed: it
            // may fail on its first event) is shown, as are the auditor and
            // the notifier, which every deployment runs.
            if by_default
                && !ALWAYS_SHOWN.contains(&group.as_str())
                && offsets.iter().all(|p| p.committed.is_none())
                && known.as_ref().is_some_and(|k| !k.contains(group))
            {
                continue;
            }
            tracker.observe(group, &args.topic, &offsets, now_ms());
        }
        observations += 1;
        let window_full = observations >= args.samples as usize;
        if args.watch && observations >= 2 || window_full {
            let reports = report(&tracker, &kafka, &args.topic, timeout).await?;
            let slots = match &args.database_url {
                Some(taskstream_store::Database::Postgres(url)) => {
                    taskstream_store::replication_slots_at(url)
                        .await
                        .context("cannot read the database's replication slots")?
                }
                _ => Vec::new(),
            };
            if !emit(&render(&reports, &slots, args.json, args.watch)?)?
                || (window_full && !args.watch)
            {
                return Ok(());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = crate::shutdown_guard::shutdown_signal() => return Ok(()),
        }
    }
}

/// Default groups shown even before they commit anything.
const ALWAYS_SHOWN: [&str; 2] = [AUDITOR_GROUP, NOTIFIER_GROUP];

/// The consumer groups `taskstream up` runs on `topic`: what `lag` shows
/// when no group is named.
fn default_groups(topic: &str) -> &'static [&'static str] {
    match topic {
        TASK_EVENTS => &[
            AUDITOR_GROUP,
            NOTIFIER_GROUP,
            SAGA_GROUP,
            AGENT_GROUP,
            PROCESSOR_GROUP,
        ],
        TASK_SAGAS => &[NOTIFIER_GROUP],
        TASK_TRIAGE_REQUESTS => &[REQUESTS_GROUP],
        _ => &[],
    }
}

async fn report(
    tracker: &LagTracker,
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<GroupReport>> {
    // The age of the oldest unconsumed record of each lagging partition.
    let first = tracker.report(now_ms(), |_, _, _| None);
    let mut ages: HashMap<(String, i32), f64> = HashMap::new();
    for group in &first {
        let positions: Vec<(i32, i64)> = group
            .partitions
            .iter()
            .filter(|p| p.lag > 0)
            // Below the log's start nothing is left to read: the oldest
            // record the group can still consume is the first one.
            .map(|p| {
                (
                    p.partition,
                    p.committed_offset.unwrap_or(0).max(p.log_start_offset),
                )
            })
            .collect();
        let stamps = record_timestamps(
            kafka,
            topic,
            &positions,
            timeout.min(Duration::from_secs(3)),
        )
        .await
        .context("cannot read the oldest unconsumed records")?;
        let now = now_ms();
        for (partition, ts) in stamps {
            ages.insert(
                (group.group.clone(), partition),
                ((now - ts).max(0)) as f64 / 1000.0,
            );
        }
    }
    Ok(tracker.report(now_ms(), |group, _, partition| {
        ages.get(&(group.to_owned(), partition)).copied()
    }))
}

fn seconds(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))
}

/// Bytes the way people read them: `512 B`, `3.2 MiB`.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A slot's verdict: `LOST` once the server dropped WAL it needed,
/// `STALLED` with no reader connected, else `OK`.
fn slot_status(slot: &ReplicationSlot) -> &'static str {
    if slot.wal_status.as_deref() == Some("lost") {
        "LOST"
    } else if slot.is_stalled() {
        "STALLED"
    } else {
        "OK"
    }
}

/// Renders one refresh of the output.
fn render(
    reports: &[GroupReport],
    slots: &[ReplicationSlot],
    json: bool,
    watch: bool,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    if json {
        let slots: Vec<_> = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "slot": s.name,
                    "plugin": s.plugin,
                    "active": s.active,
                    "wal_status": s.wal_status,
                    "retained_wal_bytes": s.retained_bytes,
                    "unconfirmed_wal_bytes": s.unconfirmed_bytes,
                    "status": slot_status(s),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "observed_at": taskstream_domain::now(),
            "groups": reports,
            "replication_slots": slots,
        });
        let text = if watch {
            serde_json::to_string(&doc)?
        } else {
            serde_json::to_string_pretty(&doc)?
        };
        writeln!(out, "{text}")?;
        return Ok(out);
    }
    if watch {
        // Clear the screen and go home, like `watch`.
        out.push_str("\x1b[2J\x1b[H");
    }
    writeln!(
        out,
        "{:<20} {:<6} {:>10} {:>12}",
        "GROUP", "STATUS", "LAG", "LAG (s)"
    )?;
    for g in reports {
        writeln!(
            out,
            "{:<20} {:<6} {:>10} {:>12}",
            g.group,
            g.status.to_string(),
            g.total_lag,
            seconds(g.max_lag_seconds)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:<16} {:>9} {:>10} {:>10} {:>8} {:>9}  STATUS",
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "LOG END", "LAG", "LAG (s)"
    )?;
    for g in reports {
        for p in &g.partitions {
            writeln!(
                out,
                "{:<20} {:<16} {:>9} {:>10} {:>10} {:>8} {:>9}  {}",
                g.group,
                p.topic,
                p.partition,
                p.committed_offset
                    .map_or_else(|| "-".to_owned(), |o| o.to_string()),
                p.log_end_offset,
                p.lag,
                seconds(p.lag_seconds),
                p.status
            )?;
        }
    }
    // Events a group lost to deletion, said in words under the table.
    for g in reports {
        for p in g.partitions.iter().filter(|p| p.skipped_events > 0) {
            let range = p
                .skipped_offsets
                .map_or_else(String::new, |[from, to]| format!(" (offsets {from}..{to})"));
            let what = match p.status {
                PartitionStatus::Lost => "deleted before the group read them",
                _ => "skipped by the consumer: deleted before it read them",
            };
            writeln!(
                out,
                "{} {} {}[{}]: {} events{range} {what}",
                p.status, g.group, p.topic, p.partition, p.skipped_events
            )?;
        }
    }
    if !slots.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<24} {:<8} {:>14} {:>16}  STATUS",
            "REPLICATION SLOT", "READER", "RETAINED WAL", "UNCONFIRMED WAL"
        )?;
        for s in slots {
            writeln!(
                out,
                "{:<24} {:<8} {:>14} {:>16}  {}",
                s.name,
                if s.active { "yes" } else { "none" },
                bytes(s.retained_bytes),
                bytes(s.unconfirmed_bytes),
                slot_status(s)
            )?;
        }
        for s in slots.iter().filter(|s| s.is_stalled()) {
            writeln!(
                out,
                "{} {}: {}; the database keeps {} of WAL for it until it is read or dropped",
                slot_status(s),
                s.name,
                if s.wal_status.as_deref() == Some("lost") {
                    "WAL it needed is gone (max_slot_wal_keep_size): recreate the connector's slot"
                } else {
                    "no reader is connected (is the Connect worker or connector down?)"
                },
                bytes(s.retained_bytes)
            )?;
        }
    }
    Ok(out)
}

/// Writes to stdout; `false` when the reader has gone away (`| head`).
fn emit(text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_lag_watches_every_group_up_runs_on_the_topic() {
        assert_eq!(
            default_groups(TASK_EVENTS),
            [
                "auditor",
                "notifier",
                "saga",
                "triage-agent",
                "workload-processor"
            ]
        );
        assert_eq!(default_groups(TASK_SAGAS), ["notifier"]);
        assert_eq!(
            default_groups(TASK_TRIAGE_REQUESTS),
            ["triage-agent-requests"]
        );
        assert!(default_groups("assignee-workload").is_empty());
        // The operator's user may read the committed offsets of each.
        let ops = crate::ops::access::components()
            .into_iter()
            .find(|c| c.name == "ops")
            .unwrap();
        for group in default_groups(TASK_EVENTS)
            .iter()
            .chain(default_groups(TASK_SAGAS))
            .chain(default_groups(TASK_TRIAGE_REQUESTS))
        {
            assert!(
                ops.acls
                    .iter()
                    .any(|a| a.resource.kind == "group" && a.resource.name == *group),
                "{group}"
            );
        }
        // And read the topics they are on (the oldest unconsumed record's time).
        for topic in [TASK_EVENTS, TASK_SAGAS, TASK_TRIAGE_REQUESTS] {
            assert!(
                ops.acls.iter().any(|a| a.resource.kind == "topic"
                    && a.resource.name == topic
                    && a.operations.contains(&"Read")),
                "{topic}"
            );
        }
    }

    fn slot(name: &str, active: bool, wal_status: &str, retained: i64) -> ReplicationSlot {
        ReplicationSlot {
            name: name.into(),
            plugin: Some("pgoutput".into()),
            active,
            retained_bytes: retained,
            unconfirmed_bytes: retained / 2,
            wal_status: Some(wal_status.into()),
        }
    }

    #[test]
    fn a_slot_without_a_reader_is_called_stalled_with_the_wal_it_keeps() {
        let slots = [
            slot(
                "taskstream_outbox",
                false,
                "extended",
                3 * 1024 * 1024 * 1024,
            ),
            slot("healthy", true, "reserved", 2048),
        ];
        let text = render(&[], &slots, false, false).unwrap();
        assert!(text.contains("REPLICATION SLOT"), "{text}");
        assert!(
            text.contains("STALLED taskstream_outbox: no reader is connected")
                && text.contains("keeps 3.0 GiB of WAL"),
            "{text}"
        );
        assert!(!text.contains("STALLED healthy"), "{text}");

        let lost = [slot("gone", true, "lost", 10)];
        assert!(render(&[], &lost, false, false)
            .unwrap()
            .contains("LOST gone: WAL it needed is gone"));

        let json: serde_json::Value =
            serde_json::from_str(&render(&[], &slots, true, false).unwrap()).unwrap();
        assert_eq!(json["replication_slots"][0]["status"], "STALLED");
        assert_eq!(json["replication_slots"][1]["retained_wal_bytes"], 2048);
    }

    #[test]
    fn without_slots_the_report_has_no_slot_table() {
        assert!(!render(&[], &[], false, false)
            .unwrap()
            .contains("REPLICATION SLOT"));
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
