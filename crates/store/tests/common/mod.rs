//! What the store's integration tests share: a throwaway PostgreSQL
//! database per test, and task changes with their outbox messages.

#![allow(dead_code)]

use sqlx::Connection;
use taskstream_domain::{
    Assignee, Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskChange, TaskTitle,
};
use taskstream_store::{OutboxMessage, OutboxStore, PendingMessage, PgOptions, PgStore};
use uuid::Uuid;

/// A database created for one test and dropped afterwards.
pub struct Scratch {
    pub admin: String,
    pub name: String,
    pub url: String,
}

impl Scratch {
    pub async fn new() -> Option<Self> {
        let admin = std::env::var("TASKSTREAM_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                let why = format!(
                    "no PostgreSQL at {}: {e}",
                    taskstream_store::redact_url(&admin)
                );
                if std::env::var("TASKSTREAM_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("{why} (TASKSTREAM_REQUIRE_POSTGRES=1)");
                }
                eprintln!("SKIPPED: {why}");
                return None;
            }
        };
        let name = format!("taskstream_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Self { admin, name, url })
    }

    pub async fn store(&self) -> PgStore {
        PgStore::connect(&self.url, &PgOptions::default())
            .await
            .unwrap()
    }

    pub async fn drop_database(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

pub fn created(title: &str) -> TaskChange {
    Task::create(
        NewTask {
            title: TaskTitle::parse(title).unwrap(),
            description: None,
            priority: Priority::High,
            due_at: Some(taskstream_domain::now()),
            assignee: Some(Assignee::parse("ana").unwrap()),
        },
        taskstream_domain::now(),
        Cause::default(),
    )
}

pub fn message(change: &TaskChange) -> OutboxMessage {
    OutboxMessage {
        id: change.event.id.as_uuid(),
        aggregate_type: "task".into(),
        aggregate_id: change.task.id.to_string(),
        event_type: change.event.event_type.to_string(),
        topic: "task-events".into(),
        payload: JsonCodec.encode(&change.event).unwrap(),
        content_type: "application/json".into(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        created_at: change.event.time,
    }
}

/// Up to `limit` pending outbox rows, read under `store`'s outbox lease
/// (taken if free; it must be: one test, one relay).
pub async fn pending_rows(store: &impl OutboxStore, limit: u32) -> Vec<PendingMessage> {
    let lease = store
        .acquire_lease("test")
        .await
        .unwrap()
        .expect("the outbox lease is free");
    store.pending(&lease, limit).await.unwrap()
}
