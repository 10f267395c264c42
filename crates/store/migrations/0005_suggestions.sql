-- Suggestions of the triage agent: one per triggering task event (its
-- `event_id`), written together with the `task.triage_suggested` outbox row
-- and the agent group's processed mark. A person (or a configured rule)
-- accepts or rejects a pending suggestion through the Task API.
CREATE TABLE suggestions (
    id           TEXT PRIMARY KEY NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    task_id      TEXT NOT NULL,
    task_version INTEGER NOT NULL,
    priority     TEXT CHECK (priority IN ('low', 'medium', 'high')),
    assignee     TEXT,
    due_at       TEXT,
    confidence   INTEGER NOT NULL CHECK (confidence BETWEEN 0 AND 100),
    model        TEXT NOT NULL,
    rationale    TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    created_at   TEXT NOT NULL,
    resolved_at  TEXT
);
CREATE INDEX suggestions_by_task ON suggestions (task_id, created_at);
