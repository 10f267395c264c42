//! Consumers join and leave their groups under load: partitions move,
//! nothing is lost, and redeliveries are absorbed.

use std::time::Duration;

use serde_json::json;
use taskstream::components;
use taskstream_testkit::Shape;

use crate::brokers::Broker;
use crate::faults::assert_exactly_once;
use crate::helpers::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_under_load_lose_nothing() {
    members_join_and_leave_under_load(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_under_load_lose_nothing_on_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "rebalancing under load").await
    else {
        return;
    };
    members_join_and_leave_under_load(&kafka).await;
}

async fn members_join_and_leave_under_load(broker: &Broker) {
    let p = crate::helpers::Pipeline::start_on(broker, taskstream_store::SqliteOptions::default())
        .await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let options = broker.consumer_options();
    let pair = || {
        [
            components::auditor(
                store.clone(),
                Some(store.clone()),
                &kafka,
                None,
                &options,
                &metrics,
            )
            .unwrap(),
            components::notifier(
                store.clone(),
                Some(store.clone()),
                &kafka,
                None,
                &options,
                &Default::default(),
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

    assert_exactly_once(&store, &store, 150, 150).await;
    for c in second.into_iter().chain(third) {
        c.stop().await;
    }
    p.stop().await;
}
