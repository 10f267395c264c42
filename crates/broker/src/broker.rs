//! Starting and stopping a broker: its state, its listener, its
//! background flush and retention work.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{BrokerConfig, ConfigError, FlushPolicy};
use crate::groups::offsets::OffsetStore;
use crate::groups::Coordinator;
use crate::producer_ids::ProducerIds;
use crate::server;
use crate::storage::segment::now_ms;
use crate::topics::Topics;
use crate::transactions::{Stores, Transactions};

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    pub topics: Topics,
    pub producer_ids: ProducerIds,
    /// Held (flock) for as long as the broker runs.
    _lock: fs::File,
    pub coordinator: Coordinator,
    pub offsets: OffsetStore,
    pub transactions: Transactions,
}

#[cfg(test)]
impl Shared {
    /// The state of a broker on `data_dir` with default settings, without
    /// a listener, for handler tests.
    pub(crate) fn open_for_tests(data_dir: &Path) -> Arc<Self> {
        Self::open_for_tests_with(BrokerConfig::new(data_dir))
    }

    /// Like [`Self::open_for_tests`], with `config`.
    pub(crate) fn open_for_tests_with(config: BrokerConfig) -> Arc<Self> {
        let data_dir = config.data_dir.clone();
        let data_dir = data_dir.as_path();
        let topics =
            Topics::open_with_visibility(data_dir, config.log, config.flush.visibility()).unwrap();
        Arc::new(Self {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: cluster_id(data_dir).unwrap(),
            producer_ids: ProducerIds::open(data_dir).unwrap(),
            _lock: lock_data_dir(data_dir).unwrap(),
            coordinator: Coordinator::default(),
            offsets: OffsetStore::open(data_dir).unwrap(),
            transactions: Transactions::open(data_dir).unwrap(),
            topics,
            config,
        })
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot open the data directory {dir}: {source}")]
    Storage { dir: String, source: io::Error },
    #[error("the data directory {0} is in use by another broker")]
    Locked(String),
}

/// The broker; see [`Broker::start`].
#[derive(Debug)]
pub struct Broker;

/// A broker serving on [`RunningBroker::addr`] until [`RunningBroker::stop`]
/// (or drop).
#[derive(Debug)]
pub struct RunningBroker {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Broker {
    /// Validates the settings, opens (and recovers) the data directory,
    /// binds the listener and serves on a runtime of its own, so that sync
    /// and async callers can both use it. Returns once clients can connect.
    pub fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
        config.validate()?;
        let storage_error = |source| StartError::Storage {
            dir: config.data_dir.display().to_string(),
            source,
        };
        fs::create_dir_all(&config.data_dir).map_err(storage_error)?;
        let lock = lock_data_dir(&config.data_dir).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => StartError::Locked(config.data_dir.display().to_string()),
            _ => storage_error(e),
        })?;
        let cluster_id = cluster_id(&config.data_dir).map_err(storage_error)?;
        let topics =
            Topics::open_with_visibility(&config.data_dir, config.log, config.flush.visibility())
                .map_err(storage_error)?;
        let producer_ids = ProducerIds::open(&config.data_dir).map_err(storage_error)?;
        let offsets = OffsetStore::open(&config.data_dir).map_err(storage_error)?;
        let transactions = Transactions::open(&config.data_dir).map_err(storage_error)?;
        let unfinished = transactions
            .recover(&Stores {
                topics: &topics,
                offsets: &offsets,
            })
            .map_err(storage_error)?;
        if unfinished > 0 {
            tracing::info!(
                transactions = unfinished,
                "completed transactions left unfinished by the last run"
            );
        }
        let listener =
            StdTcpListener::bind(config.listen).map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            advertised_host: config
                .advertised_host
                .clone()
                .unwrap_or_else(|| addr.ip().to_string()),
            advertised_port: i32::from(addr.port()),
            cluster_id,
            topics,
            producer_ids,
            _lock: lock,
            coordinator: Coordinator::default(),
            offsets,
            transactions,
            config,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("taskstream-broker")
            .enable_all()
            .build()
            .map_err(|source| StartError::Listen { addr, source })?;
        let (shutdown, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("taskstream-broker".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "the broker cannot listen");
                            return;
                        }
                    };
                    let maintenance = tokio::spawn(maintain(Arc::clone(&shared), stopped.clone()));
                    server::accept(listener, Arc::clone(&shared), stopped).await;
                    let _ = maintenance.await;
                    flush_all(&shared);
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(|source| StartError::Listen { addr, source })?;
        tracing::info!(%addr, "broker listening");
        Ok(RunningBroker {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }
}

impl RunningBroker {
    /// Where clients connect (`bootstrap.servers`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes connections, fsyncs every log and waits for
    /// all of it. Blocks the calling thread briefly.
    pub fn stop(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

/// Takes an exclusive advisory lock on `data_dir/lock`, so that two
/// brokers never write one log. The lock goes with the process, however it
/// ends. (`std::fs::File::try_lock` needs Rust 1.89; the workspace targets 1.88.)
fn lock_data_dir(data_dir: &Path) -> io::Result<fs::File> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("lock"))?;
    // SAFETY: flock on a file descriptor we own, with constant flags.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The cluster id, made once and kept in `cluster.id`.
fn cluster_id(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join("cluster.id");
    match fs::read_to_string(&path) {
        Ok(id) => Ok(id.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            fs::write(&path, &id)?;
            fs::File::open(&path)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Periodic fsync (under [`FlushPolicy::Interval`]) and retention.
async fn maintain(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let flush_every = match shared.config.flush {
        FlushPolicy::Interval(d) => d,
        FlushPolicy::BeforeAcknowledge => Duration::from_secs(3600),
    };
    let mut flush = tokio::time::interval(flush_every);
    let mut retention = tokio::time::interval(shared.config.retention_check_interval);
    let mut sessions = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = server::until_stopped(&mut stopped) => return,
            _ = flush.tick() => {
                let shared = Arc::clone(&shared);
                let _ = tokio::task::spawn_blocking(move || flush_all(&shared)).await;
            }
            _ = sessions.tick() => {
                shared.coordinator.expire();
                let shared = Arc::clone(&shared);
                let _ = tokio::task::spawn_blocking(move || {
                    shared.transactions.expire(
                        &Stores { topics: &shared.topics, offsets: &shared.offsets },
                        now_ms(),
                    )
                })
                .await;
            }
            _ = retention.tick() => {
                let shared = Arc::clone(&shared);
                let _ = tokio::task::spawn_blocking(move || enforce_retention(&shared)).await;
            }
        }
    }
}

fn flush_all(shared: &Shared) {
    for topic in shared.topics.all() {
        for (p, partition) in topic.partitions.iter().enumerate() {
            if let Err(e) = partition.sync() {
                tracing::error!(topic = topic.name, partition = p, error = %e, "fsync failed");
            }
        }
    }
}

fn enforce_retention(shared: &Shared) {
    let now = now_ms();
    for topic in shared.topics.all() {
        for (p, partition) in topic.partitions.iter().enumerate() {
            match partition.log().enforce_retention(now) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    topic = topic.name,
                    partition = p,
                    segments = n,
                    "retention deleted segments"
                ),
                Err(e) => {
                    tracing::error!(topic = topic.name, partition = p, error = %e, "retention failed")
                }
            }
        }
    }
}
