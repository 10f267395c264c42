//! Debezium in place of the relay, on Apache Kafka and PostgreSQL
//! (`wal_level = logical`): the Task API writes tasks and their outbox rows,
//! a Kafka Connect worker runs the Debezium connector with the configuration
//! `taskstream cdc connector-config` prints, and the auditor and notifier
//! consume what it publishes. No relay runs. Events are Avro: the API
//! stores each one framed with its registered schema id. Every change is
//! audited once and in order, and every record on `task-events` is, byte
//! for byte, the record the relay would have sent for that outbox row (key,
//! value, headers), so consumers cannot tell the two publishers apart.
//!
//! With Debezium publishing, the API's capture confirmation marks the rows
//! the slot confirmed and the retention deletes them; a poison row is
//! dead-lettered as with the relay; `taskstream lag --database-url` shows
//! the groups and the slot, and a slot whose connector is gone keeps more
//! and more WAL, in `taskstream lag` and in `/metrics`. Every test drops
//! its slot and database even when it fails ([`Leftovers`]). A Connect
//! worker killed mid-stream is `crates/testkit/tests/debezium.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskstream::components::{self, CaptureSettings, ConsumerOptions, NotifierSink};
use taskstream::ops::cdc::OutboxConnector;
use taskstream_avro::{RegistryClient, AVRO_CONTENT_TYPE, MAGIC_BYTE};
use taskstream_kafka::read_topic;
use taskstream_services::topics::TASK_EVENTS;
use taskstream_services::EventEncoding;
use taskstream_store::{Database, OutboxStore, SqliteOptions};
use taskstream_telemetry::Metrics;
use taskstream_testkit::{ConnectWorker, KafkaCluster, Shape};
use tokio::sync::Notify;

use crate::at_scale::{drop_database, scratch_database, start};
use crate::brokers::Broker;
use crate::helpers::{client, eventually, init_logs};

const PATIENCE: Duration = Duration::from_secs(120);

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

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

    let slot = format!("outbox_{}", uuid::Uuid::new_v4().simple());
    let leftovers = Leftovers {
        admin: admin.clone(),
        url: url.clone(),
        slot: slot.clone(),
    };
    // Debezium first: rows written before its slot exists are not its to publish.
    let worker = ConnectWorker::start(
        cluster,
        &format!("connect-{}", uuid::Uuid::new_v4().simple()),
    )
    .await
    .expect("the Connect worker starts with the Debezium plugin");
    let connector = OutboxConnector {
        slot: slot.clone(),
        ..OutboxConnector::for_database(&url).unwrap()
    };
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
    let auditor = components::auditor(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
        &kafka,
        None,
        &options,
        &metrics,
    )
    .unwrap();
    let notifier = components::notifier(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
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
    drop(leftovers);
}

/// Drops a Debezium test's replication slot and database when it goes out
/// of scope, failed test or not: a slot left behind keeps WAL forever and
/// keeps its database from being dropped. Declare it before the Connect
/// worker, so that the worker (the slot's reader) is gone first.
struct Leftovers {
    admin: String,
    url: String,
    slot: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (admin, url, slot) = (self.admin.clone(), self.url.clone(), self.slot.clone());
        // A thread and runtime of its own: drop cannot await, and may run
        // while the test's runtime is unwinding.
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    drop_slot(&admin, &slot).await;
                    drop_database(&admin, &url).await;
                })
        })
        .join();
        if cleaned.is_err() {
            eprintln!("could not drop replication slot {}", self.slot);
        }
    }
}

/// Drops the slot, ending the session still reading it if any (a killed or
/// deleted connector's task may hold it a while).
async fn drop_slot(admin: &str, slot: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
        )
        .bind(slot)
        .execute(&mut conn)
        .await;
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

/// A Connect worker of its own running the generated outbox connector on
/// the database at `url` with replication slot `slot`, once its task runs.
async fn debezium(cluster: &'static KafkaCluster, url: &str, slot: &str) -> ConnectWorker {
    let worker = ConnectWorker::start(
        cluster,
        &format!("connect-{}", uuid::Uuid::new_v4().simple()),
    )
    .await
    .expect("the Connect worker starts with the Debezium plugin");
    let connector = OutboxConnector {
        slot: slot.to_owned(),
        ..OutboxConnector::for_database(url).unwrap()
    };
    worker
        .put_connector(CONNECTOR, &Value::Object(connector.config()))
        .await
        .expect("the generated configuration is accepted");
    worker
        .wait_until_running(CONNECTOR, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log_tail(40)));
    worker
}

const CONNECTOR: &str = "taskstream-outbox";

/// Creates a task through the API at `base`; returns its id.
async fn create_task(base: &str, title: &str) -> String {
    let created: Value = client()
        .post(format!("{base}/tasks"))
        .json(&json!({ "title": title, "assignee": "ana" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().expect("a task id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_debezium_captured_rows_are_marked_published_and_pruned_and_each_is_on_the_topic() {
    init_logs();
    let Some(broker) = Broker::apache_kafka(Shape::SingleNode, "Debezium: outbox cleanup").await
    else {
        return;
    };
    let Some((admin, url)) = scratch_database().await else {
        return;
    };
    let cluster = broker.cluster().expect("a cluster");
    let kafka = broker.kafka_config().expect("a cluster");
    let slot = format!("outbox_{}", uuid::Uuid::new_v4().simple());
    let leftovers = Leftovers {
        admin,
        url: url.clone(),
        slot: slot.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let store = components::open_store(
        dir.path(),
        Some(&Database::Postgres(url.clone())),
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let worker = debezium(cluster, &url, &slot).await;
    let capture = components::capture_confirmation(
        Arc::clone(&store),
        CaptureSettings {
            poll_interval: Duration::from_millis(200),
            retention: Some(Duration::ZERO),
            prune_interval: Duration::from_millis(200),
            ..CaptureSettings::for_slot(&slot)
        },
    )
    .unwrap();
    let api = components::task_api(
        Arc::clone(&store),
        Arc::new(Notify::new()),
        EventEncoding::for_registry(None, TASK_EVENTS),
    );
    let (_, http) = components::http("127.0.0.1:0".parse().unwrap(), api, &Default::default())
        .await
        .unwrap();
    let base = http.address().unwrap().to_owned();
    let pg = store.postgres().unwrap();
    let ids_of = |rows: Vec<(uuid::Uuid,)>| rows.into_iter().map(|(id,)| id).collect::<Vec<_>>();

    let mut first = Vec::new();
    for i in 0..10 {
        create_task(&base, &format!("captured {i}")).await;
    }
    first.extend(ids_of(
        sqlx::query_as("SELECT id FROM outbox ORDER BY seq")
            .fetch_all(pg.pool())
            .await
            .unwrap(),
    ));
    assert_eq!(first.len(), 10);

    // Debezium confirms a position when it commits offsets for a later
    // record, so the outbox keeps being written meanwhile, as it is in use.
    let mut later = 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE id = ANY($1)")
            .bind(&first)
            .fetch_one(pg.pool())
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} of the first 10 rows are still in the outbox\nworker log:\n{}",
            worker.log_tail(40)
        );
        create_task(&base, &format!("later {later}")).await;
        later += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every deleted row had been published by Debezium.
    let on_topic: std::collections::HashSet<Vec<u8>> =
        read_topic(&kafka, TASK_EVENTS, Duration::from_secs(30))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| {
                r.headers
                    .into_iter()
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v)
            })
            .collect();
    for id in &first {
        assert!(
            on_topic.contains(id.to_string().as_bytes()),
            "pruned row {id} is not on the topic"
        );
    }
    for component in [capture, http] {
        component.stop().await;
    }
    let _ = worker.delete_connector(CONNECTOR).await;
    drop(worker);
    drop(store);
    drop(leftovers);
}

/// `taskstream lag --json` against `bootstrap` with `--database-url url`.
async fn lag(bootstrap: &str, url: &str) -> Value {
    let (bootstrap, url) = (bootstrap.to_owned(), url.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["lag", "--json", "--samples", "2", "--interval", "0.2"])
            .args(["--kafka-bootstrap", &bootstrap, "--database-url", &url])
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

/// The value of `metric` for replication slot `slot` in the API's /metrics.
async fn slot_metric(base: &str, metric: &str, slot: &str) -> f64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("slot=\"{slot}\"");
    text.lines()
        .find(|l| l.starts_with(metric) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} for {slot} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_debezium_a_poison_row_is_dead_lettered_and_lag_shows_the_groups_and_a_stalled_slots_growing_wal(
) {
    init_logs();
    let Some(broker) =
        Broker::apache_kafka(Shape::SingleNode, "Debezium: dead letters and lag").await
    else {
        return;
    };
    let Some((admin, url)) = scratch_database().await else {
        return;
    };
    let cluster = broker.cluster().expect("a cluster");
    let kafka = broker.kafka_config().expect("a cluster");
    let slot = format!("outbox_{}", uuid::Uuid::new_v4().simple());
    let leftovers = Leftovers {
        admin,
        url: url.clone(),
        slot: slot.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    // The real API, publishing with Debezium: it migrates the database
    // before the connector's slot exists.
    let (api_process, base) = start(
        "api",
        &[
            "--event-format",
            "json",
            "--publisher",
            "debezium",
            "--cdc-slot",
            &slot,
        ],
        &url,
        &dir,
    );
    let worker = debezium(cluster, &url, &slot).await;
    let store = components::open_store(
        dir.path(),
        Some(&Database::Postgres(url.clone())),
        &SqliteOptions::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let metrics = Metrics::new();
    let options = broker.consumer_options();
    let auditor = components::auditor(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
        &kafka,
        None,
        &options,
        &metrics,
    )
    .unwrap();
    let notifier = components::notifier(
        Arc::clone(&store),
        Some(Arc::clone(&store)),
        &kafka,
        None,
        &options,
        &NotifierSink::default(),
        &metrics,
    )
    .unwrap();

    // A row no consumer can decode, written straight into the outbox, then
    // ordinary changes through the API.
    let poison_key = format!("poison-{}", uuid::Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, content_type, created_at)
         VALUES ($1, 'task', $2, 'task.created', '\\x00ffff'::bytea, $3, 'application/json', now())",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(&poison_key)
    .bind(TASK_EVENTS)
    .execute(store.postgres().unwrap().pool())
    .await
    .unwrap();
    for i in 0..3 {
        create_task(&base, &format!("after the poison {i}")).await;
    }
    eventually("the changes after the poison audited", PATIENCE, || async {
        let body: Value = client()
            .get(format!("{base}/audit"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["items"].as_array()?.len() >= 3).then_some(())
    })
    .await;
    let bootstrap = kafka.bootstrap_servers.clone();
    let letters = eventually("the poison dead-lettered", PATIENCE, || async {
        let bootstrap = bootstrap.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["dlq", "list", "--json", "--kafka-bootstrap", &bootstrap])
                .output()
                .unwrap()
        })
        .await
        .ok()?;
        let letters: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        (letters
            .iter()
            .filter(|l| l["key"] == poison_key.as_str())
            .count()
            >= 2)
            .then_some(letters)
    })
    .await;
    let groups: std::collections::BTreeSet<&str> = letters
        .iter()
        .filter(|l| l["key"] == poison_key.as_str())
        .filter_map(|l| l["group"].as_str())
        .collect();
    assert_eq!(
        groups,
        ["auditor", "notifier"].into(),
        "each group parks the poison once: {letters:?}"
    );

    // Lag: both groups, and the slot with its reader connected.
    let report = lag(&bootstrap, &url).await;
    let names: Vec<&str> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert!(
        names.contains(&"auditor") && names.contains(&"notifier"),
        "{report}"
    );
    let ours = |report: &Value| -> Value {
        report["replication_slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slot"] == slot.as_str())
            .unwrap_or_else(|| panic!("no slot {slot} in {report}"))
            .clone()
    };
    assert_eq!(ours(&report)["active"], true, "{report}");

    // The connector stops: its slot stalls, and keeps every byte of WAL the
    // database writes from then on.
    worker
        .delete_connector(CONNECTOR)
        .await
        .expect("the connector is deleted");
    let stalled = eventually("the slot without a reader", PATIENCE, || async {
        let report = lag(&bootstrap, &url).await;
        let slot = ours(&report);
        (slot["status"] == "STALLED").then_some(slot)
    })
    .await;
    let metric_before = slot_metric(&base, "taskstream_replication_slot_retained_wal", &slot).await;
    let active_metric = slot_metric(&base, "taskstream_replication_slot_active", &slot).await;
    for i in 0..200 {
        create_task(&base, &format!("while stalled {i}")).await;
    }
    let after = ours(&lag(&bootstrap, &url).await);
    let metric_after = slot_metric(&base, "taskstream_replication_slot_retained_wal", &slot).await;
    let retained = |s: &Value| s["retained_wal_bytes"].as_i64().unwrap();
    assert!(
        retained(&after) > retained(&stalled) + 50_000,
        "200 changes of WAL kept for the stalled slot: {stalled} then {after}"
    );
    assert!(
        metric_after > metric_before + 50_000.0,
        "/metrics: {metric_before} then {metric_after}"
    );
    assert_eq!(active_metric, 0.0, "no reader on the stalled slot");

    for component in [auditor, notifier] {
        component.stop().await;
    }
    drop(api_process);
    drop(worker);
    drop(store);
    drop(leftovers);
}

#[test]
fn the_api_refuses_to_confirm_debezium_captures_on_sqlite_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["api", "--http", "127.0.0.1:0", "--event-format", "json"])
        .args(["--publisher", "debezium", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--publisher debezium needs the outbox in PostgreSQL"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty(), "nothing was served");
}
