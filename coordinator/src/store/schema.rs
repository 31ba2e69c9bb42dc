//! The one schema history of both back-ends: the version number, the migrations between
//! versions in each dialect, and the current schema in each dialect.
//!
//! SQLite keeps the version in `PRAGMA user_version`, PostgreSQL in the one-row table
//! `schema_version`; the numbers are the same. A store whose version is higher than
//! [`SCHEMA_VERSION`] was written by a newer Fallow and is refused by both back-ends.
//!
//! # Adding a migration (schema N to N+1)
//! 1. Raise [`SCHEMA_VERSION`] to N+1.
//! 2. Append a [`Migration`] with `from: N` and its text in both dialects (`ALTER TABLE …
//!    ADD COLUMN` with a default is the usual form: old rows get the default).
//! 3. Make the same change to both current schemas, [`SQLITE`] and [`POSTGRES`]: a new
//!    store is created from them directly, never migrated.
//! 4. The test `both_back_ends_have_the_same_tables_and_columns` fails until the two
//!    current schemas agree; a SQLite test migrates an old file (see `schema-v1.sql`).
//!
//! Types map one way: SQLite `INTEGER` is PostgreSQL `BIGINT` (every integer column, so
//! both are read as `i64`), `REAL` is `DOUBLE PRECISION`, `BLOB` is `BYTEA`, and text that
//! is sorted or compared is `TEXT COLLATE "C"` (byte order, as SQLite's `BINARY`), so unit
//! names page in the same order on both.

/// The schema version both back-ends write. Older stores are migrated on open.
pub const SCHEMA_VERSION: i64 = 8;

/// The first version a PostgreSQL store can have: PostgreSQL support began at schema 4,
/// so no PostgreSQL store is older and the earlier migrations have no PostgreSQL text.
pub const FIRST_POSTGRES_VERSION: i64 = 4;

/// One step of the schema history, from version `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it upgrades.
    pub from: i64,
    /// Its statements for SQLite, separated by `;`.
    pub sqlite: &'static str,
    /// Its statements for PostgreSQL, separated by `;` (`None` before
    /// [`FIRST_POSTGRES_VERSION`]).
    pub postgres: Option<&'static str>,
}

/// Every migration, oldest first. Each is run in one transaction: all of it or none.
pub const MIGRATIONS: &[Migration] = &[
    // 1 → 2: accounts and teams, adaptive replication, votes and trust. Columns are added
    // with defaults; the new tables come from the current schema.
    Migration {
        from: 1,
        sqlite: r#"
ALTER TABLE projects ADD COLUMN adaptive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN error_bound REAL NOT NULL DEFAULT 0.02;
ALTER TABLE units ADD COLUMN required INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN team TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN platform TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN subnet TEXT;
ALTER TABLE credit ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE credit ADD COLUMN team TEXT NOT NULL DEFAULT '';
"#,
        postgres: None,
    },
    // 2 → 3: the projects' checkpoint size cap (`[limits].max_checkpoint_bytes`).
    Migration {
        from: 2,
        sqlite: r#"
ALTER TABLE projects ADD COLUMN max_checkpoint_bytes INTEGER NOT NULL DEFAULT 16777216;
"#,
        postgres: None,
    },
    // 3 → 4: signed projects (the submitter's key, the terms digest, a signature per unit).
    // Projects from before stay unsigned (NULL): workers run them only when they allow
    // unsigned projects.
    Migration {
        from: 3,
        sqlite: r#"
ALTER TABLE projects ADD COLUMN submitter BLOB;
ALTER TABLE projects ADD COLUMN terms BLOB;
ALTER TABLE units ADD COLUMN signature BLOB;
"#,
        postgres: None,
    },
    // 4 → 5: project control (`fallow pause|resume|cancel`): the project's state, 0 active,
    // 1 paused, 2 cancelled (`protocol::control::State::code`). Cancelled units are
    // `units.state` 3 and replicas from before a `fallow retry` `assignments.state` 5: no
    // column changes for those.
    Migration {
        from: 4,
        sqlite: r#"
ALTER TABLE projects ADD COLUMN control INTEGER NOT NULL DEFAULT 0;
"#,
        postgres: Some(
            r#"
ALTER TABLE projects ADD COLUMN control BIGINT NOT NULL DEFAULT 0;
"#,
        ),
    },
    // 5 → 6: the deployment's files (coordinator key, TLS certificate and key, tokens) in
    // the database, so every coordinator on one PostgreSQL serves as the same deployment
    // (`crate::deployment`). SQLite gets the table from the current schema and leaves it
    // empty: an embedded coordinator keeps these files in its data directory.
    Migration {
        from: 5,
        sqlite: "",
        postgres: Some(
            r#"
CREATE TABLE IF NOT EXISTS deployment_files (
    name TEXT COLLATE "C" PRIMARY KEY,
    bytes BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL
);
"#,
        ),
    },
    // 6 → 7: project data files (`[data]`): the files in chunks, and each project's list.
    // Only new tables, which come from the current schema.
    Migration {
        from: 6,
        sqlite: "",
        postgres: Some(""),
    },
    // 7 → 8: `coordinator_leader`, where the coordinator that schedules a shared
    // PostgreSQL database publishes its URL for the others (`forward`; unused on SQLite).
    // Only a new table, which comes from the current schema.
    Migration {
        from: 7,
        sqlite: "",
        postgres: Some(""),
    },
];

/// The statements of a migration's text, one at a time.
pub fn statements(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// The current schema for SQLite. Idempotent (`IF NOT EXISTS`): run on every open, after
/// the migrations.
pub const SQLITE: &str = r#"
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
    max_checkpoint_bytes INTEGER NOT NULL DEFAULT 16777216,
    disputes INTEGER NOT NULL DEFAULT 0,
    adaptive INTEGER NOT NULL DEFAULT 1,
    error_bound REAL NOT NULL DEFAULT 0.02,
    created_ms INTEGER NOT NULL,
    aggregate_done INTEGER NOT NULL DEFAULT 0,
    aggregate BLOB,
    aggregate_error TEXT,
    submitter BLOB,
    terms BLOB,
    control INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY,
    project INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    input BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    target INTEGER NOT NULL,
    required INTEGER NOT NULL DEFAULT 0,
    output BLOB,
    digest BLOB,
    fuel INTEGER,
    reason TEXT,
    settled_ms INTEGER,
    signature BLOB,
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
    registered_ms INTEGER NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    team TEXT NOT NULL DEFAULT '',
    platform TEXT NOT NULL DEFAULT '',
    subnet TEXT
);
-- One row per (unit, signer): the primary key is what makes credit impossible to grant twice.
CREATE TABLE IF NOT EXISTS credit (
    unit INTEGER NOT NULL REFERENCES units(id),
    worker BLOB NOT NULL,
    fuel INTEGER NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    team TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (unit, worker)
);
CREATE INDEX IF NOT EXISTS credit_account ON credit (account);
-- The leaderboard looks up each account's workers: without this, a scan of every worker
-- per account (14 s of CPU at 10,000 accounts; 0.1 s with it). Created by any start.
CREATE INDEX IF NOT EXISTS workers_account ON workers (account, registered_ms);
CREATE TABLE IF NOT EXISTS votes (
    unit INTEGER NOT NULL REFERENCES units(id),
    worker BLOB NOT NULL,
    digest BLOB NOT NULL,
    fuel INTEGER NOT NULL,
    salt BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS trust (
    worker BLOB NOT NULL,
    project INTEGER NOT NULL REFERENCES projects(id),
    consecutive INTEGER NOT NULL,
    offences INTEGER NOT NULL,
    PRIMARY KEY (worker, project)
);
CREATE TABLE IF NOT EXISTS unchecked (
    worker BLOB NOT NULL,
    project INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    PRIMARY KEY (worker, project, unit)
);
CREATE TABLE IF NOT EXISTS disqualified (
    unit INTEGER NOT NULL,
    worker BLOB NOT NULL,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS standing (
    worker BLOB PRIMARY KEY,
    errors_in_row INTEGER NOT NULL,
    throttled INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS data_files (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS data_chunks (
    digest BLOB NOT NULL,
    idx INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (digest, idx)
);
CREATE TABLE IF NOT EXISTS project_data (
    project INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    digest BLOB NOT NULL REFERENCES data_files(digest),
    size INTEGER NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE TABLE IF NOT EXISTS deployment_files (
    name TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS coordinator_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    since_ms INTEGER NOT NULL
);
"#;

/// The current schema for PostgreSQL, table for table and column for column the same as
/// [`SQLITE`] in PostgreSQL's types (see the module doc). Two differences, both because
/// SQLite has something implicit: ids are `GENERATED BY DEFAULT AS IDENTITY` (SQLite's
/// `INTEGER PRIMARY KEY` is the row id), and `assignments.seq` orders assignments made in
/// the same millisecond (SQLite orders them by `rowid`). Idempotent, like [`SQLITE`].
pub const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS schema_version (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    digest BYTEA PRIMARY KEY,
    bytes BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    manifest TEXT NOT NULL,
    module BYTEA NOT NULL REFERENCES modules(digest),
    reducer BYTEA REFERENCES modules(digest),
    replication BIGINT NOT NULL,
    quorum BIGINT NOT NULL,
    max_replicas BIGINT NOT NULL,
    fuel BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    wall_seconds BIGINT NOT NULL,
    max_output_bytes BIGINT NOT NULL,
    nan_canonicalization BIGINT NOT NULL,
    max_checkpoint_bytes BIGINT NOT NULL DEFAULT 16777216,
    disputes BIGINT NOT NULL DEFAULT 0,
    adaptive BIGINT NOT NULL DEFAULT 1,
    error_bound DOUBLE PRECISION NOT NULL DEFAULT 0.02,
    created_ms BIGINT NOT NULL,
    aggregate_done BIGINT NOT NULL DEFAULT 0,
    aggregate BYTEA,
    aggregate_error TEXT,
    submitter BYTEA,
    terms BYTEA,
    control BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS units (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project BIGINT NOT NULL REFERENCES projects(id),
    name TEXT COLLATE "C" NOT NULL,
    input BYTEA NOT NULL,
    state BIGINT NOT NULL DEFAULT 0,
    target BIGINT NOT NULL,
    required BIGINT NOT NULL DEFAULT 0,
    output BYTEA,
    digest BYTEA,
    fuel BIGINT,
    reason TEXT,
    settled_ms BIGINT,
    signature BYTEA,
    UNIQUE (project, name)
);
CREATE TABLE IF NOT EXISTS assignments (
    unit BIGINT NOT NULL REFERENCES units(id),
    worker BYTEA NOT NULL,
    state BIGINT NOT NULL,
    failure_kind TEXT,
    reason TEXT,
    created_ms BIGINT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS workers (
    id BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    peer_addr TEXT NOT NULL,
    cores BIGINT NOT NULL,
    registered_ms BIGINT NOT NULL,
    account TEXT COLLATE "C" NOT NULL DEFAULT '',
    team TEXT COLLATE "C" NOT NULL DEFAULT '',
    platform TEXT NOT NULL DEFAULT '',
    subnet TEXT
);
-- One row per (unit, signer): the primary key is what makes credit impossible to grant twice.
CREATE TABLE IF NOT EXISTS credit (
    unit BIGINT NOT NULL REFERENCES units(id),
    worker BYTEA NOT NULL,
    fuel BIGINT NOT NULL,
    account TEXT COLLATE "C" NOT NULL DEFAULT '',
    team TEXT COLLATE "C" NOT NULL DEFAULT '',
    PRIMARY KEY (unit, worker)
);
CREATE INDEX IF NOT EXISTS credit_account ON credit (account);
CREATE INDEX IF NOT EXISTS workers_account ON workers (account, registered_ms);
CREATE TABLE IF NOT EXISTS votes (
    unit BIGINT NOT NULL REFERENCES units(id),
    worker BYTEA NOT NULL,
    digest BYTEA NOT NULL,
    fuel BIGINT NOT NULL,
    salt BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS trust (
    worker BYTEA NOT NULL,
    project BIGINT NOT NULL REFERENCES projects(id),
    consecutive BIGINT NOT NULL,
    offences BIGINT NOT NULL,
    PRIMARY KEY (worker, project)
);
CREATE TABLE IF NOT EXISTS unchecked (
    worker BYTEA NOT NULL,
    project BIGINT NOT NULL,
    unit BIGINT NOT NULL,
    PRIMARY KEY (worker, project, unit)
);
CREATE TABLE IF NOT EXISTS disqualified (
    unit BIGINT NOT NULL,
    worker BYTEA NOT NULL,
    PRIMARY KEY (unit, worker)
);
CREATE TABLE IF NOT EXISTS standing (
    worker BYTEA PRIMARY KEY,
    errors_in_row BIGINT NOT NULL,
    throttled BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS data_files (
    digest BYTEA PRIMARY KEY,
    size BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS data_chunks (
    digest BYTEA NOT NULL,
    idx BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (digest, idx)
);
CREATE TABLE IF NOT EXISTS project_data (
    project BIGINT NOT NULL REFERENCES projects(id),
    name TEXT COLLATE "C" NOT NULL,
    digest BYTEA NOT NULL REFERENCES data_files(digest),
    size BIGINT NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE TABLE IF NOT EXISTS deployment_files (
    name TEXT COLLATE "C" PRIMARY KEY,
    bytes BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS coordinator_leader (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    since_ms BIGINT NOT NULL
);
"#;
