-- The schema of Fallow 0.1 (user_version 1), kept to test the migration to 2.
CREATE TABLE IF NOT EXISTS modules (
    digest BLOB PRIMARY KEY,
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    module BLOB NOT NULL REFERENCES modules(digest),
    reducer BLOB REFERENCES modules(digest),
    replication INTEGER NOT NULL,
    quorum INTEGER NOT NULL,
    max_replicas INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    wall_seconds INTEGER NOT NULL,
    max_output_bytes INTEGER NOT NULL,
    nan_canonicalization INTEGER NOT NULL,
    disputes INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    aggregate_done INTEGER NOT NULL DEFAULT 0,
    aggregate BLOB,
    aggregate_error TEXT
);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY,
    project INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    input BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    target INTEGER NOT NULL,
    output BLOB,
    digest BLOB,
    fuel INTEGER,
    reason TEXT,
    settled_ms INTEGER,
    UNIQUE (project, name)
);
CREATE TABLE IF NOT EXISTS assignments (
    unit INTEGER NOT NULL REFERENCES units(id),
    worker BLOB NOT NULL,
    state INTEGER NOT NULL,
    failure_kind TEXT,
    reason TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS workers (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    peer_addr TEXT NOT NULL,
    cores INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS credit (
    unit INTEGER NOT NULL REFERENCES units(id),
    worker BLOB NOT NULL,
    fuel INTEGER NOT NULL,
    PRIMARY KEY (unit, worker)
);
