"""The chapter's Task API, written the way the chapter teaches it.

A FastAPI endpoint stores the task in SQLite and then produces a
`task.created` event with confluent-kafka-python (`acks=all`, idempotent,
delivery reports served by `poll`). It is a dual write with no outbox: the
row is committed before the event is handed to the producer, and the
response does not wait for the delivery report. This is what taskstream is
measured against in BENCHMARKS.md ("Next to the chapter's own stack").

Settings (environment):
  KAFKA_BOOTSTRAP       the cluster (required)
  CHAPTER_TOPIC         topic for the events (default chapter-task-events)
  CHAPTER_PARTITIONS    partitions when the topic is created (default 6)
  CHAPTER_DB            SQLite file (default chapter-tasks.db)
  SQLITE_SYNCHRONOUS    full | normal (default full, taskstream's default)

Run: uvicorn app:app --host 127.0.0.1 --port 8001 --no-access-log
"""

import datetime
import json
import os
import sqlite3
import threading
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fastapi import FastAPI
from pydantic import BaseModel

BOOTSTRAP = os.environ["KAFKA_BOOTSTRAP"]
TOPIC = os.environ.get("CHAPTER_TOPIC", "chapter-task-events")
PARTITIONS = int(os.environ.get("CHAPTER_PARTITIONS", "6"))
DB_PATH = os.environ.get("CHAPTER_DB", "chapter-tasks.db")
SYNCHRONOUS = os.environ.get("SQLITE_SYNCHRONOUS", "full")
if SYNCHRONOUS not in ("full", "normal"):
    raise SystemExit(f"SQLITE_SYNCHRONOUS must be full or normal, not {SYNCHRONOUS!r}")


def ensure_topic() -> None:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    if TOPIC in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).values():
        try:
            future.result()
        except Exception as error:  # created meanwhile by another process
            if "already exists" not in str(error).lower():
                raise


def open_db() -> sqlite3.Connection:
    db = sqlite3.connect(DB_PATH, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
        " assignee TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    return db


ensure_topic()
db = open_db()
db_lock = threading.Lock()
producer = Producer(
    {"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
)
delivery_failures = 0


def on_delivery(error, message) -> None:
    global delivery_failures
    if error is not None:
        delivery_failures += 1


app = FastAPI(title="Task API (chapter stack)")


class TaskCreate(BaseModel):
    title: str
    assignee: str | None = None


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok", "delivery_failures": delivery_failures}


@app.post("/tasks", status_code=201)
def create_task(body: TaskCreate) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    task = {
        "id": str(uuid.uuid4()),
        "title": body.title,
        "assignee": body.assignee,
        "status": "open",
        "version": 1,
        "created_at": now,
    }
    with db_lock:
        db.execute(
            "INSERT INTO tasks (id, title, assignee, status, created_at) VALUES (?, ?, ?, ?, ?)",
            (task["id"], task["title"], task["assignee"], task["status"], now),
        )
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": "task.created",
        "occurred_at": now,
        "task": task,
    }
    producer.produce(TOPIC, key=task["id"], value=json.dumps(event), on_delivery=on_delivery)
    producer.poll(0)
    return task


@app.on_event("shutdown")
def flush() -> None:
    producer.flush(10)
