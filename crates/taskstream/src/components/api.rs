//! The Task API: its routes over the store, in the event encoding in use.

use std::sync::Arc;

use taskstream_api::{ApiBuilder, ReadinessCheck};
use taskstream_domain::{EventCodec, JsonCodec};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_store::Store;
use tokio::sync::Notify;

use super::StoreCheck;

/// The event encoding in use.
pub fn codec() -> Arc<dyn EventCodec> {
    Arc::new(JsonCodec)
}

/// The Task API's routes over `store`; `relay_wake` is notified after each commit.
pub fn task_api(store: Arc<Store>, relay_wake: Arc<Notify>) -> ApiBuilder {
    let service = taskstream_api::TaskService::new(store, codec(), relay_wake, TASK_EVENTS);
    ApiBuilder::new().tasks(service)
}

/// The Task API's readiness: it is ready while the store takes writes. A
/// lagging relay is the relay's readiness problem; the outbox keeps the
/// writes meanwhile.
pub fn api_checks(store: &Arc<Store>) -> Vec<Arc<dyn ReadinessCheck>> {
    vec![Arc::new(StoreCheck::new(Arc::clone(store)))]
}
