//! The embedded, Confluent-compatible schema registry.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use taskstream_api::HttpLimits;

use super::http::serve;
use super::Component;
use crate::data_dir_lock::{DataDirLock, REGISTRY_LOCK_FILE};

/// Serves the embedded schema registry within `limits`, its state in
/// `data_dir`. Only one process serves a data directory's registry:
/// `command` (`up`, `registry`) names this one to another that tries.
pub async fn registry(
    addr: SocketAddr,
    data_dir: &Path,
    command: &str,
    limits: &HttpLimits,
) -> anyhow::Result<(SocketAddr, Component)> {
    let lock = DataDirLock::acquire(data_dir, REGISTRY_LOCK_FILE, command)?;
    let path = data_dir.join(REGISTRY_FILE);
    let store = taskstream_registry::RegistryStore::open(&path)
        .await
        .with_context(|| {
            format!(
                "cannot open the schema registry's database at {}",
                path.display()
            )
        })?;
    let router = taskstream_registry::router(store.clone());
    serve(
        "schema-registry",
        addr,
        router,
        limits,
        taskstream_registry::error_response,
        async move {
            store.close().await;
            drop(lock);
        },
    )
    .await
}

/// The schema registry's database file inside a data directory.
pub const REGISTRY_FILE: &str = "registry.db";
