//! `taskstream lag`: consumer lag per partition, in events and in seconds,
//! with a Burrow-style verdict per partition and per group.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use taskstream_kafka::{group_offsets, list_groups, record_timestamps, KafkaConfig};

use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{AUDITOR_GROUP, NOTIFIER_GROUP};

use super::lag_rules::{GroupReport, LagTracker, PartitionStatus};
use crate::config::{KafkaArgs, KafkaTimeoutArgs};

#[derive(Debug, Args)]
pub struct LagArgs {
    /// A consumer group to show (repeatable); default: auditor and notifier.
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
    let groups = if args.all_groups {
        list_groups(&kafka, timeout).await.context(
            "cannot list consumer groups (the dev broker cannot; name them with --group)",
        )?
    } else if args.groups.is_empty() {
        vec![AUDITOR_GROUP.to_owned(), NOTIFIER_GROUP.to_owned()]
    } else {
        args.groups.clone()
    };
    let mut tracker = LagTracker::new(args.samples as usize);
    let mut observations = 0usize;
    loop {
        for group in &groups {
            let offsets = group_offsets(&kafka, group, &args.topic, timeout)
                .await
                .with_context(|| {
                    format!(
                        "cannot read offsets of group {group} on {}",
                        kafka.bootstrap_servers
                    )
                })?;
            tracker.observe(group, &args.topic, &offsets, now_ms());
        }
        observations += 1;
        let window_full = observations >= args.samples as usize;
        if args.watch && observations >= 2 || window_full {
            let reports = report(&tracker, &kafka, &args.topic, timeout).await?;
            if !emit(&render(&reports, args.json, args.watch)?)? || (window_full && !args.watch) {
                return Ok(());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = crate::shutdown_guard::shutdown_signal() => return Ok(()),
        }
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

/// Renders one refresh of the output.
fn render(reports: &[GroupReport], json: bool, watch: bool) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    if json {
        let doc = serde_json::json!({ "observed_at": taskstream_domain::now(), "groups": reports });
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
