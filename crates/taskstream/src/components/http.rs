//! An HTTP port: the API's routes (or only the operational ones, or the
//! schema registry's) served within the process's HTTP limits.

use std::net::SocketAddr;

use anyhow::Context;
use taskstream_api::{ApiBuilder, ErrorResponder, HttpLimits, Problem};
use tokio::net::TcpListener;

use super::Component;

/// Binds `addr` and serves `router` as component `name` within `limits`
/// until stopped, then runs `after`. Errors the server answers itself are
/// written by `errors`. Returns the bound address (useful with port 0).
pub async fn serve(
    name: &'static str,
    addr: SocketAddr,
    router: axum::Router,
    limits: &HttpLimits,
    errors: ErrorResponder,
    after: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, Component)> {
    limits
        .validate()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid HTTP limits for {name}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name})"))?;
    let bound = listener.local_addr()?;
    let limits = limits.clone();
    let component = Component::spawn(name, move |mut shutdown| async move {
        let stop = async move { shutdown.wait().await };
        if let Err(error) = taskstream_api::serve(listener, router, limits, errors, stop).await {
            tracing::error!(component = name, %error, "server failed");
        }
        after.await;
    })
    .listening_at(format!("http://{bound}"));
    Ok((bound, component))
}

/// Binds `addr` and serves `api` within `limits` until stopped. Returns
/// the bound address (useful with port 0).
pub async fn http(
    addr: SocketAddr,
    api: ApiBuilder,
    limits: &HttpLimits,
) -> anyhow::Result<(SocketAddr, Component)> {
    serve(
        "http",
        addr,
        api.build(),
        limits,
        Problem::response,
        async {},
    )
    .await
}
