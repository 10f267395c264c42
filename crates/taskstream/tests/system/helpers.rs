//! Starting the system for a test and talking to it.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::system::{RunningSystem, SystemConfig};
use tempfile::TempDir;

use crate::brokers::Broker;

/// A running system with a fresh data directory.
pub struct TestApp {
    pub system: RunningSystem,
    pub base: String,
    pub client: reqwest::Client,
    /// Kept so the data directory lives as long as the app (`None`: the
    /// caller's directory).
    _dir: Option<TempDir>,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends the components' logs to the test's captured output (shown for
/// failing tests); `RUST_LOG` filters them.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Starts every component in-process (the triage agent aside) on the dev
/// broker and a random port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] on librdkafka's mock cluster instead of taskstream's
/// broker, for tests that inject faults through it
/// ([`RunningSystem::dev_broker`]).
pub async fn spawn_app_on_mock() -> TestApp {
    spawn_app_with(|config| {
        config.dev_broker = taskstream::components::DevBrokerKind::Mock;
        config.relay.delivery = taskstream_services::RelayDelivery::AtLeastOnce;
    })
    .await
}

/// [`spawn_app`] on `broker`.
pub async fn spawn_app_on(broker: &Broker) -> TestApp {
    spawn_app_with(|config| broker.configure(config)).await
}

/// [`spawn_app`], with the configuration adjusted by `configure` first
/// (the triage agent off unless `configure` turns it on).
pub async fn spawn_app_with(configure: impl FnOnce(&mut SystemConfig)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_app_in(dir.path(), configure).await;
    app._dir = Some(dir);
    app
}

/// [`spawn_app_with`] on the data directory `dir`, which outlives the app.
pub async fn spawn_app_in(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut SystemConfig),
) -> TestApp {
    init_logs();
    let mut config = SystemConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    // The triage agent is off unless a test turns it on (see agent.rs):
    // outbox rows, dead letters and consumer metrics are then the task
    // events' and the three groups' alone, as the other tests count them.
    config.agent = None;
    configure(&mut config);
    let system = RunningSystem::start(config).await.expect("system starts");
    let base = format!("http://{}", system.http_addr());
    TestApp {
        system,
        base,
        client: client(),
        _dir: None,
    }
}

/// Polls `probe` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `items` of `GET {base}{path}`, or `None` while the server does not
/// answer with a list (it may be starting, stopping or restarting).
pub async fn try_items(client: &reqwest::Client, base: &str, path: &str) -> Option<Vec<Value>> {
    let response = client.get(format!("{base}{path}")).send().await.ok()?;
    let body: Value = response.json().await.ok()?;
    body["items"].as_array().cloned()
}

/// Waits until `GET {base}{path}` lists at least `n` items and returns them.
pub async fn items_when(client: &reqwest::Client, base: &str, path: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} items at {path}"),
        Duration::from_secs(30),
        || async {
            try_items(client, base, path)
                .await
                .filter(|items| items.len() >= n)
        },
    )
    .await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_task(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a task that must succeed, returning its JSON.
    pub async fn created(&self, title: &str, assignee: Option<&str>) -> Value {
        let mut body = json!({ "title": title });
        if let Some(a) = assignee {
            body["assignee"] = json!(a);
        }
        let response = self.create_task(body).await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    pub async fn complete(&self, id: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/tasks/{id}/complete")))
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/tasks/{id}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn items(&self, path: &str) -> Vec<Value> {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let body: Value = response.json().await.unwrap();
        body["items"].as_array().expect("items array").clone()
    }

    /// Waits until `/audit` holds exactly `n` items and returns them.
    pub async fn audit_when(&self, n: usize) -> Vec<Value> {
        eventually(
            &format!("{n} audit items"),
            Duration::from_secs(30),
            || async {
                let items = self.items("/audit?limit=10000").await;
                (items.len() >= n).then_some(items)
            },
        )
        .await
    }

    /// Waits until `/notifications` holds at least `n` items and returns them.
    pub async fn notifications_when(&self, n: usize) -> Vec<Value> {
        eventually(
            &format!("{n} notifications"),
            Duration::from_secs(30),
            || async {
                let items = self.items("/notifications?limit=10000").await;
                (items.len() >= n).then_some(items)
            },
        )
        .await
    }

    pub async fn outbox_total(&self) -> i64 {
        use taskstream_store::OutboxStore;
        self.system.store().outbox_stats().await.unwrap().total
    }
}

/// taskstream's own broker (what `up` runs) on a fresh temporary
/// directory, with the declared topics, through the `up` builder.
pub async fn own_broker() -> taskstream::components::EmbeddedBroker {
    use taskstream::components::{EmbeddedBroker, EmbeddedBrokerSettings};
    EmbeddedBroker::start(&EmbeddedBrokerSettings::new(None))
        .await
        .unwrap()
}

/// Stops a broker from [`own_broker`] (its files are removed), after the
/// clients that use it.
pub async fn stop_broker(broker: taskstream::components::EmbeddedBroker) {
    tokio::task::spawn_blocking(move || broker.shutdown(Duration::ZERO))
        .await
        .unwrap();
}

/// The producing half of the system, started from its parts so a test can
/// add, stop and restart consumers at will: a broker, the store, the relay
/// (JSON events) and the Task API on a random port.
pub struct Pipeline {
    /// The mock cluster, when the pipeline runs on it ([`Pipeline::start`]).
    pub broker: Option<taskstream_kafka::DevBroker>,
    /// taskstream's broker, on [`Broker::Dev`].
    pub embedded: Option<taskstream::components::EmbeddedBroker>,
    pub kafka: taskstream_kafka::KafkaConfig,
    pub store: std::sync::Arc<taskstream_store::Store>,
    pub metrics: std::sync::Arc<taskstream_telemetry::Metrics>,
    /// The Task API's address.
    pub addr: std::net::SocketAddr,
    relay: taskstream::components::Component,
    http: taskstream::components::Component,
    _dir: TempDir,
}

impl Pipeline {
    /// On librdkafka's mock cluster of its own, for tests that inject
    /// faults through it or need its deleting of data beyond ~5 MiB.
    pub async fn start(sqlite: taskstream_store::SqliteOptions) -> Self {
        Self::start_with(None, true, sqlite).await
    }

    /// On `broker`: Apache Kafka, or ([`Broker::Dev`]) taskstream's broker
    /// of its own.
    pub async fn start_on(broker: &Broker, sqlite: taskstream_store::SqliteOptions) -> Self {
        Self::start_with(broker.kafka_config(), false, sqlite).await
    }

    async fn start_with(
        cluster: Option<taskstream_kafka::KafkaConfig>,
        mock: bool,
        sqlite: taskstream_store::SqliteOptions,
    ) -> Self {
        use std::sync::Arc;
        use taskstream::components;
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let (broker, embedded, kafka) = match cluster {
            Some(kafka) => (None, None, kafka),
            None if mock => {
                // The mock: its callers inject faults or need its deleting of data beyond ~5 MiB.
                let dev = taskstream_kafka::DevBroker::start(
                    &taskstream_services::topics::declared_topics(1),
                )
                .unwrap();
                let kafka = taskstream_kafka::KafkaConfig::new(dev.bootstrap_servers());
                (Some(dev), None, kafka)
            }
            None => {
                let own = components::EmbeddedBroker::start(
                    &components::EmbeddedBrokerSettings::new(Some(dir.path().join("broker"))),
                )
                .await
                .unwrap();
                let kafka = taskstream_kafka::KafkaConfig::new(own.bootstrap_servers());
                (None, Some(own), kafka)
            }
        };
        let store = components::open_store(dir.path(), None, &sqlite, &Default::default())
            .await
            .unwrap();
        let metrics = taskstream_telemetry::Metrics::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        let relay = components::relay(
            store.clone(),
            &kafka,
            wake.clone(),
            taskstream_services::RelaySettings::default(),
            taskstream_services::EventEncoding::Json,
            &metrics,
        )
        .unwrap();
        let (addr, http) = components::http(
            "127.0.0.1:0".parse().unwrap(),
            components::task_api(
                store.clone(),
                wake,
                taskstream_services::EventEncoding::Json,
            ),
            &Default::default(),
        )
        .await
        .unwrap();
        Self {
            broker,
            embedded,
            kafka,
            store,
            metrics,
            addr,
            relay,
            http,
            _dir: dir,
        }
    }

    /// Stops the API, then the relay, then the store and the broker.
    pub async fn stop(self) {
        self.http.stop().await;
        self.relay.stop().await;
        self.store.close().await;
        if let Some(broker) = self.embedded {
            tokio::task::spawn_blocking(move || broker.shutdown(Duration::ZERO))
                .await
                .unwrap();
        }
    }
}
