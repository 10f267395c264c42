-- One row that readiness rewrites, only while task writes are failing, to
-- find out whether the database takes writes again.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TIMESTAMPTZ NOT NULL
);
