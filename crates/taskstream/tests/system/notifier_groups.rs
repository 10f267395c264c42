//! Each consumer group de-duplicates by its own name: a notifier started in
//! another group (`taskstream consume notifier --group X`) notifies every
//! event, even those the default group handled before it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use taskstream::components::{self, ConsumerOptions, NotifierSink};
use taskstream_store::{NotificationStore, SqliteOptions};

use crate::helpers::{client, eventually, Pipeline};

/// The bodies a webhook receiver was posted, in arrival order.
type Received = Arc<Mutex<Vec<Value>>>;

async fn receive(State(received): State<Received>, Json(body): Json<Value>) -> StatusCode {
    received.lock().unwrap().push(body);
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_in_another_group_notifies_events_the_default_group_already_handled() {
    let p = Pipeline::start(SqliteOptions::default()).await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let response = client()
        .post(format!("http://{addr}/tasks"))
        .json(&json!({ "title": "tell everyone", "assignee": "ana" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let options = ConsumerOptions::for_dev_broker();

    let first = components::notifier(
        store.clone(),
        Some(store.clone()),
        &kafka,
        None,
        &options,
        &Default::default(),
        &metrics,
    )
    .unwrap();
    eventually(
        "the default group to notify",
        Duration::from_secs(20),
        || async {
            let sent = store.notifications(None, 10).await.ok()?;
            (sent.len() == 1).then_some(())
        },
    )
    .await;

    // A second notifier, in a group of its own and posting to a webhook,
    // reads the same event from the same database.
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&received));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let webhook = NotifierSink {
        webhook: Some(url),
        ..Default::default()
    };
    let second = components::notifier(
        store.clone(),
        Some(store.clone()),
        &kafka,
        Some("notifier-second"),
        &options,
        &webhook,
        &metrics,
    )
    .unwrap();
    let posted = eventually(
        "the second group to notify",
        Duration::from_secs(20),
        || async {
            let posted = received.lock().unwrap().clone();
            (!posted.is_empty()).then_some(posted)
        },
    )
    .await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["kind"], "task_assigned");
    assert_eq!(posted[0]["recipient"], "ana");
    let processed = eventually(
        "the second group to mark the event processed",
        Duration::from_secs(20),
        || async {
            let processed = store.processed_times("notifier-second").await.ok()?;
            (!processed.is_empty()).then_some(processed)
        },
    )
    .await;
    assert_eq!(processed.len(), 1);
    assert_eq!(store.processed_times("notifier").await.unwrap().len(), 1);
    let recorded = store.notifications(None, 10).await.unwrap();
    assert_eq!(
        recorded.len(),
        1,
        "one notification per event and kind is recorded: {recorded:?}"
    );

    second.stop().await;
    first.stop().await;
    p.stop().await;
}
