//! The processes the component subcommands run (`up`, `api`, `relay`,
//! `notifier`, `auditor`, `registry`, `dev-broker`), each assembled from the
//! builders in [`crate::components`]: start, print the endpoints, wait for
//! Ctrl-C or SIGTERM, stop in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskstream_api::ApiBuilder;
use taskstream_avro::RegistryClient;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{EventEncoding, RetryPolicy};
use taskstream_store::Store;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::cli::{
    AgentArgs, AgentCommand, ApiArgs, ConsumerArgs, DevBrokerArgs, EventFormat, HttpLimitArgs,
    NotifierArgs, ProcessorArgs, Publisher, RegistryArgs, RegistryServerArgs, RelayArgs,
    SagaCmdArgs, StoreArgs, UpArgs,
};
use crate::components::{
    self, readiness, CaptureSettings, Checks, Component, ConsumerOptions, DevBrokerKind,
    EmbeddedBroker, EmbeddedBrokerSettings, NotifierSink, RelayReadiness, ServiceData, BROKER_DIR,
};
use crate::shutdown_guard::shutdown_signal;
use crate::system::{RegistrySetting, RunningSystem, SystemConfig, STATS_INTERVAL};

/// Prints `name: address` lines. A closed stdout (the reader went away) must
/// not bring the service down, so write errors are ignored.
fn print_endpoints(endpoints: &[(&str, String)]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (name, address) in endpoints {
        let _ = writeln!(out, "{name}: {address}");
    }
    let _ = out.flush();
}

/// Waits for Ctrl-C or SIGTERM, then stops `running` in order and closes the store.
async fn run_until_signal(running: Vec<Component>, store: &Store) {
    shutdown_signal().await;
    components::stop_all(running).await;
    store.close().await;
}

/// Opens the store the flags name.
async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<Store>> {
    components::open_store(
        &args.data_dir,
        args.database()?.as_ref(),
        &args.options(),
        &args.postgres_options(),
    )
    .await
}

/// Serves `api` (plus /metrics and a /readyz running `checks`) on `addr`
/// and prints the address.
async fn serve(
    addr: SocketAddr,
    limits: &HttpLimitArgs,
    api: ApiBuilder,
    metrics: &Arc<Metrics>,
    store: &Arc<Store>,
    checks: Checks,
) -> anyhow::Result<Component> {
    let api = api.observability(Arc::clone(metrics), Some(store.clone()), checks);
    let (_, http) = components::http(addr, api, &limits.limits()).await?;
    print_endpoints(&[("http", http.address().unwrap_or_default().to_owned())]);
    Ok(http)
}

/// `taskstream up`: every component in one process.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut config = SystemConfig::new(args.http, &args.store.data_dir);
    config.sqlite = args.store.options();
    config.database = args.store.database()?;
    config.postgres = args.store.postgres_options();
    config.kafka = args.kafka.config()?;
    config.dev_broker = args.embedded_broker.dev_broker;
    config.broker_flush = args.embedded_broker.broker_flush;
    config.kafka_wait_at_start = args.kafka_start.kafka_wait_at_start;
    config.ready_max_outbox_age = args.readiness.ready_max_outbox_age;
    config.notifier_delay = args.notifier_delay_ms;
    config.notifier_webhook = args.notifier_webhook_url.clone();
    let mock = config.kafka.is_none() && config.dev_broker == DevBrokerKind::Mock;
    config.relay = args.outbox.relay_settings(!mock)?;
    config.consumer.retry.give_up_after = args.give_up_after;
    config.http_limits = args.http_limits.limits();
    config.session_timeout = args.session_timeout;
    config.static_membership = args.static_membership;
    if args.no_processor {
        config.processor = None;
    }
    config.saga = (!args.no_saga).then(|| args.saga.settings());
    config.agent = match args.no_agent {
        true => None,
        false => Some(
            args.agent
                .settings(args.kafka.max_poll_interval()?, &config.consumer.retry)?,
        ),
    };
    config.registry = match (args.event_format, args.registry.schema_registry) {
        (EventFormat::Json, _) => RegistrySetting::Disabled,
        (EventFormat::Avro, Some(url)) => RegistrySetting::External(url),
        (EventFormat::Avro, None) => RegistrySetting::Embedded(args.registry_http),
    };
    let system = RunningSystem::start(config).await?;
    print_endpoints(&system.endpoints().named());
    tracing::info!(data_dir = %args.store.data_dir.display(), "taskstream is up; Ctrl-C stops it");
    shutdown_signal().await;
    system.shutdown().await;
    Ok(())
}

/// `taskstream api`: the Task API alone. A relay in another process finds
/// new rows by polling.
pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let registry = avro_registry(args.event_format, &args.registry, &args.store.data_dir)?;
    let store = open_store(&args.store).await?;
    let database = args.store.database()?;
    let (sqlite, postgres) = (args.store.options(), args.store.postgres_options());
    let metrics = Metrics::new();
    // Refused before anything is served: Debezium needs PostgreSQL.
    let capture = (args.publisher.publisher == Publisher::Debezium)
        .then(|| {
            let settings = CaptureSettings {
                retention: args.publisher.outbox.retention(),
                ..CaptureSettings::for_slot(&args.publisher.cdc_slot)
            };
            components::capture_confirmation(Arc::clone(&store), settings)
        })
        .transpose()?;
    let encoding = EventEncoding::for_registry(registry.as_ref(), TASK_EVENTS);
    let mut running: Vec<Component> = components::register_schemas(&encoding)
        .await?
        .into_iter()
        .collect();
    // No registry check: once the schemas are registered, writes never
    // call the registry, so its outage must not take the API out of service.
    let checks = components::api_checks(&store, &encoding);
    // The read-only views of the audit log and the notifications: in the
    // shared database, or in the services' own files of the data directory.
    let view = |service| {
        components::open_service_store(
            service,
            &args.store.data_dir,
            database.as_ref(),
            &sqlite,
            &postgres,
            Some(&store),
        )
    };
    let (audit, notifications) = (
        view(ServiceData::Audit).await?,
        view(ServiceData::Notifications).await?,
    );
    let api = components::task_api(Arc::clone(&store), Arc::new(Notify::new()), encoding)
        .audit(audit.clone())
        .notifications(notifications.clone());
    let http = serve(
        args.http,
        &args.http_limits,
        api,
        &metrics,
        &store,
        checks.clone(),
    )
    .await?
    .with_checks(checks);
    running.insert(0, http);
    running.extend(capture);
    run_until_signal(running, &store).await;
    for view in [audit, notifications] {
        if !Arc::ptr_eq(&view, &store) {
            view.close().await;
        }
    }
    Ok(())
}

/// `taskstream relay`: the outbox relay alone, with /readyz and /metrics
/// when `--http` is given.
pub async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (kafka, mock) = args.kafka.resolve(&args.store.data_dir, "relay")?;
    let settings = args.outbox.relay_settings(!mock)?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    args.kafka_start.wait(&kafka).await?;
    let registry = avro_registry(args.event_format, &args.registry, &args.store.data_dir)?;
    let store = open_store(&args.store).await?;
    let wake = Arc::new(Notify::new());
    let listener = components::outbox_listener(&store, Arc::clone(&wake));
    let relay = components::relay_with_readiness(
        Arc::clone(&store),
        &kafka,
        wake,
        settings,
        EventEncoding::for_registry(registry.as_ref(), TASK_EVENTS),
        &RelayReadiness {
            outbox_max_age: args.readiness.ready_max_outbox_age,
            registry: registry.clone(),
        },
        &metrics,
    )?;
    let mut running = Vec::new();
    if let Some(addr) = args.http {
        let checks = readiness::assemble([relay.readiness_checks()]);
        running.push(
            serve(
                addr,
                &args.http_limits,
                ApiBuilder::new(),
                &metrics,
                &store,
                checks,
            )
            .await?,
        );
    }
    running.extend(listener);
    running.push(relay);
    run_until_signal(running, &store).await;
    Ok(())
}

/// `taskstream notifier`: the notification service alone.
pub async fn notifier(args: NotifierArgs) -> anyhow::Result<()> {
    let sink = NotifierSink {
        webhook: args.webhook_url,
        delay: args.delay_ms,
    };
    consumer("notifier", args.consumer, sink).await
}

/// `taskstream agent`: the triage agent alone (with its `/metrics`,
/// `/readyz` and `/healthz` when `--http` is given), or one of its tools.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Ask(ask)) => return crate::ops::agent::ask(ask).await,
        Some(AgentCommand::Replay(replay)) => return crate::ops::agent::replay(replay).await,
        None => {}
    }
    let settings = args.run.model.settings(
        args.run.consumer.kafka.max_poll_interval()?,
        &RetryPolicy::default(),
    )?;
    let event_format = args.run.event_format;
    let args = args.run.consumer;
    let registry = args
        .registry
        .resolve(&args.store.data_dir)?
        .map(|url| Arc::new(RegistryClient::new(&url)));
    // Accepted suggestions write task events, in the deployment's format.
    let encoding = EventEncoding::for_registry(
        agent_encoding_registry(event_format, settings.auto_accept.is_some(), &registry)?.as_ref(),
        TASK_EVENTS,
    );
    let metrics = Metrics::new();
    let (kafka, dev_broker) = args.kafka.resolve(&args.store.data_dir, "agent")?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    args.kafka_start.wait(&kafka).await?;
    let store = open_store(&args.store).await?;
    let options = consumer_options(&args, dev_broker, registry.clone());
    let mut running: Vec<Component> = match settings.auto_accept {
        Some(_) => components::register_schemas(&encoding)
            .await?
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    let agent = components::agent(
        Arc::clone(&store),
        &kafka,
        args.group.as_deref(),
        &options,
        &settings,
        components::OutboxWrites {
            relay_wake: Arc::new(Notify::new()),
            encoding,
        },
        &metrics,
    )?;
    if let Some(addr) = args.http {
        let checks = readiness::assemble([agent.readiness_checks()]);
        running.insert(
            0,
            serve(
                addr,
                &args.http_limits,
                ApiBuilder::new(),
                &metrics,
                &store,
                checks,
            )
            .await?,
        );
    }
    running.push(agent);
    running.push(components::agent_responder(&kafka, &options, &settings)?);
    run_until_signal(running, &store).await;
    Ok(())
}

/// `taskstream auditor`: the audit-log service alone.
pub async fn auditor(args: ConsumerArgs) -> anyhow::Result<()> {
    consumer("auditor", args, NotifierSink::default()).await
}

/// One consumer service, with its read-only view, /readyz and /metrics
/// when `--http` is given.
async fn consumer(
    which: &'static str,
    args: ConsumerArgs,
    sink: NotifierSink,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (kafka, dev_broker) = args.kafka.resolve(&args.store.data_dir, which)?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    args.kafka_start.wait(&kafka).await?;
    let (store, outbox) = consumer_stores(which, &args.store).await?;
    let registry = args.registry.resolve(&args.store.data_dir)?;
    if registry.is_none() {
        tracing::warn!("no schema registry configured: Avro records will be dead-lettered (pass --schema-registry URL)");
    }
    let registry = registry.map(|url| Arc::new(RegistryClient::new(&url)));
    let options = consumer_options(&args, dev_broker, registry.clone());
    let group = args.group.as_deref();
    let (consumer, api) = match which {
        "auditor" => (
            components::auditor(
                Arc::clone(&store),
                outbox.clone(),
                &kafka,
                group,
                &options,
                &metrics,
            )?,
            ApiBuilder::new().audit(store.clone()),
        ),
        _ => (
            components::notifier(
                Arc::clone(&store),
                outbox.clone(),
                &kafka,
                group,
                &options,
                &sink,
                &metrics,
            )?,
            ApiBuilder::new().notifications(store.clone()),
        ),
    };
    let mut running = Vec::new();
    if let Some(addr) = args.http {
        let checks = readiness::assemble([consumer.readiness_checks()]);
        // /metrics reports the outbox the events come from, where there is one.
        let outbox_stats = outbox.as_ref().unwrap_or(&store);
        running.push(serve(addr, &args.http_limits, api, &metrics, outbox_stats, checks).await?);
    }
    running.push(consumer);
    run_until_signal(running, &store).await;
    if let Some(outbox) = outbox.filter(|o| !Arc::ptr_eq(o, &store)) {
        outbox.close().await;
    }
    Ok(())
}

/// The auditor's or the notifier's own store, and the Task API's outbox
/// it repairs gaps from: with `--database-url`, both are that one shared
/// database; else the service's SQLite file in the data directory, and the
/// Task API's file there if there is one (whose rows of this service a new
/// file takes once, see [`components::open_service_store`]).
async fn consumer_stores(
    which: &str,
    args: &StoreArgs,
) -> anyhow::Result<(Arc<Store>, Option<Arc<Store>>)> {
    let service = match which {
        "auditor" => ServiceData::Audit,
        _ => ServiceData::Notifications,
    };
    let database = args.database()?;
    let (sqlite, postgres) = (args.options(), args.postgres_options());
    let tasks =
        components::existing_tasks_store(&args.data_dir, database.as_ref(), &sqlite, &postgres)
            .await?;
    let store = components::open_service_store(
        service,
        &args.data_dir,
        database.as_ref(),
        &sqlite,
        &postgres,
        tasks.as_ref(),
    )
    .await?;
    let outbox = match database {
        Some(_) => Some(Arc::clone(&store)),
        None => tasks,
    };
    Ok((store, outbox))
}

/// `taskstream saga`: the assignment saga alone (its orchestrator's
/// consumer group and its timer), with `/sagas`, accept and decline,
/// /readyz and /metrics when `--http` is given.
pub async fn saga(args: SagaCmdArgs) -> anyhow::Result<()> {
    let consumer_args = &args.consumer;
    let metrics = Metrics::new();
    let (kafka, dev_broker) = consumer_args
        .kafka
        .resolve(&consumer_args.store.data_dir, "saga")?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    consumer_args.kafka_start.wait(&kafka).await?;
    let registry = avro_registry(
        args.event_format,
        &consumer_args.registry,
        &consumer_args.store.data_dir,
    )?;
    let store = open_store(&consumer_args.store).await?;
    let encoding = EventEncoding::for_registry(registry.as_ref(), TASK_EVENTS);
    // The compensation writes task events: their schemas first.
    let mut running: Vec<Component> = components::register_schemas(&encoding)
        .await?
        .into_iter()
        .collect();
    let options = consumer_options(consumer_args, dev_broker, registry.clone());
    let wakes = components::SagaWakes::default();
    let saga = components::saga(
        Arc::clone(&store),
        &kafka,
        consumer_args.group.as_deref(),
        &options,
        components::SagaRun {
            settings: args.saga.settings(),
            encoding,
            wakes: wakes.clone(),
        },
        &metrics,
    )?;
    if let Some(addr) = consumer_args.http {
        let checks = readiness::assemble(saga.iter().map(Component::readiness_checks));
        let commands = taskstream_services::saga::SagaCommands::new(
            store.clone(),
            Arc::clone(&wakes.timer),
            Arc::clone(&wakes.relay),
        );
        let api = ApiBuilder::new().sagas(commands);
        running.insert(
            0,
            serve(
                addr,
                &consumer_args.http_limits,
                api,
                &metrics,
                &store,
                checks,
            )
            .await?,
        );
    }
    running.extend(saga);
    run_until_signal(running, &store).await;
    Ok(())
}

/// `taskstream processor`: the workload processor alone, with /metrics when
/// `--http` is given. Exits with an error when fenced by a newer processor.
pub async fn processor(args: ProcessorArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (kafka, _) = args.kafka.resolve(&args.data_dir, "processor")?;
    let kafka = kafka.with_stats(metrics.stats_listener(), STATS_INTERVAL);
    args.kafka_start.wait(&kafka).await?;
    let registry = args
        .registry
        .resolve(&args.data_dir)?
        .map(|url| Arc::new(RegistryClient::new(&url)));
    let mut running = Vec::new();
    if let Some(addr) = args.http {
        let api = ApiBuilder::new().observability(Arc::clone(&metrics), None, Vec::new());
        let (_, http) = components::http(addr, api, &args.http_limits.limits()).await?;
        print_endpoints(&[("http", http.address().unwrap_or_default().to_owned())]);
        running.push(http);
    }
    let (processor, finished) = components::processor(&kafka, registry, args.settings(), &metrics);
    running.push(processor);
    let outcome = tokio::select! {
        () = shutdown_signal() => Ok(()),
        stopped = finished => stopped.unwrap_or(Ok(())),
    };
    components::stop_all(running).await;
    outcome.context("the processor stopped")
}

/// The consumer options the flags ask for, on the dev broker's timings when
/// `dev_broker`.
fn consumer_options(
    args: &ConsumerArgs,
    dev_broker: bool,
    registry: Option<Arc<RegistryClient>>,
) -> ConsumerOptions {
    let mut base = if dev_broker {
        ConsumerOptions::for_dev_broker()
    } else {
        ConsumerOptions::default()
    };
    if let Some(timeout) = args.session_timeout {
        base.kafka.session_timeout = timeout;
    }
    ConsumerOptions {
        registry,
        retry: RetryPolicy {
            give_up_after: args.give_up_after,
            ..base.retry.clone()
        },
        ..base
    }
}

/// `taskstream dev-broker`: the embedded Kafka-protocol broker alone.
pub async fn dev_broker(args: DevBrokerArgs) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(&EmbeddedBrokerSettings {
        kind: args.broker.dev_broker,
        data_dir: args.data_dir.map(|dir| dir.join(BROKER_DIR)),
        listen: args.listen,
        flush: args.broker.broker_flush,
    })
    .await?;
    print_endpoints(&[("kafka", broker.bootstrap_servers().to_owned())]);
    shutdown_signal().await;
    tokio::task::spawn_blocking(move || broker.shutdown(Duration::from_secs(1))).await?;
    Ok(())
}

/// `taskstream registry`: the embedded schema registry alone.
pub async fn registry(args: RegistryServerArgs) -> anyhow::Result<()> {
    let (_, registry) = components::registry(
        args.http,
        &args.data_dir,
        "registry",
        &args.http_limits.limits(),
    )
    .await?;
    print_endpoints(&[(
        "schema-registry",
        registry.address().unwrap_or_default().to_owned(),
    )]);
    shutdown_signal().await;
    registry.stop().await;
    Ok(())
}

/// The schema registry the agent encodes the task events of its
/// auto-accept rule with: none with `--event-format json` (even when a
/// registry is known, for reading); with Avro, the one known, which an
/// auto-accept rule needs (a one-line error says how to give one).
fn agent_encoding_registry(
    format: EventFormat,
    auto_accept: bool,
    registry: &Option<Arc<RegistryClient>>,
) -> anyhow::Result<Option<Arc<RegistryClient>>> {
    match format {
        EventFormat::Json => Ok(None),
        EventFormat::Avro if auto_accept && registry.is_none() => anyhow::bail!(
            "the auto-accept rule stores Avro task events, which need a schema registry: \
             pass --schema-registry URL or set SCHEMA_REGISTRY_URL (or --event-format json)"
        ),
        EventFormat::Avro => Ok(registry.clone()),
    }
}

/// The schema registry an `api` or `relay` process encodes with: none with
/// `--event-format json`; with Avro, the one given (or found in
/// `endpoints.json`), or a one-line error saying how to give one.
fn avro_registry(
    format: EventFormat,
    registry: &RegistryArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<Arc<RegistryClient>>> {
    Ok(match format {
        EventFormat::Json => None,
        EventFormat::Avro => Some(Arc::new(RegistryClient::new(
            &registry.resolve(data_dir)?.context(
                "Avro events need a schema registry: pass --schema-registry URL or set SCHEMA_REGISTRY_URL \
                 (or --event-format json)",
            )?,
        ))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_writes_task_events_in_the_format_it_is_given_not_the_one_its_registry_allows() {
        let registry = Some(Arc::new(RegistryClient::new("http://127.0.0.1:9")));
        // JSON, though a registry is known (to read Avro history with).
        for auto_accept in [true, false] {
            assert!(
                agent_encoding_registry(EventFormat::Json, auto_accept, &registry)
                    .unwrap()
                    .is_none()
            );
        }
        assert!(agent_encoding_registry(EventFormat::Avro, true, &registry)
            .unwrap()
            .is_some());
        // Avro without a registry: refused only where task events are written.
        let error = agent_encoding_registry(EventFormat::Avro, true, &None).unwrap_err();
        assert!(error.to_string().contains("--event-format json"), "{error}");
        assert!(agent_encoding_registry(EventFormat::Avro, false, &None)
            .unwrap()
            .is_none());
    }
}
