-- The assignment saga's own state: one row per saga (its state, whether it
-- holds a unit of the assignee's capacity, and when its timer acts next),
-- and its history, one row per step, each with the id of the saga event the
-- step published on `task-sagas` through the outbox.
CREATE TABLE sagas (
    id               TEXT PRIMARY KEY NOT NULL,
    task_id          TEXT NOT NULL,
    assignee         TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                        ('awaiting_acceptance', 'compensating', 'completed', 'compensated', 'superseded')),
    outcome          TEXT,
    holds_capacity   INTEGER NOT NULL CHECK (holds_capacity IN (0, 1)),
    deadline_at      TEXT,
    task_version     INTEGER NOT NULL,
    trigger_event_id TEXT NOT NULL UNIQUE,
    correlation_id   TEXT,
    version          INTEGER NOT NULL CHECK (version >= 1),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX sagas_by_task ON sagas (task_id, created_at);
CREATE INDEX sagas_due ON sagas (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX sagas_holding ON sagas (assignee) WHERE holds_capacity = 1;

CREATE TABLE saga_history (
    saga_id      TEXT NOT NULL REFERENCES sagas (id),
    seq          INTEGER NOT NULL,
    step         TEXT NOT NULL,
    state        TEXT NOT NULL,
    detail       TEXT,
    event_id     TEXT NOT NULL UNIQUE,
    causation_id TEXT,
    at           TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
