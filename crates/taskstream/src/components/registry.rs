//! The embedded, Confluent-compatible schema registry.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use taskstream_api::HttpLimits;
use taskstream_avro::RegistryClient;

use super::http::serve;
use super::{Component, RegistryCheck};
use crate::data_dir_lock::{DataDirLock, REGISTRY_LOCK_FILE};

/// Serves the embedded schema registry within `limits`, its state in
/// `data_dir`. Only one process serves a data directory's registry:
/// `command` (`up`, `registry`) names this one to another that tries.
/// Ready while it answers at its own address.
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
    let (bound, component) = serve(
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
    .await?;
    let own = RegistryClient::new(&format!("http://{bound}"));
    Ok((
        bound,
        component.with_checks(vec![Arc::new(RegistryCheck(Arc::new(own)))]),
    ))
}

/// The schema registry's database file inside a data directory.
pub const REGISTRY_FILE: &str = "registry.db";
