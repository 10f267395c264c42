//! Consumers join and leave their groups under load: partitions move,
//! nothing is lost, and redeliveries are absorbed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskstream::components::{self, ConsumerOptions};
use taskstream_kafka::{DevBroker, KafkaConfig};
use taskstream_services::topics::declared_topics;
use taskstream_services::{EventEncoding, RelaySettings};
use taskstream_store::SqliteOptions;
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::faults::assert_exactly_once;
use crate::helpers::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_under_load_lose_nothing() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let broker = DevBroker::start(&declared_topics(1)).unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let store = components::open_store(dir.path(), &SqliteOptions::default())
        .await
        .unwrap();
    let metrics = Metrics::new();
    let wake = Arc::new(Notify::new());
    let relay = components::relay(
        store.clone(),
        &kafka,
        wake.clone(),
        RelaySettings::default(),
        EventEncoding::Json,
        &metrics,
    )
    .unwrap();
    let (addr, http) = components::http(
        "127.0.0.1:0".parse().unwrap(),
        components::task_api(store.clone(), wake),
    )
    .await
    .unwrap();
    let options = ConsumerOptions::for_dev_broker();
    let pair = || {
        [
            components::auditor(store.clone(), &kafka, None, &options, &metrics).unwrap(),
            components::notifier(
                store.clone(),
                &kafka,
                None,
                &options,
                Duration::ZERO,
                &metrics,
            )
            .unwrap(),
        ]
    };

    let writer = tokio::spawn(async move {
        let client = client();
        for i in 0..150 {
            let response = client
                .post(format!("http://{addr}/tasks"))
                .json(&json!({ "title": format!("t{i}"), "assignee": "ana" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    let [first_auditor, first_notifier] = pair();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Two more members per group: partitions are shared out.
    let second = pair();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first auditor leaves cleanly; the first notifier is aborted
    // mid-flight, skipping its orderly shutdown.
    first_auditor.stop().await;
    drop(first_notifier);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = pair();
    writer.await.unwrap();

    assert_exactly_once(&store, 150, 150).await;
    for c in second.into_iter().chain(third) {
        c.stop().await;
    }
    http.stop().await;
    relay.stop().await;
    store.close().await;
    drop(broker);
}
