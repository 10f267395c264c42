//! A bound on shutdown that holds whatever the components are doing.
//!
//! The first SIGTERM or Ctrl-C asks a long-running command to stop
//! gracefully (see [`shutdown_signal`]). Graceful stops can
//! block where no timeout reaches — a Kafka client closing against a broker
//! that is gone holds a runtime thread — so this guard watches on a thread
//! and a runtime of its own:
//!
//! - a command that never asked for graceful shutdown (`lag`, `dlq list`…)
//!   ends at once on the first signal, as if no handler were installed;
//! - a second signal ends the process at once;
//! - a graceful shutdown still running [`SHUTDOWN_BOUND`] after the first
//!   signal is cut short.
//!
//! Ending early loses nothing acknowledged: unpublished events stay in the
//! outbox, and a consumer's uncommitted records are delivered again and
//! recognised by their event ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest a process takes to end after the first SIGTERM or Ctrl-C.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// Set once the command handles the first signal itself.
static GRACEFUL: AtomicBool = AtomicBool::new(false);

/// Says that this process stops gracefully on the first signal (within
/// [`SHUTDOWN_BOUND`]) instead of ending at once.
pub fn handle_signals_gracefully() {
    GRACEFUL.store(true, Ordering::Release);
}

/// Resolves on Ctrl-C or SIGTERM. From the first call on, the process stops
/// gracefully on the first signal, within
/// [`SHUTDOWN_BOUND`]; a second signal ends it at once.
pub async fn shutdown_signal() {
    handle_signals_gracefully();
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// The exit status for a process ended by a signal, as shells report it.
fn status_for(signal: Signal) -> i32 {
    128 + match signal {
        Signal::Interrupt => 2,
        Signal::Terminate => 15,
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Interrupt,
    Terminate,
}

/// Starts the guard's thread. Call once, first thing in `main`.
pub fn install() {
    let started = std::thread::Builder::new()
        .name("shutdown-guard".into())
        .spawn(|| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("warning: no shutdown guard: {e}");
                    return;
                }
            };
            runtime.block_on(guard());
        });
    if let Err(e) = started {
        eprintln!("warning: no shutdown guard: {e}");
    }
}

#[cfg(unix)]
async fn next_signal(
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> Signal {
    tokio::select! {
        _ = interrupt.recv() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    }
}

#[cfg(unix)]
async fn guard() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let first = next_signal(&mut interrupt, &mut terminate).await;
    if !GRACEFUL.load(Ordering::Acquire) {
        std::process::exit(status_for(first));
    }
    tokio::select! {
        second = next_signal(&mut interrupt, &mut terminate) => {
            tracing::warn!("second signal: exiting at once");
            std::process::exit(status_for(second));
        }
        _ = tokio::time::sleep(SHUTDOWN_BOUND) => {
            tracing::error!(
                bound_seconds = SHUTDOWN_BOUND.as_secs(),
                "graceful shutdown did not finish in time; exiting (unpublished events stay in the outbox)"
            );
            std::process::exit(status_for(first));
        }
    }
}

#[cfg(not(unix))]
async fn guard() {}
