//! Relay leadership on PostgreSQL: relays sharing one database publish one
//! at a time, the one holding the outbox lease; a standby takes over when
//! the holder is killed or stops, and no event reaches the topic twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use taskstream_domain::{Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskTitle};
use taskstream_kafka::{read_topic, EventProducer, KafkaConfig, ProducerSettings};
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::{
    EventEncoding, OutboxRelay, ProducerFactory, RelaySettings, Shutdown, ShutdownTrigger,
};
use taskstream_store::{OutboxMessage, OutboxStore, PgOptions, PgStore, Store, TaskStore};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::at_scale::{drop_database, scratch_database};
use crate::helpers::eventually;

/// One relay process: its own database pool (so its own session and
/// lease), producer and metrics.
struct RelayProcess {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    stop: ShutdownTrigger,
    running: tokio::task::JoinHandle<()>,
}

impl RelayProcess {
    async fn start(database: &str, kafka: &KafkaConfig) -> Self {
        let store = Arc::new(Store::Postgres(
            PgStore::connect(database, &PgOptions::default())
                .await
                .unwrap(),
        ));
        let kafka = kafka.clone();
        let factory: ProducerFactory =
            Arc::new(move || EventProducer::new(&kafka, "relay", &ProducerSettings::ordered()));
        let metrics = Metrics::new();
        let wake = Arc::new(Notify::new());
        let settings = RelaySettings {
            poll_interval: Duration::from_millis(100),
            ..RelaySettings::default()
        };
        let relay = OutboxRelay::new(
            Arc::clone(&store) as Arc<dyn OutboxStore>,
            factory,
            Arc::clone(&wake),
            settings,
            Arc::clone(&metrics),
            EventEncoding::Json,
        )
        .unwrap();
        let (stop, shutdown) = Shutdown::new();
        let running = tokio::spawn(relay.run(shutdown));
        Self {
            store,
            metrics,
            wake,
            stop,
            running,
        }
    }

    fn published(&self) -> u64 {
        self.metrics.relay_published.get()
    }

    /// Ends the process abruptly: its task stops mid-round and its database
    /// session ends without releasing anything.
    async fn kill(self) {
        self.running.abort();
        let _ = self.running.await;
        self.store.close().await;
    }

    /// Stops the process as a signal would: drain, release, close.
    async fn stop(self) {
        self.stop.trigger();
        self.running.await.unwrap();
        self.store.close().await;
    }
}

/// Writes one task and its event through `store`; returns the event id.
async fn write(store: &Store, title: &str) -> Uuid {
    let change = Task::create(
        NewTask {
            title: TaskTitle::parse(title).unwrap(),
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
        content_type: JsonCodec.content_type().into(),
        traceparent: None,
        created_at: change.event.time,
    };
    store.insert_task(&change.task, &message).await.unwrap();
    message.id
}

/// Writes `n` events through `writer` and waits until they are all published.
async fn publish(writer: &RelayProcess, label: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(write(&writer.store, &format!("{label} {i}")).await);
    }
    writer.wake.notify_one();
    eventually(
        &format!("the {label} events published"),
        Duration::from_secs(30),
        || async { (writer.store.outbox_stats().await.ok()?.pending == 0).then_some(()) },
    )
    .await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_one_postgres_publish_one_at_a_time_and_a_standby_takes_over() {
    let Some((admin, database)) = scratch_database().await else {
        return;
    };
    let broker = crate::helpers::own_broker().await;
    let kafka = KafkaConfig::new(broker.bootstrap_servers());

    let first = RelayProcess::start(&database, &kafka).await;
    let mut ids = publish(&first, "first", 5).await;
    assert_eq!(first.published(), 5);

    // A second relay stands by while the first holds the lease.
    let second = RelayProcess::start(&database, &kafka).await;
    ids.extend(publish(&second, "both running", 5).await);
    // Rounds of the standby pass meanwhile (it polls every 100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.published(), 10, "the lease holder published them");
    assert_eq!(second.published(), 0, "the standby published nothing");

    // The holder is killed: the standby wins the lease once its session ends.
    first.kill().await;
    ids.extend(publish(&second, "after the kill", 5).await);
    assert_eq!(second.published(), 5);

    // A third relay stands by; the second stops and hands the lease over.
    let third = RelayProcess::start(&database, &kafka).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.stop().await;
    ids.extend(publish(&third, "after the stop", 5).await);
    assert_eq!(third.published(), 5);

    let records = read_topic(&kafka, TASK_EVENTS, Duration::from_secs(10))
        .await
        .unwrap();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let id = record
            .header_str(taskstream_domain::headers::EVENT_ID)
            .expect("every event has an id header");
        *copies.entry(id.to_owned()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            copies.get(&id.to_string()),
            Some(&1),
            "event {id} is on the topic exactly once"
        );
    }
    assert_eq!(records.len(), ids.len(), "nothing else was published");
    third.stop().await;
    crate::helpers::stop_broker(broker).await;
    drop_database(&admin, &database).await;
}
