//! The gRPC boundary and the async shell around the scheduler. This is the only module of
//! the coordinator that touches `proto` types: requests are converted to domain types
//! (rejecting malformed ones) before anything else sees them, and [`to_status`] is the one
//! place domain errors become gRPC statuses.
//!
//! Every RPC that changes state takes the one state lock, asks the scheduler (in memory, no
//! I/O), queues what changed to the store writer, releases the lock, and answers only once
//! the writer has committed it: an acknowledged result is on disk. The writer applies the
//! changes of every request that arrived meanwhile in one transaction (group commit), in
//! the order the lock gave them. Claim signatures are checked before the lock is taken.
//!
//! # Layout
//! - `handlers`: the tonic handlers (`impl Coordinator`) and their request checks.
//! - `certificates`: `SubmitCertificate` and the batched `SubmitCertificates`.
//! - `control`: project control by its submitter (cancel, pause, resume, retry, extend,
//!   reduce), authenticated by the submitter key.
//! - `data`: project data files: the chunked `PutData` upload and `GetData` download.
//! - `projects`: submission checks against the state (disk room, earlier duplicates).
//! - `status`: `ListProjects`' answer and the dashboard's capture.
//! - `registry`: the worker registry, the request and registration limiters, call
//!   freshness, peer sampling and proving.
//! - `writer`: the group-commit writer and the path every change takes to it.
//! - `tasks`: lease expiry, reducer runs and re-verification in the background.
//! - `server`: loading the store and serving gRPC and the dashboard on one listener.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use protocol::call::ReplayGuard;
use protocol::{ProjectId, UnitId, WorkerId};
use sandbox::Sandbox;
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::Error;
use crate::dashboard::Dashboard;
use crate::scheduler::Scheduler;
use crate::store::Store;

use registry::{RegistrationLimiter, WorkerEntry};
pub(crate) use server::{Prepared, listen, prepare, run};
use writer::Job;

mod certificates;
mod control;
mod data;
mod handlers;
mod projects;
mod registry;
mod server;
mod status;
mod tasks;
mod writer;

/// The coordinator's gRPC service; cheap to clone.
pub struct CoordinatorService<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for CoordinatorService<S> {
    fn clone(&self) -> Self {
        CoordinatorService {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    store: Arc<S>,
    /// The store writer's queue (see [`writer`]).
    writes: tokio::sync::mpsc::UnboundedSender<Job>,
    /// Set by the writer while commits fail for want of disk space (see [`writer`]).
    disk_full: Arc<AtomicBool>,
    /// Jobs queued to the writer and not yet answered, and the most allowed.
    pending_writes: Arc<AtomicUsize>,
    max_pending_writes: usize,
    /// Requests per worker key (`worker_requests_per_second`); `None` when off.
    limiter: Option<governor::DefaultKeyedRateLimiter<WorkerId>>,
    /// Registrations per network (`registrations_per_minute`).
    registrations: RegistrationLimiter,
    worker_rate: u32,
    /// The data directory, whose free space is checked before a project is accepted.
    data_dir: PathBuf,
    sandbox: Arc<Sandbox>,
    /// The coordinator's own key (`DATA/coordinator.key`): it vouches for workers with it.
    key: protocol::Identity,
    state: Mutex<State>,
    lease_ms: u64,
    /// [`CoordinatorConfig::tamper_inputs`] (test-only).
    tamper_inputs: bool,
    tasks: TaskTracker,
    reducing: std::sync::Mutex<HashSet<ProjectId>>,
    /// Hooks and snapshots of the read-only dashboard; handlers only bump its counters.
    dashboard: Arc<Dashboard>,
    /// `GetModule`'s cache and bounds (see [`crate::modules`]).
    modules: crate::modules::Modules,
    /// `RelayExchange`'s channels to boards (see [`crate::relay`]).
    relay: crate::relay::Relay,
    /// Follow streams open per address (`projects::MAX_FOLLOWERS_PER_ADDRESS`).
    followers: projects::StreamCap,
    /// Data downloads in progress per address (`projects::MAX_DOWNLOADS_PER_ADDRESS`).
    downloads: projects::StreamCap,
}

struct State {
    sched: Scheduler,
    workers: HashMap<WorkerId, WorkerEntry>,
    peers_version: u64,
    /// Workers that registered with a peer address, for sampling.
    listed: Vec<WorkerId>,
    /// Draws peer samples.
    rng: protocol::rng::SplitMix64,
    /// The call stamps workers used lately: each is accepted once (`protocol::call`).
    calls: ReplayGuard,
    /// Units already logged as waiting for a worker of another account (logged again
    /// only after they stopped waiting).
    waiting_logged: HashSet<UnitId>,
}

/// The one mapping from domain errors to gRPC statuses: every `Status` the coordinator
/// answers with is made here (the auth and body-size layers call it too), with the
/// message of the error's `Display`.
pub(crate) fn to_status(e: Error) -> Status {
    match &e {
        Error::Protocol(_) | Error::Module(_) | Error::BadDispute(_) | Error::BadData(_) => {
            Status::invalid_argument(e.to_string())
        }
        Error::UnknownUnit(_) | Error::UnknownProject(_) | Error::UnknownModule(_) => {
            Status::not_found(e.to_string())
        }
        Error::BadName { .. }
        | Error::BadPlatform { .. }
        | Error::BadPeerAddr(_)
        | Error::TooManySubmitters(_)
        | Error::BadWasm { .. }
        | Error::BadRelay(_)
        | Error::BadBatch(_) => Status::invalid_argument(e.to_string()),
        Error::UnknownBoard(_) => Status::not_found(e.to_string()),
        Error::BoardUnreachable { .. } => Status::unavailable(e.to_string()),
        Error::DiskFull
        | Error::NotDurable
        | Error::Overloaded { .. }
        | Error::NoRoom { .. }
        | Error::RateLimited { .. }
        | Error::RegistrationsLimited { .. }
        | Error::DownloadsInProgress { .. }
        | Error::TooManyStreams { .. }
        | Error::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        Error::UnsignedCall { .. } | Error::BadCall { .. } | Error::NotAuthorized(_) => {
            Status::unauthenticated(e.to_string())
        }
        Error::StaleCall { now_ms, .. } => {
            let mut status = Status::unauthenticated(e.to_string());
            // The coordinator's clock, so the worker can correct its own and retry.
            if let Ok(value) = now_ms.to_string().parse() {
                status
                    .metadata_mut()
                    .insert(protocol::call::NOW_HEADER, value);
            }
            status
        }
        Error::ShuttingDown | Error::Fenced => Status::unavailable(e.to_string()),
        Error::CorruptOutputs(_) => Status::data_loss(e.to_string()),
        Error::UnknownWorker(_)
        | Error::NotLeased { .. }
        | Error::AlreadyFailed { .. }
        | Error::DataNotHeld(_)
        | Error::FuelRules { .. }
        | Error::UnitCancelled { .. }
        | Error::ControlRefused { .. } => Status::failed_precondition(e.to_string()),
        Error::NotSubmitter { .. } | Error::Uncontrollable(_) => {
            Status::permission_denied(e.to_string())
        }
        Error::DuplicateUnit { .. } => Status::already_exists(e.to_string()),
        Error::Store(_) if e.is_disk_full() => {
            tracing::error!("refused a change: {e}");
            Status::resource_exhausted(format!(
                "the coordinator's disk is full ({e}); nothing was changed: free space in its data directory and retry"
            ))
        }
        Error::Store(_)
        | Error::Config { .. }
        | Error::DataDir { .. }
        | Error::StoreDamaged { .. }
        | Error::Corrupt(_)
        | Error::BadTile(_)
        | Error::Tls { .. }
        | Error::CheckPanicked(_)
        | Error::Transport(_)
        | Error::Database { .. }
        | Error::Meter(_)
        | Error::Backup { .. } => {
            tracing::error!("internal error: {e}");
            Status::internal(e.to_string())
        }
    }
}

/// Microseconds since the Unix epoch: the clock call stamps are checked against.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
