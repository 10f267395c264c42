-- The PostgreSQL schema: the same tables as the SQLite one, with native types.

-- Tasks: the Task API's state. Deleted tasks stay as tombstones (status 'deleted').
CREATE TABLE tasks (
    id           UUID PRIMARY KEY,
    title        TEXT NOT NULL,
    description  TEXT,
    priority     TEXT NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    status       TEXT NOT NULL CHECK (status IN ('open', 'completed', 'deleted')),
    due_at       TIMESTAMPTZ,
    assignee     TEXT,
    version      BIGINT NOT NULL CHECK (version >= 1),
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX tasks_by_status ON tasks (status, id);

-- The transactional outbox. `id`, `aggregatetype`, `aggregateid`, `type` and
-- `payload` are the columns Debezium's outbox event router reads, so a CDC
-- connector can replace the relay; `seq` and the rest serve the relay.
CREATE TABLE outbox (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            UUID NOT NULL UNIQUE,
    aggregatetype VARCHAR(255) NOT NULL,
    aggregateid   VARCHAR(255) NOT NULL,
    type          VARCHAR(255) NOT NULL,
    payload       BYTEA NOT NULL,
    topic         TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    traceparent   TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    published_at  TIMESTAMPTZ,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

-- The audit-log service's record of every event it consumed.
CREATE TABLE audit_log (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       UUID NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    task_version   BIGINT NOT NULL,
    event_time     TIMESTAMPTZ NOT NULL,
    correlation_id TEXT,
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       BIGINT NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    envelope       TEXT NOT NULL
);
CREATE INDEX audit_log_by_task ON audit_log (task_id, seq);

-- Events a consumer has fully handled, so redelivery has no second effect.
CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Notifications the notification service sent.
CREATE TABLE notifications (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         UUID NOT NULL UNIQUE,
    event_id   UUID NOT NULL,
    event_type TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    message    TEXT NOT NULL,
    channel    TEXT NOT NULL,
    sent_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (event_id, kind)
);
CREATE INDEX notifications_by_task ON notifications (task_id, seq);
