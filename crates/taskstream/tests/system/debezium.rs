//! Debezium in place of the relay, on Apache Kafka and PostgreSQL
//! (`wal_level = logical`): the Task API writes tasks and their outbox rows,
//! a Kafka Connect worker runs the Debezium connector with the configuration
//! `taskstream cdc connector-config` prints, and the auditor and notifier
//! consume what it publishes. No relay runs. Events are Avro: the API
//! stores each one framed with its registered schema id. Every change is
//! audited once and in order, and every record on `task-events` is, byte
//! for byte, the record the relay would have sent for that outbox row (key,
//! value, headers), so consumers cannot tell the two publishers apart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, ConsumerOptions, NotifierSink};
use taskstream::ops::cdc::OutboxConnector;
use taskstream_avro::{RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE};
use taskstream_kafka::read_topic;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::EventEncoding;
use taskstream_store::{Database, OutboxStore, SqliteOptions};
use taskstream_telemetry::Metrics;
use taskstream_testkit::{ConnectWorker, Shape};
use tokio::sync::Notify;

use crate::at_scale::{drop_database, scratch_database};
use crate::brokers::Broker;
use crate::helpers::{client, eventually, init_logs};

const PATIENCE: Duration = Duration::from_secs(120);

/// A record as it was published: key, value, and headers by name.
type Published = (Vec<u8>, Vec<u8>, BTreeMap<String, Vec<u8>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_debezium_in_place_of_the_relay_every_change_is_audited_and_its_records_are_the_relays(
) {
    init_logs();
    let Some(broker) =
        Broker::apache_kafka(Shape::SingleNode, "Debezium in place of the relay").await
    else {
        return;
    };
    let Some((admin, url)) = scratch_database().await else {
        return;
    };
    let cluster = broker.cluster().expect("a cluster");
    let kafka = broker.kafka_config().expect("a cluster");
    let dir = tempfile::tempdir().unwrap();
    let store = components::open_store(
        dir.path(),
        Some(&Database::Postgres(url.clone())),
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();

    // Debezium first: rows written before its slot exists are not its to publish.
    let worker = ConnectWorker::start(
        cluster,
        &format!("connect-{}", uuid::Uuid::new_v4().simple()),
    )
    .await
    .expect("the Connect worker starts with the Debezium plugin");
    let connector = OutboxConnector {
        slot: format!("outbox_{}", uuid::Uuid::new_v4().simple()),
        ..OutboxConnector::for_database(&url).unwrap()
    };
    let slot = connector.slot.clone();
    worker
        .put_connector("taskstream-outbox", &Value::Object(connector.config()))
        .await
        .expect("the generated configuration is accepted");
    worker
        .wait_until_running("taskstream-outbox", PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_tail(40)));

    let (registry_addr, registry) = components::registry(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        "registry",
        &Default::default(),
    )
    .await
    .unwrap();
    let registry_client = Arc::new(RegistryClient::new(&format!("http://{registry_addr}")));
    let encoding = EventEncoding::avro(Arc::clone(&registry_client), TASK_EVENTS);
    encoding.register_schemas().await.unwrap();

    let metrics = Metrics::new();
    let options = ConsumerOptions {
        registry: Some(registry_client),
        ..broker.consumer_options()
    };
    let auditor =
        components::auditor(Arc::clone(&store), &kafka, None, &options, &metrics).unwrap();
    let notifier = components::notifier(
        Arc::clone(&store),
        &kafka,
        None,
        &options,
        &NotifierSink::default(),
        &metrics,
    )
    .unwrap();
    let api = components::task_api(
        Arc::clone(&store),
        Arc::new(Notify::new()),
        encoding.clone(),
    )
    .audit(store.clone())
    .notifications(store.clone());
    let (_, http) = components::http("127.0.0.1:0".parse().unwrap(), api, &Default::default())
        .await
        .unwrap();
    let base = http.address().unwrap().to_owned();

    // Changes: 12 tasks created, every third completed, one deleted.
    let client = client();
    let mut changes = 0;
    for i in 0..12 {
        let created: Value = client
            .post(format!("{base}/tasks"))
            .json(&json!({ "title": format!("cdc {i}"), "assignee": "ana" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        changes += 1;
        let id = created["id"].as_str().unwrap();
        if i % 3 == 0 {
            let done = client
                .post(format!("{base}/tasks/{id}/complete"))
                .send()
                .await
                .unwrap();
            assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
            changes += 1;
        }
        if i == 5 {
            let gone = client
                .delete(format!("{base}/tasks/{id}"))
                .send()
                .await
                .unwrap();
            assert!(gone.status().is_success(), "{}", gone.status());
            changes += 1;
        }
    }

    let audited = eventually("every change to be audited", PATIENCE, || async {
        let body: Value = client
            .get(format!("{base}/audit?limit=1000"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let items = body["items"].as_array()?.clone();
        (items.len() >= changes).then_some(items)
    })
    .await;
    assert_eq!(audited.len(), changes, "each change audited once");
    eventually("the assignee to be notified", PATIENCE, || async {
        let body: Value = client
            .get(format!("{base}/notifications"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!body["items"].as_array()?.is_empty()).then_some(())
    })
    .await;

    // Byte for byte: what Debezium published is what the relay would send.
    let lease = store
        .acquire_lease("debezium-test")
        .await
        .unwrap()
        .expect("no relay holds the lease");
    let rows = store.pending(&lease, 1000).await.unwrap();
    assert_eq!(
        rows.len(),
        changes,
        "no relay ran: every row is still pending"
    );
    // Every change was audited, so every record is on the topic by now.
    let published: Vec<Published> = read_topic(&kafka, TASK_EVENTS, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.key.unwrap_or_default(),
                r.payload.unwrap_or_default(),
                r.headers.into_iter().collect(),
            )
        })
        .collect();
    assert_eq!(published.len(), changes, "one record per outbox row");
    for row in &rows {
        let expected = encoding.record(&row.message).await.unwrap();
        assert_eq!(expected.topic, TASK_EVENTS);
        assert_eq!(expected.value[0], MAGIC_BYTE, "the row holds framed Avro");
        assert_eq!(
            expected.header(taskstream_domain::headers::CONTENT_TYPE),
            Some(AVRO_CONTENT_TYPE.as_bytes())
        );
        assert_eq!(expected.value, row.message.payload, "published as stored");
        let headers: BTreeMap<String, Vec<u8>> = expected
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let found = published
            .iter()
            .find(|(_, _, h)| h.get("id") == headers.get("id"))
            .unwrap_or_else(|| panic!("no record for outbox row {}", row.message.id));
        assert_eq!(
            found,
            &(expected.key.clone(), expected.value.clone(), headers)
        );
    }

    for component in [auditor, notifier, http, registry] {
        component.stop().await;
    }
    let _ = worker.delete_connector("taskstream-outbox").await;
    drop(worker);
    drop_slot(&admin, &slot).await;
    drop_database(&admin, &url).await;
}

/// Drops the connector's replication slot once the deleted connector let go
/// of it (a slot left behind keeps WAL forever).
async fn drop_slot(admin: &str, slot: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
        )
        .bind(slot)
        .execute(&mut conn)
        .await;
        match dropped {
            Ok(_) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the replication slot {slot} is still held: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
