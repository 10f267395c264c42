//! The chapter's loop: the API changes tasks, the relay publishes, and the
//! audit and notification services react independently.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use serde_json::json;
use taskstream_testkit::Shape;

use crate::brokers::Broker;
use crate::helpers::{spawn_app, spawn_app_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_audit_log_once_in_order_and_notifications_follow_the_rules() {
    the_core_loop(&Broker::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_audit_log_once_in_order_and_notifications_follow_the_rules_on_apache_kafka(
) {
    let Some(kafka) = Broker::apache_kafka(Shape::SingleNode, "the core loop").await else {
        return;
    };
    the_core_loop(&kafka).await;
}

/// 100 tasks, half of them assigned; 40 completed, 10 deleted, 10 updated
/// (5 renamed, 5 reassigned), and a few rejected requests in between.
async fn the_core_loop(broker: &Broker) {
    let app = spawn_app_on(broker).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let assignee = (i % 2 == 0).then(|| format!("user{}", i % 7));
        let task = app.created(&format!("task {i}"), assignee.as_deref()).await;
        tasks.push((task["id"].as_str().unwrap().to_owned(), assignee));
    }
    for (id, _) in &tasks[..40] {
        assert_eq!(app.complete(id).await.status(), 200);
    }
    // Delete ten: five completed ones and five open ones.
    for (id, _) in tasks[35..45].iter() {
        assert_eq!(app.delete(id).await.status(), 200);
    }
    // Five renamed, five reassigned to a reviewer (who is notified).
    for (i, (id, _)) in tasks.iter().enumerate().take(60).skip(50) {
        let change = if i < 55 {
            json!({ "title": format!("task {i}, renamed") })
        } else {
            json!({ "assignee": "reviewer" })
        };
        let response = app
            .client
            .patch(app.url(&format!("/tasks/{id}")))
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Rejected requests in between must leave no trace.
    assert_eq!(
        app.create_task(json!({ "title": "  " })).await.status(),
        422
    );
    assert_eq!(app.complete(&tasks[0].0).await.status(), 409);
    assert_eq!(app.complete(&tasks[36].0).await.status(), 409);
    assert_eq!(app.delete(&tasks[36].0).await.status(), 409);

    let audit = app.audit_when(160).await;
    assert_eq!(audit.len(), 160);
    assert_eq!(app.outbox_total().await, 160);
    let ids: HashSet<&str> = audit
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 160, "event ids are distinct");

    // Per task: the events arrive in the order the changes were made.
    let mut per_task: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for e in &audit {
        per_task
            .entry(e["task_id"].as_str().unwrap())
            .or_default()
            .push((
                e["task_version"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap(),
            ));
    }
    for (i, (id, _)) in tasks.iter().enumerate() {
        let expected: Vec<(i64, &str)> = match i {
            0..35 => vec![(1, "task.created"), (2, "task.completed")],
            35..40 => vec![
                (1, "task.created"),
                (2, "task.completed"),
                (3, "task.deleted"),
            ],
            40..45 => vec![(1, "task.created"), (2, "task.deleted")],
            50..60 => vec![(1, "task.created"), (2, "task.updated")],
            _ => vec![(1, "task.created")],
        };
        assert_eq!(per_task[id.as_str()], expected, "events of task {i}");
    }

    // Notifications: one per assigned creation, one per completion, one per
    // reassignment.
    let assigned = tasks.iter().filter(|(_, a)| a.is_some()).count();
    let expected_count = assigned + 40 + 5;
    let notifications = app.notifications_when(expected_count).await;
    let got: BTreeSet<(String, String, String)> = notifications
        .iter()
        .map(|n| {
            (
                n["task_id"].as_str().unwrap().to_owned(),
                n["kind"].as_str().unwrap().to_owned(),
                n["recipient"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = BTreeSet::new();
    for (i, (id, assignee)) in tasks.iter().enumerate() {
        if let Some(a) = assignee {
            expected.insert((id.clone(), "task_assigned".to_owned(), a.clone()));
        }
        if i < 40 {
            let to = assignee.clone().unwrap_or_else(|| "team".to_owned());
            expected.insert((id.clone(), "task_completed".to_owned(), to));
        }
        if (55..60).contains(&i) {
            expected.insert((id.clone(), "task_assigned".to_owned(), "reviewer".into()));
        }
    }
    assert_eq!(notifications.len(), expected_count);
    assert_eq!(got, expected);

    // Nothing more trickles in later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.items("/audit?limit=10000").await.len(), 160);
    assert_eq!(
        app.items("/notifications?limit=10000").await.len(),
        expected_count
    );
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_publishes_the_changed_fields_and_a_no_op_publishes_nothing() {
    let app = spawn_app().await;
    let task = app.created("draft", None).await;
    let id = task["id"].as_str().unwrap();
    let patch = |body| {
        app.client
            .patch(app.url(&format!("/tasks/{id}")))
            .json(&body)
            .send()
    };
    let response = patch(json!({ "title": "final", "assignee": "ana", "priority": "high" }))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let updated: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (updated["title"].as_str(), updated["version"].as_i64()),
        (Some("final"), Some(2))
    );
    // The same values again change nothing and emit nothing.
    let same = patch(json!({ "title": "final" })).await.unwrap();
    assert_eq!(same.status(), 200);
    assert_eq!(
        same.json::<serde_json::Value>().await.unwrap()["version"],
        2
    );
    // Clearing an optional field with null.
    let cleared: serde_json::Value = patch(json!({ "assignee": null }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cleared["assignee"].is_null());

    let audit = app.audit_when(3).await;
    let types: Vec<&str> = audit
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.updated", "task.updated"]);
    assert_eq!(app.outbox_total().await, 3);
    // Reassignment notified the new assignee once.
    let notes = app.notifications_when(1).await;
    assert_eq!(notes[0]["recipient"], "ana");
    app.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_in_pages_and_filtered_by_status() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.created(&format!("t{i}"), None).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.complete(&ids[1]).await;
    app.delete(&ids[2]).await;

    let page: serde_json::Value = app
        .client
        .get(app.url("/tasks?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: serde_json::Value = app
        .client
        .get(app.url(&format!("/tasks?limit=2&cursor={cursor}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [&ids[0], &ids[1], &ids[3], &ids[4]],
        "deleted tasks are not listed by default"
    );
    assert!(rest.get("next_cursor").is_none());

    let completed = app.items("/tasks?status=completed").await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["id"], ids[1].as_str());
    let deleted = app.items("/tasks?status=deleted").await;
    assert_eq!(deleted[0]["id"], ids[2].as_str());
    app.system.shutdown().await;
}
