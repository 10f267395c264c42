-- Schemas, identified globally: the same schema under two subjects has one id.
CREATE TABLE schemas (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The schema's JSON with object keys sorted and no whitespace: two texts
    -- that differ only in layout are the same schema.
    canonical   TEXT NOT NULL UNIQUE,
    schema      TEXT NOT NULL,
    schema_type TEXT NOT NULL DEFAULT 'AVRO'
);

-- Versions of each subject. Soft-deleted versions keep their row.
CREATE TABLE versions (
    subject   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);

-- Compatibility levels; the subject '' holds the global level.
CREATE TABLE config (
    subject       TEXT PRIMARY KEY NOT NULL,
    compatibility TEXT NOT NULL
);
