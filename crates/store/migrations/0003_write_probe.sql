-- One row that readiness rewrites, only while task writes are failing, to
-- find out whether the database takes writes again. The probe writes a few
-- pages of ballast and clears them in the same transaction, so it needs as
-- much free space as a small group of task writes.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT NOT NULL,
    ballast BLOB
);
