//! The store in PostgreSQL (`fallow coordinator --database postgres://USER@HOST:PORT/DB`),
//! with the same semantics as the embedded [`super::sqlite`] store, table for table
//! ([`super::schema::POSTGRES`]).
//!
//! **Everything is in the database**, unit inputs and outputs included (`BYTEA`, as SQLite
//! keeps them as `BLOB`s inside `fallow.db`): a coordinator's data directory then holds no
//! project state, so a coordinator can move to another machine, and several coordinators
//! can later share one database, without copying files. PostgreSQL compresses large values
//! out of line (TOAST) on its own.
//!
//! **One scheduling coordinator per database; the others are edges.** The scheduler keeps
//! its state in memory, so a second coordinator scheduling the same database would hand
//! out the same units. The store holds a session advisory lock ([`LOCK_KEY`]) on a
//! connection of its own for its whole life, as the SQLite store holds
//! `coordinator.lock`; PostgreSQL releases it when that connection ends, also when the
//! coordinator is killed, and every write transaction checks it still holds it
//! (`fenced`). Another coordinator started on the database is refused
//! ([`PostgresStore::connect`]), waits ([`PostgresStore::stand_by`]), or, as `fallow
//! coordinator` does, attaches as an edge ([`PostgresStore::attach`], `crate::forward`)
//! and takes the lock ([`Standby::take_over`]) when it is released.
//!
//! **Checks at rest.** As in SQLite, every verified output is checked against the digest it
//! was verified with when it is read ([`Store::verified_outputs`]); page-level damage is
//! PostgreSQL's to detect (`initdb --data-checksums`). There is no "lost store" check as
//! for `fallow.db`: a database that is empty is a new one, and one that holds Fallow's
//! tables without `schema_version`, or tables of something else, is refused.
//!
//! **Integers.** Every integer column is `BIGINT` (`i64`). Ids and times are converted with
//! a check ([`id`]); fuel and byte limits are stored as their 64 bits ([`bits`]), as SQLite
//! stores them, because a claim's fuel must read back exactly for its signature to verify;
//! credit sums skip negative (past 2^63) fuel as SQLite's do. Values read back are checked
//! ([`count`]): one out of range is [`Error::Corrupt`], never a panic or a silent cast.
//!
//! **Writes.** PostgreSQL runs one statement per prepared query, so [`Store::write`] runs
//! the group commit's statements one by one (each prepared once per connection) inside one
//! transaction, rather than SQLite's many-statement batches; leases still go many rows per
//! statement.
//!
//! TLS to the database is not built in yet (sqlx's `postgres` driver without a TLS
//! feature): use a database on the same host or a private network, or a TLS tunnel.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio_stream::StreamExt;

use protocol::certificate::Verified;
use protocol::data::DataFile;
use protocol::manifest::ProjectSpec;
use protocol::provenance::{Signer, SubmitterKey};
use protocol::{Claim, Digest, Limits, ProjectId, UnitId, WorkerId};

use super::schema::{self, FIRST_POSTGRES_VERSION, SCHEMA_VERSION};
use super::{
    AccountTotal, CorruptOutput, CreditTo, LeasedInput, LoadedCounts, Replica, Snapshot, Store,
    StoredOutput, StoredUnit, StoredWorker, TeamTotal, UnitRow, VerifiedOutput, Write, control_of,
    digest, failure_of, intact_output, merge_units, vote_seal, worker_id,
};
use crate::Error;
use crate::scheduler::{
    Aggregate, AssignmentState, Change, Project, ProjectStats, Standing, Trust, UnitStatus,
};

/// The session advisory lock a coordinator holds on its database ("fallow" in ASCII).
pub const LOCK_KEY: i64 = 0x66_61_6c_6c_6f_77;

/// The transaction advisory lock that serialises schema creation and migrations, so two
/// coordinators started at once on a new database do not race to create it.
const MIGRATE_KEY: i64 = LOCK_KEY + 1;

/// How long [`PostgresStore::connect`] waits for the coordinator lock: a coordinator that
/// was just stopped or killed releases it as soon as PostgreSQL sees its connection close.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const UNIT_PENDING: i64 = 0;
const UNIT_VERIFIED: i64 = 1;
const UNIT_FAILED: i64 = 2;
const UNIT_CANCELLED: i64 = 3;

/// Every account with its credit, verified units, latest team and workers: the SQLite
/// store's query in PostgreSQL. The sum is `NUMERIC` in PostgreSQL (it cannot overflow)
/// and is read as a float that saturates when converted, as SQLite's `TOTAL`.
const LEADERBOARD_ACCOUNTS: &str = "SELECT a.account AS name,
    COALESCE(SUM(GREATEST(c.fuel, 0)), 0)::float8 AS credit, COUNT(c.unit) AS verified,
    (SELECT team FROM workers w WHERE w.account = a.account ORDER BY registered_ms DESC LIMIT 1) AS team,
    (SELECT COUNT(*) FROM workers w WHERE w.account = a.account) AS workers
 FROM (SELECT DISTINCT account FROM workers UNION SELECT DISTINCT account FROM credit) a
 LEFT JOIN credit c ON c.account = a.account
 WHERE a.account <> ''
 GROUP BY a.account ORDER BY credit DESC, name";

/// PostgreSQL-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pub(in crate::store) pool: PgPool,
    /// Its `application_name` on the database.
    name: String,
    /// The backend process id of the session holding the coordinator lock: every write
    /// transaction checks that it still does ([`fenced`]).
    lock_pid: i32,
    /// The task holding [`LOCK_KEY`] on a connection of its own, for the life of the
    /// store: dropping the last clone ends the task, which closes the connection and so
    /// lets go of the lock.
    _lock: Arc<tokio_util::sync::DropGuard>,
    /// Cancelled when the lock's connection fails ([`PostgresStore::lost`]).
    lost: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// `url` without its password (in the user part or a `password=` parameter), to name the
/// database in messages and logs.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.split('?').next().unwrap_or_default().to_string(),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    let query = query
        .map(|q| {
            q.split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect::<Vec<_>>()
                .join("&")
        })
        .filter(|q| !q.is_empty())
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}{path}{query}")
}

impl PostgresStore {
    /// The deployment's files kept in the database (`crate::deployment`), by name.
    pub async fn deployment_files(&self) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        deployment_files(&self.pool).await
    }

    /// Keeps `bytes` as the deployment's file `name`: replacing what is there when
    /// `replace`, otherwise only if there is none (the first coordinator's wins). Returns
    /// whether it was written.
    pub async fn put_deployment_file(
        &self,
        name: &str,
        bytes: &[u8],
        replace: bool,
    ) -> Result<bool, Error> {
        let sql = if replace {
            "INSERT INTO deployment_files (name, bytes, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET bytes = excluded.bytes, updated_ms = excluded.updated_ms"
        } else {
            "INSERT INTO deployment_files (name, bytes, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING"
        };
        let done = sqlx::query(sql)
            .bind(name)
            .bind(bytes)
            .bind(id(crate::now_ms())?)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The session PostgreSQL reports holding a database's coordinator lock: what a standby
/// prints about the active coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its `application_name`: `fallow coordinator` and, for one started by the CLI, the
    /// host and process id ([`PostgresStore::attach`]).
    pub application: String,
    /// The address it connects from (empty over a Unix socket).
    pub client: String,
    /// The PostgreSQL backend's process id.
    pub backend: i32,
    /// When the session began, as PostgreSQL prints a `timestamptz`.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.application)?;
        if !self.client.is_empty() {
            write!(f, " from {}", self.client)?;
        }
        write!(
            f,
            " (PostgreSQL backend {}, connected since {})",
            self.backend, self.since
        )
    }
}

/// How long a standby waits between two tries of the coordinator lock.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// How long a standby that took the lock waits for the former holder's other sessions
/// (its pool) to end before it ends them itself (`pg_terminate_backend`), so that nothing
/// the former coordinator sent can commit after the new one has loaded the store.
const FENCE_WAIT: Duration = Duration::from_secs(10);

/// The name every coordinator session carries unless [`PostgresStore::stand_by`] is given
/// a more specific one.
const APPLICATION: &str = "fallow coordinator";

impl PostgresStore {
    /// Verified units as read (`id, name, output, digest, fuel, settled_ms`), each with its
    /// signers, checked against its digest: a mismatch is [`StoredOutput::Corrupt`].
    async fn stored_outputs(&self, rows: Vec<PgRow>) -> Result<Vec<StoredOutput>, Error> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key: i64 = row.try_get("id")?;
            let unit = UnitId(count(&row, "id")?);
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
            .bind(key)
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
                fuel: unbits(fuel),
                signers,
                verified_ms: verified_ms.map_or(0, unbits),
            }));
        }
        Ok(out)
    }

    /// Connects to the database at `url`, takes the coordinator lock (waiting up to
    /// [`LOCK_WAIT`] for a coordinator just stopped to let go of it), then creates or
    /// migrates the schema. Errors name the URL without its password. A database another
    /// coordinator holds past the wait is refused ([`PostgresStore::attach`] serves it as
    /// an edge and takes over later).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut standby = match Self::attach(url, APPLICATION).await? {
            Attached::Active(store) => return Ok(store),
            Attached::Standby(standby) => standby,
        };
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if try_lock(&mut standby.lock).await? {
                return standby.finish(None).await;
            }
        }
        Err(Error::Database {
            url: standby.shown,
            message: "another coordinator is using this database (it holds the coordinator \
                      lock); stop it, or use another database"
                .into(),
        })
    }

    /// As [`PostgresStore::connect`], but a database another coordinator holds is waited
    /// for, as its standby: `standing` is told once who holds it, then
    /// [`Standby::take_over`] waits for the lock.
    pub async fn stand_by(
        url: &str,
        name: &str,
        standing: impl FnOnce(Option<&Holder>) + Send,
    ) -> Result<Self, Error> {
        match Self::attach(url, name).await? {
            Attached::Active(store) => Ok(store),
            Attached::Standby(standby) => {
                standing(standby.holder());
                standby.take_over().await
            }
        }
    }

    /// Connects to the database at `url` as the coordinator named `name` (its
    /// `application_name`; it should be unique, e.g. with the host and process id) and
    /// tries the coordinator lock once: [`Attached::Active`] if it got it (the schema
    /// created or migrated), otherwise [`Attached::Standby`], which can read the
    /// deployment and who schedules it, and take over when the holder goes.
    pub async fn attach(url: &str, name: &str) -> Result<Attached, Error> {
        let shown = redact(url);
        // PostgreSQL keeps 63 bytes of a name; cut on a character boundary.
        let name: String = name.chars().take(60).collect();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Database {
                url: shown.clone(),
                message: format!("not a PostgreSQL URL: {e}"),
            })?
            .application_name(&name)
            // A coordinator whose machine is lost (not just its process) leaves no one to
            // close its connections: PostgreSQL finds them dead by TCP keepalive, and only
            // then releases the lock to a standby. These make that ~25 s, not the
            // system's default two hours (ignored over a Unix socket).
            .options([
                ("tcp_keepalives_idle", "10"),
                ("tcp_keepalives_interval", "5"),
                ("tcp_keepalives_count", "3"),
            ]);
        let mut lock = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(&shown, format!("no answer in {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(&shown, e.to_string()))?;
        let locked = try_lock(&mut lock).await?;
        let holder = if locked {
            None
        } else {
            holder(&mut lock).await?
        };
        let pool = PgPoolOptions::new()
            .max_connections(if locked { POOL } else { STANDBY_POOL })
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| unreachable(&shown, e.to_string()))?;
        let standby = Standby {
            lock,
            pool,
            name,
            shown,
            holder,
        };
        if locked {
            return Ok(Attached::Active(standby.finish(None).await?));
        }
        Ok(Attached::Standby(standby))
    }

    /// Publishes this coordinator as the one that schedules the database, reachable at
    /// `url` (`forward::Leader::url`), for the edges to forward to.
    pub async fn publish_leader(&self, url: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO coordinator_leader (id, name, url, since_ms) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url,
                                            since_ms = excluded.since_ms",
        )
        .bind(&self.name)
        .bind(url)
        .bind(id(crate::now_ms())?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Completes if this coordinator loses the database's lock (its connection failed:
    /// the database restarted, or the network to it broke). A standby may be taking over:
    /// the coordinator must stop serving at once (`fallow coordinator` exits with an
    /// error, and stands by when started again).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }
}

/// Connections of an active coordinator's pool.
const POOL: u32 = 8;

/// Connections of a standby's pool (it only reads who schedules, and the deployment).
const STANDBY_POOL: u32 = 2;

/// What [`PostgresStore::attach`] found.
#[derive(Debug)]
pub enum Attached {
    /// This coordinator holds the lock: it schedules.
    Active(PostgresStore),
    /// Another coordinator holds it: this one is an edge (`forward`) until it takes over.
    Standby(Standby),
}

/// A coordinator attached to a database another one holds: it reads the deployment's
/// files and who schedules ([`Standby::leader_watch`]), and takes over
/// ([`Standby::take_over`]) when the holder's session ends.
pub struct Standby {
    /// The connection that tries (and then holds) the coordinator lock.
    lock: PgConnection,
    pool: PgPool,
    name: String,
    shown: String,
    /// The lock's holder when last seen: its sessions are fenced off once we hold it.
    holder: Option<Holder>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby")
            .field("database", &self.shown)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Standby {
    /// Who held the lock when last seen.
    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// The deployment's files (`crate::deployment`); empty while no coordinator has
    /// created the schema and put them there.
    pub async fn deployment_files(&self) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        deployment_files(&self.pool).await
    }

    /// Reads who schedules the database, for an edge.
    pub fn leader_watch(&self) -> LeaderWatch {
        LeaderWatch {
            pool: self.pool.clone(),
        }
    }

    /// Waits until the holder's session ends (it stopped, or was killed: PostgreSQL ends
    /// the session when its connection closes), trying the lock every [`STANDBY_POLL`];
    /// then waits for (or ends) the former holder's remaining sessions, so a coordinator
    /// that died mid-write cannot commit behind this one's back, and opens the store.
    pub async fn take_over(mut self) -> Result<PostgresStore, Error> {
        loop {
            if try_lock(&mut self.lock).await? {
                break;
            }
            if let Some(h) = holder(&mut self.lock).await? {
                self.holder = Some(h);
            }
            tokio::time::sleep(STANDBY_POLL).await;
        }
        let former = self.holder.take();
        self.finish(former.as_ref()).await
    }

    /// With the lock held: fences `former`, migrates and starts holding the lock.
    async fn finish(mut self, former: Option<&Holder>) -> Result<PostgresStore, Error> {
        if let Some(former) = former {
            fence(&mut self.lock, former, &self.name).await?;
        }
        migrate(&self.pool, &self.shown).await?;
        // A standby's pool is small: an active coordinator needs more.
        let pool = if self.pool.options().get_max_connections() < POOL {
            let options = (*self.pool.connect_options()).clone();
            self.pool.close().await;
            PgPoolOptions::new()
                .max_connections(POOL)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| unreachable(&self.shown, e.to_string()))?
        } else {
            self.pool
        };
        let lock_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.lock)
            .await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let lost = tokio_util::sync::CancellationToken::new();
        tokio::spawn(hold(self.lock, stop.clone(), lost.clone(), self.shown));
        Ok(PostgresStore {
            pool,
            name: self.name,
            lock_pid,
            _lock: Arc::new(stop.drop_guard()),
            lost,
        })
    }
}

/// Reads which coordinator schedules a database ([`PostgresStore::publish_leader`]).
#[derive(Clone)]
pub struct LeaderWatch {
    pool: PgPool,
}

impl std::fmt::Debug for LeaderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaderWatch")
    }
}

/// Whether `e` is PostgreSQL's `undefined_table` (42P01): a database no coordinator has
/// created the schema in yet, or an older schema.
fn undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01"))
}

impl LeaderWatch {
    /// The published leader, if it still holds the lock (a leader that died leaves its
    /// row behind until the next one replaces it). `None` too while the table is missing.
    pub async fn current(&self) -> Result<Option<crate::forward::Leader>, Error> {
        let row: Option<(String, String)> =
            match sqlx::query_as("SELECT name, url FROM coordinator_leader WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
            {
                Ok(row) => row,
                Err(e) if undefined_table(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
        let Some((name, url)) = row else {
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await?;
        let holds = holder(&mut conn)
            .await?
            .is_some_and(|h| h.application == name);
        Ok(holds.then_some(crate::forward::Leader { name, url }))
    }

    /// Polls [`LeaderWatch::current`] every `every` into a watch channel until every
    /// receiver is gone or the store closes (this coordinator took over); a failed read
    /// keeps the last value (and logs why).
    ///
    /// `me` is this coordinator's own URL: a leader published there is an earlier process
    /// of this coordinator — killed, and restarted before the database noticed its session
    /// end — and is not believed, or this edge would forward every call to itself.
    pub fn spawn(
        self,
        every: Duration,
        me: &str,
    ) -> tokio::sync::watch::Receiver<Option<crate::forward::Leader>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let me = me.to_string();
        tokio::spawn(async move {
            loop {
                if self.pool.is_closed() {
                    return;
                }
                match self.current().await {
                    Ok(leader) => {
                        let leader = leader.filter(|l| l.url != me);
                        tx.send_if_modified(|held| {
                            if *held == leader {
                                return false;
                            }
                            match &leader {
                                Some(l) => tracing::info!(
                                    leader = %l.url,
                                    name = %l.name,
                                    "forwarding to the scheduling coordinator"
                                ),
                                None => tracing::info!("no coordinator schedules the database now"),
                            }
                            *held = leader;
                            true
                        });
                    }
                    Err(e) => tracing::warn!("cannot read which coordinator schedules: {e}"),
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
        rx
    }
}

/// Fails with [`Error::Fenced`] unless the session `lock_pid` still holds the coordinator
/// lock. Every write transaction of the store starts with it: a coordinator whose lock
/// session died (a standby may have taken over and loaded the store) writes nothing more,
/// even through pool connections opened after the new holder's fence ended its old ones.
/// A transaction that passed the check and is still open when the lock goes is in a
/// session the new holder's fence ends, so it never commits.
async fn fenced(conn: &mut PgConnection, lock_pid: i32) -> Result<(), Error> {
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
           WHERE locktype = 'advisory' AND granted AND pid = $1
             AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 1
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .bind(lock_pid)
    .bind(LOCK_KEY >> 32)
    .bind(LOCK_KEY & 0xffff_ffff)
    .fetch_one(conn)
    .await?;
    if held { Ok(()) } else { Err(Error::Fenced) }
}

/// Tries the coordinator lock once on `conn`.
async fn try_lock(conn: &mut PgConnection) -> Result<bool, Error> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await?)
}

/// The error for a database that cannot be reached.
fn unreachable(shown: &str, e: String) -> Error {
    Error::Database {
        url: shown.to_string(),
        message: format!(
            "cannot connect ({e}); is PostgreSQL running there, and do the user, password \
             and database exist?"
        ),
    }
}

/// The deployment's files kept in the database, by name (none before the schema exists).
async fn deployment_files(pool: &PgPool) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT name, bytes FROM deployment_files ORDER BY name",
    )
    .fetch_all(pool)
    .await
    {
        Ok(rows) => Ok(rows.into_iter().collect()),
        Err(e) if undefined_table(&e) => Ok(BTreeMap::new()),
        Err(e) => Err(e.into()),
    }
}

/// How often the lock's connection is checked.
const LOCK_CHECK: Duration = Duration::from_secs(2);

/// Holds the coordinator lock on `conn` until `stop` (then closes it, letting go of the
/// lock), checking every [`LOCK_CHECK`] that the connection is alive; cancels `lost` when
/// it is not.
async fn hold(
    mut conn: PgConnection,
    stop: tokio_util::sync::CancellationToken,
    lost: tokio_util::sync::CancellationToken,
    shown: String,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            _ = tokio::time::sleep(LOCK_CHECK) => {}
        }
        let alive = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query("SELECT 1").execute(&mut conn),
        )
        .await;
        if !matches!(alive, Ok(Ok(_))) {
            tracing::error!(
                database = %shown,
                "lost the connection holding the coordinator lock: another coordinator may \
                 take the database over; this one must stop serving"
            );
            lost.cancel();
            return;
        }
    }
}

/// The session holding the coordinator lock, if PostgreSQL shows it to us (it may have
/// just let go; a role without the right to see others' sessions sees no address).
async fn holder(conn: &mut PgConnection) -> Result<Option<Holder>, Error> {
    // A bigint advisory key shows in pg_locks as its high and low 32 bits.
    let row = sqlx::query(
        "SELECT a.application_name::text AS application,
                COALESCE(host(a.client_addr), '') AS client,
                a.pid AS backend,
                COALESCE(date_trunc('second', a.backend_start)::text, '') AS since
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                 SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
         LIMIT 1",
    )
    .bind(LOCK_KEY >> 32)
    .bind(LOCK_KEY & 0xffff_ffff)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Holder {
        application: row
            .try_get::<Option<String>, _>("application")?
            .unwrap_or_default(),
        client: row.try_get("client")?,
        backend: row.try_get("backend")?,
        since: row.try_get("since")?,
    }))
}

/// Waits until no session of the former holder (by its `application_name`, unless it is
/// ours) is left, ending those still there after [`FENCE_WAIT`].
async fn fence(conn: &mut PgConnection, former: &Holder, ours: &str) -> Result<(), Error> {
    if former.application == ours {
        // Not unique (two coordinators with the default name): nothing to tell its
        // sessions from ours by. Its lock session is gone, which ended its transactions.
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + FENCE_WAIT;
    loop {
        let left: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()
               AND pid <> pg_backend_pid()",
        )
        .bind(&former.application)
        .fetch_all(&mut *conn)
        .await?;
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                former = %former,
                sessions = left.len(),
                "the former coordinator's sessions are still open; ending them"
            );
            for pid in left {
                // Best effort: a role may end sessions of its own role only.
                let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *conn)
                    .await;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the schema in a new database, or migrates an older one, in one transaction.
async fn migrate(pool: &PgPool, shown: &str) -> Result<(), Error> {
    let refuse = |message: String| Error::Database {
        url: shown.to_string(),
        message,
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATE_KEY)
        .execute(&mut *tx)
        .await?;
    let has_version: bool = sqlx::query_scalar("SELECT to_regclass('schema_version') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    let version: i64 = if has_version {
        sqlx::query_scalar("SELECT version FROM schema_version")
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0)
    } else {
        0
    };
    if version == 0 {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema()
                AND tablename <> 'schema_version')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Err(refuse(
                "holds tables but no Fallow schema version: not a Fallow store (or a damaged \
                 one); give the coordinator an empty database of its own"
                    .into(),
            ));
        }
    }
    if version > SCHEMA_VERSION {
        return Err(refuse(format!(
            "written by a newer Fallow (schema {version}, this one understands \
             {SCHEMA_VERSION}); use that version or another database"
        )));
    }
    if version != 0 && version < FIRST_POSTGRES_VERSION {
        return Err(Error::Corrupt(format!(
            "a PostgreSQL store at schema {version}, older than any PostgreSQL store can be \
             ({FIRST_POSTGRES_VERSION})"
        )));
    }
    for migration in schema::MIGRATIONS {
        if version == 0 || migration.from < version {
            continue;
        }
        let Some(text) = migration.postgres else {
            return Err(Error::Corrupt(format!(
                "no PostgreSQL migration from schema {}",
                migration.from
            )));
        };
        for statement in schema::statements(text) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tracing::info!(
            database = shown,
            "database migrated from schema {} to {}",
            migration.from,
            migration.from + 1
        );
    }
    sqlx::raw_sql(schema::POSTGRES).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO schema_version (only_row, version) VALUES (TRUE, $1)
         ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
    )
    .bind(SCHEMA_VERSION)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// An id or a time as `BIGINT`. Every one the store hands out fits; one that does not (a
/// unit id from a request, say) is refused before anything is written.
fn id(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| {
        Error::Store(sqlx::Error::Encode(
            format!("{v} does not fit PostgreSQL's BIGINT").into(),
        ))
    })
}

/// A fuel amount or byte limit as its 64 bits, as SQLite stores them: values past 2^63
/// read back exactly ([`unbits`]), which a signed claim's fuel must.
fn bits(v: u64) -> i64 {
    v as i64
}

/// The inverse of [`bits`].
fn unbits(v: i64) -> u64 {
    v as u64
}

/// A non-negative integer column as `u64` (ids, counts, times).
fn count(row: &PgRow, column: &str) -> Result<u64, Error> {
    let v: i64 = row.try_get(column)?;
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{column} is negative ({v})")))
}

/// A small integer column as `u32` (replicas, cores, counters).
fn small(row: &PgRow, column: &str) -> Result<u32, Error> {
    let v: i64 = row.try_get(column)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{column} out of range ({v})")))
}

/// A sum read as a float: whole fuel units, saturating at `u64::MAX` (NaN gives 0).
fn credit_of(row: &PgRow) -> Result<u64, Error> {
    Ok(row.try_get::<f64, _>("credit")? as u64)
}

/// Why a reducer failed, without the "reducer failed: " older stores put in front.
fn reducer_reason(stored: String) -> String {
    match stored.strip_prefix("reducer failed: ") {
        Some(rest) => rest.to_string(),
        None => stored,
    }
}

fn project_from_row(row: &PgRow) -> Result<Project, Error> {
    let reducer: Option<Vec<u8>> = row.try_get("reducer")?;
    Ok(Project {
        id: ProjectId(count(row, "id")?),
        name: row.try_get("name")?,
        replication: small(row, "replication")?,
        quorum: small(row, "quorum")?,
        max_replicas: small(row, "max_replicas")?,
        limits: Limits {
            fuel: unbits(row.try_get("fuel")?),
            memory_mb: small(row, "memory_mb")?,
            wall_seconds: small(row, "wall_seconds")?,
            max_output_bytes: unbits(row.try_get("max_output_bytes")?),
            nan_canonicalization: row.try_get::<i64, _>("nan_canonicalization")? != 0,
            max_checkpoint_bytes: unbits(row.try_get("max_checkpoint_bytes")?),
        },
        module: digest(row.try_get("module")?)?,
        reducer: reducer.as_deref().map(digest).transpose()?,
        stats: ProjectStats {
            disputes: count(row, "disputes")?,
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

/// Closes a connection whose work failed instead of returning it to the pool: whatever
/// state a failed COMMIT left on it goes with it, and the pool opens a fresh one.
async fn discard(conn: sqlx::pool::PoolConnection<sqlx::Postgres>) {
    if let Err(e) = conn.close().await {
        tracing::warn!("closing a database connection after a failed write: {e}");
    }
}

/// One scheduler change (all but `Reopen` and `Reverify`, see [`reopen`]), as the SQLite
/// store's batch writes it, one statement at a time.
async fn change(tx: &mut PgConnection, change: &Change, now: i64) -> Result<(), Error> {
    match change {
        Change::Replica {
            unit,
            worker,
            state,
            failure,
        } => {
            sqlx::query(
                "UPDATE assignments SET state = $1, failure_kind = $2, reason = $3 WHERE unit = $4 AND worker = $5",
            )
            .bind(state.code())
            .bind(failure.as_ref().map(|f| f.kind.as_str()))
            .bind(failure.as_ref().map(|f| f.detail.as_str()))
            .bind(id(unit.0)?)
            .bind(&worker.0[..])
            .execute(&mut *tx)
            .await?;
        }
        Change::Target { unit, target } => {
            sqlx::query("UPDATE units SET target = $1 WHERE id = $2")
                .bind(i64::from(*target))
                .bind(id(unit.0)?)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE projects SET disputes = disputes + 1 WHERE id = (SELECT project FROM units WHERE id = $1)",
            )
            .bind(id(unit.0)?)
            .execute(&mut *tx)
            .await?;
        }
        Change::UnitFailed { unit, reason } => {
            sqlx::query(
                "UPDATE units SET state = $1, reason = $2, settled_ms = $3 WHERE id = $4 AND state = $5",
            )
            .bind(UNIT_FAILED)
            .bind(reason)
            .bind(now)
            .bind(id(unit.0)?)
            .bind(UNIT_PENDING)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM votes WHERE unit = $1")
                .bind(id(unit.0)?)
                .execute(&mut *tx)
                .await?;
        }
        Change::Plan {
            unit,
            target,
            required,
        } => {
            sqlx::query("UPDATE units SET target = $1, required = $2 WHERE id = $3")
                .bind(i64::from(*target))
                .bind(i64::from(*required))
                .bind(id(unit.0)?)
                .execute(&mut *tx)
                .await?;
        }
        Change::Vote { claim } => {
            sqlx::query(
                "INSERT INTO votes (unit, worker, digest, fuel, salt, signature) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (unit, worker) DO NOTHING",
            )
            .bind(id(claim.unit.0)?)
            .bind(&claim.worker.0[..])
            .bind(&claim.digest.0[..])
            .bind(bits(claim.fuel))
            .bind(&claim.salt[..])
            .bind(&claim.signature[..])
            .execute(&mut *tx)
            .await?;
        }
        Change::Trust {
            worker,
            project,
            consecutive,
            offences,
        } => {
            sqlx::query(
                "INSERT INTO trust (worker, project, consecutive, offences) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (worker, project) DO UPDATE SET consecutive = excluded.consecutive, offences = excluded.offences",
            )
            .bind(&worker.0[..])
            .bind(id(project.0)?)
            .bind(i64::from(*consecutive))
            .bind(i64::from(*offences))
            .execute(&mut *tx)
            .await?;
        }
        Change::Unchecked {
            worker,
            project,
            unit,
        } => {
            sqlx::query(
                "INSERT INTO unchecked (worker, project, unit) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&worker.0[..])
            .bind(id(project.0)?)
            .bind(id(unit.0)?)
            .execute(&mut *tx)
            .await?;
        }
        Change::UncheckedCleared { worker, project } => {
            sqlx::query("DELETE FROM unchecked WHERE worker = $1 AND project = $2")
                .bind(&worker.0[..])
                .bind(id(project.0)?)
                .execute(&mut *tx)
                .await?;
        }
        Change::Disqualified { unit, worker } => {
            sqlx::query(
                "INSERT INTO disqualified (unit, worker) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id(unit.0)?)
            .bind(&worker.0[..])
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM votes WHERE unit = $1 AND worker = $2")
                .bind(id(unit.0)?)
                .bind(&worker.0[..])
                .execute(&mut *tx)
                .await?;
        }
        Change::Standing {
            worker,
            errors_in_row,
            throttled,
        } => {
            sqlx::query(
                "INSERT INTO standing (worker, errors_in_row, throttled) VALUES ($1, $2, $3)
                 ON CONFLICT (worker) DO UPDATE SET errors_in_row = excluded.errors_in_row, throttled = excluded.throttled",
            )
            .bind(&worker.0[..])
            .bind(i64::from(*errors_in_row))
            .bind(i64::from(*throttled))
            .execute(&mut *tx)
            .await?;
        }
        Change::Reopen {
            unit,
            revoke,
            required,
        } => reopen(tx, *unit, Some(*revoke), *required).await?,
        Change::Reverify { unit, required } => reopen(tx, *unit, None, *required).await?,
        Change::Control { project, state } => {
            sqlx::query("UPDATE projects SET control = $1 WHERE id = $2")
                .bind(state.code())
                .bind(id(project.0)?)
                .execute(&mut *tx)
                .await?;
        }
        Change::CancelUnits { project } => {
            sqlx::query(
                "DELETE FROM votes WHERE unit IN (SELECT id FROM units WHERE project = $1 AND state = $2)",
            )
            .bind(id(project.0)?)
            .bind(UNIT_PENDING)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE units SET state = $1, settled_ms = $2 WHERE project = $3 AND state = $4",
            )
            .bind(UNIT_CANCELLED)
            .bind(now)
            .bind(id(project.0)?)
            .bind(UNIT_PENDING)
            .execute(&mut *tx)
            .await?;
        }
        Change::Retried {
            unit,
            target,
            required,
        } => {
            sqlx::query(
                "UPDATE units SET state = $1, reason = NULL, settled_ms = NULL, target = $2, required = $3
                 WHERE id = $4 AND state = $5",
            )
            .bind(UNIT_PENDING)
            .bind(i64::from(*target))
            .bind(i64::from(*required))
            .bind(id(unit.0)?)
            .bind(UNIT_FAILED)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE assignments SET state = $1, failure_kind = NULL, reason = NULL
                 WHERE unit = $2 AND state IN ($3, $4)",
            )
            .bind(AssignmentState::Retried.code())
            .bind(id(unit.0)?)
            .bind(AssignmentState::Failed.code())
            .bind(AssignmentState::Expired.code())
            .execute(&mut *tx)
            .await?;
        }
        Change::AggregateReset { project } => {
            sqlx::query(
                "UPDATE projects SET aggregate_done = 0, aggregate = NULL, aggregate_error = NULL WHERE id = $1",
            )
            .bind(id(project.0)?)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// A verified unit goes back to pending (if it is still verified), as in the SQLite store:
/// its output and the liar's credit (if any) are withdrawn, its replicas superseded, its
/// project's aggregate dropped.
async fn reopen(
    tx: &mut PgConnection,
    unit: UnitId,
    revoke: Option<WorkerId>,
    required: u32,
) -> Result<(), Error> {
    let unit = id(unit.0)?;
    let reopened = sqlx::query(
        "UPDATE units SET state = $1, output = NULL, digest = NULL, fuel = NULL, settled_ms = NULL,
            required = $2, target = $2 WHERE id = $3 AND state = $4",
    )
    .bind(UNIT_PENDING)
    .bind(i64::from(required))
    .bind(unit)
    .bind(UNIT_VERIFIED)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if reopened == 0 {
        return Ok(());
    }
    if let Some(revoke) = revoke {
        sqlx::query("DELETE FROM credit WHERE unit = $1 AND worker = $2")
            .bind(unit)
            .bind(&revoke.0[..])
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE assignments SET state = $1 WHERE unit = $2 AND state = $3")
        .bind(AssignmentState::Superseded.code())
        .bind(unit)
        .bind(AssignmentState::Active.code())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM votes WHERE unit = $1")
        .bind(unit)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE projects SET aggregate_done = 0, aggregate = NULL, aggregate_error = NULL
         WHERE id = (SELECT project FROM units WHERE id = $1)",
    )
    .bind(unit)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// New leases `(unit, worker, created_ms)`, in one statement of fixed text (prepared once
/// per connection): the rows travel as arrays. A pair given twice is written once, as its
/// last lease: PostgreSQL refuses an upsert that touches a row twice (SQLite applies both,
/// to the same effect).
async fn assign(tx: &mut PgConnection, leases: &[(UnitId, WorkerId, i64)]) -> Result<(), Error> {
    let mut last: HashMap<(UnitId, WorkerId), usize> = HashMap::new();
    for (i, (unit, worker, _)) in leases.iter().enumerate() {
        last.insert((*unit, *worker), i);
    }
    let (mut units, mut workers, mut created) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (unit, worker, ms)) in leases.iter().enumerate() {
        if last.get(&(*unit, *worker)) != Some(&i) {
            continue;
        }
        units.push(id(unit.0)?);
        workers.push(worker.0.to_vec());
        created.push(*ms);
    }
    if units.is_empty() {
        return Ok(());
    }
    // A unit handed back and leased again to the same worker is leased afresh.
    sqlx::query(
        "INSERT INTO assignments (unit, worker, state, created_ms)
         SELECT l.unit, l.worker, $4, l.created_ms
         FROM UNNEST($1::int8[], $2::bytea[], $3::int8[]) AS l(unit, worker, created_ms)
         ON CONFLICT (unit, worker) DO UPDATE SET state = excluded.state,
            failure_kind = NULL, reason = NULL, created_ms = excluded.created_ms",
    )
    .bind(units)
    .bind(workers)
    .bind(created)
    .bind(AssignmentState::Active.code())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Trust rows `(worker, project) -> (consecutive, offences)`, in one statement.
async fn trust_rows(
    tx: &mut PgConnection,
    rows: &HashMap<(WorkerId, ProjectId), (u32, u32)>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut workers, mut projects, mut consecutive, mut offences) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((worker, project), (c, o)) in rows {
        workers.push(worker.0.to_vec());
        projects.push(id(project.0)?);
        consecutive.push(i64::from(*c));
        offences.push(i64::from(*o));
    }
    sqlx::query(
        "INSERT INTO trust (worker, project, consecutive, offences)
         SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::int8[])
         ON CONFLICT (worker, project) DO UPDATE SET consecutive = excluded.consecutive,
            offences = excluded.offences",
    )
    .bind(workers)
    .bind(projects)
    .bind(consecutive)
    .bind(offences)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn add<'q, T>(args: &mut sqlx::postgres::PgArguments, value: T) -> Result<(), Error>
where
    T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'q,
{
    sqlx::Arguments::add(args, value).map_err(|e| Error::Store(sqlx::Error::Encode(e)))
}

/// A verified unit, credit first and only while the unit is still pending: exactly once.
/// Returns whether it was recorded.
async fn verified(
    tx: &mut PgConnection,
    unit: UnitId,
    output: &[u8],
    verified: &Verified,
    credit: &[CreditTo],
    now: i64,
) -> Result<bool, Error> {
    let unit = id(unit.0)?;
    let (mut workers, mut accounts, mut teams) = (Vec::new(), Vec::new(), Vec::new());
    for signer in &verified.signers {
        let to = credit.iter().find(|c| c.worker == *signer);
        workers.push(signer.0.to_vec());
        accounts.push(to.map_or("", |c| c.account.as_str()));
        teams.push(to.map_or("", |c| c.team.as_str()));
    }
    // One statement, one round trip: every part sees the unit as it was before, so the
    // credit goes in only while the unit is still pending, as the update's condition.
    let updated = sqlx::query(
        "WITH credited AS (
             INSERT INTO credit (unit, worker, fuel, account, team)
             SELECT $1, s.worker, $2, s.account, s.team
             FROM UNNEST($3::bytea[], $4::text[], $5::text[]) AS s(worker, account, team)
             WHERE EXISTS (SELECT 1 FROM units WHERE id = $1 AND state = $6)
             ON CONFLICT (unit, worker) DO NOTHING
         ), cleared AS (
             DELETE FROM votes WHERE unit = $1
         )
         UPDATE units SET state = $7, output = $8, digest = $9, fuel = $2, settled_ms = $10
         WHERE id = $1 AND state = $6",
    )
    .bind(unit)
    .bind(bits(verified.fuel))
    .bind(workers)
    .bind(accounts)
    .bind(teams)
    .bind(UNIT_PENDING)
    .bind(UNIT_VERIFIED)
    .bind(output)
    .bind(&verified.digest.0[..])
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(updated > 0)
}

impl Store for PostgresStore {
    fn on_data_dir_disk(&self) -> bool {
        false
    }

    async fn insert_project(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        reducer: Option<Digest>,
        now: u64,
    ) -> Result<(ProjectId, Vec<UnitId>), Error> {
        let mut conn = self.pool.acquire().await?;
        let result = inner(&mut conn, self.lock_pid, spec, module, reducer, now).await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(
            conn: &mut PgConnection,
            lock_pid: i32,
            spec: &ProjectSpec,
            module: Digest,
            reducer: Option<Digest>,
            now: u64,
        ) -> Result<(ProjectId, Vec<UnitId>), Error> {
            let mut tx = conn.begin().await?;
            fenced(&mut tx, lock_pid).await?;
            let mut modules = vec![(module, &spec.module)];
            if let (Some(d), Some(bytes)) = (reducer, &spec.reducer) {
                modules.push((d, bytes));
            }
            for (digest, bytes) in modules {
                sqlx::query(
                    "INSERT INTO modules (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                )
                .bind(&digest.0[..])
                .bind(&bytes[..])
                .execute(&mut *tx)
                .await?;
            }
            let l = spec.limits;
            let project: i64 = sqlx::query_scalar(
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
            .bind(bits(l.fuel))
            .bind(i64::from(l.memory_mb))
            .bind(i64::from(l.wall_seconds))
            .bind(bits(l.max_output_bytes))
            .bind(i64::from(l.nan_canonicalization))
            .bind(id(now)?)
            .bind(i64::from(spec.adaptive))
            .bind(spec.error_bound)
            .bind(bits(l.max_checkpoint_bytes))
            .bind(spec.signatures.as_ref().map(|g| g.key.0.to_vec()))
            .bind(spec.signatures.as_ref().map(|_| spec.terms().0.to_vec()))
            .fetch_one(&mut *tx)
            .await?;
            // The files themselves were uploaded before (`PutData`) and checked held.
            for f in &spec.data {
                sqlx::query("INSERT INTO project_data (project, name, digest, size) VALUES ($1, $2, $3, $4)")
                    .bind(project)
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
                let mut args = sqlx::postgres::PgArguments::default();
                for (i, (name, input)) in chunk.iter().enumerate() {
                    let n = i * 6;
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6
                    ));
                    let signature = signatures.and_then(|s| s.get(c * 200 + i));
                    add(&mut args, project)?;
                    add(&mut args, name.clone())?;
                    add(&mut args, input.clone())?;
                    add(&mut args, i64::from(spec.replication))?;
                    add(&mut args, i64::from(spec.quorum))?;
                    add(&mut args, signature.map(|s| s.to_vec()))?;
                }
                sql.push_str(" RETURNING id");
                let mut ids: Vec<i64> = sqlx::query_scalar_with(&sql, args)
                    .persistent(chunk.len() == 200)
                    .fetch_all(&mut *tx)
                    .await?;
                // Ids grow in insertion order; RETURNING does not promise an order.
                ids.sort_unstable();
                for u in ids {
                    units.push(UnitId(u64::try_from(u).map_err(|_| {
                        Error::Corrupt(format!("a negative unit id ({u})"))
                    })?));
                }
            }
            tx.commit().await?;
            let project = u64::try_from(project)
                .map_err(|_| Error::Corrupt(format!("a negative project id ({project})")))?;
            Ok((ProjectId(project), units))
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
        let result = inner(
            &mut conn,
            self.lock_pid,
            project,
            units,
            signatures,
            target,
            required,
        )
        .await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(
            conn: &mut PgConnection,
            lock_pid: i32,
            project: ProjectId,
            units: &[(String, Vec<u8>)],
            signatures: &[[u8; 64]],
            target: u32,
            required: u32,
        ) -> Result<Vec<UnitId>, Error> {
            let mut tx = conn.begin().await?;
            fenced(&mut tx, lock_pid).await?;
            let pid = id(project.0)?;
            let mut ids = Vec::with_capacity(units.len());
            for (i, (name, input)) in units.iter().enumerate() {
                // As in the SQLite store: one row at a time, the unique index finds a taken
                // name.
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
                    Some(u) => ids
                        .push(UnitId(u64::try_from(u).map_err(|_| {
                            Error::Corrupt(format!("a negative unit id ({u})"))
                        })?)),
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
        // Named columns: the aggregate (up to 64 MiB) stays in the database.
        for row in sqlx::query(
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
            "SELECT u.project AS project, COALESCE(SUM(GREATEST(c.fuel, 0)), 0)::float8 AS credit
             FROM credit c JOIN units u ON u.id = c.unit GROUP BY u.project",
        )
        .fetch_all(&self.pool)
        .await?
        {
            if let Some(p) = projects.get_mut(&ProjectId(count(&row, "project")?)) {
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
                cores: small(&row, "cores")?,
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
                (worker_id(row.try_get("worker")?)?, count(&row, "project")?),
                Trust {
                    consecutive: small(&row, "consecutive")?,
                    offences: small(&row, "offences")?,
                    unchecked: Default::default(),
                },
            );
        }
        for row in sqlx::query("SELECT worker, project, unit FROM unchecked ORDER BY unit")
            .fetch_all(&self.pool)
            .await?
        {
            let key = (worker_id(row.try_get("worker")?)?, count(&row, "project")?);
            trust
                .entry(key)
                .or_default()
                .unchecked
                .push_back(UnitId(count(&row, "unit")?));
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
                UnitId(count(&row, "unit")?),
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
                    errors_in_row: small(&row, "errors_in_row")?,
                    throttled: row.try_get::<i64, _>("throttled")? != 0,
                    last_unit_at: 0,
                },
            ));
        }
        Ok(snapshot)
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
            quorum.insert(ProjectId(count(&row, "id")?), small(&row, "quorum")?);
        }
        // Three streams in unit order, merged by `merge_units`.
        let units = sqlx::query(
            "SELECT id, project, state, target, required, reason FROM units ORDER BY id",
        )
        .fetch(&self.pool)
        .map(|row| -> Result<UnitRow, Error> {
            let row = row?;
            Ok(UnitRow {
                id: count(&row, "id")?,
                project: ProjectId(count(&row, "project")?),
                status: match row.try_get::<i64, _>("state")? {
                    UNIT_VERIFIED => UnitStatus::Verified,
                    UNIT_CANCELLED => UnitStatus::Cancelled,
                    UNIT_FAILED => UnitStatus::Failed(
                        row.try_get::<Option<String>, _>("reason")?
                            .unwrap_or_default(),
                    ),
                    _ => UnitStatus::Pending,
                },
                target: small(&row, "target")?,
                required: small(&row, "required")?,
            })
        });
        let assignments = sqlx::query(
            "SELECT unit, worker, state, failure_kind, reason FROM assignments ORDER BY unit, created_ms, seq",
        )
        .fetch(&self.pool)
        .map(|row| -> Result<(u64, Replica), Error> {
            let row = row?;
            Ok((
                count(&row, "unit")?,
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
                project: ProjectId(count(&row, "project")?),
                unit: UnitId(count(&row, "unit")?),
                digest: digest(row.try_get("digest")?)?,
                fuel: unbits(row.try_get("fuel")?),
                worker: worker_id(row.try_get("worker")?)?,
                salt,
                signature,
            })
        });
        merge_units(&quorum, units, assignments, votes, on_unit).await
    }

    async fn unit_input(&self, unit: UnitId) -> Result<(String, Vec<u8>), Error> {
        let key = i64::try_from(unit.0).map_err(|_| Error::UnknownUnit(unit))?;
        let row = sqlx::query("SELECT name, input FROM units WHERE id = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::UnknownUnit(unit))?;
        Ok((row.try_get("name")?, row.try_get("input")?))
    }

    async fn unit_inputs(&self, units: &[UnitId]) -> Result<Vec<LeasedInput>, Error> {
        let mut out = Vec::with_capacity(units.len());
        for chunk in units.chunks(500) {
            // Ids past BIGINT name no unit: left out, as an unknown id is.
            let ids: Vec<i64> = chunk
                .iter()
                .filter_map(|u| i64::try_from(u.0).ok())
                .collect();
            for row in
                sqlx::query("SELECT id, name, input, signature FROM units WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(&self.pool)
                    .await?
            {
                let signature: Option<Vec<u8>> = row.try_get("signature")?;
                out.push(LeasedInput {
                    unit: UnitId(count(&row, "id")?),
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

    async fn write(&self, writes: &[(Write, u64)]) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        let result = inner(&mut conn, self.lock_pid, writes).await;
        if result.is_err() {
            discard(conn).await;
        }
        return result;

        async fn inner(
            conn: &mut PgConnection,
            lock_pid: i32,
            writes: &[(Write, u64)],
        ) -> Result<(), Error> {
            let mut tx = conn.begin().await?;
            fenced(&mut tx, lock_pid).await?;
            // A group's statements are few and of fixed text (`assign`, `verified`,
            // `trust_rows`): each is a round trip the writer waits for. Consecutive leases
            // go in one statement; trust rows (read by nothing else in the transaction) in
            // one at the end, the last of each winning; a vote for a unit this group
            // verifies later is not written, since that write deletes the unit's votes.
            let mut verified_at: HashMap<UnitId, usize> = HashMap::new();
            for (i, (write, _)) in writes.iter().enumerate() {
                if let Write::Verified { unit, .. } = write {
                    verified_at.insert(*unit, i);
                }
            }
            let mut leases: Vec<(UnitId, WorkerId, i64)> = Vec::new();
            let mut trust: HashMap<(WorkerId, ProjectId), (u32, u32)> = HashMap::new();
            for (i, (write, now)) in writes.iter().enumerate() {
                let now = id(*now)?;
                if !matches!(write, Write::Assignments(_)) && !leases.is_empty() {
                    assign(&mut tx, &leases).await?;
                    leases.clear();
                }
                match write {
                    Write::Assignments(new) => {
                        leases.extend(new.iter().map(|(u, w)| (*u, *w, now)));
                    }
                    Write::Changes(changes) => {
                        for c in changes {
                            match c {
                                Change::Vote { claim }
                                    if verified_at.get(&claim.unit).is_some_and(|&at| at > i) => {}
                                Change::Trust {
                                    worker,
                                    project,
                                    consecutive,
                                    offences,
                                } => {
                                    trust.insert((*worker, *project), (*consecutive, *offences));
                                }
                                c => change(&mut tx, c, now).await?,
                            }
                        }
                    }
                    Write::Verified {
                        unit,
                        output,
                        verified: v,
                        credit,
                    } => {
                        verified(&mut tx, *unit, output, v, credit, now).await?;
                    }
                    Write::Worker(w) => {
                        sqlx::query(
                            "INSERT INTO workers (id, name, peer_addr, cores, registered_ms, account, team, platform, subnet)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, peer_addr = excluded.peer_addr,
                                cores = excluded.cores, account = excluded.account, team = excluded.team,
                                platform = excluded.platform, subnet = excluded.subnet, registered_ms = excluded.registered_ms",
                        )
                        .bind(&w.id.0[..])
                        .bind(&w.name)
                        .bind(&w.peer_addr)
                        .bind(i64::from(w.cores))
                        .bind(now)
                        .bind(&w.account)
                        .bind(&w.team)
                        .bind(&w.platform)
                        .bind(w.subnet.as_deref())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            assign(&mut tx, &leases).await?;
            trust_rows(&mut tx, &trust).await?;
            tx.commit().await?;
            Ok(())
        }
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

    async fn record_verified(
        &self,
        unit: UnitId,
        output: &[u8],
        v: &Verified,
        credit: &[CreditTo],
        now: u64,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        fenced(&mut tx, self.lock_pid).await?;
        // Not settled yet: record it; settled: the transaction is dropped, nothing changes.
        if !verified(&mut tx, unit, output, v, credit, id(now)?).await? {
            return Ok(false);
        }
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
                verified: count(&row, "verified")?,
                workers: small(&row, "workers")?,
            });
        }
        let mut teams = Vec::new();
        for row in sqlx::query(
            "SELECT team AS name, COALESCE(SUM(GREATEST(fuel, 0)), 0)::float8 AS credit,
                COUNT(DISTINCT account) AS accounts
             FROM credit WHERE team <> '' GROUP BY team ORDER BY credit DESC, name",
        )
        .fetch_all(&self.pool)
        .await?
        {
            teams.push(TeamTotal {
                name: row.try_get("name")?,
                credit: credit_of(&row)?,
                accounts: small(&row, "accounts")?,
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
        let Ok(project) = i64::try_from(project.0) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT id, name, output, digest, fuel, settled_ms FROM units
             WHERE project = $1 AND state = $2 AND name > $3 ORDER BY name LIMIT $4",
        )
        .bind(project)
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
        let Ok(project) = i64::try_from(project.0) else {
            return Ok(Vec::new());
        };
        // Ids past i64 name no stored unit.
        let ids: Vec<i64> = units
            .iter()
            .take(super::MAX_OUTPUTS_OF)
            .filter_map(|u| i64::try_from(u.0).ok())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, name, output, digest, fuel, settled_ms FROM units
             WHERE project = $1 AND state = $2 AND id = ANY($3) ORDER BY name",
        )
        .bind(project)
        .bind(UNIT_VERIFIED)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        self.stored_outputs(rows).await
    }

    async fn unit_workers(&self, unit: UnitId) -> Result<Vec<WorkerId>, Error> {
        let Ok(unit) = i64::try_from(unit.0) else {
            return Ok(Vec::new());
        };
        sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT worker FROM assignments WHERE unit = $1 UNION SELECT worker FROM credit WHERE unit = $1",
        )
        .bind(unit)
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
        let project = id(project.0)?;
        // Units are inserted in the order given, so id order is the submitted order.
        let mut rows = sqlx::query("SELECT name, input FROM units WHERE project = $1 ORDER BY id")
            .bind(project)
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
        let project = id(project.0)?;
        let rows = sqlx::query(
            "SELECT name, reason FROM units WHERE project = $1 AND state = $2 ORDER BY name",
        )
        .bind(project)
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
        sqlx::query(
            "UPDATE projects SET aggregate_done = 1, aggregate = $1, aggregate_error = $2 WHERE id = $3",
        )
        .bind(bytes)
        .bind(error)
        .bind(id(project.0)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn aggregate(
        &self,
        project: ProjectId,
    ) -> Result<Option<Result<Vec<u8>, String>>, Error> {
        let key = i64::try_from(project.0).map_err(|_| Error::UnknownProject(project))?;
        let row = sqlx::query(
            "SELECT aggregate_done, aggregate, aggregate_error FROM projects WHERE id = $1",
        )
        .bind(key)
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
        let mut tx = self.pool.begin().await?;
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
    use super::*;

    #[test]
    fn redact_drops_the_password_and_nothing_else() {
        for (url, shown) in [
            (
                "postgres://fallow:s3cret@db:5432/fallow",
                "postgres://fallow@db:5432/fallow",
            ),
            (
                "postgresql://fallow@db/fallow",
                "postgresql://fallow@db/fallow",
            ),
            (
                "postgres://u:p@h/d?sslmode=disable&password=x",
                "postgres://u@h/d?sslmode=disable",
            ),
            ("postgres://h:5432/d?password=x", "postgres://h:5432/d"),
            ("postgres://u:p@h", "postgres://u@h"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    /// A certificate authority and a server certificate for 127.0.0.1 it signed: (CA
    /// PEM, server certificate PEM, server key PEM).
    fn authority_and_server() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fallow test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let server_key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        (ca.pem(), server.pem(), server_key.serialize_pem())
    }

    #[tokio::test]
    async fn the_database_connection_is_encrypted_and_verified_when_the_url_asks() {
        let (ca, cert, key) = authority_and_server();
        let pg = super::super::testpg::TestPg::start_tls(&cert, &key);
        let dir = tempfile::tempdir().expect("tempdir");
        // The database's URL asking for TLS checked against the root `pem`.
        let verified_by = |name: &str, pem: &str| {
            let root = dir.path().join(name);
            std::fs::write(&root, pem).expect("write the root");
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                pg.url(),
                root.display()
            )
        };
        let store = PostgresStore::connect(&verified_by("root.pem", &ca))
            .await
            .expect("connects over TLS");
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .expect("pg_stat_ssl");
        assert!(encrypted, "the pool's connection is not encrypted");
        drop(store);
        // A server whose certificate another authority signed is refused, in words.
        let (other, _, _) = authority_and_server();
        let refused = PostgresStore::connect(&verified_by("other.pem", &other))
            .await
            .expect_err("a server the root did not sign");
        let said = refused.to_string();
        assert!(
            said.contains("cannot connect") && said.contains("sslrootcert="),
            "{said}"
        );
        assert!(said.to_lowercase().contains("certificate"), "{said}");
    }

    #[tokio::test]
    async fn a_coordinator_that_lost_its_lock_writes_nothing_even_over_new_connections() {
        let pg = super::super::testpg::TestPg::start();
        let url = pg.url();
        let first = PostgresStore::connect(&url)
            .await
            .expect("the first coordinator");
        first
            .write(&[(Write::Changes(Vec::new()), 1)])
            .await
            .expect("the holder writes");
        // Its lock session dies (that one connection cut, say) while its pool lives on.
        let mut admin = PgConnection::connect(&url).await.expect("admin session");
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(first.lock_pid)
            .execute(&mut admin)
            .await
            .expect("end the lock's session");
        // Another coordinator takes the database over.
        let second = PostgresStore::connect(&url)
            .await
            .expect("the second coordinator takes the lock");
        // The first one's writes are refused, even over a fresh pool connection (its old
        // ones may be gone by now, as after the new holder's fence).
        first.pool.close().await;
        let first = PostgresStore {
            pool: PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("a new pool"),
            ..first
        };
        let refused = first
            .write(&[(Write::Changes(Vec::new()), 2)])
            .await
            .expect_err("a fenced coordinator writes");
        assert!(matches!(refused, Error::Fenced), "{refused}");
        let refused = first
            .insert_units(ProjectId(1), &[("u".into(), Vec::new())], &[[0; 64]], 1, 1)
            .await
            .expect_err("a fenced coordinator adds units");
        assert!(matches!(refused, Error::Fenced), "{refused}");
        second
            .write(&[(Write::Changes(Vec::new()), 3)])
            .await
            .expect("the new holder writes");
    }
}
