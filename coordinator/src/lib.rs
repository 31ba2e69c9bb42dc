//! Fallow's coordinator: it publishes work units, leases them to workers, checks the quorum
//! certificates workers assemble from each other's signed claims, and aggregates verified
//! results. It never runs or compares outputs itself (only a project's reducer, once, at
//! the end).
//!
//! # Layout
//! - [`scheduler`]: the sans-IO state machine (leases, replicas, disputes, failures).
//! - [`store`]: durable state behind the [`store::Store`] trait; [`store::sqlite`] is the
//!   embedded default, [`store::postgres`] keeps it in PostgreSQL (`--database`); both
//!   share [`store::schema`].
//! - `service`: the gRPC boundary (the only module here that touches `proto` types) and the
//!   async shell that drives the scheduler and persists its changes.
//! - `reducer`: runs a finished project's reducer in the sandbox.
//! - [`status`]: the one place a project's status is built from the scheduler.
//! - [`fleet`]: what the workers are doing (running, suspended and why, idle, offline)
//!   and the sentences for units no online worker may take, for status and the dashboard.
//! - `dashboard`: the read-only web dashboard, JSON API and `/metrics`, served on the same
//!   port as gRPC; [`mosaic`] paints Mandelbrot tiles into a picture.
//! - [`tls`]: the certificate served off loopback (self-signed on first start).
//! - [`deployment`]: on PostgreSQL, the key, certificate and tokens kept in the database,
//!   so every coordinator on it (active, then a standby taking over) is the same deployment.
//! - `body_limit`: request size caps per method (uploads large, everything else small).
//! - `modules`: `GetModule` in bounded memory (a shared cache, a send budget, turns per
//!   caller address). Connections themselves are bounded by the `connections` crate.
//! - [`serve`]: start a coordinator on a listener until a shutdown signal.

#![forbid(unsafe_code)]

pub mod auth;
mod body_limit;
mod dashboard;
pub mod deployment;
pub mod fleet;
pub mod forward;
mod modules;
mod reducer;
mod relay;
pub mod scheduler;
mod service;
pub mod status;
pub mod store;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{ProjectId, UnitId, WorkerId};

pub use dashboard::mosaic;
pub use service::CoordinatorService;

/// The one error type of the `coordinator` crate. Unless a variant says otherwise, nothing
/// was changed when it is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed; the operation's transaction was rolled back.
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    /// A setting is out of range; nothing was opened or served. `flag` names the
    /// `fallow coordinator` flag (or config field) and its value, `message` the rule.
    #[error("{flag}: {message}")]
    Config {
        /// The flag and the value given, e.g. `--lease-seconds 0`.
        flag: String,
        /// What the value must be, e.g. `must be at least 1`.
        message: String,
    },
    /// The data directory cannot be used.
    #[error("data directory {}: {message}", path.display())]
    DataDir {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The database holds something this version cannot read.
    #[error("database holds invalid data: {0}")]
    Corrupt(String),
    /// The store is gone or damaged (missing or empty in a directory that held one, not a
    /// database, failing its quick check); nothing was opened or changed.
    #[error(
        "{}: the store {problem}. Restore fallow.db from a backup (with the coordinator stopped), \
         or start with an empty store, losing its projects: `fallow coordinator --start-afresh` \
         (what is left is kept aside as fallow.db.aside-TIME)",
        path.display()
    )]
    StoreDamaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Stored outputs of verified units no longer match the digests they were verified
    /// with (changed on disk). They were not served; the units were sent back for
    /// verification.
    #[error("{}", corrupt_message(.0))]
    CorruptOutputs(Vec<store::CorruptOutput>),
    /// No such unit.
    #[error("unknown unit {0}")]
    UnknownUnit(UnitId),
    /// No such project.
    #[error("unknown project {0}")]
    UnknownProject(ProjectId),
    /// No module with this digest in the store.
    #[error("no module with digest {}", .0.to_hex())]
    UnknownModule(protocol::Digest),
    /// The coordinator is shutting down: the request was not carried out (it may be
    /// tried again once the coordinator is back).
    /// A write of a coordinator that no longer holds its PostgreSQL database's coordinator
    /// lock: another coordinator may schedule the database now. Nothing was written; the
    /// coordinator stops serving (the lock's loss is noticed within seconds).
    #[error(
        "this coordinator no longer holds the database's coordinator lock (another \
         coordinator may schedule it now), so nothing was written; try another coordinator \
         of the deployment"
    )]
    Fenced,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The data directory's disk is full: the change was refused before the scheduler
    /// was touched. What was accepted before is kept and written once space is freed.
    #[error(
        "the coordinator's disk is full: it accepts no changes until space is freed in its \
         data directory (what it accepted before is kept); retry later"
    )]
    DiskFull,
    /// The disk is full and the latest changes are not on disk yet: counts are refused
    /// rather than reported before they are durable. Nothing was changed.
    #[error(
        "the coordinator's disk is full: its latest changes are not on disk yet, so it \
         reports no counts until space is freed in its data directory"
    )]
    NotDurable,
    /// Too many accepted changes wait to be written (load shedding,
    /// [`CoordinatorConfig::max_pending_writes`]); the request changed nothing.
    #[error(
        "the coordinator is overloaded: {pending} accepted changes wait to be written; retry shortly"
    )]
    Overloaded {
        /// Changes waiting for the writer.
        pending: usize,
    },
    /// The data directory's disk has no room for a submitted project (twice its size plus
    /// a reserve for results); nothing was created.
    #[error(
        "the coordinator's disk is too full for this project: {free_mib} MiB free in {}, it \
         needs {need_mib} MiB (twice the project's {size_mib} MiB plus {reserve_mib} MiB kept \
         for results); nothing was created",
        dir.display()
    )]
    NoRoom {
        /// Free space on the data directory's disk.
        free_mib: u64,
        /// The data directory.
        dir: PathBuf,
        /// What the project needs.
        need_mib: u64,
        /// The project's size.
        size_mib: u64,
        /// The reserve kept for results.
        reserve_mib: u64,
    },
    /// A worker key called more often than
    /// [`CoordinatorConfig::worker_requests_per_second`] allows.
    #[error("worker {worker} makes more than {rate} requests per second; slow down")]
    RateLimited {
        /// The worker.
        worker: WorkerId,
        /// Its allowed rate.
        rate: u32,
    },
    /// Too many worker registrations from one network
    /// ([`CoordinatorConfig::registrations_per_minute`]); nothing was registered.
    #[error("more than {per_minute} worker registrations a minute from {network}; retry later")]
    RegistrationsLimited {
        /// The /24 or /48 they come from.
        network: String,
        /// The allowed rate.
        per_minute: u32,
    },
    /// Too many module downloads in progress from one address (`GetModule`).
    #[error(
        "{limit} module downloads already in progress from {address}; retry when they are done"
    )]
    DownloadsInProgress {
        /// The most in progress at once.
        limit: usize,
        /// The caller's address.
        address: String,
    },
    /// Too many long-lived streams of one kind (follow streams, data downloads) open from
    /// one address.
    #[error("at most {max} {what} may be open at once from one address; wait for one to end")]
    TooManyStreams {
        /// Which streams.
        what: &'static str,
        /// The most per address.
        max: usize,
    },
    /// A request body over its method's size cap; it was cut off, unread.
    #[error("a {method} request may be at most {limit} bytes; this one is larger")]
    TooLarge {
        /// The gRPC method ("gRPC" when unknown).
        method: String,
        /// Its cap in bytes.
        limit: usize,
    },
    /// A worker, account or team name that is empty, too long, padded with spaces or
    /// holds control characters; nothing was registered.
    #[error(
        "{what} must be 1 to {max} printable characters without surrounding spaces (got {value:?})"
    )]
    BadName {
        /// Which name ("worker name", "account", "team").
        what: &'static str,
        /// The name given.
        value: String,
        /// The longest allowed.
        max: usize,
    },
    /// A registering worker meters guests' fuel by other rules than this coordinator.
    #[error(
        "this worker meters fuel by rules version {worker} and this coordinator by version \
         {ours} (0: a worker from before Fallow metered fuel by rewriting modules); fuel is \
         part of what a quorum agrees on, so every worker of a deployment must meter alike: \
         run the same Fallow release on the worker and the coordinator"
    )]
    FuelRules {
        /// The worker's.
        worker: u32,
        /// This coordinator's (`sandbox::meter::VERSION`).
        ours: u32,
    },
    /// A stored module could not be rewritten to meter its own fuel (`GetModule` with
    /// `fuel_rules`); wasmtime validated it when it was submitted, so this is a bug.
    #[error("cannot serve the module metered: {0}")]
    Meter(String),
    /// A `RelayExchange` the coordinator will not forward (not the caller's own messages,
    /// or beyond a board's limits).
    #[error("RelayExchange refused: {0}")]
    BadRelay(String),
    /// `RelayExchange` named a board that is not a live worker with a vouched peer address.
    #[error(
        "board {0} is not a live worker with a peer address this coordinator vouched for: \
         choose a unit's boards from the peer list RegisterWorker and Heartbeat give"
    )]
    UnknownBoard(protocol::WorkerId),
    /// The relay could not reach a board.
    #[error("board {board} cannot be reached through the coordinator: {why}")]
    BoardUnreachable {
        /// The board's worker.
        board: protocol::WorkerId,
        /// What failed.
        why: String,
    },
    /// A worker's platform string is too long or holds control characters.
    #[error("platform must be at most {max} printable characters")]
    BadPlatform {
        /// The longest allowed.
        max: usize,
    },
    /// A registering worker's peer address is not an IP address and port.
    #[error(
        "peer_addr {0:?} is not host:port (an IP address and a port), or empty for a worker \
         that accepts no connections"
    )]
    BadPeerAddr(String),
    /// A work request lists more submitter keys than a worker may.
    #[error("WorkRequest.accept_submitters: more than {0} keys")]
    TooManySubmitters(usize),
    /// A submitted module or reducer is not a module the sandbox accepts; nothing was
    /// created.
    #[error("{field}: {error}")]
    BadWasm {
        /// "wasm" or "[reduce].wasm".
        field: &'static str,
        /// Why the sandbox refused it.
        error: sandbox::Error,
    },
    /// A data upload or download request was malformed, or the uploaded bytes did not
    /// hash to the digest named; nothing was stored.
    #[error("{0}")]
    BadData(String),
    /// A `SubmitCertificates` call that is too large or mixes submitters.
    #[error("SubmitCertificates: {0}")]
    BadBatch(String),
    /// A data file named by a submission or a download is not held here (never uploaded,
    /// or its upload did not finish); nothing was created.
    #[error(
        "data file {0} is not on this coordinator: upload it first with PutData (`fallow submit` does)"
    )]
    DataNotHeld(String),
    /// The task checking a submitted project's modules panicked; nothing was created.
    #[error("module check panicked: {0}")]
    CheckPanicked(String),
    /// A worker call without the `fallow-call` signature header.
    #[error(
        "{method}: no {} header: worker calls must be signed by the worker key they name (a \
         worker older than this coordinator? upgrade it)",
        protocol::call::CALL_HEADER
    )]
    UnsignedCall {
        /// The gRPC method.
        method: &'static str,
    },
    /// A worker call whose signature header is unreadable or does not verify.
    #[error("{method}: {problem}")]
    BadCall {
        /// The gRPC method.
        method: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A worker call whose stamp was used before or is off the coordinator's clock;
    /// refused with the clock (`now_ms`) so the worker can correct itself and retry.
    #[error("worker {worker}: {refusal}")]
    StaleCall {
        /// The worker.
        worker: WorkerId,
        /// Why the stamp was refused.
        refusal: String,
        /// The coordinator's clock (Unix ms), sent in the `fallow-now` header.
        now_ms: u64,
    },
    /// A call without a valid token: a submit token for project calls, an enrollment for
    /// worker calls when enrollment is required (see [`auth`]). The message says how to
    /// get one.
    #[error("{0}")]
    NotAuthorized(String),
    /// A worker that never registered (or registered with another coordinator).
    #[error("unknown worker {0}: register first")]
    UnknownWorker(String),
    /// The worker does not hold a lease on the unit (it expired or was never given).
    #[error("unit {unit} is not leased to this worker")]
    NotLeased {
        /// The unit.
        unit: UnitId,
    },
    /// The unit already failed; results for it are no longer accepted.
    #[error("unit {unit} already failed: {reason}")]
    AlreadyFailed {
        /// The unit.
        unit: UnitId,
        /// Why it failed.
        reason: String,
    },
    /// A dispute that proves nothing (agreeing, foreign or forged claims).
    #[error("dispute rejected: {0}")]
    BadDispute(String),
    /// The unit's project was cancelled; results for it are no longer accepted.
    #[error("unit {unit} was cancelled with its project: its result is no longer wanted")]
    UnitCancelled {
        /// The unit.
        unit: UnitId,
    },
    /// A control call signed by a key other than the project's submitter; nothing changed.
    #[error(
        "project {project} was submitted by key {submitter}: only that key may control it \
         (this call was signed by {key}; pass the submitter's key file with --key)"
    )]
    NotSubmitter {
        /// The project.
        project: ProjectId,
        /// Its submitter.
        submitter: protocol::SubmitterKey,
        /// Who signed the call.
        key: protocol::SubmitterKey,
    },
    /// A control call for a project from before projects were signed: it has no
    /// submitter key, so nobody may control it. Nothing changed.
    #[error(
        "project {0} was submitted before projects were signed: it has no submitter key, so \
         nobody can control it"
    )]
    Uncontrollable(ProjectId),
    /// A control call that does not apply to the project as it stands (cancelled, nothing
    /// to retry, no reducer, …); the text says why and what to do. Nothing changed.
    #[error("cannot {action} project {project}: {reason}")]
    ControlRefused {
        /// The verb (`pause`, `retry`, …).
        action: &'static str,
        /// The project.
        project: ProjectId,
        /// Why, and what to do instead.
        reason: String,
    },
    /// An extension names a unit the project already has; nothing was added.
    #[error(
        "project {project} already has a unit named {name:?}: units added by `fallow extend` \
         need new names; nothing was added"
    )]
    DuplicateUnit {
        /// The project.
        project: ProjectId,
        /// The unit name taken.
        name: String,
    },
    /// Malformed message, bad signature or invalid certificate.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// A submitted module was refused.
    #[error("module refused: {0}")]
    Module(#[from] sandbox::Error),
    /// A unit output is not a picture tile (the dashboard then draws no picture).
    #[error("not a picture tile: {0}")]
    BadTile(String),
    /// A TLS certificate or key file cannot be used (or made); nothing was served.
    #[error("{}: {message}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The PostgreSQL database of `--database` cannot be used (unreachable, refused, used
    /// by another coordinator, or written by a newer Fallow); nothing was changed in it.
    #[error("database {url}: {message}")]
    Database {
        /// The URL, without its password ([`store::postgres::redact`]).
        url: String,
        /// What is wrong, and the way out where there is one.
        message: String,
    },
    /// A backup of the embedded store cannot be written to this file (it exists, or the
    /// write failed); the store was not changed.
    #[error("backup {}: {message}", path.display())]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// "the stored output of verified unit "u7" (id 12) changed on disk …".
fn corrupt_message(units: &[store::CorruptOutput]) -> String {
    let mut names: Vec<String> = units.iter().take(5).map(ToString::to_string).collect();
    if units.len() > 5 {
        names.push(format!("and {} more", units.len() - 5));
    }
    format!(
        "the stored output{} of verified {} changed on disk since {} verified (no longer \
         matching {} digest): not served; sent back to be verified again",
        if units.len() == 1 { "" } else { "s" },
        names.join(", "),
        if units.len() == 1 {
            "it was"
        } else {
            "they were"
        },
        if units.len() == 1 { "its" } else { "their" },
    )
}

impl Error {
    /// Whether the database failed for want of disk space (SQLITE_FULL, or ENOSPC from
    /// the file system): nothing was changed, and the same write succeeds once space is
    /// freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Store(sqlx::Error::Database(d)) => {
                // SQLITE_FULL, or PostgreSQL's disk_full (SQLSTATE 53100).
                d.code().is_some_and(|c| c == "13" || c == "53100")
                    || d.message().contains("disk is full")
            }
            Error::Store(sqlx::Error::Io(e)) => {
                e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
            }
            _ => false,
        }
    }
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where the database lives. Default `./fallow-data`.
    pub data_dir: PathBuf,
    /// How long a lease lasts without a heartbeat before the unit is given to someone else.
    /// Default 120 s. Workers heartbeat every `lease / 4`.
    pub lease: Duration,
    /// Largest gRPC message accepted (project uploads, certificates). Default 256 MiB.
    pub max_message_bytes: usize,
    /// Never give two replicas of a unit to workers in the same /24 (IPv4) or /48 (IPv6)
    /// network; workers on loopback are exempt. Default true.
    pub distinct_subnets: bool,
    /// Most requests per second one worker (by key) may make, sustained; twice as many may
    /// come in a burst. Beyond it requests are refused with `RESOURCE_EXHAUSTED`. An honest
    /// worker makes a few per second. 0: no limit. Default 100.
    pub worker_requests_per_second: u32,
    /// Most worker registrations a minute from one network (the /24 or /48 they connect
    /// from; loopback exempt), after a burst of 600. Keys are free to make: this bounds how
    /// fast one host can add workers. 0: no limit. Default 60.
    pub registrations_per_minute: u32,
    /// Most accepted changes that may wait to be written to the store; beyond it requests
    /// that change state are refused with `RESOURCE_EXHAUSTED` (load shedding) instead of
    /// queueing without bound. Default 65,536.
    pub max_pending_writes: usize,
    /// Take only enrolled workers: every worker call must carry a token from
    /// `DATA/enrollments` (see [`auth`]). Default false (any worker with a key).
    pub require_enrollment: bool,
    /// Serve gRPC and the dashboard over TLS with this certificate. Default `None`: plain
    /// HTTP, for loopback (`fallow coordinator` turns TLS on for any other address).
    pub tls: Option<tls::TlsIdentity>,
    /// Most connections open at once from one address (an IPv4 address or an IPv6 /64);
    /// past it a new connection is closed as soon as it is accepted. A worker or the CLI
    /// needs one; raise it for a lab of more workers behind one NAT address. Loopback is
    /// exempt unless `limit_loopback`. 0: no cap. Default 256.
    pub max_connections_per_address: usize,
    /// A connection with no request in flight for this long is closed (silent ones,
    /// slowloris ones that never finish their headers, HTTP/2 ones that only answer
    /// pings); clients reconnect when they next call. Workers call at least every
    /// `lease / 4`. Must be more than zero. Default 300 s.
    pub idle_timeout: Duration,
    /// Apply the per-address limits (`max_connections_per_address`, and the module
    /// downloads one address may have in progress) to loopback clients too. Default
    /// false: a test fleet, or a reverse proxy on the same host, connects from loopback.
    pub limit_loopback: bool,
    /// Limit each worker's unfinished leases by its record (`scheduler::UNFINISHED_BASE`,
    /// plus one per result confirmed by another account), so an account's share of the
    /// leases follows its record rather than how fast it asks. Default true; only load
    /// generators whose simulated workers lease many units and answer later turn it off.
    pub limit_unfinished_leases: bool,
    /// When the store is missing from a data directory that held one, empty, or damaged:
    /// set what is left aside and start with an empty store instead of refusing to start
    /// (see [`store::sqlite::OpenOptions`]). Default false.
    pub start_afresh: bool,
    /// The PostgreSQL database to keep the store in (`postgres://USER@HOST:PORT/DB` or
    /// `postgresql://…`; a password may be given in the URL or by `PGPASSWORD`). Default
    /// `None`: the embedded SQLite store `data_dir/fallow.db`. Either way `data_dir` keeps
    /// the coordinator's key, TLS certificate and tokens; on PostgreSQL `fallow
    /// coordinator` keeps the originals in the database ([`deployment`]).
    pub database: Option<String>,
    /// Test-only fault injection: hand every unit out with one byte of its input changed,
    /// as a compromised coordinator would (workers must refuse to run it). Default false.
    pub tamper_inputs: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            data_dir: PathBuf::from("fallow-data"),
            lease: Duration::from_secs(120),
            max_message_bytes: 256 << 20,
            distinct_subnets: true,
            worker_requests_per_second: 100,
            registrations_per_minute: 60,
            max_pending_writes: 65_536,
            require_enrollment: false,
            tls: None,
            max_connections_per_address: connections::Limits::default().per_address,
            idle_timeout: connections::Limits::default().idle_timeout,
            limit_loopback: false,
            limit_unfinished_leases: true,
            start_afresh: false,
            database: None,
            tamper_inputs: false,
        }
    }
}

impl CoordinatorConfig {
    /// Checks the settings, naming the bad one ([`Error::Config`]).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |flag: String, message: &str| {
            Err(Error::Config {
                flag,
                message: message.into(),
            })
        };
        if self.lease < Duration::from_secs(1) {
            return bad(
                format!("--lease-seconds {}", self.lease.as_secs()),
                "must be at least 1",
            );
        }
        if self.max_message_bytes < 1 << 20 {
            // No flag sets it: only code that builds the config does.
            return bad(
                format!("max_message_bytes {}", self.max_message_bytes),
                "must be at least 1 MiB (1048576)",
            );
        }
        if self.max_pending_writes == 0 {
            return bad("max_pending_writes 0".into(), "must be at least 1");
        }
        if self.idle_timeout.is_zero() {
            return bad("--idle-timeout-seconds 0".into(), "must be at least 1");
        }
        if let Some(url) = &self.database {
            let flag = format!("--database {}", store::postgres::redact(url));
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return bad(flag, "must be a postgres:// or postgresql:// URL");
            }
            if self.start_afresh {
                return bad(
                    format!("--start-afresh with {flag}"),
                    "--start-afresh applies to the embedded SQLite store only",
                );
            }
        }
        Ok(())
    }

    /// The limits the API's connections are served with.
    pub fn connection_limits(&self) -> connections::Limits {
        connections::Limits {
            per_address: self.max_connections_per_address,
            exempt_loopback: !self.limit_loopback,
            idle_timeout: self.idle_timeout,
            ..connections::Limits::default()
        }
    }
}

/// Runs a coordinator on `listener` until `shutdown` completes: opens (or creates) the
/// store (in `config.database`, or under `config.data_dir`), resumes every project in it,
/// and serves the gRPC API and, on the same port over HTTP/1.1, the read-only dashboard
/// (`http://ADDR/`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Some(url) = &config.database {
        let store = store::postgres::PostgresStore::connect(url).await?;
        return serve_with(listener, store, config, shutdown).await;
    }
    let store = store::sqlite::SqliteStore::open_with(
        &config.data_dir,
        store::sqlite::OpenOptions {
            start_afresh: config.start_afresh,
        },
    )
    .await?;
    serve_with(listener, store, config, shutdown).await
}

/// Like [`serve`], with a store the caller opened (so it can report a locked or
/// incompatible data directory before it announces its address).
pub async fn serve_with<S: store::Store>(
    listener: tokio::net::TcpListener,
    store: S,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    service::run(listener, store, config, shutdown).await
}

/// Serves `listener` through `switch` until `shutdown`: first as an edge of the deployment
/// (every call forwarded to its scheduling coordinator, `forward`), then, after
/// [`promote`], as the scheduling coordinator itself. `stop` is cancelled when the
/// shutdown begins.
pub async fn serve_switched(
    listener: tokio::net::TcpListener,
    config: &CoordinatorConfig,
    switch: &forward::Switch,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    service::listen(
        listener,
        config,
        switch.router(config.max_message_bytes),
        shutdown,
        stop,
    )
    .await
}

/// A coordinator that schedules, promoted from an edge ([`promote`]).
pub struct Scheduling(service::Prepared);

impl Scheduling {
    /// Stops its background tasks, once the listener has stopped.
    pub async fn wind_down(self) {
        self.0.wind_down().await;
    }
}

/// Loads `store` (whose lock this coordinator now holds) and makes `switch` serve this
/// coordinator's own service from now on; its background tasks stop when `stop` is
/// cancelled (the listener's shutdown).
pub async fn promote<S: store::Store>(
    switch: &forward::Switch,
    store: S,
    config: &CoordinatorConfig,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Scheduling, Error> {
    config.validate()?;
    let prepared = service::prepare(store, config).await?;
    switch.serve(prepared.router.clone());
    let cancel = prepared.cancel.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        cancel.cancel();
    });
    Ok(Scheduling(prepared))
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fallow.db")
}

/// Milliseconds since the Unix epoch: the scheduler's `now`.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad setting is a config error naming the flag and its value, never the data dir.
    #[test]
    fn validate_names_the_flag() {
        let check = |config: CoordinatorConfig, expected: &str| {
            let err = config.validate().expect_err("accepted");
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
            assert_eq!(err.to_string(), expected);
        };
        check(
            CoordinatorConfig {
                lease: Duration::ZERO,
                ..Default::default()
            },
            "--lease-seconds 0: must be at least 1",
        );
        check(
            CoordinatorConfig {
                idle_timeout: Duration::ZERO,
                ..Default::default()
            },
            "--idle-timeout-seconds 0: must be at least 1",
        );
        check(
            CoordinatorConfig {
                max_pending_writes: 0,
                ..Default::default()
            },
            "max_pending_writes 0: must be at least 1",
        );
        check(
            CoordinatorConfig {
                max_message_bytes: 1000,
                ..Default::default()
            },
            "max_message_bytes 1000: must be at least 1 MiB (1048576)",
        );
        check(
            CoordinatorConfig {
                database: Some("mysql://root:secret@db/fallow".into()),
                ..Default::default()
            },
            "--database mysql://root@db/fallow: must be a postgres:// or postgresql:// URL",
        );
        check(
            CoordinatorConfig {
                database: Some("postgres://fallow@db/fallow".into()),
                start_afresh: true,
                ..Default::default()
            },
            "--start-afresh with --database postgres://fallow@db/fallow: --start-afresh \
             applies to the embedded SQLite store only",
        );
        assert!(CoordinatorConfig::default().validate().is_ok());
        for url in ["postgres://fallow@db:5432/fallow", "postgresql://u:p@db/f"] {
            let config = CoordinatorConfig {
                database: Some(url.into()),
                ..Default::default()
            };
            assert!(config.validate().is_ok(), "{url}");
        }
    }
}
