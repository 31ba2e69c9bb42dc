//! The embedded default store: one SQLite file (`<data>/fallow.db`) in WAL mode.
//!
//! `synchronous = NORMAL`: a committed transaction survives the coordinator being killed at
//! any point (the WAL is in the OS page cache); only an OS crash or power cut can lose the
//! last few commits, which leases and certificates then redo.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments, Connection, Row, SqlitePool};
use tokio_stream::StreamExt;

use protocol::certificate::Verified;
use protocol::data::DataFile;
use protocol::manifest::ProjectSpec;
use protocol::{Claim, Digest, Limits, ProjectId, UnitId, WorkerId};

use protocol::provenance::{Signer, SubmitterKey};

use super::schema::{self, SCHEMA_VERSION};
use super::{
    AccountTotal, CorruptOutput, CreditTo, LeasedInput, LoadedCounts, Replica, Snapshot, Store,
    StoredOutput, StoredUnit, StoredWorker, TeamTotal, UnitRow, VerifiedOutput, Write, control_of,
    digest, failure_of, intact_output, merge_units, vote_seal, worker_id,
};
use crate::Error;
use crate::scheduler::{
    Aggregate, AssignmentState, Change, Project, ProjectStats, Standing, Trust, UnitStatus,
};

/// How a write transaction begins: taking the write lock at once (waiting for it up to
/// the busy timeout), so a transaction that reads before it writes never finds, at its
/// first write, that another connection committed since its read — which SQLite reports
/// at once as "database is locked" (`SQLITE_BUSY_SNAPSHOT` in WAL mode), without waiting.
const WRITE: &str = "BEGIN IMMEDIATE";

/// Every account with its credit, verified units, latest team and workers. The two
/// per-account subqueries use the `workers_account` index.
///
/// Credit is summed with `TOTAL` (floating point), never `SUM`: an integer `SUM` that
/// passes 2^63 fails the whole query ("integer overflow"), and one bad row must not take
/// the leaderboard or the coordinator's start-up down with it (see [`credit_of`]).
const LEADERBOARD_ACCOUNTS: &str = "SELECT a.account AS name, TOTAL(MAX(c.fuel, 0)) AS credit, COUNT(c.unit) AS verified,
    (SELECT team FROM workers w WHERE w.account = a.account ORDER BY registered_ms DESC LIMIT 1) AS team,
    (SELECT COUNT(*) FROM workers w WHERE w.account = a.account) AS workers
 FROM (SELECT DISTINCT account FROM workers UNION SELECT DISTINCT account FROM credit) a
 LEFT JOIN credit c ON c.account = a.account
 WHERE a.account != ''
 GROUP BY a.account ORDER BY credit DESC, name";

/// The `credit` column of a row summed with `TOTAL`: whole fuel units, saturating at
/// `u64::MAX` (a float converts to an integer saturating; NaN gives 0).
fn credit_of(row: &sqlx::sqlite::SqliteRow) -> Result<u64, sqlx::Error> {
    Ok(row.try_get::<f64, _>("credit")? as u64)
}

const UNIT_PENDING: i64 = 0;
const UNIT_VERIFIED: i64 = 1;
const UNIT_FAILED: i64 = 2;
const UNIT_CANCELLED: i64 = 3;

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(in crate::store) pool: SqlitePool,
    /// Held for the life of the store: one coordinator per data directory, because the
    /// scheduler keeps its state in memory and a second one would hand out the same units.
    _lock: std::sync::Arc<std::fs::File>,
}

/// How [`SqliteStore::open_with`] treats a store that is gone or damaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// When `fallow.db` is missing from a directory that held a store, empty, unreadable
    /// or fails its quick check: set what is left of it aside (renamed
    /// `fallow.db*.aside-<Unix ms>`) and start with an empty store. A healthy store is
    /// opened as usual, so the flag is harmless to leave on. Default false: refuse to
    /// start, naming the problem ([`Error::StoreDamaged`]).
    pub start_afresh: bool,
}

/// Written beside a store once it exists: from then on a missing or empty `fallow.db` is
/// a lost store, not a first start.
pub const MARKER: &str = "store.marker";

const MARKER_TEXT: &str = "This directory holds a Fallow coordinator's store (fallow.db). While this file \
exists the coordinator refuses to start on a missing or empty fallow.db; \
`fallow coordinator --start-afresh` starts an empty store instead.\n";

/// Why a store cannot be opened as it is.
enum OpenFailure {
    /// Gone, empty or damaged: what is wrong (`--start-afresh` may set it aside).
    Damaged(String),
    /// Anything else (permissions, a full disk): never a reason to set a store aside.
    Other(Error),
}

impl From<sqlx::Error> for OpenFailure {
    fn from(e: sqlx::Error) -> Self {
        match damage(&e) {
            Some(problem) => OpenFailure::Damaged(problem),
            None => OpenFailure::Other(Error::Store(e)),
        }
    }
}

/// SQLITE_CORRUPT (11) and SQLITE_NOTADB (26): the file is damaged, not merely unusable.
fn damage(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "11" || c == "26") => {
            Some(format!("is damaged ({})", d.message()))
        }
        _ => None,
    }
}

impl SqliteStore {
    /// Verified units as read (`id, name, output, digest, fuel, settled_ms`), each with its
    /// signers, checked against its digest: a mismatch is [`StoredOutput::Corrupt`].
    async fn stored_outputs(
        &self,
        rows: Vec<sqlx::sqlite::SqliteRow>,
    ) -> Result<Vec<StoredOutput>, Error> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let unit = UnitId(id as u64);
            let name: String = row.try_get("name")?;
            let Some((output, digest, fuel)) = intact_output(
                row.try_get("output")?,
                row.try_get("digest")?,
                row.try_get("fuel")?,
            ) else {
                out.push(StoredOutput::Corrupt(CorruptOutput { unit, name }));
                continue;
            };
            let signers = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT worker FROM credit WHERE unit = $1 ORDER BY worker",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|b| worker_id(b))
            .collect::<Result<_, _>>()?;
            let verified_ms: Option<i64> = row.try_get("settled_ms")?;
            out.push(StoredOutput::Intact(VerifiedOutput {
                unit,
                name,
                output,
                digest,
                fuel: fuel as u64,
                signers,
                verified_ms: verified_ms.unwrap_or(0).max(0) as u64,
            }));
        }
        Ok(out)
    }

    /// Opens (creating if needed) `<dir>/fallow.db`, refusing a lost or damaged store
    /// (see [`OpenOptions`]).
    pub async fn open(dir: &Path) -> Result<Self, Error> {
        SqliteStore::open_with(dir, OpenOptions::default()).await
    }

    /// Opens (creating if needed) `<dir>/fallow.db`: takes the directory's lock, refuses a
    /// store that is missing from a directory that held one (`store.marker`, or a
    /// `coordinator.key` or write-ahead log left behind), empty, not a database or failing
    /// `PRAGMA quick_check` — unless `options.start_afresh` — then migrates and marks it.
    pub async fn open_with(dir: &Path, options: OpenOptions) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::DataDir {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let lock_path = dir.join("coordinator.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| Error::DataDir {
            path: lock_path.clone(),
            message: e.to_string(),
        })?;
        // Blocks the thread for at most `dirlock::PATIENCE`, and only while another holds
        // the lock: once, at start-up.
        if let Err(e) = protocol::dirlock::lock_exclusive(&lock) {
            return Err(Error::DataDir {
                path: dir.to_path_buf(),
                message: match e {
                    std::fs::TryLockError::WouldBlock => {
                        "another coordinator is using this data directory".into()
                    }
                    std::fs::TryLockError::Error(e) => format!("cannot lock it: {e}"),
                },
            });
        }
        let path = crate::database_path(dir);
        let pool = match connect_checked(dir, &path, false).await {
            Ok(pool) => pool,
            Err(OpenFailure::Other(e)) => return Err(e),
            Err(OpenFailure::Damaged(problem)) if options.start_afresh => {
                let aside = set_aside(dir)?;
                tracing::warn!(
                    path = %path.display(),
                    "the store {problem}: --start-afresh set it aside ({}) and starts an empty store",
                    aside.join(", ")
                );
                match connect_checked(dir, &path, true).await {
                    Ok(pool) => pool,
                    Err(OpenFailure::Other(e)) => return Err(e),
                    Err(OpenFailure::Damaged(problem)) => {
                        return Err(Error::StoreDamaged { path, problem });
                    }
                }
            }
            Err(OpenFailure::Damaged(problem)) => {
                return Err(Error::StoreDamaged { path, problem });
            }
        };
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await?;
        if version > SCHEMA_VERSION {
            return Err(Error::DataDir {
                path,
                message: format!(
                    "written by a newer Fallow (schema {version}, this one understands {SCHEMA_VERSION}); use that version or another --data directory"
                ),
            });
        }
        for migration in schema::MIGRATIONS {
            let from = migration.from;
            if version == 0 || version > from {
                continue;
            }
            // One statement at a time in one transaction: all columns or none.
            let mut tx = pool.begin().await?;
            for statement in schema::statements(migration.sqlite) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            tracing::info!(path = %path.display(), "database migrated from schema {from} to {}", from + 1);
        }
        // Idempotent (CREATE ... IF NOT EXISTS), so no transaction is needed; the version is
        // written after the tables exist.
        sqlx::raw_sql(schema::SQLITE).execute(&pool).await?;
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&pool)
            .await?;
        let marker = dir.join(MARKER);
        if !marker.exists() {
            std::fs::write(&marker, MARKER_TEXT).map_err(|e| Error::DataDir {
                path: marker.clone(),
                message: format!("cannot write: {e}"),
            })?;
        }
        Ok(SqliteStore {
            pool,
            _lock: std::sync::Arc::new(lock),
        })
    }
}

/// Copies the store of data directory `dir` into the new file `out`, also while a
/// coordinator runs on it: SQLite's `VACUUM INTO` writes a consistent, compacted copy of
/// the last committed state, without taking the directory's lock or stopping anyone (a
/// running coordinator's writes wait for it at most their busy timeout). The copy is a
/// complete `fallow.db`: restore it by stopping the coordinator and putting it in place
/// as `DATA/fallow.db` (with `store.marker`, the key, TLS files and tokens left as they
/// are). `out` is never overwritten.
pub async fn backup(dir: &Path, out: &Path) -> Result<(), Error> {
    let path = crate::database_path(dir);
    if !path.is_file() {
        return Err(Error::DataDir {
            path: dir.to_path_buf(),
            message: "holds no store (fallow.db is missing)".into(),
        });
    }
    let refuse = |message: String| Error::Backup {
        path: out.to_path_buf(),
        message,
    };
    if out.exists() {
        return Err(refuse(
            "already exists; a backup never overwrites a file".into(),
        ));
    }
    let target = out
        .to_str()
        .ok_or_else(|| refuse("is not a UTF-8 path".into()))?;
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(30));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let copied = sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await;
    let closed = conn.close().await;
    copied.map_err(|e| refuse(format!("cannot write the backup: {e}")))?;
    closed?;
    Ok(())
}

/// Connects to `path` after checking that a store that existed is still there (unless
/// `fresh`: just set aside), and runs `PRAGMA quick_check`.
async fn connect_checked(dir: &Path, path: &Path, fresh: bool) -> Result<SqlitePool, OpenFailure> {
    if !fresh && let Some(problem) = lost(dir, path) {
        return Err(OpenFailure::Damaged(problem));
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| match damage(&e) {
            Some(problem) => OpenFailure::Damaged(problem),
            None => OpenFailure::Other(Error::DataDir {
                path: path.to_path_buf(),
                message: format!("cannot open database: {e}"),
            }),
        })?;
    // Reads every page's structure (not the row contents: outputs are checked against their
    // digests when read). Linear in the file's size; the time taken is logged.
    let started = std::time::Instant::now();
    let checked = sqlx::query_scalar::<_, String>("PRAGMA quick_check")
        .fetch_all(&pool)
        .await;
    let problems = match checked {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => None,
        Ok(lines) => Some(format!(
            "is damaged: it fails SQLite's quick check ({}{})",
            lines.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
            if lines.len() > 3 { "; …" } else { "" }
        )),
        Err(e) => match OpenFailure::from(e) {
            OpenFailure::Damaged(problem) => Some(problem),
            OpenFailure::Other(e) => {
                pool.close().await;
                return Err(OpenFailure::Other(e));
            }
        },
    };
    if let Some(problem) = problems {
        pool.close().await;
        return Err(OpenFailure::Damaged(problem));
    }
    tracing::info!(path = %path.display(), took = ?started.elapsed(), "store passed its quick check");
    Ok(pool)
}

/// Whether the store of a directory that held one is gone: `fallow.db` missing or empty
/// while `store.marker`, a `coordinator.key` (every coordinator since lease tickets makes
/// one) or the store's write-ahead log says a store was there.
fn lost(dir: &Path, path: &Path) -> Option<String> {
    let wal = dir.join("fallow.db-wal");
    let held = [dir.join(MARKER), dir.join("coordinator.key"), wal.clone()]
        .iter()
        .find(|p| p.exists())
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let held = held?;
    let why = format!("this directory held a store ({held} is there)");
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(if wal.exists() {
            format!("is missing but its write-ahead log fallow.db-wal is still there: {why}")
        } else {
            format!("is missing: {why}")
        }),
        Ok(m) if m.len() == 0 => Some(format!("is empty (0 bytes): {why}")),
        _ => None,
    }
}

/// Renames what is left of a store (`fallow.db`, its WAL and shared-memory files) to
/// `NAME.aside-<Unix ms>`; returns the new names.
fn set_aside(dir: &Path) -> Result<Vec<String>, Error> {
    let stamp = crate::now_ms();
    let mut moved = Vec::new();
    for name in ["fallow.db", "fallow.db-wal", "fallow.db-shm"] {
        let from = dir.join(name);
        let to = format!("{name}.aside-{stamp}");
        match std::fs::rename(&from, dir.join(&to)) {
            Ok(()) => moved.push(to),
            // Not there, or gone since: SQLite removes the WAL and shared-memory files when
            // the last connection to a store closes, which may be just now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::DataDir {
                    path: from,
                    message: format!("cannot set it aside: {e}"),
                });
            }
        }
    }
    Ok(moved)
}

/// Why a reducer failed, without the "reducer failed: " that stores before 2026-12 put in
/// front (the CLI and the dashboard say it themselves).
fn reducer_reason(stored: String) -> String {
    match stored.strip_prefix("reducer failed: ") {
        Some(rest) => rest.to_string(),
        None => stored,
    }
}

fn project_from_row(row: &SqliteRow) -> Result<Project, Error> {
    let reducer: Option<Vec<u8>> = row.try_get("reducer")?;
    Ok(Project {
        id: ProjectId(row.try_get::<i64, _>("id")? as u64),
        name: row.try_get("name")?,
        replication: row.try_get::<i64, _>("replication")? as u32,
        quorum: row.try_get::<i64, _>("quorum")? as u32,
        max_replicas: row.try_get::<i64, _>("max_replicas")? as u32,
        limits: Limits {
            fuel: row.try_get::<i64, _>("fuel")? as u64,
            memory_mb: row.try_get::<i64, _>("memory_mb")? as u32,
            wall_seconds: row.try_get::<i64, _>("wall_seconds")? as u32,
            max_output_bytes: row.try_get::<i64, _>("max_output_bytes")? as u64,
            nan_canonicalization: row.try_get::<i64, _>("nan_canonicalization")? != 0,
            max_checkpoint_bytes: row.try_get::<i64, _>("max_checkpoint_bytes")? as u64,
        },
        module: digest(row.try_get("module")?)?,
        reducer: reducer.as_deref().map(digest).transpose()?,
        stats: ProjectStats {
            disputes: row.try_get::<i64, _>("disputes")? as u64,
            ..ProjectStats::default()
        },
        adaptive: row.try_get::<i64, _>("adaptive")? != 0,
        error_bound: row.try_get::<f64, _>("error_bound")?,
        signer: match (
            row.try_get::<Option<Vec<u8>>, _>("submitter")?,
            row.try_get::<Option<Vec<u8>>, _>("terms")?,
        ) {
            (Some(key), Some(terms)) => Some(Signer {
                key: SubmitterKey::from_slice("stored submitter key", &key)
                    .map_err(|e| Error::Corrupt(e.to_string()))?,
                terms: digest(&terms)?,
            }),
            _ => None,
        },
        aggregate: match (
            row.try_get::<i64, _>("aggregate_done")? != 0,
            row.try_get::<Option<String>, _>("aggregate_error")?,
        ) {
            (false, _) => Aggregate::Pending,
            (true, None) => Aggregate::Ready,
            (true, Some(e)) => Aggregate::Failed(reducer_reason(e)),
        },
        data: Default::default(),
        control: control_of(row.try_get("control")?)?,
    })
}

/// Many statements with `?` placeholders and their arguments, run in one call (one round
/// trip to SQLite's thread instead of one per statement).
#[derive(Default)]
struct Batch<'a> {
    sql: String,
    args: SqliteArguments<'a>,
}

fn encode_error(e: sqlx::error::BoxDynError) -> Error {
    Error::Store(sqlx::Error::Encode(e))
}

impl<'a> Batch<'a> {
    fn stmt(&mut self, sql: &str) {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
    }
    fn int(&mut self, v: i64) -> Result<(), Error> {
        Arguments::add(&mut self.args, v).map_err(encode_error)
    }
    fn blob(&mut self, v: &'a [u8]) -> Result<(), Error> {
        Arguments::add(&mut self.args, v).map_err(encode_error)
    }
    fn text(&mut self, v: &'a str) -> Result<(), Error> {
        Arguments::add(&mut self.args, v).map_err(encode_error)
    }
    fn opt_text(&mut self, v: Option<&'a str>) -> Result<(), Error> {
        Arguments::add(&mut self.args, v).map_err(encode_error)
    }

    /// Runs what is queued.
    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<(), Error> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.sql);
        let args = std::mem::take(&mut self.args);
        sqlx::query_with(&sql, args)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Queues one scheduler change (all but `Reopen` and `Reverify`, which are conditional).
    fn change(&mut self, change: &'a Change, now: i64) -> Result<(), Error> {
        match change {
            Change::Replica {
                unit,
                worker,
                state,
                failure,
            } => {
                self.stmt("UPDATE assignments SET state = ?, failure_kind = ?, reason = ? WHERE unit = ? AND worker = ?");
                self.int(state.code())?;
                self.opt_text(failure.as_ref().map(|f| f.kind.as_str()))?;
                self.opt_text(failure.as_ref().map(|f| f.detail.as_str()))?;
                self.int(unit.0 as i64)?;
                self.blob(&worker.0)?;
            }
            Change::Target { unit, target } => {
                self.stmt("UPDATE units SET target = ? WHERE id = ?");
                self.int(i64::from(*target))?;
                self.int(unit.0 as i64)?;
                self.stmt("UPDATE projects SET disputes = disputes + 1 WHERE id = (SELECT project FROM units WHERE id = ?)");
                self.int(unit.0 as i64)?;
            }
            Change::UnitFailed { unit, reason } => {
                self.stmt("UPDATE units SET state = ?, reason = ?, settled_ms = ? WHERE id = ? AND state = ?");
                self.int(UNIT_FAILED)?;
                self.text(reason)?;
                self.int(now)?;
                self.int(unit.0 as i64)?;
                self.int(UNIT_PENDING)?;
                self.stmt("DELETE FROM votes WHERE unit = ?");
                self.int(unit.0 as i64)?;
            }
            Change::Plan {
                unit,
                target,
                required,
            } => {
                self.stmt("UPDATE units SET target = ?, required = ? WHERE id = ?");
                self.int(i64::from(*target))?;
                self.int(i64::from(*required))?;
                self.int(unit.0 as i64)?;
            }
            Change::Vote { claim } => {
                self.stmt(
                    "INSERT INTO votes (unit, worker, digest, fuel, salt, signature) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (unit, worker) DO NOTHING",
                );
                self.int(claim.unit.0 as i64)?;
                self.blob(&claim.worker.0)?;
                self.blob(&claim.digest.0)?;
                self.int(claim.fuel as i64)?;
                self.blob(&claim.salt)?;
                self.blob(&claim.signature)?;
            }
            Change::Trust {
                worker,
                project,
                consecutive,
                offences,
            } => {
                self.stmt(
                    "INSERT INTO trust (worker, project, consecutive, offences) VALUES (?, ?, ?, ?)
                     ON CONFLICT (worker, project) DO UPDATE SET consecutive = excluded.consecutive, offences = excluded.offences",
                );
                self.blob(&worker.0)?;
                self.int(project.0 as i64)?;
                self.int(i64::from(*consecutive))?;
                self.int(i64::from(*offences))?;
            }
            Change::Unchecked {
                worker,
                project,
                unit,
            } => {
                self.stmt("INSERT INTO unchecked (worker, project, unit) VALUES (?, ?, ?) ON CONFLICT DO NOTHING");
                self.blob(&worker.0)?;
                self.int(project.0 as i64)?;
                self.int(unit.0 as i64)?;
            }
            Change::UncheckedCleared { worker, project } => {
                self.stmt("DELETE FROM unchecked WHERE worker = ? AND project = ?");
                self.blob(&worker.0)?;
                self.int(project.0 as i64)?;
            }
            Change::Disqualified { unit, worker } => {
                self.stmt(
                    "INSERT INTO disqualified (unit, worker) VALUES (?, ?) ON CONFLICT DO NOTHING",
                );
                self.int(unit.0 as i64)?;
                self.blob(&worker.0)?;
                self.stmt("DELETE FROM votes WHERE unit = ? AND worker = ?");
                self.int(unit.0 as i64)?;
                self.blob(&worker.0)?;
            }
            Change::Standing {
                worker,
                errors_in_row,
                throttled,
            } => {
                self.stmt(
                    "INSERT INTO standing (worker, errors_in_row, throttled) VALUES (?, ?, ?)
                     ON CONFLICT (worker) DO UPDATE SET errors_in_row = excluded.errors_in_row, throttled = excluded.throttled",
                );
                self.blob(&worker.0)?;
                self.int(i64::from(*errors_in_row))?;
                self.int(i64::from(*throttled))?;
            }
            Change::Control { project, state } => {
                self.stmt("UPDATE projects SET control = ? WHERE id = ?");
                self.int(state.code())?;
                self.int(project.0 as i64)?;
            }
            Change::CancelUnits { project } => {
                self.stmt(
                    "DELETE FROM votes WHERE unit IN (SELECT id FROM units WHERE project = ? AND state = ?)",
                );
                self.int(project.0 as i64)?;
                self.int(UNIT_PENDING)?;
                self.stmt(
                    "UPDATE units SET state = ?, settled_ms = ? WHERE project = ? AND state = ?",
                );
                self.int(UNIT_CANCELLED)?;
                self.int(now)?;
                self.int(project.0 as i64)?;
                self.int(UNIT_PENDING)?;
            }
            Change::Retried {
                unit,
                target,
                required,
            } => {
                self.stmt(
                    "UPDATE units SET state = ?, reason = NULL, settled_ms = NULL, target = ?, required = ?
                     WHERE id = ? AND state = ?",
                );
                self.int(UNIT_PENDING)?;
                self.int(i64::from(*target))?;
                self.int(i64::from(*required))?;
                self.int(unit.0 as i64)?;
                self.int(UNIT_FAILED)?;
                self.stmt(
                    "UPDATE assignments SET state = ?, failure_kind = NULL, reason = NULL
                     WHERE unit = ? AND state IN (?, ?)",
                );
                self.int(AssignmentState::Retried.code())?;
                self.int(unit.0 as i64)?;
                self.int(AssignmentState::Failed.code())?;
                self.int(AssignmentState::Expired.code())?;
            }
            Change::AggregateReset { project } => {
                self.stmt(
                    "UPDATE projects SET aggregate_done = 0, aggregate = NULL, aggregate_error = NULL WHERE id = ?",
                );
                self.int(project.0 as i64)?;
            }
            Change::Reopen { .. } | Change::Reverify { .. } => {}
        }
        Ok(())
    }
}

/// Closes a connection whose write failed instead of returning it to the pool. A failed
/// COMMIT (SQLITE_FULL on a full disk, say) may leave SQLite's transaction open and its
/// write lock held until a rollback that sqlx only queues; every other connection would
/// then wait out its busy timeout and fail with "database is locked". A closed connection
/// holds nothing, and the pool opens a fresh one.
async fn discard(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    if let Err(e) = conn.close().await {
        tracing::warn!("closing a database connection after a failed write: {e}");
    }
}

/// A verified unit goes back to pending (if it is still verified): its output and the
/// liar's credit (if any: a unit whose stored output changed on disk keeps its signers'
/// credit) are withdrawn, its replicas superseded, its project's aggregate dropped.
async fn reopen(
    tx: &mut SqliteConnection,
    unit: UnitId,
    revoke: Option<WorkerId>,
    required: u32,
) -> Result<(), Error> {
    let reopened = sqlx::query(
        "UPDATE units SET state = $1, output = NULL, digest = NULL, fuel = NULL, settled_ms = NULL,
            required = $2, target = $2 WHERE id = $3 AND state = $4",
    )
    .bind(UNIT_PENDING)
    .bind(i64::from(required))
    .bind(unit.0 as i64)
    .bind(UNIT_VERIFIED)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if reopened == 0 {
        return Ok(());
    }
    if let Some(revoke) = revoke {
        sqlx::query("DELETE FROM credit WHERE unit = $1 AND worker = $2")
            .bind(unit.0 as i64)
            .bind(&revoke.0[..])
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE assignments SET state = $1 WHERE unit = $2 AND state = $3")
        .bind(AssignmentState::Superseded.code())
        .bind(unit.0 as i64)
        .bind(AssignmentState::Active.code())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM votes WHERE unit = $1")
        .bind(unit.0 as i64)
        .execute(&mut *tx)
        .await?;
    // The aggregate included the withdrawn output: reduce again when done.
    sqlx::query(
        "UPDATE projects SET aggregate_done = 0, aggregate = NULL, aggregate_error = NULL
         WHERE id = (SELECT project FROM units WHERE id = $1)",
    )
    .bind(unit.0 as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store for SqliteStore {
    async fn insert_project(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        reducer: Option<Digest>,
        now: u64,
    ) -> Result<(ProjectId, Vec<UnitId>), Error> {
        let mut conn = self.pool.acquire().await?;
        let result = inner(&mut conn, spec, module, reducer, now).await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(
            conn: &mut SqliteConnection,
            spec: &ProjectSpec,
            module: Digest,
            reducer: Option<Digest>,
            now: u64,
        ) -> Result<(ProjectId, Vec<UnitId>), Error> {
            let mut tx = conn.begin_with(WRITE).await?;
            let mut modules = vec![(module, &spec.module)];
            if let (Some(d), Some(bytes)) = (reducer, &spec.reducer) {
                modules.push((d, bytes));
            }
            for (digest, bytes) in modules {
                sqlx::query("INSERT INTO modules (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING")
                .bind(&digest.0[..])
                .bind(&bytes[..])
                .execute(&mut *tx)
                .await?;
            }
            let l = spec.limits;
            let id: i64 = sqlx::query_scalar(
            "INSERT INTO projects (name, manifest, module, reducer, replication, quorum, max_replicas, fuel, memory_mb,
                wall_seconds, max_output_bytes, nan_canonicalization, created_ms, adaptive, error_bound,
                max_checkpoint_bytes, submitter, terms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
        )
        .bind(spec.name.trim())
        .bind(&spec.manifest)
        .bind(&module.0[..])
        .bind(reducer.map(|d| d.0.to_vec()))
        .bind(i64::from(spec.replication))
        .bind(i64::from(spec.quorum))
        .bind(i64::from(spec.max_replicas))
        .bind(l.fuel as i64)
        .bind(i64::from(l.memory_mb))
        .bind(i64::from(l.wall_seconds))
        .bind(l.max_output_bytes as i64)
        .bind(i64::from(l.nan_canonicalization))
        .bind(now as i64)
        .bind(i64::from(spec.adaptive))
        .bind(spec.error_bound)
        .bind(l.max_checkpoint_bytes as i64)
        .bind(spec.signatures.as_ref().map(|g| g.key.0.to_vec()))
        .bind(spec.signatures.as_ref().map(|_| spec.terms().0.to_vec()))
        .fetch_one(&mut *tx)
        .await?;
            // The files themselves were uploaded before (`PutData`) and checked held.
            for f in &spec.data {
                sqlx::query("INSERT INTO project_data (project, name, digest, size) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(f.name.as_str())
                    .bind(&f.digest.0[..])
                    .bind(f.size as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            // Many rows per statement: one round trip per 200 units instead of one per unit.
            let mut units = Vec::with_capacity(spec.units.len());
            let signatures = spec.signatures.as_ref().map(|g| &g.units);
            for (c, chunk) in spec.units.chunks(200).enumerate() {
                let mut sql = String::from(
                    "INSERT INTO units (project, name, input, target, required, signature) VALUES ",
                );
                let mut args = SqliteArguments::default();
                for (i, (name, input)) in chunk.iter().enumerate() {
                    sql.push_str(if i == 0 {
                        "(?, ?, ?, ?, ?, ?)"
                    } else {
                        ", (?, ?, ?, ?, ?, ?)"
                    });
                    let signature = signatures.and_then(|s| s.get(c * 200 + i));
                    Arguments::add(&mut args, id).map_err(encode_error)?;
                    Arguments::add(&mut args, name.as_str()).map_err(encode_error)?;
                    Arguments::add(&mut args, &input[..]).map_err(encode_error)?;
                    Arguments::add(&mut args, i64::from(spec.replication)).map_err(encode_error)?;
                    Arguments::add(&mut args, i64::from(spec.quorum)).map_err(encode_error)?;
                    Arguments::add(&mut args, signature.map(|s| s.to_vec()))
                        .map_err(encode_error)?;
                }
                sql.push_str(" RETURNING id");
                let mut ids: Vec<i64> = sqlx::query_scalar_with(&sql, args)
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await?;
                // Row ids grow in insertion order; RETURNING does not promise an order.
                ids.sort_unstable();
                units.extend(ids.into_iter().map(|u| UnitId(u as u64)));
            }
            tx.commit().await?;
            Ok((ProjectId(id as u64), units))
        }
    }

    async fn insert_units(
        &self,
        project: ProjectId,
        units: &[(String, Vec<u8>)],
        signatures: &[[u8; 64]],
        target: u32,
        required: u32,
    ) -> Result<Vec<UnitId>, Error> {
        let mut conn = self.pool.acquire().await?;
        let result = inner(&mut conn, project, units, signatures, target, required).await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(
            conn: &mut SqliteConnection,
            project: ProjectId,
            units: &[(String, Vec<u8>)],
            signatures: &[[u8; 64]],
            target: u32,
            required: u32,
        ) -> Result<Vec<UnitId>, Error> {
            let mut tx = conn.begin_with(WRITE).await?;
            let pid = project.0 as i64;
            let mut ids = Vec::with_capacity(units.len());
            for (i, (name, input)) in units.iter().enumerate() {
                // One row at a time: an extension is small next to a submission, and a
                // taken name is found (and named) by the unique index itself.
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO units (project, name, input, target, required, signature)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project, name) DO NOTHING RETURNING id",
                )
                .bind(pid)
                .bind(name.as_str())
                .bind(&input[..])
                .bind(i64::from(target))
                .bind(i64::from(required))
                .bind(signatures.get(i).map(|s| s.to_vec()))
                .fetch_optional(&mut *tx)
                .await?;
                match inserted {
                    Some(id) => ids.push(UnitId(id as u64)),
                    None => {
                        return Err(Error::DuplicateUnit {
                            project,
                            name: name.clone(),
                        });
                    }
                }
            }
            sqlx::query(
                "UPDATE projects SET aggregate_done = 0, aggregate = NULL, aggregate_error = NULL WHERE id = $1",
            )
            .bind(pid)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ids)
        }
    }

    async fn load(&self) -> Result<Snapshot, Error> {
        let mut snapshot = Snapshot::default();
        let mut projects = BTreeMap::new();
        for row in // Named columns: the aggregate blob (up to 64 MiB) stays on disk.
        sqlx::query(
            "SELECT id, name, module, reducer, replication, quorum, max_replicas, fuel, memory_mb, wall_seconds,
                max_output_bytes, nan_canonicalization, disputes, aggregate_done, aggregate_error,
                adaptive, error_bound, max_checkpoint_bytes, submitter, terms, control
             FROM projects ORDER BY id",
        )
            .fetch_all(&self.pool)
            .await?
        {
            let p = project_from_row(&row)?;
            projects.insert(p.id, p);
        }
        for row in sqlx::query(
            "SELECT u.project AS project, TOTAL(MAX(c.fuel, 0)) AS credit FROM credit c JOIN units u ON u.id = c.unit GROUP BY u.project",
        )
        .fetch_all(&self.pool)
        .await?
        {
            if let Some(p) = projects.get_mut(&ProjectId(row.try_get::<i64, _>("project")? as u64)) {
                p.stats.credit = credit_of(&row)?;
            }
        }
        let mut data: HashMap<ProjectId, Vec<DataFile>> = HashMap::new();
        for row in sqlx::query(
            "SELECT project, name, digest, size FROM project_data ORDER BY project, name",
        )
        .fetch_all(&self.pool)
        .await?
        {
            data.entry(ProjectId(row.try_get::<i64, _>("project")? as u64))
                .or_default()
                .push(DataFile {
                    name: row.try_get("name")?,
                    size: row.try_get::<i64, _>("size")? as u64,
                    digest: digest(row.try_get("digest")?)?,
                });
        }
        for p in projects.values_mut() {
            p.data = data.remove(&p.id).unwrap_or_default().into();
        }
        snapshot.projects = projects.into_values().collect();
        for row in sqlx::query(
            "SELECT id, name, peer_addr, cores, account, team, platform, subnet FROM workers",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snapshot.workers.push(StoredWorker {
                id: worker_id(row.try_get("id")?)?,
                name: row.try_get("name")?,
                peer_addr: row.try_get("peer_addr")?,
                cores: row.try_get::<i64, _>("cores")? as u32,
                account: row.try_get("account")?,
                team: row.try_get("team")?,
                platform: row.try_get("platform")?,
                subnet: row.try_get("subnet")?,
            });
        }
        let mut trust: BTreeMap<(WorkerId, u64), Trust> = BTreeMap::new();
        for row in sqlx::query("SELECT worker, project, consecutive, offences FROM trust")
            .fetch_all(&self.pool)
            .await?
        {
            trust.insert(
                (
                    worker_id(row.try_get("worker")?)?,
                    row.try_get::<i64, _>("project")? as u64,
                ),
                Trust {
                    consecutive: row.try_get::<i64, _>("consecutive")? as u32,
                    offences: row.try_get::<i64, _>("offences")? as u32,
                    unchecked: Default::default(),
                },
            );
        }
        for row in sqlx::query("SELECT worker, project, unit FROM unchecked ORDER BY unit")
            .fetch_all(&self.pool)
            .await?
        {
            let key = (
                worker_id(row.try_get("worker")?)?,
                row.try_get::<i64, _>("project")? as u64,
            );
            trust
                .entry(key)
                .or_default()
                .unchecked
                .push_back(UnitId(row.try_get::<i64, _>("unit")? as u64));
        }
        snapshot.trust = trust
            .into_iter()
            .map(|((w, p), t)| (w, ProjectId(p), t))
            .collect();
        for row in sqlx::query("SELECT unit, worker FROM disqualified")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot.disqualified.push((
                UnitId(row.try_get::<i64, _>("unit")? as u64),
                worker_id(row.try_get("worker")?)?,
            ));
        }
        for row in sqlx::query("SELECT worker, errors_in_row, throttled FROM standing")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot.standing.push((
                worker_id(row.try_get("worker")?)?,
                Standing {
                    errors_in_row: row.try_get::<i64, _>("errors_in_row")? as u32,
                    throttled: row.try_get::<i64, _>("throttled")? != 0,
                    last_unit_at: 0,
                },
            ));
        }
        Ok(snapshot)
    }

    async fn unit_input(&self, unit: UnitId) -> Result<(String, Vec<u8>), Error> {
        let row = sqlx::query("SELECT name, input FROM units WHERE id = $1")
            .bind(unit.0 as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::UnknownUnit(unit))?;
        Ok((row.try_get("name")?, row.try_get("input")?))
    }

    async fn unit_inputs(&self, units: &[UnitId]) -> Result<Vec<LeasedInput>, Error> {
        let mut out = Vec::with_capacity(units.len());
        for chunk in units.chunks(500) {
            let mut sql =
                String::from("SELECT id, name, input, signature FROM units WHERE id IN (");
            let mut args = SqliteArguments::default();
            for (i, unit) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                Arguments::add(&mut args, unit.0 as i64).map_err(encode_error)?;
            }
            sql.push(')');
            // A work request leases at most 64 units, so at most 64 texts recur (one per
            // count): each is prepared once per connection and kept in sqlx's statement
            // cache, instead of afresh for every request. Larger chunks (restores) are not.
            for row in sqlx::query_with(&sql, args)
                .persistent(chunk.len() <= 64)
                .fetch_all(&self.pool)
                .await?
            {
                let signature: Option<Vec<u8>> = row.try_get("signature")?;
                out.push(LeasedInput {
                    unit: UnitId(row.try_get::<i64, _>("id")? as u64),
                    name: row.try_get("name")?,
                    input: row.try_get("input")?,
                    signature: signature
                        .map(|s| {
                            <[u8; 64]>::try_from(s.as_slice()).map_err(|_| {
                                Error::Corrupt(format!("a unit signature of {} bytes", s.len()))
                            })
                        })
                        .transpose()?,
                });
            }
        }
        Ok(out)
    }

    async fn load_units<F: FnMut(StoredUnit) + Send>(
        &self,
        on_unit: F,
    ) -> Result<HashMap<ProjectId, LoadedCounts>, Error> {
        let mut quorum: HashMap<ProjectId, u32> = HashMap::new();
        for row in sqlx::query("SELECT id, quorum FROM projects")
            .fetch_all(&self.pool)
            .await?
        {
            quorum.insert(
                ProjectId(row.try_get::<i64, _>("id")? as u64),
                row.try_get::<i64, _>("quorum")? as u32,
            );
        }
        // Three streams in unit order, merged by `merge_units`.
        let units = sqlx::query(
            "SELECT id, project, state, target, required, reason FROM units ORDER BY id",
        )
        .fetch(&self.pool)
        .map(|row| -> Result<UnitRow, Error> {
            let row = row?;
            Ok(UnitRow {
                id: row.try_get::<i64, _>("id")? as u64,
                project: ProjectId(row.try_get::<i64, _>("project")? as u64),
                status: match row.try_get::<i64, _>("state")? {
                    UNIT_VERIFIED => UnitStatus::Verified,
                    UNIT_CANCELLED => UnitStatus::Cancelled,
                    UNIT_FAILED => UnitStatus::Failed(
                        row.try_get::<Option<String>, _>("reason")?
                            .unwrap_or_default(),
                    ),
                    _ => UnitStatus::Pending,
                },
                target: row.try_get::<i64, _>("target")? as u32,
                required: row.try_get::<i64, _>("required")? as u32,
            })
        });
        let assignments = sqlx::query(
            "SELECT unit, worker, state, failure_kind, reason FROM assignments ORDER BY unit, created_ms, rowid",
        )
        .fetch(&self.pool)
        .map(|row| -> Result<(u64, Replica), Error> {
            let row = row?;
            Ok((
                row.try_get::<i64, _>("unit")? as u64,
                (
                    worker_id(row.try_get("worker")?)?,
                    AssignmentState::from_code(row.try_get("state")?),
                    failure_of(row.try_get("failure_kind")?, row.try_get("reason")?),
                ),
            ))
        });
        let votes = sqlx::query(
            "SELECT v.unit AS unit, u.project AS project, v.worker AS worker, v.digest AS digest, v.fuel AS fuel,
                v.salt AS salt, v.signature AS signature
             FROM votes v JOIN units u ON u.id = v.unit ORDER BY v.unit",
        )
        .fetch(&self.pool)
        .map(|row| -> Result<Claim, Error> {
            let row = row?;
            let (salt, signature) = vote_seal(row.try_get("salt")?, row.try_get("signature")?)?;
            Ok(Claim {
                project: ProjectId(row.try_get::<i64, _>("project")? as u64),
                unit: UnitId(row.try_get::<i64, _>("unit")? as u64),
                digest: digest(row.try_get("digest")?)?,
                fuel: row.try_get::<i64, _>("fuel")? as u64,
                worker: worker_id(row.try_get("worker")?)?,
                salt,
                signature,
            })
        });
        merge_units(&quorum, units, assignments, votes, on_unit).await
    }

    async fn module(&self, digest: Digest) -> Result<Option<Vec<u8>>, Error> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM modules WHERE digest = $1")
                .bind(&digest.0[..])
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn insert_assignments(
        &self,
        leases: &[(UnitId, WorkerId)],
        now: u64,
    ) -> Result<(), Error> {
        self.write(&[(Write::Assignments(leases.to_vec()), now)])
            .await
    }

    async fn apply(&self, changes: &[Change], now: u64) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(&[(Write::Changes(changes.to_vec()), now)]).await
    }

    async fn write(&self, writes: &[(Write, u64)]) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        let result = inner(&mut conn, writes).await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(conn: &mut SqliteConnection, writes: &[(Write, u64)]) -> Result<(), Error> {
            let mut tx = conn.begin_with(WRITE).await?;
            let mut batch = Batch::default();
            for (write, now) in writes {
                let now = *now as i64;
                match write {
                    Write::Assignments(leases) => {
                        for chunk in leases.chunks(200) {
                            batch.sql.push_str(
                                "INSERT INTO assignments (unit, worker, state, created_ms) VALUES ",
                            );
                            for (i, (unit, worker)) in chunk.iter().enumerate() {
                                batch.sql.push_str(if i == 0 {
                                    "(?, ?, ?, ?)"
                                } else {
                                    ", (?, ?, ?, ?)"
                                });
                                batch.int(unit.0 as i64)?;
                                batch.blob(&worker.0)?;
                                batch.int(AssignmentState::Active.code())?;
                                batch.int(now)?;
                            }
                            // A unit handed back and leased again to the same worker.
                            batch.sql.push_str(
                                " ON CONFLICT (unit, worker) DO UPDATE SET state = excluded.state, \
                                 failure_kind = NULL, reason = NULL, created_ms = excluded.created_ms;\n",
                            );
                        }
                    }
                    Write::Changes(changes) => {
                        for change in changes {
                            if let Change::Reopen {
                                unit,
                                revoke,
                                required,
                            } = change
                            {
                                // Conditional on the unit's state: run on its own, in order.
                                batch.flush(&mut tx).await?;
                                reopen(&mut tx, *unit, Some(*revoke), *required).await?;
                            } else if let Change::Reverify { unit, required } = change {
                                batch.flush(&mut tx).await?;
                                reopen(&mut tx, *unit, None, *required).await?;
                            } else {
                                batch.change(change, now)?;
                            }
                        }
                    }
                    Write::Verified {
                        unit,
                        output,
                        verified,
                        credit,
                    } => {
                        let id = unit.0 as i64;
                        // Credit first, and only while the unit is still pending: exactly once.
                        for signer in &verified.signers {
                            let to = credit.iter().find(|c| c.worker == *signer);
                            batch.stmt(
                                "INSERT INTO credit (unit, worker, fuel, account, team)
                             SELECT ?, ?, ?, ?, ? FROM units WHERE id = ? AND state = ?
                             ON CONFLICT (unit, worker) DO NOTHING",
                            );
                            batch.int(id)?;
                            batch.blob(&signer.0)?;
                            batch.int(verified.fuel as i64)?;
                            batch.text(to.map_or("", |c| c.account.as_str()))?;
                            batch.text(to.map_or("", |c| c.team.as_str()))?;
                            batch.int(id)?;
                            batch.int(UNIT_PENDING)?;
                        }
                        batch.stmt(
                        "UPDATE units SET state = ?, output = ?, digest = ?, fuel = ?, settled_ms = ? WHERE id = ? AND state = ?",
                    );
                        batch.int(UNIT_VERIFIED)?;
                        batch.blob(output)?;
                        batch.blob(&verified.digest.0)?;
                        batch.int(verified.fuel as i64)?;
                        batch.int(now)?;
                        batch.int(id)?;
                        batch.int(UNIT_PENDING)?;
                        batch.stmt("DELETE FROM votes WHERE unit = ?");
                        batch.int(id)?;
                    }
                    Write::Worker(w) => {
                        batch.stmt(
                        "INSERT INTO workers (id, name, peer_addr, cores, registered_ms, account, team, platform, subnet)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, peer_addr = excluded.peer_addr,
                            cores = excluded.cores, account = excluded.account, team = excluded.team,
                            platform = excluded.platform, subnet = excluded.subnet, registered_ms = excluded.registered_ms",
                    );
                        batch.blob(&w.id.0)?;
                        batch.text(&w.name)?;
                        batch.text(&w.peer_addr)?;
                        batch.int(i64::from(w.cores))?;
                        batch.int(now)?;
                        batch.text(&w.account)?;
                        batch.text(&w.team)?;
                        batch.text(&w.platform)?;
                        batch.opt_text(w.subnet.as_deref())?;
                    }
                }
                if batch.args.len() > 20_000 {
                    batch.flush(&mut tx).await?;
                }
            }
            batch.flush(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        }
    }

    async fn record_verified(
        &self,
        unit: UnitId,
        output: &[u8],
        verified: &Verified,
        credit: &[CreditTo],
        now: u64,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin_with(WRITE).await?;
        let updated = sqlx::query(
            "UPDATE units SET state = $1, output = $2, digest = $3, fuel = $4, settled_ms = $5 WHERE id = $6 AND state = $7",
        )
        .bind(UNIT_VERIFIED)
        .bind(output)
        .bind(&verified.digest.0[..])
        .bind(verified.fuel as i64)
        .bind(now as i64)
        .bind(unit.0 as i64)
        .bind(UNIT_PENDING)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false); // already settled: the transaction is dropped, nothing changes
        }
        for signer in &verified.signers {
            let to = credit.iter().find(|c| c.worker == *signer);
            sqlx::query(
                "INSERT INTO credit (unit, worker, fuel, account, team) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (unit, worker) DO NOTHING",
            )
            .bind(unit.0 as i64)
            .bind(&signer.0[..])
            .bind(verified.fuel as i64)
            .bind(to.map_or("", |c| c.account.as_str()))
            .bind(to.map_or("", |c| c.team.as_str()))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM votes WHERE unit = $1")
            .bind(unit.0 as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn leaderboard(&self) -> Result<(Vec<AccountTotal>, Vec<TeamTotal>), Error> {
        let mut accounts = Vec::new();
        for row in sqlx::query(LEADERBOARD_ACCOUNTS)
            .fetch_all(&self.pool)
            .await?
        {
            accounts.push(AccountTotal {
                name: row.try_get("name")?,
                team: row
                    .try_get::<Option<String>, _>("team")?
                    .unwrap_or_default(),
                credit: credit_of(&row)?,
                verified: row.try_get::<i64, _>("verified")? as u64,
                workers: row.try_get::<i64, _>("workers")? as u32,
            });
        }
        let mut teams = Vec::new();
        for row in sqlx::query(
            "SELECT team AS name, TOTAL(MAX(fuel, 0)) AS credit, COUNT(DISTINCT account) AS accounts
             FROM credit WHERE team != '' GROUP BY team ORDER BY credit DESC, name",
        )
        .fetch_all(&self.pool)
        .await?
        {
            teams.push(TeamTotal {
                name: row.try_get("name")?,
                credit: credit_of(&row)?,
                accounts: row.try_get::<i64, _>("accounts")? as u32,
            });
        }
        Ok((accounts, teams))
    }

    async fn upsert_worker(&self, w: &StoredWorker, now: u64) -> Result<(), Error> {
        self.write(&[(Write::Worker(w.clone()), now)]).await
    }

    async fn verified_outputs(
        &self,
        project: ProjectId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredOutput>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, output, digest, fuel, settled_ms FROM units
             WHERE project = $1 AND state = $2 AND name > $3 ORDER BY name LIMIT $4",
        )
        .bind(project.0 as i64)
        .bind(UNIT_VERIFIED)
        .bind(after.unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        self.stored_outputs(rows).await
    }

    async fn verified_outputs_of(
        &self,
        project: ProjectId,
        units: &[UnitId],
    ) -> Result<Vec<StoredOutput>, Error> {
        let units = &units[..units.len().min(super::MAX_OUTPUTS_OF)];
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = sqlx::QueryBuilder::new(
            "SELECT id, name, output, digest, fuel, settled_ms FROM units WHERE project = ",
        );
        query
            .push_bind(project.0 as i64)
            .push(" AND state = ")
            .push_bind(UNIT_VERIFIED)
            .push(" AND id IN (");
        let mut ids = query.separated(", ");
        for unit in units {
            ids.push_bind(unit.0 as i64);
        }
        query.push(") ORDER BY name");
        let rows = query.build().fetch_all(&self.pool).await?;
        self.stored_outputs(rows).await
    }

    async fn unit_workers(&self, unit: UnitId) -> Result<Vec<WorkerId>, Error> {
        sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT worker FROM assignments WHERE unit = $1 UNION SELECT worker FROM credit WHERE unit = $1",
        )
        .bind(unit.0 as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|b| worker_id(b))
        .collect()
    }

    async fn same_units(
        &self,
        project: ProjectId,
        units: &[(String, Vec<u8>)],
    ) -> Result<bool, Error> {
        // Units are inserted in the order given, so id order is the submitted order.
        let mut rows = sqlx::query("SELECT name, input FROM units WHERE project = $1 ORDER BY id")
            .bind(project.0 as i64)
            .fetch(&self.pool);
        let mut expected = units.iter();
        while let Some(row) = rows.next().await {
            let row = row?;
            let Some((name, input)) = expected.next() else {
                return Ok(false);
            };
            if row.try_get::<&str, _>("name")? != name.as_str()
                || row.try_get::<&[u8], _>("input")? != input.as_slice()
            {
                return Ok(false);
            }
        }
        Ok(expected.next().is_none())
    }

    async fn failed_units(&self, project: ProjectId) -> Result<Vec<(String, String)>, Error> {
        let rows = sqlx::query(
            "SELECT name, reason FROM units WHERE project = $1 AND state = $2 ORDER BY name",
        )
        .bind(project.0 as i64)
        .bind(UNIT_FAILED)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    r.try_get::<Option<String>, _>("reason")?
                        .unwrap_or_default(),
                ))
            })
            .collect()
    }

    async fn set_aggregate(
        &self,
        project: ProjectId,
        aggregate: Result<Vec<u8>, String>,
    ) -> Result<(), Error> {
        let (bytes, error) = match aggregate {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        sqlx::query("UPDATE projects SET aggregate_done = 1, aggregate = $1, aggregate_error = $2 WHERE id = $3")
            .bind(bytes)
            .bind(error)
            .bind(project.0 as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn aggregate(
        &self,
        project: ProjectId,
    ) -> Result<Option<Result<Vec<u8>, String>>, Error> {
        let row = sqlx::query(
            "SELECT aggregate_done, aggregate, aggregate_error FROM projects WHERE id = $1",
        )
        .bind(project.0 as i64)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::UnknownProject(project))?;
        if row.try_get::<i64, _>("aggregate_done")? == 0 {
            return Ok(None);
        }
        let error: Option<String> = row.try_get("aggregate_error")?;
        Ok(Some(match error {
            Some(e) => Err(reducer_reason(e)),
            None => Ok(row
                .try_get::<Option<Vec<u8>>, _>("aggregate")?
                .unwrap_or_default()),
        }))
    }

    async fn data_held(&self, digests: &[Digest]) -> Result<HashMap<Digest, u64>, Error> {
        let mut held = HashMap::new();
        for d in digests {
            let size: Option<i64> =
                sqlx::query_scalar("SELECT size FROM data_files WHERE digest = $1")
                    .bind(&d.0[..])
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(size) = size {
                held.insert(*d, size as u64);
            }
        }
        Ok(held)
    }

    async fn put_data_chunk(
        &self,
        upload: [u8; 32],
        index: u64,
        bytes: &[u8],
    ) -> Result<(), Error> {
        sqlx::query("INSERT INTO data_chunks (digest, idx, bytes) VALUES ($1, $2, $3) ON CONFLICT (digest, idx) DO UPDATE SET bytes = excluded.bytes")
            .bind(&upload[..])
            .bind(index as i64)
            .bind(bytes)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_data(
        &self,
        upload: [u8; 32],
        digest: Digest,
        size: u64,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin_with(WRITE).await?;
        let held: Option<i64> = sqlx::query_scalar("SELECT size FROM data_files WHERE digest = $1")
            .bind(&digest.0[..])
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_some() {
            sqlx::query("DELETE FROM data_chunks WHERE digest = $1")
                .bind(&upload[..])
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("UPDATE data_chunks SET digest = $1 WHERE digest = $2")
                .bind(&digest.0[..])
                .bind(&upload[..])
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO data_files (digest, size) VALUES ($1, $2)")
                .bind(&digest.0[..])
                .bind(size as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(held.is_some())
    }

    async fn discard_data(&self, upload: [u8; 32]) -> Result<(), Error> {
        sqlx::query("DELETE FROM data_chunks WHERE digest = $1")
            .bind(&upload[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn data_chunk(&self, digest: Digest, index: u64) -> Result<Option<Vec<u8>>, Error> {
        // Only a held file's chunks: an unfinished upload keyed by the same bytes is not one.
        Ok(sqlx::query_scalar(
            "SELECT c.bytes FROM data_chunks c JOIN data_files f ON f.digest = c.digest WHERE c.digest = $1 AND c.idx = $2",
        )
        .bind(&digest.0[..])
        .bind(index as i64)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: migrations from older files, its query plans, a lost or
    //! damaged file. The suite both back-ends share is `store::tests`.
    use super::*;
    use crate::store::tests::{intact, load_all, spec, verify};
    use protocol::Limits;

    #[tokio::test]
    async fn a_schema_1_database_is_migrated_and_keeps_its_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let options = SqliteConnectOptions::new()
                .filename(dir.path().join("fallow.db"))
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await.expect("create v1");
            sqlx::raw_sql(include_str!("schema-v1.sql"))
                .execute(&pool)
                .await
                .expect("v1 schema");
            sqlx::raw_sql(
                "PRAGMA user_version = 1;
                 INSERT INTO modules VALUES (zeroblob(32), x'00');
                 INSERT INTO projects (id, name, manifest, module, replication, quorum, max_replicas, fuel, memory_mb,
                    wall_seconds, max_output_bytes, nan_canonicalization, created_ms)
                    VALUES (1, 'old', '', zeroblob(32), 2, 2, 5, 1000, 64, 60, 1024, 0, 0);
                 INSERT INTO units (id, project, name, input, state, target) VALUES (1, 1, 'a', x'', 0, 2);
                 INSERT INTO workers VALUES (x'0101010101010101010101010101010101010101010101010101010101010101', 'w', '127.0.0.1:1', 1, 0);",
            )
            .execute(&pool)
            .await
            .expect("v1 rows");
            pool.close().await;
        }
        let store = SqliteStore::open(dir.path()).await.expect("migrated");
        let (snap, loaded) = load_all(&store).await;
        assert_eq!(snap.projects[0].name, "old");
        assert!(
            !snap.projects[0].adaptive,
            "old projects keep fixed replication"
        );
        assert_eq!(loaded[0].required, 2, "required defaults to the quorum");
        assert_eq!(snap.workers[0].account, "");
        assert_eq!(
            snap.projects[0].limits.max_checkpoint_bytes,
            Limits::default().max_checkpoint_bytes,
            "old projects get the default checkpoint cap"
        );
        assert_eq!(snap.projects[0].signer, None, "old projects stay unsigned");
        let inputs = store.unit_inputs(&[UnitId(1)]).await.expect("inputs");
        assert_eq!(inputs[0].signature, None);
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&store.pool)
            .await
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// The leaderboard's per-account lookups of workers go through an index: a scan per
    /// account made it quadratic (14 s of CPU at 10,000 accounts, every 2 s while credit
    /// moved; found by the dispatch bench's 10,000-worker fleet).
    #[tokio::test]
    async fn the_leaderboard_finds_an_accounts_workers_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {LEADERBOARD_ACCOUNTS}"))
            .fetch_all(&store.pool)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.try_get::<String, _>("detail").expect("detail"))
            .collect();
        let lookups: Vec<&String> = plan.iter().filter(|d| d.contains(" w ")).collect();
        assert_eq!(lookups.len(), 2, "two subqueries on workers: {plan:#?}");
        for d in lookups {
            assert!(
                d.contains("workers_account"),
                "a subquery does not use the index: {d} (plan: {plan:#?})"
            );
        }
    }
    #[tokio::test]
    async fn a_lost_or_damaged_store_is_refused_unless_started_afresh() {
        // Every damaged store starts as a copy of one made here, closed and checkpointed
        // with its log emptied. Made in place, a store was sometimes repaired behind the
        // test's back: `close` can return before SQLite's worker threads have closed
        // every connection, and one closing after the damage checkpointed its
        // write-ahead log into the damaged file. A copy shares no file with them.
        let template = tempfile::tempdir().expect("tempdir");
        {
            let store = SqliteStore::open(template.path()).await.expect("create");
            store
                .insert_project(&spec(), Digest::of(b"m"), None, 1)
                .await
                .expect("insert");
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&store.pool)
                .await
                .expect("checkpoint");
            store.pool.close().await;
        }
        let made = |dir: &Path| {
            for name in ["fallow.db", MARKER] {
                std::fs::copy(template.path().join(name), dir.join(name)).expect("copy");
            }
        };
        async fn refused(dir: &Path, problem: &str) {
            let err = SqliteStore::open(dir)
                .await
                .expect_err("opened")
                .to_string();
            assert!(err.contains(problem), "{err}");
            assert!(err.contains("--start-afresh"), "{err}");
        }
        let db = |dir: &Path| dir.join("fallow.db");

        let zero = tempfile::tempdir().expect("tempdir");
        made(zero.path());
        std::fs::remove_file(zero.path().join("fallow.db-wal")).ok();
        std::fs::write(db(zero.path()), b"").expect("truncate");
        refused(zero.path(), "is empty (0 bytes)").await;

        let gone = tempfile::tempdir().expect("tempdir");
        made(gone.path());
        std::fs::remove_file(db(gone.path())).expect("delete");
        std::fs::write(gone.path().join("fallow.db-wal"), b"left behind").expect("wal");
        refused(gone.path(), "write-ahead log").await;
        std::fs::remove_file(gone.path().join("fallow.db-wal")).expect("delete wal");
        refused(gone.path(), "is missing").await;

        let overwritten = tempfile::tempdir().expect("tempdir");
        made(overwritten.path());
        // Pages 2 onwards overwritten (the header stays): it opens, and fails the check.
        let mut bytes = std::fs::read(db(overwritten.path())).expect("read");
        assert!(bytes.len() > 8192, "{} bytes", bytes.len());
        let end = bytes.len();
        bytes[4096..end].fill(0x5a);
        std::fs::write(db(overwritten.path()), bytes).expect("overwrite");
        refused(overwritten.path(), "damaged").await;

        // --start-afresh sets what is left aside and starts empty.
        let afresh = OpenOptions { start_afresh: true };
        for dir in [&zero, &overwritten] {
            let store = SqliteStore::open_with(dir.path(), afresh)
                .await
                .expect("afresh");
            let (snapshot, _) = load_all(&store).await;
            assert!(snapshot.projects.is_empty());
            let aside = std::fs::read_dir(dir.path())
                .expect("dir")
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("fallow.db.aside-")
                })
                .count();
            assert_eq!(aside, 1, "the damaged store is kept aside");
        }
        // A healthy store is not touched by the flag, and a new directory needs none.
        let healthy = tempfile::tempdir().expect("tempdir");
        made(healthy.path());
        let store = SqliteStore::open_with(healthy.path(), afresh)
            .await
            .expect("healthy");
        assert_eq!(load_all(&store).await.0.projects.len(), 1);
        let new = tempfile::tempdir().expect("tempdir");
        drop(
            SqliteStore::open(&new.path().join("data"))
                .await
                .expect("new"),
        );
        assert!(new.path().join("data").join(MARKER).exists());
    }

    /// A finished project backed up while its store is open, restored into another data
    /// directory, serves the same results, aggregate and credit.
    #[tokio::test]
    async fn a_backup_restores_a_finished_project() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let (project, units) = store
            .insert_project(&spec(), Digest::of(b"m"), None, 1)
            .await
            .expect("insert");
        verify(&store, units[0], b"41\n").await;
        verify(&store, units[1], b"42\n").await;
        store
            .set_aggregate(project, Ok(b"83\n".to_vec()))
            .await
            .expect("aggregate");
        let copy = dir.path().join("backup.db");
        backup(dir.path(), &copy).await.expect("backup");
        let again = backup(dir.path(), &copy)
            .await
            .expect_err("overwrote")
            .to_string();
        assert!(again.contains("already exists"), "{again}");
        // Written after the backup: not in it.
        store
            .set_aggregate(project, Err("changed later".into()))
            .await
            .expect("aggregate");

        let restored = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&copy, restored.path().join("fallow.db")).expect("restore");
        let back = SqliteStore::open(restored.path())
            .await
            .expect("open the restored store");
        let outputs = |page: Vec<StoredOutput>| {
            intact(page)
                .into_iter()
                .map(|o| (o.name, o.output, o.signers))
                .collect::<Vec<_>>()
        };
        let (snapshot, _) = load_all(&back).await;
        let p = &snapshot.projects[0];
        assert_eq!((p.id, p.stats.total, p.stats.verified), (project, 2, 2));
        assert_eq!(
            outputs(
                back.verified_outputs(project, None, 10)
                    .await
                    .expect("outputs")
            ),
            outputs(
                store
                    .verified_outputs(project, None, 10)
                    .await
                    .expect("outputs")
            )
        );
        assert_eq!(
            back.aggregate(project).await.expect("aggregate"),
            Some(Ok(b"83\n".to_vec()))
        );
        assert_eq!(
            back.leaderboard().await.expect("leaderboard"),
            store.leaderboard().await.expect("leaderboard")
        );
    }
}
