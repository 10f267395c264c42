//! The store's hot paths: a task write with its outbox row, the relay's
//! claim-and-mark of a batch, and a consumer's idempotent audit append.

use criterion::{criterion_group, criterion_main, Criterion};
use taskstream_domain::{Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskTitle};
use taskstream_store::{
    AuditEntry, AuditStore, OutboxMessage, OutboxStore, SqliteOptions, SqliteStore, Synchronous,
    TaskStore,
};

fn change() -> (Task, OutboxMessage) {
    let new = NewTask {
        title: TaskTitle::parse("bench").unwrap(),
        description: None,
        priority: Priority::Medium,
        due_at: None,
        assignee: None,
    };
    let change = Task::create(new, taskstream_domain::now(), Cause::default());
    let message = OutboxMessage {
        id: change.event.id.as_uuid(),
        aggregate_type: "task".into(),
        aggregate_id: change.task.id.to_string(),
        event_type: change.event.event_type.to_string(),
        topic: "task-events".into(),
        payload: JsonCodec.encode(&change.event).unwrap(),
        content_type: taskstream_domain::headers::JSON_CONTENT_TYPE.into(),
        traceparent: None,
        created_at: change.event.time,
    };
    (change.task, message)
}

fn store_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for synchronous in [Synchronous::Normal, Synchronous::Full] {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        };
        let store = runtime
            .block_on(SqliteStore::open(&dir.path().join("bench.db"), &options))
            .unwrap();
        c.bench_function(
            &format!("insert task + outbox row (synchronous={synchronous:?})"),
            |b| {
                b.to_async(&runtime).iter(|| async {
                    let (task, message) = change();
                    store.insert_task(&task, &message).await.unwrap();
                })
            },
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = runtime
        .block_on(SqliteStore::open(
            &dir.path().join("relay.db"),
            &SqliteOptions::default(),
        ))
        .unwrap();
    c.bench_function(
        "relay: claim 500 pending rows and mark them published",
        |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let store = store.clone();
                async move {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iterations {
                        for _ in 0..500 {
                            let (task, message) = change();
                            store.insert_task(&task, &message).await.unwrap();
                        }
                        let started = std::time::Instant::now();
                        let lease = store.acquire_lease("bench").await.unwrap().unwrap();
                        let batch = store.pending(&lease, 500).await.unwrap();
                        let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
                        store
                            .mark_published(&seqs, taskstream_domain::now())
                            .await
                            .unwrap();
                        total += started.elapsed();
                    }
                    total
                }
            })
        },
    );
    c.bench_function("consumer: idempotent audit append", |b| {
        b.to_async(&runtime).iter(|| async {
            let entry = AuditEntry {
                event_id: uuid::Uuid::now_v7(),
                event_type: "task.created".into(),
                task_id: "t".into(),
                task_version: 1,
                event_time: taskstream_domain::now(),
                correlation_id: None,
                topic: "task-events".into(),
                partition: 0,
                offset: 0,
                recorded_at: taskstream_domain::now(),
                envelope: "{}".into(),
            };
            store.append("auditor", &entry).await.unwrap();
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = store_benches
}
criterion_main!(benches);
