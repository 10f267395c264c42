//! How far behind consumer groups were when a load ended, and when they
//! caught up — measured from outside, so that it works for any service that
//! publishes to a topic and consumes it in groups (taskstream's `up`, or the
//! chapter's FastAPI stack next to it).
//!
//! "Caught up" is exact, not "lag reached zero once": a `read_committed`
//! reader outside any group reads the records published since the load
//! began until it has as many as the load's acknowledged changes; a group
//! has caught up once its committed offsets reach the positions after those
//! records on every partition. The group's offsets are sampled while the
//! reader reads, so reading does not delay the figure.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use taskstream_kafka::{group_offsets, read_published, KafkaConfig};

/// One group at the end of a load.
#[derive(Debug, Clone, Serialize)]
pub struct GroupCatchUp {
    /// Offsets between the group's committed position and the end of the
    /// topic when the load ended (transaction markers included).
    pub lag_at_end: i64,
    /// From the end of the load until the group had consumed every record
    /// the load produced; `None` if it had not within the timeout.
    pub caught_up_after_ms: Option<u64>,
}

/// Every watched group, and the publisher, at the end of a load.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUp {
    pub topic: String,
    /// Changes the load had acknowledged: the records expected on the topic.
    pub expected: usize,
    /// Records found on the topic (`read_committed`) since the load began.
    pub published: usize,
    /// From the end of the load until the last expected record was on the
    /// topic (as seen by the reader); `None` if not all of them arrived.
    pub published_after_ms: Option<u64>,
    pub groups: BTreeMap<String, GroupCatchUp>,
}

struct Commit {
    at: Duration,
    group: String,
    committed: HashMap<i32, i64>,
}

/// Measures [`CatchUp`] for `groups` on `topic`: `start` holds the end
/// offsets from before the load, `expected` the changes it acknowledged.
/// Call it right when the load ends; waits at most `timeout`.
pub async fn measure(
    kafka: &KafkaConfig,
    topic: &str,
    groups: &[String],
    start: &HashMap<i32, i64>,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<CatchUp> {
    let ended = Instant::now();
    let request_timeout = Duration::from_secs(10);
    let mut report = BTreeMap::new();
    for group in groups {
        let offsets = group_offsets(kafka, group, topic, request_timeout)
            .await
            .with_context(|| format!("cannot read the offsets of group {group}"))?;
        report.insert(
            group.clone(),
            GroupCatchUp {
                lag_at_end: offsets.iter().map(|p| p.lag()).sum(),
                caught_up_after_ms: None,
            },
        );
    }

    let samples: Arc<Mutex<Vec<Commit>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (kafka, topic, groups) = (kafka.clone(), topic.to_owned(), groups.to_vec());
        let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && ended.elapsed() < timeout {
                for group in &groups {
                    if let Ok(offsets) = group_offsets(&kafka, group, &topic, request_timeout).await
                    {
                        let committed = offsets
                            .iter()
                            .filter_map(|p| Some((p.partition, p.committed?)))
                            .collect();
                        samples.lock().expect("samples poisoned").push(Commit {
                            at: ended.elapsed(),
                            group: group.clone(),
                            committed,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let published =
        match read_published(kafka, topic, start, expected, Duration::from_secs(30)).await {
            Ok(published) => published,
            Err(error) => {
                sampler.abort();
                return Err(error)
                    .with_context(|| format!("cannot read what was published to {topic}"));
            }
        };
    let published_after_ms =
        (published.records >= expected).then(|| ended.elapsed().as_millis() as u64);
    let caught_up = |sample: &Commit| {
        published
            .positions
            .iter()
            .filter(|(p, end)| start.get(p).is_none_or(|s| *end > s))
            .all(|(p, end)| sample.committed.get(p).is_some_and(|c| c >= end))
    };
    let settle = |report: &mut BTreeMap<String, GroupCatchUp>| {
        let samples = samples.lock().expect("samples poisoned");
        for (group, entry) in report.iter_mut() {
            if entry.caught_up_after_ms.is_none() {
                entry.caught_up_after_ms = samples
                    .iter()
                    .find(|s| &s.group == group && caught_up(s))
                    .map(|s| s.at.as_millis() as u64);
            }
        }
        report.values().all(|g| g.caught_up_after_ms.is_some())
    };
    while !settle(&mut report) && !sampler.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    settle(&mut report);
    Ok(CatchUp {
        topic: topic.to_owned(),
        expected,
        published: published.records,
        published_after_ms,
        groups: report,
    })
}

/// One look at a running service during a load.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load began.
    pub at_s: f64,
    /// `process_resident_memory_bytes` from the service's `/metrics`, if it
    /// serves it.
    pub resident_bytes: Option<i64>,
    /// Each watched group's lag (offsets) on the topic.
    pub lag: BTreeMap<String, i64>,
}

/// Samples a service's memory and its groups' lag every `every` until
/// stopped: for soak runs, where neither may grow.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `base`'s `/metrics` and, with `kafka`, the `groups`'
    /// lag on `topic`.
    pub fn start(
        http: reqwest::Client,
        base: &str,
        watch: Option<(KafkaConfig, String, Vec<String>)>,
        every: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let metrics_url = format!("{base}/metrics");
        let task = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut next = started;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        next += every;
                        let resident_bytes = resident_bytes(&http, &metrics_url).await;
                        let mut lag = BTreeMap::new();
                        if let Some((kafka, topic, groups)) = &watch {
                            for group in groups {
                                if let Ok(offsets) =
                                    group_offsets(kafka, group, topic, Duration::from_secs(5)).await
                                {
                                    lag.insert(
                                        group.clone(),
                                        offsets.iter().map(|p| p.lag()).sum(),
                                    );
                                }
                            }
                        }
                        samples.push(Sample {
                            at_s: started.elapsed().as_secs_f64(),
                            resident_bytes,
                            lag,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                samples
            })
        };
        Self { stop, task }
    }

    /// Stops sampling and returns the samples, oldest first.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn resident_bytes(http: &reqwest::Client, url: &str) -> Option<i64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}
