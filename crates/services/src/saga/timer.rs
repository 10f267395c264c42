//! The saga timer: acts on deadlines that passed. Deadlines live in the
//! saga store, so a restarted process finds every one it missed.

use std::sync::Arc;

use tokio::sync::Notify;

use super::orchestrator::{Compensator, SagaBackend};
use crate::Shutdown;

/// The most due sagas handled per scan.
const SCAN_LIMIT: u32 = 100;

/// Scans the persisted deadlines every poll interval (or at once when
/// woken, after a decline), times out sagas still waiting for acceptance
/// and runs due compensations.
pub struct SagaTimer {
    store: Arc<dyn SagaBackend>,
    compensator: Arc<Compensator>,
    wake: Arc<Notify>,
}

impl SagaTimer {
    /// `wake` makes the timer scan at once.
    pub fn new(
        store: Arc<dyn SagaBackend>,
        compensator: Arc<Compensator>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            compensator,
            wake,
        }
    }

    /// Acts on every saga due now; returns how many changed.
    pub async fn scan(&self) -> Result<usize, super::orchestrator::SagaStepError> {
        let mut changed = 0;
        loop {
            let due = self
                .store
                .due_sagas(taskstream_domain::now(), SCAN_LIMIT)
                .await?;
            let mut progressed = false;
            let mut failed = None;
            for saga in &due {
                // One saga that cannot be handled now (a task under heavy
                // editing, a database hiccup) must not hold back the others.
                match self.compensator.act_on_due(saga).await {
                    Ok(true) => {
                        changed += 1;
                        progressed = true;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(
                            saga = %saga.id,
                            error = &e as &dyn std::error::Error,
                            "a due saga could not be handled; it is tried again at the next scan"
                        );
                        failed = Some(e);
                    }
                }
            }
            if let (Some(e), false) = (failed, progressed) {
                return Err(e);
            }
            // A full page whose sagas all changed may hide more behind it.
            if due.len() < SCAN_LIMIT as usize || !progressed {
                return Ok(changed);
            }
        }
    }

    /// Scans until `shutdown`.
    pub async fn run(self, mut shutdown: Shutdown) {
        let poll = self.compensator.settings().poll_interval;
        loop {
            if let Err(e) = self.scan().await {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "saga deadlines could not be handled; retrying"
                );
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(poll) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}
