//! The components as a library: a builder per component (the Task API's
//! HTTP port, the relay, the auditor and the notifier, the schema registry,
//! the dev broker) returning a running [`Component`] that knows where it
//! listens, what its readiness depends on, and how to stop. A process's
//! `/readyz` list is assembled from its components' checks
//! ([`readiness::assemble`]). `taskstream up`, the single-component
//! subcommands, the benchmark and the tests all start components through
//! these.
//!
//! Every component runs as a tokio task with its own shutdown trigger, so a
//! process (or a test) can run any subset of them and stop one without the
//! others.

mod agent;
mod api;
mod broker;
mod capture;
mod consumer;
mod http;
mod processor;
pub mod readiness;
mod registry;
mod relay;
mod saga;
mod store;

use std::sync::Arc;
use std::time::Duration;

use taskstream_api::ReadinessCheck;
use taskstream_services::{Shutdown, ShutdownTrigger};
use tokio::task::JoinHandle;

pub use agent::{agent, agent_responder, AgentSettings, AutoAccept, OutboxWrites};
pub use api::{api_checks, register_schemas, task_api, task_api_with_sagas};
pub use broker::{
    dev_broker, parse_broker_flush, DevBrokerKind, EmbeddedBroker, EmbeddedBrokerSettings,
    BROKER_DIR,
};
pub use capture::{capture_confirmation, CaptureSettings};
pub use consumer::{auditor, notifier, ConsumerOptions, NotifierSink};
pub use http::{http, serve};
pub use processor::processor;
pub use readiness::{
    Checks, KafkaCheck, OffsetResetCheck, OutboxAgeCheck, RegistryCheck, SchemasCheck, StoreCheck,
};
pub use registry::{registry, REGISTRY_FILE};
pub use relay::{relay, relay_with_readiness, RelayReadiness};
pub use saga::{saga, SagaRun, SagaWakes};
pub use store::{
    existing_tasks_store, open_service_store, open_store, outbox_listener, ServiceData,
    DATABASE_FILE,
};

/// How long a component may take to stop before it is abandoned.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A running component. Dropping it without [`Component::stop`] aborts it.
pub struct Component {
    name: &'static str,
    /// Where it listens, for those that do (`http://127.0.0.1:8080`).
    address: Option<String>,
    /// What its readiness depends on.
    checks: Checks,
    trigger: ShutdownTrigger,
    task: Option<JoinHandle<()>>,
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Component {
    /// Runs `body` as a task that stops when this component is stopped.
    pub fn spawn<F, Fut>(name: &'static str, body: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (trigger, shutdown) = Shutdown::new();
        let task = Some(tokio::spawn(body(shutdown)));
        Self {
            name,
            address: None,
            checks: Vec::new(),
            trigger,
            task,
        }
    }

    /// The same component, listening at `address`.
    pub fn listening_at(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The same component, ready while `checks` pass.
    pub fn with_checks(mut self, checks: Checks) -> Self {
        self.checks = checks;
        self
    }

    /// The readiness checks of what this component depends on (the store,
    /// Kafka, the schema registry...), for a process's `/readyz` (see
    /// [`readiness::assemble`]).
    pub fn readiness_checks(&self) -> &[Arc<dyn ReadinessCheck>] {
        &self.checks
    }

    /// Where the component listens (`http://127.0.0.1:8080`); `None` for
    /// those that only talk to others (the relay, the consumers).
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// The component's name (`api`, `relay`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Signals the component to stop and waits for it to finish its in-flight
    /// work, for at most [`STOP_DEADLINE`].
    pub async fn stop(self) {
        self.stop_by(tokio::time::Instant::now() + STOP_DEADLINE)
            .await;
    }

    /// Signals the component to stop and waits for it to finish its
    /// in-flight work until `deadline` (at most [`STOP_DEADLINE`] from now),
    /// then abandons it: a process stopping several components gives them
    /// one deadline, so its shutdown stays within
    /// [`crate::shutdown_guard::SHUTDOWN_BOUND`].
    pub async fn stop_by(mut self, deadline: tokio::time::Instant) {
        self.trigger.trigger();
        let name = self.name;
        let Some(mut task) = self.task.take() else {
            return;
        };
        let deadline = deadline.min(tokio::time::Instant::now() + STOP_DEADLINE);
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(())) => tracing::debug!(component = name, "stopped"),
            Ok(Err(e)) => tracing::error!(component = name, error = %e, "component task failed"),
            Err(_) => {
                tracing::warn!(component = name, "did not stop in time; abandoning it");
                task.abort();
            }
        }
    }
}

/// How long a process's components together may take to stop gracefully;
/// the rest of [`crate::shutdown_guard::SHUTDOWN_BOUND`] is left for closing
/// the store and the runtime.
pub const GRACEFUL_STOP_BUDGET: Duration = Duration::from_secs(8);

/// Stops `components` in order, sharing [`GRACEFUL_STOP_BUDGET`].
pub async fn stop_all(components: Vec<Component>) {
    let deadline = tokio::time::Instant::now() + GRACEFUL_STOP_BUDGET;
    for component in components {
        component.stop_by(deadline).await;
    }
}
