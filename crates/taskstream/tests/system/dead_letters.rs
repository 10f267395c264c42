//! Poison records and exhausted retries go to the dead-letter topic; the
//! partition moves on; a replay after the fix is handled exactly once.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;
use taskstream::components::{self, ConsumerOptions};
use taskstream_kafka::{
    group_offsets, EventProducer, KafkaConfig, OutboundRecord, ProducerSettings,
};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::RetryPolicy;
use taskstream_store::{AuditStore, NotificationStore, OutboxStore, SqliteOptions, Store};

use taskstream_testkit::Shape;

use crate::brokers::Broker;
use crate::helpers::{client, eventually, spawn_app_on};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// `taskstream dlq list --json` against `bootstrap`.
async fn dead_letters(bootstrap: &str) -> Vec<Value> {
    let bootstrap = bootstrap.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["dlq", "list", "--json", "--kafka-bootstrap", &bootstrap])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the relay has published every event in the outbox.
async fn all_published(store: &Store) {
    eventually("the events published", Duration::from_secs(20), || async {
        (store.outbox_stats().await.ok()?.pending == 0).then_some(())
    })
    .await;
}

/// Another connection holds SQLite's write lock until it rolls back: every
/// write of the store fails meanwhile.
async fn lock_writes(store: &Store) -> sqlx::SqliteConnection {
    let path = store.sqlite().unwrap().path().display().to_string();
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}

/// Consumers that give up on an attempt quickly (two in a row, 20 ms
/// apart) and hold partitions through an outage for up to two minutes.
fn holding_through_outages() -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(300),
            give_up_after: Duration::from_secs(120),
        },
        ..ConsumerOptions::for_dev_broker()
    }
}

async fn produce(kafka: &KafkaConfig, key: &str, payload: &[u8], event_type: &str) -> (i32, i64) {
    let producer = EventProducer::new(kafka, "test-poison", &ProducerSettings::default()).unwrap();
    let headers: [(&str, &[u8]); 1] = [(
        taskstream_domain::headers::EVENT_TYPE,
        event_type.as_bytes(),
    )];
    let delivery = producer
        .enqueue(OutboundRecord {
            topic: TASK_EVENTS,
            key: key.as_bytes(),
            payload,
            headers: &headers,
        })
        .await
        .unwrap()
        .await
        .unwrap();
    (delivery.partition, delivery.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_their_story_and_later_events_are_processed() {
    poison_records_are_dead_lettered(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_their_story_and_later_events_are_processed_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "dead-lettering poison").await else {
        return;
    };
    poison_records_are_dead_lettered(&kafka).await;
}

/// Three poison records (garbage bytes, a newer schema version, an unknown
/// event type) among valid events.
async fn poison_records_are_dead_lettered(broker: &Broker) {
    let app = spawn_app_on(broker).await;
    let kafka = KafkaConfig::new(app.system.kafka_bootstrap());
    // A valid event from a newer producer, and one of a type nobody knows.
    let template: Value = {
        let task = app.created("template", None).await;
        app.audit_when(1).await;
        let audit = app
            .items(&format!("/audit?task_id={}", task["id"].as_str().unwrap()))
            .await;
        let envelope: Value = serde_json::from_str(
            &app.system
                .audit_store()
                .audit_entries(None, 10)
                .await
                .unwrap()[0]
                .envelope,
        )
        .unwrap();
        assert_eq!(audit.len(), 1);
        envelope
    };
    let mut newer = template.clone();
    newer["id"] = json!(uuid::Uuid::now_v7());
    newer["schema_version"] = json!(99);
    let mut unknown = template.clone();
    unknown["id"] = json!(uuid::Uuid::now_v7());
    unknown["type"] = json!("task.exploded");
    let poison = [
        (
            "poison-garbage",
            b"\x00\x01\x02 not json".to_vec(),
            "task.created",
        ),
        (
            "poison-newer",
            serde_json::to_vec(&newer).unwrap(),
            "task.created",
        ),
        (
            "poison-unknown",
            serde_json::to_vec(&unknown).unwrap(),
            "task.exploded",
        ),
    ];
    let mut places = Vec::new();
    for (key, payload, event_type) in &poison {
        places.push(produce(&kafka, key, payload, event_type).await);
    }
    for i in 0..5 {
        app.created(&format!("after {i}"), Some("ana")).await;
    }
    // Valid events after the poison are processed...
    app.audit_when(6).await;
    app.notifications_when(5).await;
    // ...and every poison record is parked once per group, with its story.
    let letters = eventually("six dead letters", Duration::from_secs(20), || async {
        let letters = dead_letters(app.system.kafka_bootstrap()).await;
        (letters.len() >= 6).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 6);
    for ((key, _, event_type), (partition, offset)) in poison.iter().zip(&places) {
        let mine: Vec<&Value> = letters.iter().filter(|l| l["key"] == *key).collect();
        let mut groups: Vec<&str> = mine.iter().map(|l| l["group"].as_str().unwrap()).collect();
        groups.sort();
        assert_eq!(groups, ["auditor", "notifier"], "{key}");
        for l in mine {
            assert_eq!(l["class"], "undecodable");
            assert_eq!(l["original_topic"], TASK_EVENTS);
            assert_eq!(l["original_partition"], *partition);
            assert_eq!(l["original_offset"], *offset);
            assert_eq!(l["attempts"], 1);
            assert_eq!(l["event_type"], *event_type, "original headers are kept");
            assert!(l["failed_at"].as_str().unwrap().contains('T'));
            assert!(!l["error"].as_str().unwrap().is_empty());
        }
    }
    let newer_error = letters.iter().find(|l| l["key"] == "poison-newer").unwrap()["error"]
        .as_str()
        .unwrap();
    assert!(newer_error.contains("schema version 99"), "{newer_error}");
    // Both groups moved past the poison: nothing is left to read.
    for group in ["auditor", "notifier"] {
        eventually(
            &format!("{group} fully committed"),
            Duration::from_secs(20),
            || async {
                let offsets = group_offsets(&kafka, group, TASK_EVENTS, Duration::from_secs(5))
                    .await
                    .ok()?;
                offsets.iter().all(|p| p.lag() == 0).then_some(())
            },
        )
        .await;
    }
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_exhausts_retries_into_the_dlq_and_a_replay_is_handled_exactly_once() {
    retries_exhausted_then_replayed(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_exhausts_retries_into_the_dlq_and_a_replay_is_handled_exactly_once_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "replaying dead letters").await
    else {
        return;
    };
    retries_exhausted_then_replayed(&kafka).await;
}

async fn retries_exhausted_then_replayed(broker: &Broker) {
    crate::helpers::init_logs();
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    };
    let p = crate::helpers::Pipeline::start_on(broker, options).await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let bootstrap = kafka.bootstrap_servers.clone();
    let response = client()
        .post(format!("http://{addr}/tasks"))
        .json(&json!({ "title": "during the outage", "assignee": "ana" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    all_published(&store).await;

    // Another process holds the database's write lock: every write fails.
    let mut locker = lock_writes(&store).await;
    let consumer_options = ConsumerOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            // Give up after the attempts in a row: this test is about the
            // dead-letter path, not about riding the outage out.
            give_up_after: Duration::ZERO,
        },
        ..broker.consumer_options()
    };
    let consumers = [
        components::auditor(
            store.clone(),
            Some(store.clone()),
            &kafka,
            None,
            &consumer_options,
            &metrics,
        )
        .unwrap(),
        components::notifier(
            store.clone(),
            Some(store.clone()),
            &kafka,
            None,
            &consumer_options,
            &Default::default(),
            &metrics,
        )
        .unwrap(),
    ];
    let letters = eventually(
        "both groups to give up",
        Duration::from_secs(30),
        || async {
            let letters = dead_letters(&bootstrap).await;
            (letters.len() >= 2).then_some(letters)
        },
    )
    .await;
    assert_eq!(letters.len(), 2);
    for l in &letters {
        assert_eq!(l["class"], "retries-exhausted");
        assert_eq!(l["attempts"], 3);
        assert!(l["error"].as_str().unwrap().contains("store"), "{l}");
    }
    assert!(store.audit_entries(None, 10).await.unwrap().is_empty());

    // The outage ends; an operator re-drives the dead letters.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let replay = |bootstrap: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["dlq", "replay", "--all", "--kafka-bootstrap", &bootstrap])
                .output()
                .unwrap()
        })
    };
    let out = replay(bootstrap.clone()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("1 dead letter(s) replayed"),
        "one original record, dead-lettered by two groups: {stdout}"
    );
    eventually(
        "the replayed event handled",
        Duration::from_secs(20),
        || async {
            let audited = store.audit_entries(None, 10).await.ok()?.len();
            let notified = store.notifications(None, 10).await.ok()?.len();
            (audited == 1 && notified == 1).then_some(())
        },
    )
    .await;
    // Replaying again changes nothing: the handlers know the event.
    let out = replay(bootstrap.clone()).await.unwrap();
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for group in ["auditor", "notifier"] {
        eventually(
            &format!("{group} caught up"),
            Duration::from_secs(20),
            || async {
                let offsets = group_offsets(&kafka, group, TASK_EVENTS, Duration::from_secs(5))
                    .await
                    .ok()?;
                offsets.iter().all(|p| p.lag() == 0).then_some(())
            },
        )
        .await;
    }
    assert_eq!(store.audit_entries(None, 10).await.unwrap().len(), 1);
    assert_eq!(store.notifications(None, 10).await.unwrap().len(), 1);

    for c in consumers {
        c.stop().await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_retries_holds_partitions_and_loses_no_order() {
    crate::helpers::init_logs();
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let p = crate::helpers::Pipeline::start(options).await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    // Three events per task (created, updated, completed), for six tasks.
    let client = client();
    for i in 0..6 {
        let task: Value = client
            .post(format!("http://{addr}/tasks"))
            .json(&json!({ "title": format!("task {i}"), "assignee": "ana" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = task["id"].as_str().unwrap();
        let updated = client
            .patch(format!("http://{addr}/tasks/{id}"))
            .json(&json!({ "title": format!("task {i}, renamed") }))
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), 200);
        let done = client
            .post(format!("http://{addr}/tasks/{id}/complete"))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
    }
    all_published(&store).await;

    // The database refuses every write for several seconds: far longer than
    // the attempts in a row (two, 20 ms apart), well within give_up_after.
    let mut locker = lock_writes(&store).await;
    let consumer_options = holding_through_outages();
    let consumers = [
        components::auditor(
            store.clone(),
            Some(store.clone()),
            &kafka,
            None,
            &consumer_options,
            &metrics,
        )
        .unwrap(),
        components::notifier(
            store.clone(),
            Some(store.clone()),
            &kafka,
            None,
            &consumer_options,
            &Default::default(),
            &metrics,
        )
        .unwrap(),
    ];
    eventually(
        "both groups to retry while held",
        Duration::from_secs(30),
        || async {
            let scraped = metrics.render();
            let retried = |group: &str| {
                scraped.lines().any(|l| {
                    l.contains("outcome=\"retried\"")
                        && l.contains(&format!("group=\"{group}\""))
                        && !l.ends_with(" 0")
                })
            };
            (retried("auditor") && retried("notifier")).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        dead_letters(&p.kafka.bootstrap_servers).await.is_empty(),
        "a transient outage dead-letters nothing"
    );

    // The outage ends: every event is applied once, each task's in order.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    crate::faults::assert_exactly_once(&store, &store, 18, 12).await;
    assert!(dead_letters(&p.kafka.bootstrap_servers).await.is_empty());
    for c in consumers {
        c.stop().await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_partitions_that_move_away_and_back_during_an_outage_resume_and_lose_nothing() {
    // A partition left paused would stall the run rather than fail it: bound it.
    tokio::time::timeout(Duration::from_secs(180), moved_partitions_resume())
        .await
        .expect("the run finished in time (a partition left paused stalls it)");
}

async fn moved_partitions_resume() {
    crate::helpers::init_logs();
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let p = crate::helpers::Pipeline::start(options).await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let client = client();
    for i in 0..12 {
        let created = client
            .post(format!("http://{addr}/tasks"))
            .json(&json!({ "title": format!("task {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    all_published(&store).await;

    let mut locker = lock_writes(&store).await;
    let consumer_options = holding_through_outages();
    let first = components::auditor(
        store.clone(),
        Some(store.clone()),
        &kafka,
        None,
        &consumer_options,
        &metrics,
    )
    .unwrap();
    let held = |n: usize| {
        let metrics = metrics.clone();
        async move {
            let scraped = metrics.render();
            let retried: f64 = scraped
                .lines()
                .filter(|l| l.contains("outcome=\"retried\"") && l.contains("group=\"auditor\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (retried >= n as f64).then_some(())
        }
    };
    eventually(
        "the first member to hold its partitions",
        Duration::from_secs(30),
        || held(6),
    )
    .await;

    // A second member joins: some held partitions move to it (and are held
    // there), then it leaves and they come back to the first member.
    let second = components::auditor(
        store.clone(),
        Some(store.clone()),
        &kafka,
        None,
        &consumer_options,
        &metrics,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    second.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    eventually(
        "every event audited once the outage ends",
        Duration::from_secs(60),
        || async { (store.audit_entries(None, 100).await.ok()?.len() >= 12).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.audit_entries(None, 100).await.unwrap().len(), 12);
    assert!(dead_letters(&p.kafka.bootstrap_servers).await.is_empty());
    // Every partition is consumed again: nothing stayed paused.
    let more = client
        .post(format!("http://{addr}/tasks"))
        .json(&json!({ "title": "after the outage" }))
        .send()
        .await
        .unwrap();
    assert_eq!(more.status(), 201);
    eventually("a new event audited", Duration::from_secs(20), || async {
        (store.audit_entries(None, 100).await.ok()?.len() == 13).then_some(())
    })
    .await;
    eventually(
        "the group caught up on every partition",
        Duration::from_secs(20),
        || async {
            let offsets = group_offsets(&kafka, "auditor", TASK_EVENTS, Duration::from_secs(5))
                .await
                .ok()?;
            offsets.iter().all(|p| p.lag() == 0).then_some(())
        },
    )
    .await;
    first.stop().await;
    p.stop().await;
}
