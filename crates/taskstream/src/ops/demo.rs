//! `taskstream demo coupling`: the same "task created → notify, audit" flow
//! built two ways, measured side by side while the notification service is
//! slow and fails some of its calls.
//!
//! - **Direct calls.** A task service stores the task, then calls the
//!   notification service and the audit service over HTTP before it answers,
//!   as a request-response design does. The creator waits for the slowest
//!   dependency, and a failing dependency fails the creation — after the task
//!   was stored, so the caller is told "failed" about a task that exists.
//! - **Events.** taskstream itself (in this process, on a scratch data
//!   directory): the API stores the task and its event in one transaction and
//!   answers; the notifier and the auditor consume the event on their own
//!   time, and the notifier retries the failing notification service until it
//!   takes the call.
//!
//! The notification service is the same fault-injecting HTTP server for both:
//! it sleeps `--notify-delay-ms` per call and answers `503` to a fixed,
//! pseudo-random share (`--notify-failure-rate`) of calls, the same calls in
//! every run.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use taskstream_store::AuditStore;

use crate::config::parse_millis;
use crate::ops::bench::{plot_latency_cdf, Percentiles};
use crate::system::{RunningSystem, SystemConfig};

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Create tasks through direct HTTP calls and through events, with a slow,
    /// failing notification service, and compare what the creator sees.
    Coupling(CouplingArgs),
}

#[derive(Debug, Args)]
pub struct CouplingArgs {
    /// Tasks to create each way.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub requests: u64,
    /// Creations in flight at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub concurrency: u64,
    /// How long the notification service takes per call, in milliseconds.
    #[arg(long, default_value = "200", value_parser = parse_millis)]
    pub notify_delay_ms: Duration,
    /// The share of calls the notification service fails with 503, from 0 to 1.
    #[arg(long, default_value_t = 0.2, value_parser = parse_share)]
    pub notify_failure_rate: f64,
    /// How long the direct caller waits for a dependency before it gives up, in milliseconds.
    #[arg(long, default_value = "2000", value_parser = parse_millis)]
    pub call_timeout_ms: Duration,
    /// How long to wait for the event-driven side to notify and audit every
    /// task after the last creation, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub settle_timeout: u64,
    /// Also write the creator's latency distributions to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_share(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("expected a share between 0 and 1, got {raw:?}")),
    }
}

/// What one way of building the flow gave its callers.
#[derive(Debug, Serialize)]
pub struct Way {
    pub name: &'static str,
    /// The creator's latency over the creations it was told succeeded.
    pub creator_latency: Percentiles,
    /// Creations the caller was told failed.
    pub creator_failed: u64,
    /// Tasks that exist afterwards, whatever the caller was told.
    pub stored: u64,
    /// Tasks whose notification reached the notification service.
    pub notified: u64,
    /// Tasks the audit service recorded.
    pub audited: u64,
    /// Seconds from the last creation until every stored task was notified
    /// and audited (never, for tasks the direct way dropped).
    pub settled_after_s: Option<f64>,
    #[serde(skip)]
    latencies_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: u64,
    pub concurrency: u64,
    pub notify_delay_ms: u64,
    pub notify_failure_rate: f64,
    pub direct: Way,
    pub events: Way,
}

/// The notification service both ways call: slow, and failing a fixed share of calls.
struct NotificationService {
    delay: Duration,
    /// Calls out of every 10,000 that fail.
    failures_per_10k: u64,
    calls: AtomicU64,
    /// The idempotency keys of the notifications it accepted.
    accepted: Mutex<HashSet<String>>,
}

impl NotificationService {
    /// Whether call number `n` fails: a fixed pseudo-random choice
    /// (splitmix64), so every run fails the same calls.
    fn fails(&self, n: u64) -> bool {
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 10_000 < self.failures_per_10k
    }

    fn accepted(&self) -> u64 {
        self.accepted.lock().expect("accepted keys poisoned").len() as u64
    }
}

async fn notify(State(service): State<Arc<NotificationService>>, headers: HeaderMap) -> StatusCode {
    let n = service.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(service.delay).await;
    if service.fails(n) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    service
        .accepted
        .lock()
        .expect("accepted keys poisoned")
        .insert(key.to_owned());
    StatusCode::NO_CONTENT
}

/// The task service of the direct way: store, then call each dependency in turn.
struct DirectTaskService {
    http: reqwest::Client,
    notify_url: String,
    stored: AtomicU64,
    audited: AtomicU64,
}

async fn create_directly(State(service): State<Arc<DirectTaskService>>) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    // The task is stored first, as the Task API's handler would.
    service.stored.fetch_add(1, Ordering::Relaxed);
    let notified = service
        .http
        .post(&service.notify_url)
        .header("idempotency-key", &id)
        .json(&json!({ "task_id": id, "kind": "assigned" }))
        .send()
        .await;
    match notified {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            return upstream_failed(&format!("the notification service answered {}", r.status()))
        }
        Err(e) if e.is_timeout() => return upstream_failed("the notification service timed out"),
        Err(_) => return upstream_failed("the notification service is unreachable"),
    }
    // The audit service is in-process and never fails here: the direct
    // way's trouble comes from the notification service alone.
    service.audited.fetch_add(1, Ordering::Relaxed);
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

fn upstream_failed(detail: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [("content-type", "application/problem+json")],
        Json(json!({ "type": "about:blank", "title": "Bad Gateway", "status": 502, "detail": detail })),
    )
        .into_response()
}

async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

struct Load {
    latency: Histogram<u64>,
    latencies_ms: Vec<f64>,
    failed: u64,
}

/// Creates `total` tasks at `url`, `concurrency` at a time.
async fn create_tasks(url: &str, total: u64, concurrency: u64) -> Load {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client builds");
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let (http, next, url) = (http.clone(), Arc::clone(&next), url.to_owned());
        tokio::spawn(async move {
            let mut done = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                if i >= total {
                    break;
                }
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .json(&json!({ "title": format!("demo task {i}"), "assignee": "ana" }))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => done.push(sent.elapsed()),
                    _ => failed += 1,
                }
            }
            (done, failed)
        })
    });
    let mut load = Load {
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        latencies_ms: Vec::new(),
        failed: 0,
    };
    for worker in futures::future::join_all(workers).await {
        let (done, failed) = worker.expect("a load worker panicked");
        for elapsed in done {
            let _ = load.latency.record((elapsed.as_micros() as u64).max(1));
            load.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
        }
        load.failed += failed;
    }
    load
}

/// Starts the fault-injecting notification service; returns it and its URL.
async fn start_notification_service(
    args: &CouplingArgs,
) -> anyhow::Result<(Arc<NotificationService>, String)> {
    let service = Arc::new(NotificationService {
        delay: args.notify_delay_ms,
        failures_per_10k: (args.notify_failure_rate * 10_000.0).round() as u64,
        calls: AtomicU64::new(0),
        accepted: Mutex::new(HashSet::new()),
    });
    let router = Router::new()
        .route("/notify", post(notify))
        .with_state(Arc::clone(&service));
    let addr = serve(router).await?;
    Ok((service, format!("http://{addr}/notify")))
}

async fn direct_way(args: &CouplingArgs) -> anyhow::Result<Way> {
    let (notifications, notify_url) = start_notification_service(args).await?;
    let service = Arc::new(DirectTaskService {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(args.call_timeout_ms)
            .build()?,
        notify_url,
        stored: AtomicU64::new(0),
        audited: AtomicU64::new(0),
    });
    let addr = serve(
        Router::new()
            .route("/tasks", post(create_directly))
            .with_state(Arc::clone(&service)),
    )
    .await?;
    let load = create_tasks(
        &format!("http://{addr}/tasks"),
        args.requests,
        args.concurrency,
    )
    .await;
    let (stored, audited, notified) = (
        service.stored.load(Ordering::Relaxed),
        service.audited.load(Ordering::Relaxed),
        notifications.accepted(),
    );
    Ok(Way {
        name: "direct HTTP calls",
        creator_latency: Percentiles::of(&load.latency),
        creator_failed: load.failed,
        stored,
        notified,
        audited,
        // Nothing retries a dropped notification: what is missing now stays missing.
        settled_after_s: (notified == stored && audited == stored).then_some(0.0),
        latencies_ms: load.latencies_ms,
    })
}

async fn event_way(args: &CouplingArgs) -> anyhow::Result<Way> {
    let (notifications, notify_url) = start_notification_service(args).await?;
    let dir = tempfile::tempdir()?;
    let mut config = SystemConfig::new("127.0.0.1:0".parse()?, dir.path());
    config.notifier_webhook = Some(notify_url);
    config.processor = None;
    config.agent = None;
    let system = RunningSystem::start(config)
        .await
        .context("cannot start taskstream for the event-driven side")?;
    let load = create_tasks(
        &format!("http://{}/tasks", system.http_addr()),
        args.requests,
        args.concurrency,
    )
    .await;
    let finished = Instant::now();
    let stored = args.requests - load.failed;
    let deadline = finished + Duration::from_secs(args.settle_timeout);
    let mut settled_after_s = None;
    let mut audited;
    loop {
        audited = system
            .audit_store()
            .audit_entries(None, u32::MAX)
            .await?
            .len() as u64;
        if audited >= stored && notifications.accepted() >= stored {
            settled_after_s = Some(finished.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notified = notifications.accepted();
    system.shutdown().await;
    Ok(Way {
        name: "events (taskstream)",
        creator_latency: Percentiles::of(&load.latency),
        creator_failed: load.failed,
        stored,
        notified,
        audited,
        settled_after_s,
        latencies_ms: load.latencies_ms,
    })
}

/// Runs `taskstream demo …`.
pub async fn run(command: DemoCommand) -> anyhow::Result<()> {
    match command {
        DemoCommand::Coupling(args) => coupling(args).await,
    }
}

async fn coupling(args: CouplingArgs) -> anyhow::Result<()> {
    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    say(&format!(
        "creating {} tasks, {} at a time; the notification service takes {} ms per call and fails {:.0}% of calls",
        args.requests,
        args.concurrency,
        args.notify_delay_ms.as_millis(),
        args.notify_failure_rate * 100.0
    ));
    say("  direct HTTP calls ...");
    let direct = direct_way(&args).await?;
    say("  events through taskstream (waiting for every notification) ...");
    let events = event_way(&args).await?;
    if events.settled_after_s.is_none() {
        bail!(
            "the event-driven side did not notify and audit all {} tasks within {} s \
             ({} notified, {} audited); try a larger --settle-timeout",
            events.stored,
            args.settle_timeout,
            events.notified,
            events.audited
        );
    }
    if let Some(path) = &args.plot {
        plot_latency_cdf(
            path,
            "Task creation latency seen by the creator",
            "creations answered within (%)",
            &[
                (direct.name.to_owned(), direct.latencies_ms.clone()),
                (events.name.to_owned(), events.latencies_ms.clone()),
            ],
        )
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    let report = Report {
        requests: args.requests,
        concurrency: args.concurrency,
        notify_delay_ms: args.notify_delay_ms.as_millis() as u64,
        notify_failure_rate: args.notify_failure_rate,
        direct,
        events,
    };
    if args.json {
        return crate::ops::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    }
    crate::ops::emit(&table(&report))?;
    if let Some(path) = &args.plot {
        say(&format!("plot: {}", path.display()));
    }
    Ok(())
}

fn table(report: &Report) -> String {
    let n = report.requests;
    let mut out = format!(
        "{:<22} {:>9} {:>9} {:>9} {:>13} {:>9} {:>9} {:>9}\n",
        "", "p50 ms", "p99 ms", "max ms", "told failed", "stored", "notified", "audited"
    );
    for way in [&report.direct, &report.events] {
        let l = &way.creator_latency;
        let failed = format!(
            "{} ({:.0}%)",
            way.creator_failed,
            way.creator_failed as f64 * 100.0 / n as f64
        );
        out.push_str(&format!(
            "{:<22} {:>9.1} {:>9.1} {:>9.1} {:>13} {:>9} {:>9} {:>9}\n",
            way.name, l.p50_ms, l.p99_ms, l.max_ms, failed, way.stored, way.notified, way.audited
        ));
    }
    let d = &report.direct;
    out.push('\n');
    out.push_str(&format!(
        "direct: {} of {} tasks were stored but their creator was told the creation failed; {} stored tasks were never notified or audited.\n",
        d.stored - (n - d.creator_failed),
        n,
        d.stored - d.notified.min(d.audited),
    ));
    if let Some(s) = report.events.settled_after_s {
        out.push_str(&format!(
            "events: every task was notified and audited {s:.1} s after the last creation; the notifier retried the failed calls.\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_share_is_what_was_asked_for_and_the_same_every_run() {
        let service = NotificationService {
            delay: Duration::ZERO,
            failures_per_10k: 2_000,
            calls: AtomicU64::new(0),
            accepted: Mutex::new(HashSet::new()),
        };
        let failed = (0..100_000).filter(|n| service.fails(*n)).count();
        assert!(
            (19_000..21_000).contains(&failed),
            "{failed} of 100000 failed"
        );
        let first: Vec<bool> = (0..64).map(|n| service.fails(n)).collect();
        let again: Vec<bool> = (0..64).map(|n| service.fails(n)).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn a_failure_rate_outside_zero_to_one_is_refused() {
        assert!(parse_share("0.25").is_ok());
        assert!(parse_share("0").is_ok() && parse_share("1").is_ok());
        for bad in ["-0.1", "1.5", "half", ""] {
            assert!(
                parse_share(bad).unwrap_or_else(|e| {
                    assert!(e.contains("between 0 and 1"));
                    -1.0
                }) < 0.0
            );
        }
    }
}
