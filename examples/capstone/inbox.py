#!/usr/bin/env python3
"""Lesson 21's reference solution: the personal inbox, an event-driven
notification service added to taskstream without changing it
(examples/capstone/spec.md is the feature's specification).

It is its own consumer group (`capstone-inbox`) on `task-events`, decodes the
Task API's Avro events with confluent-kafka-python's AvroDeserializer, and
keeps each person's notifications in SQLite.

    # run the service (until Ctrl-C; --idle N stops it after N quiet seconds)
    python examples/capstone/inbox.py run --db inbox.db \
        --bootstrap $(taskstream endpoints kafka) --registry $(taskstream endpoints schema-registry)
    # read an inbox, and the service's counters
    python examples/capstone/inbox.py list bo --db inbox.db
    python examples/capstone/inbox.py stats --db inbox.db

Delivery: at least once from Kafka (offsets are committed only after the
batch they cover is stored), made exactly once in the inbox by the event id:
the notification and the event's "processed" mark are one SQLite transaction.
"""

import argparse
import datetime
import json
import signal
import sqlite3
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

TOPIC = "task-events"

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    event_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    person TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('assigned', 'unassigned', 'completed')),
    task_id TEXT NOT NULL,
    title TEXT NOT NULL,
    -- milliseconds from the event's time to the notification being stored
    delay_ms INTEGER NOT NULL,
    UNIQUE (event_id, person, kind)
);
-- the assignee this service last saw for each task, for "unassigned"
CREATE TABLE IF NOT EXISTS assignees (
    task_id TEXT PRIMARY KEY,
    assignee TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    source TEXT PRIMARY KEY,  -- partition/offset of the record on task-events
    error TEXT NOT NULL
);
"""


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # a stored notification survives a power loss
    db.executescript(SCHEMA)
    return db


# ANCHOR: rules
def notifications_for(event, previous_assignee=None):
    """The notifications one task event causes: (person, kind) pairs.

    The rules of the spec's user stories 1 and 3; `previous_assignee` is the
    assignee this service last saw for the task (None if it saw none).
    """
    task = event["data"]["task"]
    assignee = task.get("assignee")
    kind = event["type"]
    if kind == "task.created":
        return [(assignee, "assigned")] if assignee else []
    if kind == "task.updated" and "assignee" in event["data"].get("changed_fields", []):
        out = []
        if previous_assignee and previous_assignee != assignee:
            out.append((previous_assignee, "unassigned"))
        if assignee:
            out.append((assignee, "assigned"))
        return out
    if kind == "task.completed":
        return [(assignee, "completed")] if assignee else []
    return []  # task.deleted, other updates, event types added later
# ANCHOR_END: rules


def event_time_ms(event):
    t = event["time"]
    if isinstance(t, datetime.datetime):
        return t.timestamp() * 1000
    return t / 1000  # timestamp-micros as a number


# ANCHOR: store
def store(db, event):
    """Stores the event's notifications once, whatever the number of deliveries.

    Returns False for an event already processed (a redelivery)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        fresh = db.execute(
            "INSERT OR IGNORE INTO processed (event_id) VALUES (?)", (event["id"],)
        ).rowcount
        if fresh:
            task = event["data"]["task"]
            row = db.execute(
                "SELECT assignee FROM assignees WHERE task_id = ?", (task["id"],)
            ).fetchone()
            delay = max(0, int(time.time() * 1000 - event_time_ms(event)))
            for person, kind in notifications_for(event, row[0] if row else None):
                db.execute(
                    "INSERT INTO notifications (event_id, person, kind, task_id, title, delay_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (event["id"], person, kind, task["id"], task["title"], delay),
                )
            db.execute(
                "INSERT INTO assignees (task_id, assignee) VALUES (?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET assignee = excluded.assignee",
                (task["id"], task.get("assignee")),
            )
        db.execute("COMMIT")
        return bool(fresh)
    except BaseException:
        db.execute("ROLLBACK")
        raise
# ANCHOR_END: store


def ensure_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        return
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
    try:
        future.result(15)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def run(args):
    db = open_db(args.db)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
    dlq = f"{args.group}.dlq"
    ensure_topic(args.bootstrap, dlq, 1)
    dead_letters = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    # ANCHOR: consumer
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",  # a new inbox starts from the first event
            "enable.auto.commit": False,  # committed below, after the batch is stored
            "isolation.level": "read_committed",  # the relay publishes in transactions
            "partition.assignment.strategy": "cooperative-sticky",
            # A killed instance's partitions move after this long (Kafka's default is 45 s).
            "session.timeout.ms": 10000,
        }
    )
    # ANCHOR_END: consumer
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    # --idle counts from owning partitions, not from start-up: after a crash
    # the group waits out the dead member's session before it hands them over.
    owned, last = set(), time.monotonic()

    def assigned(consumer, partitions):
        nonlocal last
        owned.update(p.partition for p in partitions)
        last = time.monotonic()

    def revoked(consumer, partitions):
        owned.difference_update(p.partition for p in partitions)

    def idle():
        return args.idle is not None and owned and time.monotonic() - last >= args.idle

    consumer.subscribe([TOPIC], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
    print(f"inbox: consuming {TOPIC} as group {args.group}", flush=True)
    try:
        while not stopping and not idle():
            # ANCHOR: loop
            # Wait for one record, then take what else is already there (up to 100).
            first = consumer.poll(0.5)
            batch = [first] + consumer.consume(num_messages=99, timeout=0) if first else []
            for msg in batch:
                if msg.error():
                    raise KafkaException(msg.error())
                try:
                    event = deserialize(
                        msg.value(), SerializationContext(msg.topic(), MessageField.VALUE)
                    )
                except Exception as e:
                    if registry_outage(e):  # not the record's fault: stop, redeliver later
                        raise RuntimeError(f"the schema registry is unavailable: {e}") from e
                    dead_letter(db, dead_letters, dlq, msg, e)  # poison: fails the same forever
                    continue
                store(db, event)
            if batch:
                # Every record of the batch is stored: now, and only now, move the group on.
                commit(consumer)
                last = time.monotonic()
            # ANCHOR_END: loop
    finally:
        consumer.close()  # commits nothing more; leaves the group at once
        dead_letters.flush(10)


def registry_outage(error):
    """Whether decoding failed because the registry did not answer, rather
    than because of the record (not Avro, or a schema id the registry does
    not have)."""
    if isinstance(error, SchemaRegistryError):
        return error.http_status_code >= 500 or error.http_status_code < 400
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in (
        "httpx",
        "httpcore",
        "requests",
        "urllib3",
    )


def commit(consumer):
    """Commits the group's position; a commit lost to a rebalance is harmless
    (the next owner gets those records again, and `store` skips them)."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as e:
        error = e.args[0]
        if not (error.retriable() or error.code() in LOST_TO_A_REBALANCE):
            raise
        print(f"inbox: commit not made ({error.str()}); records will be redelivered", file=sys.stderr)


LOST_TO_A_REBALANCE = (
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._NO_OFFSET,
)


# ANCHOR: dead_letter
def dead_letter(db, producer, dlq, msg, error):
    """Sends an undecodable record, unchanged, to the service's dead-letter topic."""
    source = f"{msg.partition()}/{msg.offset()}"
    producer.produce(
        dlq,
        key=msg.key(),
        value=msg.value(),
        headers={
            "error": f"{type(error).__name__}: {error}"[:1000],
            "source-topic": msg.topic(),
            "source-partition": str(msg.partition()),
            "source-offset": str(msg.offset()),
        },
    )
    if producer.flush(10) > 0:  # not on the DLQ yet: do not commit past it
        raise RuntimeError(f"cannot dead-letter {TOPIC} {source}")
    db.execute("INSERT OR IGNORE INTO dead_letters (source, error) VALUES (?, ?)", (source, str(error)))
    print(f"inbox: dead-lettered {TOPIC} {source}: {error}", file=sys.stderr, flush=True)
# ANCHOR_END: dead_letter


def list_inbox(args):
    db = open_db(args.db)
    for kind, title, task_id in db.execute(
        "SELECT kind, title, task_id FROM notifications WHERE person = ? ORDER BY seq", (args.person,)
    ):
        print(f"{kind:<10} {title}  ({task_id})")


def stats(args):
    db = open_db(args.db)
    kinds = dict(db.execute("SELECT kind, count(*) FROM notifications GROUP BY kind"))
    delays = [d for (d,) in db.execute("SELECT delay_ms FROM notifications ORDER BY delay_ms")]

    def pct(p):
        return delays[min(len(delays) - 1, int(p * len(delays)))] if delays else None

    print(
        json.dumps(
            {
                "processed_events": db.execute("SELECT count(*) FROM processed").fetchone()[0],
                "notifications": sum(kinds.values()),
                "by_kind": kinds,
                "duplicates": db.execute(
                    "SELECT count(*) FROM (SELECT event_id, person, kind FROM notifications"
                    " GROUP BY 1, 2, 3 HAVING count(*) > 1)"
                ).fetchone()[0],
                "dead_lettered": db.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
                "delay_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": delays[-1] if delays else None},
            },
            sort_keys=True,
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="consume task-events and fill the inboxes")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--registry", required=True)
    r.add_argument("--db", required=True)
    r.add_argument("--group", default="capstone-inbox")
    r.add_argument("--idle", type=float, help="stop after this many seconds without a record")
    ls = sub.add_parser("list", help="print one person's notifications, oldest first")
    ls.add_argument("person")
    ls.add_argument("--db", required=True)
    s = sub.add_parser("stats", help="print the service's counters as JSON")
    s.add_argument("--db", required=True)
    args = parser.parse_args()
    try:
        {"run": run, "list": list_inbox, "stats": stats}[args.command](args)
    except KeyboardInterrupt:
        pass
    except (KafkaException, sqlite3.Error, RuntimeError) as e:
        sys.exit(f"inbox: {e}")


if __name__ == "__main__":
    main()
