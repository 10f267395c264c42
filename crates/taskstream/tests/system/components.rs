//! The components as a library: started in the test's own process through
//! the same builders `taskstream up` and the subcommands use (no binary),
//! each on a random port, and driven over HTTP.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, readiness, ConsumerOptions, NotifierSink, RelayReadiness};
use taskstream_avro::RegistryClient;
use taskstream_kafka::KafkaConfig;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{EventEncoding, RelaySettings};
use taskstream_store::SqliteOptions;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::helpers::{client, eventually, init_logs, try_items};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_started_from_the_library_on_random_ports_carry_a_task_change_to_both_consumers()
{
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let any_port = "127.0.0.1:0".parse().unwrap();
    let limits = Default::default();
    let broker = components::dev_broker().unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let (_, registry) = components::registry(any_port, dir.path(), "test", &limits)
        .await
        .unwrap();
    let registry_url = registry.address().unwrap().to_owned();
    assert!(
        registry_url.starts_with("http://127.0.0.1:"),
        "{registry_url}"
    );
    let registry_client = Arc::new(RegistryClient::new(&registry_url));
    let store = components::open_store(
        dir.path(),
        None,
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let metrics = Metrics::new();
    let wake = Arc::new(Notify::new());
    let encoding = EventEncoding::avro(Arc::clone(&registry_client), TASK_EVENTS);
    encoding.register_schemas().await.unwrap();
    let relay = components::relay_with_readiness(
        Arc::clone(&store),
        &kafka,
        Arc::clone(&wake),
        RelaySettings::default(),
        encoding.clone(),
        &RelayReadiness {
            outbox_max_age: Duration::from_secs(30),
            registry: Some(Arc::clone(&registry_client)),
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(relay.address(), None, "the relay listens nowhere");
    let options = ConsumerOptions {
        registry: Some(Arc::clone(&registry_client)),
        ..ConsumerOptions::for_dev_broker()
    };
    let auditor = components::auditor(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
        &kafka,
        None,
        &options,
        &metrics,
    )
    .unwrap();
    let notifier = components::notifier(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
        &kafka,
        None,
        &options,
        &NotifierSink::default(),
        &metrics,
    )
    .unwrap();
    let api_checks = components::api_checks(&store, &encoding);
    let checks = readiness::assemble([
        &api_checks[..],
        relay.readiness_checks(),
        auditor.readiness_checks(),
        notifier.readiness_checks(),
        registry.readiness_checks(),
    ]);
    let api = components::task_api(Arc::clone(&store), wake, encoding)
        .audit(store.clone())
        .notifications(store.clone())
        .observability(Arc::clone(&metrics), Some(store.clone()), checks);
    let (bound, http) = components::http(any_port, api, &limits).await.unwrap();
    let base = http.address().unwrap().to_owned();
    assert_eq!(base, format!("http://{bound}"));
    assert_ne!(bound.port(), 0);

    let client = client();
    let created = client
        .post(format!("{base}/tasks"))
        .json(&json!({ "title": "library", "assignee": "ana" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let task: Value = created.json().await.unwrap();
    let items = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move { try_items(&client, &base, path).await }
    };
    let audited = eventually(
        "the auditor to record the event",
        Duration::from_secs(30),
        || async { items("/audit").await.filter(|items| items.len() == 1) },
    )
    .await;
    assert_eq!(audited[0]["task_id"], task["id"], "{audited:?}");
    let notified = eventually(
        "the notifier to notify the assignee",
        Duration::from_secs(30),
        || async {
            items("/notifications")
                .await
                .filter(|items| items.len() == 1)
        },
    )
    .await;
    assert_eq!(notified[0]["recipient"], "ana", "{notified:?}");

    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "store",
            "schemas",
            "kafka",
            "outbox_age",
            "offset_resets",
            "schema_registry"
        ]
    );

    components::stop_all(vec![http, relay, auditor, notifier, registry]).await;
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "the API still answers after it was stopped"
    );
    store.close().await;
    broker.shutdown(Duration::from_secs(1));
}
