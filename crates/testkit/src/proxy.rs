//! A TCP proxy that speaks just enough of the Kafka protocol to lose a
//! broker's answer on purpose: [`FaultProxy`] forwards every request and
//! response unchanged, except that it can swallow the response to the Nth
//! Produce request — after the broker has appended the records — and close
//! the connection, as a network failure at the worst moment would. A
//! producer that retries then sends the same records a second time.
//!
//! # Framing
//!
//! Every Kafka message is a 4-byte big-endian size and that many bytes. A
//! request starts with its header: `api_key: i16`, `api_version: i16`,
//! `correlation_id: i32`; a response starts with the `correlation_id` it
//! answers. The proxy remembers, per connection, which API each
//! outstanding correlation id belongs to, and so knows which response
//! answers which request.
//!
//! # Why the proxy rewrites Metadata and FindCoordinator answers
//!
//! A client only bootstraps through the address it is given; after its
//! first Metadata request it connects to the brokers' *advertised*
//! addresses, which would bypass the proxy. Two ways keep it in the path:
//! start a broker whose advertised listener is the proxy's address, or
//! rewrite the addresses in the answers that name brokers (Metadata, and
//! FindCoordinator, which names the group and transaction coordinators).
//! The proxy rewrites: it works in front of any running broker — the
//! testkit's shared Kafka cluster, taskstream's own broker — without a
//! broker of its own per test, and a broker that was started knowing about
//! the proxy would also send its own inter-broker traffic through it. Each
//! broker address it sees gets a listener of its own on 127.0.0.1, so a
//! cluster of several brokers is proxied too. The answers are decoded and
//! encoded again with `kafka-protocol` (every version, flexible or not);
//! other answers pass through byte for byte.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FindCoordinatorResponse, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest message the proxy forwards (Kafka's default
/// `socket.request.max.bytes` is 100 MiB).
const MAX_FRAME: usize = 100 * 1024 * 1024;

/// A Kafka-aware TCP proxy on 127.0.0.1 in front of a broker. It runs on
/// the tokio runtime it was started on, until that runtime ends.
#[derive(Clone)]
pub struct FaultProxy {
    bootstrap: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    /// Produce requests forwarded so far, over every connection.
    produce_requests: AtomicU64,
    /// The Produce requests (counted from 1) whose responses are to be lost.
    doomed: Mutex<HashSet<u64>>,
    /// Responses swallowed so far.
    dropped: AtomicU64,
    /// While `true`, responses are held back (not lost): the broker seems
    /// to have stopped answering.
    stalled: tokio::sync::watch::Sender<bool>,
    /// Upstream broker address (`host:port`) → the proxy's listener for it.
    routes: Mutex<HashMap<String, SocketAddr>>,
}

impl FaultProxy {
    /// Starts proxying to the broker at `upstream` (`host:port`). Clients
    /// bootstrap from [`FaultProxy::bootstrap_servers`].
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            produce_requests: AtomicU64::new(0),
            doomed: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
            stalled: tokio::sync::watch::Sender::new(false),
            routes: Mutex::new(HashMap::new()),
        });
        let bootstrap = route(&shared, upstream)?;
        Ok(Self { bootstrap, shared })
    }

    /// The address clients bootstrap from.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.to_string()
    }

    /// Loses the response to the `nth` Produce request from now on (1 is the
    /// next one): the request reaches the broker, its answer never reaches
    /// the client, and the client's connection is closed.
    pub fn lose_produce_response(&self, nth: u64) {
        let next = self.shared.produce_requests.load(Ordering::SeqCst);
        self.shared
            .doomed
            .lock()
            .expect("doomed poisoned")
            .insert(next + nth);
    }

    /// Holds back every response from now on (requests still reach the
    /// broker), until [`FaultProxy::resume_responses`]: a broker that
    /// handles requests but whose answers are late.
    pub fn stall_responses(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Delivers the held responses and every later one again.
    pub fn resume_responses(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Produce requests forwarded to the broker so far.
    pub fn produce_requests(&self) -> u64 {
        self.shared.produce_requests.load(Ordering::SeqCst)
    }

    /// Responses lost on purpose so far.
    pub fn lost_responses(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

/// The proxy's listener for the broker at `upstream`, started on first use.
fn route(shared: &Arc<Shared>, upstream: &str) -> io::Result<SocketAddr> {
    let mut routes = shared.routes.lock().expect("routes poisoned");
    if let Some(local) = routes.get(upstream) {
        return Ok(*local);
    }
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener)?;
    routes.insert(upstream.to_owned(), local);
    let shared = Arc::clone(shared);
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let shared = Arc::clone(&shared);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(broker) = TcpStream::connect(&upstream).await {
                    let _ = client.set_nodelay(true);
                    let _ = broker.set_nodelay(true);
                    serve(shared, client, broker).await;
                }
            });
        }
    });
    Ok(local)
}

/// What the proxy remembers about an outstanding request.
#[derive(Debug, Clone, Copy)]
struct Pending {
    api_key: i16,
    api_version: i16,
    /// Its response is to be lost.
    doomed: bool,
}

/// Forwards one client connection until either side closes it, or a
/// response is lost on purpose.
async fn serve(shared: Arc<Shared>, client: TcpStream, broker: TcpStream) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let pending: Arc<Mutex<HashMap<i32, Pending>>> = Arc::default();
    let requests = {
        let shared = Arc::clone(&shared);
        let pending = Arc::clone(&pending);
        async move {
            while let Ok(frame) = read_frame(&mut client_read).await {
                if frame.len() < 8 {
                    return;
                }
                let mut header = &frame[..8];
                let api_key = header.get_i16();
                let api_version = header.get_i16();
                let correlation_id = header.get_i32();
                let doomed = api_key == ApiKey::Produce as i16 && {
                    let n = shared.produce_requests.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.doomed.lock().expect("doomed poisoned").remove(&n)
                };
                // Recorded before the request leaves: its answer cannot
                // overtake it.
                pending.lock().expect("pending poisoned").insert(
                    correlation_id,
                    Pending {
                        api_key,
                        api_version,
                        doomed,
                    },
                );
                if write_frame(&mut broker_write, &frame).await.is_err() {
                    return;
                }
            }
        }
    };
    let responses = async move {
        let mut stalled = shared.stalled.subscribe();
        while let Ok(frame) = read_frame(&mut broker_read).await {
            if stalled.wait_for(|s| !*s).await.is_err() {
                return;
            }
            if frame.len() < 4 {
                return;
            }
            let correlation_id = (&frame[..4]).get_i32();
            let request = pending
                .lock()
                .expect("pending poisoned")
                .remove(&correlation_id);
            let frame = match request {
                Some(p) if p.doomed => {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    // Closing both halves: the client sees the connection
                    // fail with its request in flight.
                    return;
                }
                Some(p) => match rewrite(&shared, p, &frame) {
                    Ok(Some(rewritten)) => rewritten,
                    Ok(None) => frame,
                    Err(_) => return,
                },
                None => frame,
            };
            if write_frame(&mut client_write, &frame).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first ends the connection.
    tokio::select! {
        () = requests => {},
        () = responses => {},
    }
}

/// The response with every broker address replaced by the proxy's listener
/// for it, for the answers that name brokers; `None` for the others.
fn rewrite(shared: &Arc<Shared>, request: Pending, frame: &Bytes) -> io::Result<Option<Bytes>> {
    let Ok(api_key) = ApiKey::try_from(request.api_key) else {
        return Ok(None);
    };
    if !matches!(api_key, ApiKey::Metadata | ApiKey::FindCoordinator) {
        return Ok(None);
    }
    let version = request.api_version;
    let header_version = api_key.response_header_version(version);
    let invalid = |e: anyhow::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut buf = frame.clone();
    let header = ResponseHeader::decode(&mut buf, header_version).map_err(invalid)?;
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).map_err(invalid)?;
    let proxied = |host: &StrBytes, port: i32| -> io::Result<(StrBytes, i32)> {
        if port < 0 {
            // FindCoordinator's "no coordinator" answer names no broker.
            return Ok((host.clone(), port));
        }
        let local = route(shared, &format!("{}:{port}", host.as_str()))?;
        Ok((
            StrBytes::from_string(local.ip().to_string()),
            i32::from(local.port()),
        ))
    };
    match api_key {
        ApiKey::Metadata => {
            let mut body = MetadataResponse::decode(&mut buf, version).map_err(invalid)?;
            for broker in &mut body.brokers {
                (broker.host, broker.port) = proxied(&broker.host, broker.port)?;
            }
            body.encode(&mut out, version).map_err(invalid)?;
        }
        _ => {
            let mut body = FindCoordinatorResponse::decode(&mut buf, version).map_err(invalid)?;
            if version < 4 {
                (body.host, body.port) = proxied(&body.host, body.port)?;
            }
            for coordinator in &mut body.coordinators {
                (coordinator.host, coordinator.port) =
                    proxied(&coordinator.host, coordinator.port)?;
            }
            body.encode(&mut out, version).map_err(invalid)?;
        }
    }
    Ok(Some(out.freeze()))
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Bytes> {
    let size = stream.read_u32().await? as usize;
    if size > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {size}-byte message is larger than the proxy forwards"),
        ));
    }
    let mut body = vec![0; size];
    stream.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

async fn write_frame(stream: &mut (impl AsyncWriteExt + Unpin), body: &[u8]) -> io::Result<()> {
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    frame.put_slice(body);
    stream.write_all(&frame).await
}
