"""The chapter's audit-log consumer: a consumer group with auto-commit that
appends every task event to an SQLite audit table.

Settings (environment): KAFKA_BOOTSTRAP (required), CHAPTER_TOPIC (default
chapter-task-events), CHAPTER_AUDIT_GROUP (default chapter-audit),
CHAPTER_AUDIT_DB (default chapter-audit.db), SQLITE_SYNCHRONOUS (full |
normal, default full).
"""

import json
import os
import signal
import sqlite3

from confluent_kafka import Consumer

BOOTSTRAP = os.environ["KAFKA_BOOTSTRAP"]
TOPIC = os.environ.get("CHAPTER_TOPIC", "chapter-task-events")
GROUP = os.environ.get("CHAPTER_AUDIT_GROUP", "chapter-audit")
DB_PATH = os.environ.get("CHAPTER_AUDIT_DB", "chapter-audit.db")
SYNCHRONOUS = os.environ.get("SQLITE_SYNCHRONOUS", "full")
if SYNCHRONOUS not in ("full", "normal"):
    raise SystemExit(f"SQLITE_SYNCHRONOUS must be full or normal, not {SYNCHRONOUS!r}")

running = True


def stop(*_):
    global running
    running = False


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    db = sqlite3.connect(DB_PATH, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS audit_log (event_id TEXT NOT NULL, event_type TEXT NOT NULL,"
        " task_id TEXT NOT NULL, occurred_at TEXT NOT NULL, recorded_at TEXT DEFAULT CURRENT_TIMESTAMP)"
    )
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": GROUP,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    consumer.subscribe([TOPIC])
    try:
        while running:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                print(f"consumer error: {message.error()}", flush=True)
                continue
            event = json.loads(message.value())
            db.execute(
                "INSERT INTO audit_log (event_id, event_type, task_id, occurred_at) VALUES (?, ?, ?, ?)",
                (event["event_id"], event["event_type"], event["task"]["id"], event["occurred_at"]),
            )
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
