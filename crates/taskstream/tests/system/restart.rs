//! Consumers stopped mid-stream and started again: no gaps, no second effect.

use std::collections::HashSet;
use std::time::Duration;

use taskstream::components;
use taskstream_kafka::group_offsets;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_store::{AuditStore, NotificationStore};
use taskstream_testkit::Shape;

use crate::brokers::Broker;
use crate::helpers::{client, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_restarted_mid_stream_miss_nothing_and_repeat_nothing() {
    consumers_restart_mid_stream(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_restarted_mid_stream_miss_nothing_and_repeat_nothing_on_apache_kafka() {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "restarting consumers").await else {
        return;
    };
    consumers_restart_mid_stream(&kafka).await;
}

async fn consumers_restart_mid_stream(broker: &Broker) {
    let p = crate::helpers::Pipeline::start_on(broker, taskstream_store::SqliteOptions::default())
        .await;
    let (kafka, store, metrics, addr) =
        (p.kafka.clone(), p.store.clone(), p.metrics.clone(), p.addr);
    let settings = broker.consumer_options();
    let start_consumers = || {
        vec![
            components::auditor(
                store.clone(),
                Some(store.clone()),
                &kafka,
                None,
                &settings,
                &metrics,
            )
            .unwrap(),
            components::notifier(
                store.clone(),
                Some(store.clone()),
                &kafka,
                None,
                &settings,
                &Default::default(),
                &metrics,
            )
            .unwrap(),
        ]
    };
    let audit_count = || async { store.audit_entries(None, 100_000).await.unwrap().len() };

    let consumers = start_consumers();
    // A steady stream of task creations, all assigned (one notification each).
    let base = format!("http://{addr}");
    let writer = tokio::spawn(async move {
        let client = client();
        for i in 0..120 {
            let response = client
                .post(format!("{base}/tasks"))
                .json(&serde_json::json!({ "title": format!("t{i}"), "assignee": "ana" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            // About three seconds of creations: the consumers are stopped
            // (after the first ten) while more keep coming, on any broker.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    // Stop both consumers once some, but not all, events are handled.
    eventually("the first events", Duration::from_secs(20), || async {
        (audit_count().await >= 10).then_some(())
    })
    .await;
    for c in consumers {
        c.stop().await;
    }
    let at_stop = audit_count().await;
    assert!(at_stop < 120, "stopped mid-stream ({at_stop} handled)");
    writer.await.unwrap();

    let consumers = start_consumers();
    eventually("all 120 audit entries", Duration::from_secs(30), || async {
        (audit_count().await >= 120).then_some(())
    })
    .await;
    eventually("all 120 notifications", Duration::from_secs(30), || async {
        (store.notifications(None, 100_000).await.unwrap().len() >= 120).then_some(())
    })
    .await;
    // The restarted members resumed where the stopped ones had committed:
    // not one record was handled a second time.
    let duplicates: f64 = metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("taskstream_consumer_events_total") && l.contains("outcome=\"duplicate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(duplicates, 0.0, "records handled again after the restart");

    // A brand-new group re-reads every event from the start into the same
    // store: the handlers recognise each event id and add nothing.
    let replays = vec![
        components::auditor(
            store.clone(),
            Some(store.clone()),
            &kafka,
            Some("auditor-replay"),
            &settings,
            &metrics,
        )
        .unwrap(),
        components::notifier(
            store.clone(),
            Some(store.clone()),
            &kafka,
            Some("notifier-replay"),
            &settings,
            &Default::default(),
            &metrics,
        )
        .unwrap(),
    ];
    for group in ["auditor-replay", "notifier-replay"] {
        eventually(
            &format!("{group} to read everything"),
            Duration::from_secs(30),
            || async {
                let offsets = group_offsets(&kafka, group, TASK_EVENTS, Duration::from_secs(5))
                    .await
                    .ok()?;
                let done = offsets
                    .iter()
                    .all(|p| p.committed == Some(p.log_end) || (p.log_end == 0));
                let total: i64 = offsets.iter().map(|p| p.log_end).sum();
                (done && total >= 120).then_some(())
            },
        )
        .await;
    }
    for c in replays.into_iter().chain(consumers) {
        c.stop().await;
    }

    let audit = store.audit_entries(None, 100_000).await.unwrap();
    assert_eq!(audit.len(), 120);
    assert_eq!(
        audit
            .iter()
            .map(|e| e.event_id)
            .collect::<HashSet<_>>()
            .len(),
        120
    );
    let notes = store.notifications(None, 100_000).await.unwrap();
    assert_eq!(notes.len(), 120);
    assert_eq!(
        notes
            .iter()
            .map(|n| n.event_id)
            .collect::<HashSet<_>>()
            .len(),
        120
    );

    p.stop().await;
}
