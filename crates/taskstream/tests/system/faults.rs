//! Failures injected on the dev broker: it goes down while events are
//! produced and consumed, and it answers requests with retriable errors.
//! Every event must still arrive, and every effect happen exactly once.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;
use taskstream_kafka::{InjectedError, KafkaApi};
use taskstream_store::{AuditStore, NotificationStore, OutboxStore, Store};

use crate::helpers::{client, eventually, spawn_app_on_mock};

/// Waits for `events` audit entries and `notifications` notifications, then
/// checks there are no more, no duplicates, and each task's events are in
/// version order.
/// `audit` and `notifier` are the two services' stores (one and the same
/// where the components share a database).
pub async fn assert_exactly_once(
    audit: &Store,
    notifier: &Store,
    events: usize,
    notifications: usize,
) {
    eventually(
        &format!("{events} audited, {notifications} notified"),
        Duration::from_secs(60),
        || async {
            let audited = audit.audit_entries(None, 100_000).await.ok()?.len();
            let notified = notifier.notifications(None, 100_000).await.ok()?.len();
            (audited >= events && notified >= notifications).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = audit.audit_entries(None, 100_000).await.unwrap();
    assert_eq!(audit.len(), events, "no event lost or recorded twice");
    let ids: HashSet<_> = audit.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events);
    let mut versions: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in &audit {
        versions
            .entry(e.task_id.as_str())
            .or_default()
            .push(e.task_version);
    }
    for (task, v) in versions {
        assert!(
            v.windows(2).all(|w| w[1] == w[0] + 1) && v[0] == 1,
            "task {task} events out of order: {v:?}"
        );
    }
    let notes = notifier.notifications(None, 100_000).await.unwrap();
    assert_eq!(notes.len(), notifications, "each notification sent once");
    let keys: HashSet<_> = notes.iter().map(|n| (n.event_id, n.kind.clone())).collect();
    assert_eq!(keys.len(), notifications);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_during_production_and_consumption_loses_and_doubles_nothing() {
    let app = spawn_app_on_mock().await; // The mock: the test takes its broker down and up.
    let broker = app.system.dev_broker().unwrap();
    let base = app.url("");
    // A steady writer: 60 assigned tasks, every third one completed.
    let writer = tokio::spawn(async move {
        let client = client();
        for i in 0..60 {
            let response = client
                .post(format!("{base}/tasks"))
                .json(&json!({ "title": format!("t{i}"), "assignee": "ana" }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                201,
                "the API takes writes while Kafka is down"
            );
            if i % 3 == 0 {
                let id = response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let done = client
                    .post(format!("{base}/tasks/{id}/complete"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(done.status(), 200);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = app.system.store().outbox_stats().await.unwrap().pending;
    assert!(
        waiting > 0,
        "events wait in the outbox while the broker is down"
    );
    broker.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    broker.broker_up(1).unwrap();
    writer.await.unwrap();
    assert_exactly_once(
        app.system.audit_store(),
        app.system.notifier_store(),
        60 + 20,
        60 + 20,
    )
    .await;
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_fetch_and_commit_errors_are_absorbed() {
    let app = spawn_app_on_mock().await; // The mock: the test injects request errors.
    let broker = app.system.dev_broker().unwrap();
    // Warm up so the consumers have joined and fetch.
    app.created("warm-up", None).await;
    app.audit_when(1).await;
    broker
        .inject_errors(KafkaApi::Produce, InjectedError::NotLeaderForPartition, 4)
        .unwrap();
    broker
        .inject_errors(KafkaApi::Produce, InjectedError::RequestTimedOut, 3)
        .unwrap();
    broker
        .inject_errors(KafkaApi::Fetch, InjectedError::NotLeaderForPartition, 6)
        .unwrap();
    broker
        .inject_errors(KafkaApi::OffsetCommit, InjectedError::NotCoordinator, 4)
        .unwrap();
    broker
        .inject_errors(KafkaApi::OffsetCommit, InjectedError::RequestTimedOut, 4)
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            app.created(&format!("t{i}"), Some("bo")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids[..20] {
        assert_eq!(app.complete(id).await.status(), 200);
    }
    assert_exactly_once(
        app.system.audit_store(),
        app.system.notifier_store(),
        1 + 40 + 20,
        40 + 20,
    )
    .await;
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_replaces_a_producer_ended_by_a_fatal_error_and_loses_nothing() {
    use std::sync::{Arc, Mutex};

    use taskstream_domain::{Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskTitle};
    use taskstream_kafka::{read_topic, EventProducer, KafkaConfig, ProducerSettings};
    use taskstream_services::topics::TASK_EVENTS;
    use taskstream_services::{
        EventEncoding, OutboxRelay, ProducerFactory, RelaySettings, Shutdown,
    };
    use taskstream_store::{OutboxMessage, SqliteOptions, SqliteStore, TaskStore};

    // The fatal error is injected into the producer, not the broker:
    // taskstream's own broker serves.
    let broker = crate::helpers::own_broker().await;
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::Sqlite(
        SqliteStore::open(&dir.path().join("t.db"), &SqliteOptions::default())
            .await
            .unwrap(),
    ));
    // Every producer the relay makes, so the test can end the first one.
    let made: Arc<Mutex<Vec<EventProducer>>> = Arc::default();
    let factory: ProducerFactory = {
        let (made, kafka) = (Arc::clone(&made), kafka.clone());
        Arc::new(move || {
            let producer = EventProducer::new(&kafka, "relay", &ProducerSettings::ordered())?;
            made.lock().unwrap().push(producer.clone());
            Ok(producer)
        })
    };
    let metrics = taskstream_telemetry::Metrics::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let relay = OutboxRelay::new(
        Arc::clone(&store) as Arc<dyn OutboxStore>,
        factory,
        Arc::clone(&wake),
        RelaySettings::default(),
        Arc::clone(&metrics),
        EventEncoding::Json,
    )
    .unwrap();
    let (stop, shutdown) = Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown));

    let mut ids = Vec::new();
    let write = |title: String| {
        let store = Arc::clone(&store);
        let wake = Arc::clone(&wake);
        async move {
            let change = Task::create(
                NewTask {
                    title: TaskTitle::parse(&title).unwrap(),
                    description: None,
                    priority: Priority::Low,
                    due_at: None,
                    assignee: None,
                },
                taskstream_domain::now(),
                Cause::default(),
            );
            let message = OutboxMessage {
                id: change.event.id.as_uuid(),
                aggregate_type: "task".into(),
                aggregate_id: change.task.id.to_string(),
                event_type: change.event.event_type.to_string(),
                topic: TASK_EVENTS.into(),
                payload: JsonCodec.encode(&change.event).unwrap(),
                content_type: "application/json".into(),
                traceparent: None,
                created_at: change.event.time,
            };
            store.insert_task(&change.task, &message).await.unwrap();
            wake.notify_one();
            message.id
        }
    };
    let published = || async { (store.outbox_stats().await.ok()?.pending == 0).then_some(()) };
    for i in 0..5 {
        ids.push(write(format!("before {i}")).await);
    }
    eventually(
        "the first events published",
        Duration::from_secs(20),
        published,
    )
    .await;

    made.lock().unwrap()[0].inject_fatal_error("injected by the test");
    for i in 0..5 {
        ids.push(write(format!("after {i}")).await);
    }
    eventually(
        "the events after the fatal error published",
        Duration::from_secs(30),
        published,
    )
    .await;
    assert_eq!(made.lock().unwrap().len(), 2, "one replacement producer");
    assert!(made.lock().unwrap()[0].fatal_error().is_some());
    let scraped = metrics.render();
    assert!(
        scraped.contains("taskstream_relay_producer_restarts_total 1"),
        "{scraped}"
    );

    let records = read_topic(&kafka, TASK_EVENTS, Duration::from_secs(10))
        .await
        .unwrap();
    let on_topic: HashSet<String> = records
        .iter()
        .filter_map(|r| {
            r.header_str(taskstream_domain::headers::EVENT_ID)
                .map(str::to_owned)
        })
        .collect();
    for id in &ids {
        assert!(
            on_topic.contains(&id.to_string()),
            "event {id} never reached the topic"
        );
    }
    stop.trigger();
    running.await.unwrap();
    crate::helpers::stop_broker(broker).await;
}
