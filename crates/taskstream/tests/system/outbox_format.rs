//! The outbox holds each record as it goes on the topic, and an upgrade
//! keeps what the previous version stored publishable: rows holding the
//! JSON envelope (as every row did before the outbox stored Avro) are
//! published as Avro by an Avro relay, next to rows the API now stores as
//! Avro, which the relay publishes untouched. On SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use taskstream::components;
use taskstream_avro::{RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE};
use taskstream_domain::{headers, Cause, NewTask, Priority, Task, TaskChange, TaskTitle};
use taskstream_kafka::{read_topic, DevBroker, KafkaConfig};
use taskstream_services::topics::{declared_topics, TASK_EVENTS};
use taskstream_services::{EventDecoder, EventEncoding, RelaySettings};
use taskstream_store::{Database, OutboxStore, SqliteOptions, Store, TaskStore};
use taskstream_telemetry::Metrics;
use tokio::sync::Notify;

use crate::at_scale::{drop_database, scratch_database};
use crate::helpers::eventually;

fn change(title: &str) -> TaskChange {
    let new = NewTask {
        title: TaskTitle::parse(title).unwrap(),
        description: None,
        priority: Priority::Medium,
        due_at: None,
        assignee: None,
    };
    Task::create(new, taskstream_domain::now(), Cause::default())
}

/// Writes a task and its row in `encoding`, as the API does.
async fn write(store: &Store, encoding: &EventEncoding, change: &TaskChange) -> Vec<u8> {
    let message = encoding
        .outbox_message(
            &change.event,
            "task",
            change.task.id.to_string(),
            TASK_EVENTS,
            None,
        )
        .unwrap();
    store.insert_task(&change.task, &message).await.unwrap();
    message.payload
}

async fn legacy_json_rows_publish_as_avro_and_avro_rows_as_stored(database: Option<Database>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = DevBroker::start(&declared_topics(1)).unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let store = components::open_store(
        dir.path(),
        database.as_ref(),
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let (registry_addr, registry) = components::registry(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        "registry",
        &Default::default(),
    )
    .await
    .unwrap();
    let registry_client = Arc::new(RegistryClient::new(&format!("http://{registry_addr}")));
    let avro = EventEncoding::avro(Arc::clone(&registry_client), TASK_EVENTS);
    avro.register_schemas().await.unwrap();

    // What the previous version stored: the JSON envelope, whatever the format.
    let old = change("written before the upgrade");
    let old_payload = write(&store, &EventEncoding::Json, &old).await;
    assert_eq!(old_payload[0], b'{');
    let new = change("written after the upgrade");
    let new_payload = write(&store, &avro, &new).await;
    assert_eq!(new_payload[0], MAGIC_BYTE);

    let relay = components::relay(
        Arc::clone(&store),
        &kafka,
        Arc::new(Notify::new()),
        RelaySettings::default(),
        avro,
        &Metrics::new(),
    )
    .unwrap();
    eventually("both rows published", Duration::from_secs(30), || async {
        (store.outbox_stats().await.ok()?.pending == 0).then_some(())
    })
    .await;
    let records = read_topic(&kafka, TASK_EVENTS, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    let decoder = EventDecoder::new(Some(registry_client));
    for (change, stored) in [(&old, &old_payload), (&new, &new_payload)] {
        let id = change.event.id.to_string();
        let record = records
            .iter()
            .find(|r| r.header_str(headers::EVENT_ID) == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no record for event {id}"));
        let value = record.payload.as_deref().unwrap();
        assert_eq!(value[0], MAGIC_BYTE, "every record is framed Avro");
        assert_eq!(
            record.header_str(headers::CONTENT_TYPE),
            Some(AVRO_CONTENT_TYPE)
        );
        assert_eq!(
            record.key.as_deref(),
            Some(change.task.id.to_string().as_bytes())
        );
        assert_eq!(decoder.decode(value).await.unwrap(), change.event);
        if stored[0] == MAGIC_BYTE {
            assert_eq!(value, stored.as_slice(), "an Avro row goes out as stored");
        }
    }

    relay.stop().await;
    registry.stop().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_json_rows_from_before_the_upgrade_are_published_as_avro() {
    legacy_json_rows_publish_as_avro_and_avro_rows_as_stored(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_json_rows_from_before_the_upgrade_are_published_as_avro() {
    let Some((admin, url)) = scratch_database().await else {
        return;
    };
    legacy_json_rows_publish_as_avro_and_avro_rows_as_stored(Some(Database::Postgres(url.clone())))
        .await;
    drop_database(&admin, &url).await;
}

#[test]
fn an_avro_api_without_a_registry_or_with_a_bad_url_refuses_to_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, named) in [
        (&[][..], "--schema-registry"),
        (&["--schema-registry", "ftp://registry"][..], "http://"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskstream"))
            .args(["api", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("SCHEMA_REGISTRY_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.lines().next().unwrap().contains(named), "{stderr}");
    }
}
