//! The Task API: its routes over the store, storing each event in the
//! deployment's encoding.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_api::{ApiBuilder, ReadinessCheck};
use taskstream_services::saga::SagaCommands;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::EventEncoding;
use taskstream_store::Store;
use tokio::sync::Notify;

use super::{Component, SchemasCheck, StoreCheck};

/// The longest pause between two attempts to register the event schemas.
const MAX_REGISTRATION_PAUSE: Duration = Duration::from_secs(5);

/// The Task API's routes over `store` (the tasks and the triage agent's
/// suggestions on them), writing each event into the outbox
/// in `encoding`; `relay_wake` is notified after each commit. Call
/// [`register_schemas`] first, so that writes can encode.
///
/// It serves the assignment sagas too (`/sagas/{id}`, accept and decline,
/// and each task's link to its saga); a decline is compensated by the saga
/// timer of whichever process runs it (see [`task_api_with_sagas`]).
pub fn task_api(store: Arc<Store>, relay_wake: Arc<Notify>, encoding: EventEncoding) -> ApiBuilder {
    task_api_with_sagas(store, relay_wake, encoding, Arc::new(Notify::new()))
}

/// [`task_api`], waking the saga timer of this process (`saga_timer_wake`)
/// after a decline, so that it compensates at once.
pub fn task_api_with_sagas(
    store: Arc<Store>,
    relay_wake: Arc<Notify>,
    encoding: EventEncoding,
    saga_timer_wake: Arc<Notify>,
) -> ApiBuilder {
    let commands = SagaCommands::new(store.clone(), saga_timer_wake, Arc::clone(&relay_wake));
    let service =
        taskstream_api::TaskService::new(store.clone(), encoding, relay_wake, TASK_EVENTS)
            .with_sagas(store.clone());
    ApiBuilder::new()
        .tasks(service.clone())
        .sagas(commands)
        .suggestions(service, store)
}

/// The Task API's readiness: it is ready while the store takes writes and,
/// with Avro, its event schemas are registered. A lagging relay is the
/// relay's readiness problem; the outbox keeps the writes meanwhile.
pub fn api_checks(store: &Arc<Store>, encoding: &EventEncoding) -> Vec<Arc<dyn ReadinessCheck>> {
    let mut checks: Vec<Arc<dyn ReadinessCheck>> =
        vec![Arc::new(StoreCheck::new(Arc::clone(store)))];
    // Without its schemas the API refuses every write: out of service.
    if matches!(encoding, EventEncoding::Avro(_)) {
        checks.push(Arc::new(SchemasCheck::new(encoding.clone())));
    }
    checks
}

/// Registers every event type's schema before the first write (Avro).
///
/// A registry that cannot be reached does not stop the API from starting:
/// registration is retried in the background by the returned component,
/// and task writes are refused with 503 (nothing stored) until it
/// succeeds. A registry that refuses the schemas fails start-up.
pub async fn register_schemas(encoding: &EventEncoding) -> anyhow::Result<Option<Component>> {
    match encoding.register_schemas().await {
        Ok(()) => Ok(None),
        Err(error) if error.is_retriable() => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "cannot register the event schemas yet; task writes are refused (503) until they are, retrying"
            );
            let encoding = encoding.clone();
            Ok(Some(Component::spawn(
                "schema-registration",
                move |shutdown| async move {
                    encoding
                        .register_schemas_until_done(shutdown, MAX_REGISTRATION_PAUSE)
                        .await
                },
            )))
        }
        Err(error) => Err(error).context("the schema registry refused the event schemas"),
    }
}
