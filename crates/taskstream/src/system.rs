//! `taskstream up`: every component in one process, on embedded defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use taskstream_api::HttpLimits;
use taskstream_avro::RegistryClient;
use taskstream_broker::FlushPolicy;
use taskstream_kafka::{ConsumerSettings, DevBroker, KafkaConfig};
use taskstream_services::agent::LocalModel;
use taskstream_services::saga::SagaSettings;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{
    EventEncoding, ProcessorSettings, RelayDelivery, RelaySettings, NOTIFIER_GROUP,
};
use taskstream_store::{Database, PgOptions, SqliteOptions, Store};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::components::{
    self, readiness, AgentSettings, Component, ConsumerOptions, DevBrokerKind, EmbeddedBroker,
    EmbeddedBrokerSettings, RelayReadiness, ServiceData, BROKER_DIR,
};
use crate::config::Endpoints;
use crate::data_dir_lock::{DataDirLock, INSTANCE_LOCK_FILE};

/// What `taskstream up` runs with.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Where the HTTP server listens; port 0 picks a free one.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// A real cluster; `None` starts the embedded dev broker.
    pub kafka: Option<KafkaConfig>,
    /// Which embedded broker runs when `kafka` is `None`: taskstream's own
    /// (data under `<data_dir>/broker`, kept across restarts) or the mock.
    pub dev_broker: DevBrokerKind,
    /// When taskstream's own broker fsyncs.
    pub broker_flush: FlushPolicy,
    /// The database; `None` keeps SQLite in `data_dir`.
    pub database: Option<Database>,
    pub sqlite: SqliteOptions,
    pub postgres: PgOptions,
    /// The relay's settings; exactly-once by default, which the mock
    /// (`dev_broker` [`DevBrokerKind::Mock`]) refuses at start.
    pub relay: RelaySettings,
    pub consumer: ConsumerOptions,
    /// The consumers' `session.timeout.ms`, overriding `consumer` and the
    /// dev broker's 3 s: how long a crashed process's partitions wait
    /// before its group hands them on.
    pub session_timeout: Option<Duration>,
    /// Consumers join as static members with the data directory's
    /// `group.instance.id` (`--static-membership`).
    pub static_membership: bool,
    /// `/readyz` fails when the oldest unpublished event is older than this.
    pub ready_max_outbox_age: Duration,
    /// Wait this long before each notification (a slow notifier on purpose).
    pub notifier_delay: Duration,
    /// POST notifications to this URL instead of logging them.
    pub notifier_webhook: Option<String>,
    /// Where event schemas are registered.
    pub registry: RegistrySetting,
    /// With a cluster configured: fail to start unless a broker answers
    /// within this long. `None` waits for it as long as it takes.
    pub kafka_wait_at_start: Option<Duration>,
    /// Timeouts and the connection limit of the API's and the embedded
    /// registry's ports.
    pub http_limits: HttpLimits,
    /// Run the workload processor (exactly once, through transactions);
    /// never on the mock, which has no transactions.
    pub processor: Option<ProcessorSettings>,
    /// Run the assignment saga with these settings (`None` by default;
    /// `taskstream up` runs it unless `--no-saga`).
    pub saga: Option<SagaSettings>,
    /// Run the triage agent with these settings.
    pub agent: Option<AgentSettings>,
}

/// Where event schemas live, and so how events are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySetting {
    /// Serve the embedded registry on this address; events are Avro.
    Embedded(SocketAddr),
    /// Use the registry at this URL; events are Avro.
    External(String),
    /// No registry; events are JSON.
    Disabled,
}

impl SystemConfig {
    /// Defaults for `data_dir`, listening on `http`.
    pub fn new(http: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            http,
            data_dir: data_dir.into(),
            kafka: None,
            dev_broker: DevBrokerKind::default(),
            broker_flush: EmbeddedBrokerSettings::new(None).flush,
            database: None,
            sqlite: SqliteOptions::default(),
            postgres: PgOptions::default(),
            // At least once in process (tests choose; `bench` follows
            // `up`): `taskstream up` publishes exactly once where the
            // broker has transactions (`--relay-delivery`).
            relay: RelaySettings::default(),
            consumer: ConsumerOptions::default(),
            session_timeout: None,
            static_membership: false,
            ready_max_outbox_age: Duration::from_secs(30),
            notifier_delay: Duration::ZERO,
            notifier_webhook: None,
            registry: RegistrySetting::Embedded(SocketAddr::from(([127, 0, 0, 1], 0))),
            kafka_wait_at_start: None,
            http_limits: HttpLimits::default(),
            processor: Some(ProcessorSettings::default()),
            saga: None,
            agent: Some(AgentSettings {
                model: Arc::new(LocalModel::default()),
                auto_accept: None,
            }),
        }
    }
}

/// A running system. Stop it with [`RunningSystem::shutdown`].
pub struct RunningSystem {
    http_addr: SocketAddr,
    kafka_bootstrap: String,
    registry_url: Option<String>,
    store: Arc<Store>,
    audit_store: Arc<Store>,
    notifier_store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// In shutdown order: HTTP, relay, consumers.
    components: Vec<Component>,
    dev_broker: Option<EmbeddedBroker>,
    /// Held while the system runs; released when it is dropped.
    _instance_lock: DataDirLock,
}

/// How often Kafka clients report statistics (into `/metrics`).
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

impl RunningSystem {
    /// Starts the embedded registry (unless another is configured), the
    /// embedded broker (unless a cluster is configured), the store, the
    /// relay, both consumers and the HTTP server, in that order.
    ///
    /// Fails at once if another process runs the system on the same data
    /// directory (see [`DataDirLock`]).
    pub async fn start(config: SystemConfig) -> anyhow::Result<Self> {
        if config.kafka.is_none()
            && config.dev_broker == DevBrokerKind::Mock
            && config.relay.delivery != RelayDelivery::AtLeastOnce
        {
            anyhow::bail!("the relay's exactly-once delivery needs a broker with transactions, and librdkafka's mock cluster has none: publish at least once on it");
        }
        let instance_lock = DataDirLock::acquire(&config.data_dir, INSTANCE_LOCK_FILE, "up")?;
        if let (Some(kafka), Some(deadline)) = (&config.kafka, config.kafka_wait_at_start) {
            taskstream_kafka::wait_for_cluster(kafka, deadline).await?;
        }
        // The registry first: its lock refuses a data directory a
        // `taskstream registry` serves before any broker starts on it.
        let (registry_url, registry_component) = match &config.registry {
            RegistrySetting::Embedded(addr) => {
                let (bound, component) =
                    components::registry(*addr, &config.data_dir, "up", &config.http_limits)
                        .await?;
                (Some(format!("http://{bound}")), Some(component))
            }
            RegistrySetting::External(url) => (Some(url.clone()), None),
            RegistrySetting::Disabled => (None, None),
        };
        let dev_broker = match &config.kafka {
            Some(_) => None,
            None => Some(
                EmbeddedBroker::start(&EmbeddedBrokerSettings {
                    kind: config.dev_broker,
                    flush: config.broker_flush,
                    ..EmbeddedBrokerSettings::new(Some(config.data_dir.join(BROKER_DIR)))
                })
                .await?,
            ),
        };
        let mock = dev_broker
            .as_ref()
            .is_some_and(|broker| broker.kind() == DevBrokerKind::Mock);
        let metrics = Metrics::new();
        let kafka = match (&config.kafka, &dev_broker) {
            (Some(kafka), _) => kafka.clone(),
            (None, Some(broker)) => KafkaConfig::new(broker.bootstrap_servers()),
            (None, None) => unreachable!("a dev broker is started when no cluster is configured"),
        }
        .with_stats(metrics.stats_listener(), STATS_INTERVAL);
        // The mock holds every fetch for the full wait and forgets the
        // group when it stops, so it gets the dev-only timings; taskstream's
        // broker and real clusters get the normal ones.
        let mut consumer_options = match mock {
            true => {
                let dev = ConsumerSettings::for_dev_broker();
                ConsumerOptions {
                    kafka: ConsumerSettings {
                        session_timeout: dev.session_timeout,
                        fetch_wait: dev.fetch_wait,
                        ..config.consumer.kafka.clone()
                    },
                    ..config.consumer.clone()
                }
            }
            false => config.consumer.clone(),
        };
        if let Some(timeout) = config.session_timeout {
            consumer_options.kafka.session_timeout = timeout;
        }
        // Static members: an `up` restarted on this data directory (after a
        // crash too) takes its partitions back at once instead of waiting
        // out the session timeout of its previous self. The mock does not
        // implement static membership.
        if config.static_membership && !mock && consumer_options.kafka.group_instance_id.is_none() {
            consumer_options.kafka.group_instance_id = Some(group_instance_id(&config.data_dir)?);
        }
        let registry = registry_url
            .as_deref()
            .map(|url| Arc::new(RegistryClient::new(url)));
        let consumer_options = ConsumerOptions {
            registry: registry.clone(),
            ..consumer_options
        };
        let encoding = EventEncoding::for_registry(registry.as_ref(), TASK_EVENTS);
        let store = components::open_store(
            &config.data_dir,
            config.database.as_ref(),
            &config.sqlite,
            &config.postgres,
        )
        .await?;
        // Each service owns its data: with SQLite the auditor and the
        // notifier write files of their own, so that no service's commits
        // wait for another's.
        let open = |service| {
            components::open_service_store(
                service,
                &config.data_dir,
                config.database.as_ref(),
                &config.sqlite,
                &config.postgres,
                Some(&store),
            )
        };
        let audit_store = open(ServiceData::Audit).await?;
        let notifier_store = open(ServiceData::Notifications).await?;
        // Only the mock starts empty: taskstream's broker keeps topics,
        // records and group offsets on disk.
        if mock {
            let requeued = store
                .requeue_unhandled_events(NOTIFIER_GROUP, &audit_store, &notifier_store)
                .await?;
            if requeued > 0 {
                tracing::info!(requeued, "the dev broker starts empty; republishing events the consumers had not handled");
            }
        }
        let wake = Arc::new(Notify::new());
        let relay = components::relay_with_readiness(
            Arc::clone(&store),
            &kafka,
            Arc::clone(&wake),
            config.relay.clone(),
            encoding.clone(),
            &RelayReadiness {
                outbox_max_age: config.ready_max_outbox_age,
                registry: registry.clone(),
            },
            &metrics,
        )?;
        let mut running = vec![relay];
        running.extend(components::register_schemas(&encoding).await?);
        running.extend([
            components::auditor(
                Arc::clone(&audit_store),
                Some(Arc::clone(&store)),
                &kafka,
                None,
                &consumer_options,
                &metrics,
            )?,
            components::notifier(
                Arc::clone(&notifier_store),
                Some(Arc::clone(&store)),
                &kafka,
                None,
                &consumer_options,
                &components::NotifierSink {
                    webhook: config.notifier_webhook.clone(),
                    delay: config.notifier_delay,
                },
                &metrics,
            )?,
        ]);
        let saga_wakes = components::SagaWakes {
            relay: Arc::clone(&wake),
            timer: Arc::new(Notify::new()),
        };
        if let Some(settings) = &config.saga {
            running.extend(components::saga(
                Arc::clone(&store),
                &kafka,
                None,
                &consumer_options,
                components::SagaRun {
                    settings: settings.clone(),
                    encoding: encoding.clone(),
                    wakes: saga_wakes.clone(),
                },
                &metrics,
            )?);
        }
        if let Some(agent) = &config.agent {
            running.push(components::agent(
                Arc::clone(&store),
                &kafka,
                None,
                &consumer_options,
                agent,
                components::OutboxWrites {
                    relay_wake: Arc::clone(&wake),
                    encoding: encoding.clone(),
                },
                &metrics,
            )?);
            running.push(components::agent_responder(
                &kafka,
                &consumer_options,
                agent,
            )?);
        }
        match (&config.processor, mock) {
            (Some(_), true) => {
                tracing::info!("the mock has no transactions: the workload processor does not run")
            }
            (Some(settings), false) => {
                let (processor, finished) =
                    components::processor(&kafka, registry.clone(), settings.clone(), &metrics);
                tokio::spawn(async move {
                    if let Ok(Err(e)) = finished.await {
                        tracing::error!(
                            error = &e as &dyn std::error::Error,
                            "the workload processor stopped; the rest of the system runs on"
                        );
                    }
                });
                running.push(processor);
            }
            (None, _) => {}
        }
        let api_checks = components::api_checks(&store, &encoding);
        let broker_checks = dev_broker
            .as_ref()
            .map(EmbeddedBroker::readiness_checks)
            .unwrap_or_default();
        let checks = readiness::assemble(
            std::iter::once(&api_checks[..])
                .chain(running.iter().map(Component::readiness_checks))
                .chain(registry_component.iter().map(Component::readiness_checks))
                .chain([&broker_checks[..]]),
        );
        let api = components::task_api_with_sagas(
            Arc::clone(&store),
            wake,
            encoding,
            Arc::clone(&saga_wakes.timer),
        )
        .audit(audit_store.clone())
        .notifications(notifier_store.clone())
        .observability(Arc::clone(&metrics), Some(store.clone()), checks);
        let (http_addr, http) = components::http(config.http, api, &config.http_limits).await?;
        let http = http.with_checks(api_checks);
        let system = Self {
            http_addr,
            kafka_bootstrap: kafka.bootstrap_servers.clone(),
            registry_url,
            store,
            audit_store,
            notifier_store,
            metrics,
            // The registry stops last: the relay and consumers may need it to the end.
            components: std::iter::once(http)
                .chain(running)
                .chain(registry_component)
                .collect(),
            dev_broker,
            _instance_lock: instance_lock,
        };
        // Lets `taskstream lag` and extra consumer instances started with the
        // same --data-dir find the broker and use the dev broker's timings.
        system.endpoints().write(&config.data_dir)?;
        Ok(system)
    }

    /// The HTTP server's bound address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The Kafka bootstrap servers in use.
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    /// The schema registry in use, if any.
    pub fn registry_url(&self) -> Option<&str> {
        self.registry_url.as_deref()
    }

    /// The Task API's store: tasks, the outbox, sagas, suggestions.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The audit-log service's store (with SQLite a file of its own).
    pub fn audit_store(&self) -> &Arc<Store> {
        &self.audit_store
    }

    /// The notification service's store (with SQLite a file of its own).
    pub fn notifier_store(&self) -> &Arc<Store> {
        &self.notifier_store
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The names of the components running, in shutdown order.
    pub fn component_names(&self) -> Vec<&'static str> {
        self.components.iter().map(Component::name).collect()
    }

    /// The mock cluster, when that is the embedded broker (for fault
    /// injection).
    pub fn dev_broker(&self) -> Option<&DevBroker> {
        self.dev_broker.as_ref().and_then(EmbeddedBroker::mock)
    }

    /// The embedded broker, when one was started.
    pub fn embedded_broker(&self) -> Option<&EmbeddedBroker> {
        self.dev_broker.as_ref()
    }

    /// Where everything is, as printed at start-up and written to `endpoints.json`.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            http: format!("http://{}", self.http_addr),
            kafka: self.kafka_bootstrap.clone(),
            kafka_is_dev_broker: self.dev_broker().is_some(),
            schema_registry: self.registry_url.clone(),
        }
    }

    /// Stops gracefully: no new requests, then the relay publishes what is
    /// pending and flushes, then the consumers finish the event in hand and
    /// commit, then the broker stops.
    pub async fn shutdown(mut self) {
        let broker = self.dev_broker.take();
        components::stop_all(std::mem::take(&mut self.components)).await;
        self.store.close().await;
        self.audit_store.close().await;
        self.notifier_store.close().await;
        if let Some(broker) = broker {
            broker.shutdown(Duration::from_secs(1));
        }
    }
}

impl Drop for RunningSystem {
    /// Dropped without [`RunningSystem::shutdown`] (a panic, an early
    /// return): the components are aborted, and their Kafka clients close
    /// while the runtime winds down. The dev broker must outlive those
    /// clients, or closing would wait on a broker that is gone, so it is
    /// left running until the process exits.
    fn drop(&mut self) {
        if let Some(broker) = self.dev_broker.take() {
            std::mem::forget(broker);
        }
    }
}

/// The file in the data directory that holds `up`'s `group.instance.id`.
pub const GROUP_INSTANCE_ID_FILE: &str = "group-instance-id";

/// This data directory's `group.instance.id`: made once (a random UUID) and
/// kept, so that it is the same across restarts and differs between data
/// directories, and so machines (only one `up` runs per data directory).
fn group_instance_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = data_dir.join(GROUP_INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", path.display()));
        }
    }
    let id = format!("taskstream-up-{}", uuid::Uuid::new_v4());
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}
