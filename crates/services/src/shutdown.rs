//! A shutdown signal shared by every task of a process.

use tokio::sync::watch;

/// Fires the shutdown signal.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Observes the shutdown signal; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A connected trigger and signal.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means every trigger is gone: nothing can stop us any more
        // than it already has, so treat it as shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    /// Begins shutdown; every [`Shutdown::wait`] resolves.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}
