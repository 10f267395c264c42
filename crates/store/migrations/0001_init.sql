-- Tasks: the Task API's state. Deleted tasks stay as tombstones (status 'deleted').
CREATE TABLE tasks (
    id           TEXT PRIMARY KEY NOT NULL,
    title        TEXT NOT NULL,
    description  TEXT,
    priority     TEXT NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    status       TEXT NOT NULL CHECK (status IN ('open', 'completed', 'deleted')),
    due_at       TEXT,
    assignee     TEXT,
    version      INTEGER NOT NULL CHECK (version >= 1),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX tasks_by_status ON tasks (status, id);

-- The transactional outbox. `id`, `aggregatetype`, `aggregateid`, `type` and
-- `payload` are the columns Debezium's outbox event router reads, so a CDC
-- connector can replace the relay; `seq` and the rest serve the relay.
CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    aggregatetype TEXT NOT NULL,
    aggregateid   TEXT NOT NULL,
    type          TEXT NOT NULL,
    payload       BLOB NOT NULL,
    topic         TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    published_at  TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

-- The audit-log service's record of every event it consumed.
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    task_version   INTEGER NOT NULL,
    event_time     TEXT NOT NULL,
    correlation_id TEXT,
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       INTEGER NOT NULL,
    recorded_at    TEXT NOT NULL,
    envelope       TEXT NOT NULL
);
CREATE INDEX audit_log_by_task ON audit_log (task_id, seq);

-- Events a consumer has fully handled, so redelivery has no second effect.
CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;

-- Notifications the notification service sent.
CREATE TABLE notifications (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    event_id   TEXT NOT NULL,
    event_type TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    message    TEXT NOT NULL,
    channel    TEXT NOT NULL,
    sent_at    TEXT NOT NULL,
    UNIQUE (event_id, kind)
);
CREATE INDEX notifications_by_task ON notifications (task_id, seq);
