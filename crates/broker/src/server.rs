//! The TCP side: accept connections and serve each one's requests in
//! order. Anything wrong with a request (bad size, undecodable, unsupported
//! API or version) closes that connection only.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::api;
use crate::broker::Shared;

/// Accepts until `stopped` turns true.
pub(crate) async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let for_connections = stopped.clone();
    loop {
        tokio::select! {
            _ = until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    let stopped = for_connections.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, peer, shared, stopped).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Resolves once the broker is told to stop.
pub(crate) async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("request size {0} out of range")]
    Size(i32),
    #[error(transparent)]
    Request(#[from] api::RequestError),
}

async fn serve(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let max = shared.config.max_request_bytes;
    loop {
        let size = tokio::select! {
            _ = until_stopped(&mut stopped) => return Ok(()),
            size = reader.read_i32() => match size {
                Ok(size) => size,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        if size < 8 || size as usize > max {
            return Err(ConnectionError::Size(size));
        }
        // Grow the buffer with the bytes that actually arrive, so that a
        // client announcing a large request and sending nothing holds no
        // memory for it.
        let mut frame = Vec::with_capacity((size as usize).min(64 * 1024));
        (&mut reader)
            .take(size as u64)
            .read_to_end(&mut frame)
            .await?;
        if frame.len() != size as usize {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let response = tokio::select! {
            _ = until_stopped(&mut stopped) => return Ok(()),
            response = api::dispatch(&shared, peer, Bytes::from(frame)) => response?,
        };
        if let Some(response) = response {
            let mut out = Vec::with_capacity(response.len() + 4);
            out.extend_from_slice(&(response.len() as i32).to_be_bytes());
            out.extend_from_slice(&response);
            writer.write_all(&out).await?;
        }
    }
}
