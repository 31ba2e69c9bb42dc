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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use proto::wire;
use protocol::assignment::{Assignment, Signed};
use protocol::call::{self, CallStamp, ReplayGuard};
use protocol::evidence::Evidence;
use protocol::manifest::ProjectSpec;
use protocol::provenance::SubmitterKey;
use protocol::{Certificate, Digest, ProjectId, UnitId, WorkerId};
use sandbox::{Sandbox, SandboxConfig};
use tokio::sync::Mutex;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::dashboard::{self, CertificateOutcome, Dashboard, ExecutionFailure};
use crate::fleet::{self, Fleet, Reported, RunState};
use crate::scheduler::{
    Aggregate, Change, Scheduler, SignedCertificate, UnitStatus, Verdict, WorkerInfo,
};
use crate::store::{
    CorruptOutput, CreditTo, LeasedInput, Store, StoredOutput, StoredWorker, Write,
};
use crate::{CoordinatorConfig, Error, now_ms};

/// Most units one work request may lease.
const MAX_UNITS_PER_REQUEST: u32 = 64;
/// Most submitter keys a worker may list in `WorkRequest.accept_submitters`.
const MAX_ACCEPTED_SUBMITTERS: usize = 256;
/// How long an idle worker should wait before asking again.
const IDLE_RETRY_MS: u64 = 500;
/// How often leases are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// Peers sent to a worker that accepts connections: a sample that seeds its SWIM
/// membership (SWIM finds the rest), so registering a fleet costs O(N), not O(N²).
const PEER_SAMPLE: usize = 32;
/// Most requests whose writes share one transaction.
const MAX_GROUP: usize = 512;
/// Free space kept in reserve on the data dir's disk beyond what a new project needs
/// (twice its size: the rows and the write-ahead log), for the results of the projects
/// already accepted.
const DISK_RESERVE: u64 = 16 << 20;
/// Most worker keys the rate limiter tracks at once (see [`CoordinatorService::admit`]):
/// about 100 bytes each.
const MAX_LIMITED_KEYS: usize = 200_000;
/// Registrations one network may burst to before [`RegistrationLimiter`] holds it to its
/// rate: a lab of this many machines behind one address can all start at once.
const REGISTRATION_BURST: u32 = 600;
/// How long a status answer waits for the disk while it is full before refusing.
const FULL_DISK_PATIENCE: Duration = Duration::from_secs(2);

/// Registrations per network (the /24 or /48 a worker connects from, as for replica
/// placement; loopback is exempt): keys are free to make, so without it one host could
/// register workers without end. `registrations_per_minute` sustained, bursts of
/// [`REGISTRATION_BURST`]; it tracks at most [`MAX_LIMITED_KEYS`] networks.
pub(crate) struct RegistrationLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    per_minute: u32,
}

impl RegistrationLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        RegistrationLimiter {
            limiter: NonZeroU32::new(per_minute).map(|rate| {
                let burst = NonZeroU32::new(REGISTRATION_BURST.max(per_minute)).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_minute(rate).allow_burst(burst))
            }),
            per_minute,
        }
    }

    /// Admits or refuses one registration from `network` (`None`: loopback, exempt).
    pub(crate) fn admit(&self, network: Option<&str>) -> Result<(), Status> {
        let (Some(limiter), Some(network)) = (&self.limiter, network) else {
            return Ok(());
        };
        if limiter.len() >= MAX_LIMITED_KEYS {
            return Ok(());
        }
        limiter.check_key(&network.to_string()).map_err(|_| {
            Status::resource_exhausted(format!(
                "more than {} worker registrations a minute from {network}; retry later",
                self.per_minute
            ))
        })
    }

    /// Forgets networks quiet long enough to have a full bucket again.
    fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

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

/// One request's writes and who waits for them to be committed. A job without writes is
/// a barrier: it completes once everything queued before it is on disk.
struct Job {
    writes: Vec<(Write, u64)>,
    done: tokio::sync::oneshot::Sender<Result<(), Status>>,
}

/// The store writer: takes every job queued meanwhile (up to [`MAX_GROUP`]), applies their
/// writes in order in one transaction, and answers each. If the group fails, each job is
/// tried again on its own, so one bad write fails only its own request.
///
/// A full disk is different: the scheduler already made those changes in memory, so
/// dropping them would let memory and disk disagree. The writer keeps the group and
/// retries it until space is freed, with `disk_full` set meanwhile; request handlers see
/// the flag and refuse new changes ([`CoordinatorService::writable`]), so what waits is
/// bounded by what was in flight, and nothing accepted is lost.
async fn writer<S: Store>(
    store: Arc<S>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>,
    disk_full: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
) {
    let mut jobs = Vec::new();
    while queue.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let taken = jobs.len();
        let mut all = Vec::new();
        let mut spans = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let start = all.len();
            all.append(&mut job.writes);
            spans.push(start..all.len());
        }
        let mut result = if all.is_empty() {
            Ok(())
        } else {
            store.write(&all).await
        };
        let mut wait = Duration::from_millis(100);
        while let Err(e) = &result
            && e.is_disk_full()
        {
            if !disk_full.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    "the data directory's disk is full ({e}): refusing changes until space is \
                     freed; {} accepted requests wait to be written",
                    jobs.len()
                );
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            result = store.write(&all).await;
        }
        if result.is_ok() && disk_full.swap(false, Ordering::SeqCst) {
            tracing::info!(
                "disk space is back: the waiting changes are written; accepting changes again"
            );
        }
        match result {
            Ok(()) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(e) if jobs.len() == 1 => {
                let status = to_status(e);
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(status.clone()));
                }
            }
            Err(_) => {
                for (job, span) in jobs.drain(..).zip(spans) {
                    let result = if span.is_empty() {
                        Ok(())
                    } else {
                        store.write(&all[span]).await.map_err(to_status)
                    };
                    let _ = job.done.send(result);
                }
            }
        }
        pending.fetch_sub(taken, Ordering::SeqCst);
    }
}

struct WorkerEntry {
    peer_addr: String,
    last_seen: u64,
    account: String,
    team: String,
    /// Calls this worker may make beyond its request rate, earned by the work leased to it
    /// ([`BACKED_CALLS_PER_LEASE`] a unit): see [`CoordinatorService::admit_backed`].
    backed: u32,
    /// What its last heartbeat said it is doing.
    reported: Reported,
    /// Expiry of the last membership credential sent (0: none yet; after a restart the
    /// next heartbeat brings one).
    vouched_until: u64,
}

/// How long the coordinator waits for a registering worker to prove its peer address
/// (`Peer.Prove`): connect and answer. A worker that does not answer in time registers
/// without inbound connections.
const PROVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Calls a leased unit entitles its worker to beyond the request rate: waiting its turn
/// (a heartbeat), the certificate, a failure report or a dispute, asking for the next
/// unit, and retries. An honest
/// fleet on tiny units makes calls in proportion to the units it runs, so a rate alone
/// would refuse it; work is leased only as fast as the scheduler hands it out.
const BACKED_CALLS_PER_LEASE: u32 = 8;
/// Most backed calls a worker may hold (a thousand units' worth).
const MAX_BACKED_CALLS: u32 = BACKED_CALLS_PER_LEASE * 1024;

/// Longest account or team name.
const MAX_ACCOUNT_LEN: usize = 64;

/// The network a worker connects from, for replica placement: the /24 of an IPv4 address
/// or the /48 of an IPv6 one; `None` on loopback (a developer's machine runs many workers).
pub(crate) fn subnet_of(addr: Option<std::net::SocketAddr>) -> Option<String> {
    let ip = addr?.ip();
    match ip {
        _ if ip.is_loopback() => None,
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => None,
            Some(v4) => {
                let o = v4.octets();
                Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
            }
            None => {
                let s = v6.segments();
                Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
            }
        },
    }
}

fn check_name(what: &str, value: &str, optional: bool) -> Result<(), Status> {
    if (value.is_empty() && optional)
        || (!value.is_empty()
            && value.len() <= MAX_ACCOUNT_LEN
            && value.trim() == value
            && !value.chars().any(char::is_control))
    {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "{what} must be 1 to {MAX_ACCOUNT_LEN} printable characters without surrounding spaces (got {value:?})"
    )))
}

/// Loads the store into a scheduler and serves until `shutdown`.
pub(crate) async fn run<S: Store>(
    listener: tokio::net::TcpListener,
    store: S,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let lease_ms = config.lease.as_millis() as u64;
    let snapshot = store.load().await?;
    let now = now_ms();
    // Spot checks must be unpredictable to workers: seed from the OS (RandomState is).
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now);
    let mut sched = Scheduler::new(lease_ms, seed);
    sched.set_distinct_subnets(config.distinct_subnets);
    sched.set_unlimited(!config.limit_unfinished_leases);
    let projects = snapshot.projects.len();
    let (dashboard, published) = Dashboard::new(&snapshot.workers);
    for w in &snapshot.workers {
        sched.register(
            w.id,
            &WorkerInfo {
                account: w.account.clone(),
                team: w.team.clone(),
                subnet: w.subnet.clone(),
            },
        );
    }
    for (worker, project, trust) in snapshot.trust {
        sched.restore_trust(worker, project, trust);
    }
    for (worker, standing) in snapshot.standing {
        sched.restore_standing(worker, standing);
    }
    for (unit, worker) in snapshot.disqualified {
        sched.restore_disqualified(unit, worker);
    }
    for p in snapshot.projects {
        sched.add_project(p);
    }
    // Streamed: each unit goes straight into the scheduler (compact unless in play).
    let mut units = 0u64;
    let counts = store
        .load_units(|u| {
            units += 1;
            sched.add_unit(
                u.id, u.project, u.status, u.target, u.required, u.replicas, u.votes, now,
            );
        })
        .await?;
    for (p, c) in counts {
        sched.restore_counts(p, c.total, c.verified, c.failed, c.executions);
    }
    let listed = snapshot
        .workers
        .iter()
        .filter(|w| !w.peer_addr.is_empty())
        .map(|w| w.id)
        .collect();
    let workers = snapshot
        .workers
        .into_iter()
        .map(|w| {
            (
                w.id,
                WorkerEntry {
                    peer_addr: w.peer_addr,
                    last_seen: now,
                    account: w.account,
                    team: w.team,
                    backed: 0,
                    reported: Reported::default(),
                    vouched_until: 0,
                },
            )
        })
        .collect();
    tracing::info!(projects, units, data = %config.data_dir.display(), "store loaded");
    // The coordinator runs guest code only for reducers: two slots are plenty.
    let key = protocol::Identity::load_or_create(&config.data_dir.join("coordinator.key"))
        .map_err(|e| Error::DataDir {
            path: config.data_dir.clone(),
            message: e.to_string(),
        })?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 2,
        ..SandboxConfig::default()
    })?;
    let store = Arc::new(store);
    let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
    let disk_full = Arc::new(AtomicBool::new(false));
    let pending_writes = Arc::new(AtomicUsize::new(0));
    tokio::spawn(writer(
        store.clone(),
        queue,
        disk_full.clone(),
        pending_writes.clone(),
    ));
    let limiter = NonZeroU32::new(config.worker_requests_per_second).map(|rate| {
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
    });
    let service = CoordinatorService {
        inner: Arc::new(Inner {
            store,
            writes,
            disk_full,
            pending_writes,
            max_pending_writes: config.max_pending_writes,
            limiter,
            registrations: RegistrationLimiter::new(config.registrations_per_minute),
            worker_rate: config.worker_requests_per_second,
            data_dir: config.data_dir.clone(),
            sandbox: Arc::new(sandbox),
            key,
            state: Mutex::new(State {
                sched,
                workers,
                peers_version: 1,
                listed,
                rng: protocol::rng::SplitMix64::new(seed ^ 0x5EED),
                calls: ReplayGuard::default(),
                waiting_logged: HashSet::new(),
            }),
            lease_ms,
            tamper_inputs: config.tamper_inputs,
            tasks: TaskTracker::new(),
            reducing: std::sync::Mutex::new(HashSet::new()),
            dashboard: dashboard.clone(),
            modules: crate::modules::Modules::new(config.limit_loopback),
        }),
    };
    let cancel = CancellationToken::new();
    service
        .inner
        .tasks
        .spawn(expiry_loop(service.clone(), cancel.clone()));
    service.inner.tasks.spawn(dashboard::broadcaster(
        service.clone(),
        dashboard.clone(),
        published,
        cancel.clone(),
    ));
    // Projects that finished before a restart but have no aggregate yet.
    let finished: Vec<ProjectId> = service
        .inner
        .state
        .lock()
        .await
        .sched
        .projects()
        .map(|p| p.id)
        .collect();
    for p in finished {
        service.maybe_reduce(p).await;
    }
    let server = CoordinatorServer::new(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // One port for both: gRPC over HTTP/2, the dashboard over HTTP/1.1 (browsers).
    let gate = Arc::new(crate::auth::Gate::open(
        &config.data_dir,
        config.require_enrollment,
    )?);
    let routes = tonic::service::Routes::from(dashboard::router(dashboard.clone()))
        .add_service(server)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            gate,
            crate::auth::require_token,
        ))
        // Outermost: a body over its method's cap is cut off before anything else reads it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::body_limit::Caps::new(config.max_message_bytes)),
            crate::body_limit::cap_body,
        ));
    let routes = tonic::service::Routes::from(dashboard::count_rejections(routes, dashboard));
    // Live dashboard streams never end on their own: stopping the broadcaster (`cancel`)
    // closes them, so the graceful shutdown can finish.
    let stop = cancel.clone();
    // At most `max_connections_per_address` from one address, idle ones closed, dead
    // peers dropped by keepalive, requests timed out (`connections`).
    let connections = connections::Connections::new(config.connection_limits());
    let mut builder = connections::server(connections.limits());
    if let Some(identity) = &config.tls {
        // ALPN offers h2 only; browsers then load the dashboard over HTTP/2 as well.
        builder = builder.tls_config(identity.server_config())?;
    }
    let result = builder
        .accept_http1(true)
        .layer(connections.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(connections.incoming(listener), async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
    tracing::info!(
        refused = connections.refused(),
        idle_closed = connections.idle_closed(),
        "connections refused past the cap per address, and closed for being idle"
    );
    cancel.cancel();
    service.inner.tasks.close();
    // Reducers in flight are abandoned at shutdown; their projects are reduced again on the
    // next start because no aggregate was stored.
    let _ = tokio::time::timeout(Duration::from_secs(2), service.inner.tasks.wait()).await;
    result.map_err(Error::from)
}

async fn expiry_loop<S: Store>(service: CoordinatorService<S>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(240) {
            // Forget workers that have been quiet long enough to have a full bucket again.
            if let Some(limiter) = &service.inner.limiter {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            service.inner.registrations.prune();
        }
        let now = now_ms();
        let mut state = service.inner.state.lock().await;
        if ticks.is_multiple_of(240) {
            state.calls.forget_quiet(now_us());
        }
        let changes = state.sched.expire(now);
        if changes.is_empty() {
            continue;
        }
        tracing::info!(
            expired = changes.len(),
            "leases expired; units go back to the queue"
        );
        service.inner.dashboard.leases_expired(changes.len());
        if let Err(e) = service.commit(state, changes, now).await {
            tracing::error!("cannot persist lease expiry: {}", e.message());
        }
    }
}

/// The one mapping from domain errors to gRPC statuses.
pub(crate) fn to_status(e: Error) -> Status {
    match &e {
        Error::Protocol(_) | Error::Module(_) | Error::BadDispute(_) => {
            Status::invalid_argument(e.to_string())
        }
        Error::UnknownUnit(_) | Error::UnknownProject(_) | Error::UnknownModule(_) => {
            Status::not_found(e.to_string())
        }
        Error::ShuttingDown => Status::unavailable(e.to_string()),
        Error::CorruptOutputs(_) => Status::data_loss(e.to_string()),
        Error::UnknownWorker(_) | Error::NotLeased { .. } | Error::AlreadyFailed { .. } => {
            Status::failed_precondition(e.to_string())
        }
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
        | Error::Transport(_)
        | Error::Database { .. }
        | Error::Backup { .. } => {
            tracing::error!("internal error: {e}");
            Status::internal(e.to_string())
        }
    }
}

fn worker_key(bytes: &[u8]) -> Result<WorkerId, Status> {
    WorkerId::from_slice("public_key", bytes).map_err(|e| to_status(e.into()))
}

/// Microseconds since the Unix epoch: the clock call stamps are checked against.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Authenticates a worker call (`protocol::call`): its `fallow-call` header must be the
/// signature of the key the request names (`key`) over `method` and the encoded request.
/// Pure CPU, done before the state lock and before the rate limiter, so a request naming
/// someone else's key spends neither the victim's rate nor the lock; the replay check
/// follows under the lock ([`CoordinatorService::fresh`]).
fn authenticate<T: prost::Message>(
    method: &'static str,
    request: &Request<T>,
    key: &[u8],
) -> Result<(WorkerId, CallStamp), Status> {
    let worker = worker_key(key)?;
    let header = request
        .metadata()
        .get(call::CALL_HEADER)
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "{method}: no {} header: worker calls must be signed by the worker key they name (a worker older than this coordinator? upgrade it)",
                call::CALL_HEADER
            ))
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("{method}: the {} header is not ASCII", call::CALL_HEADER)))?;
    let stamp =
        CallStamp::parse(header).map_err(|e| Status::unauthenticated(format!("{method}: {e}")))?;
    call::verify(worker, method, &stamp, &request.get_ref().encode_to_vec())
        .map_err(|e| Status::unauthenticated(format!("{method}: {e}")))?;
    Ok((worker, stamp))
}

impl<S: Store> CoordinatorService<S> {
    /// Queues `writes` behind everything queued before (call with the state lock held, so
    /// the store sees changes in the scheduler's order); await the receiver after releasing
    /// the lock.
    fn queue(
        &self,
        writes: Vec<(Write, u64)>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), Status>> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.inner.pending_writes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.inner.writes.send(Job { writes, done }) {
            self.inner.pending_writes.fetch_sub(1, Ordering::SeqCst);
            let _ = e.0.done.send(Err(to_status(Error::ShuttingDown)));
        }
        committed
    }

    /// Refuses a change while the disk is full (see [`writer`]): checked before the
    /// scheduler is touched, so a refused request changed nothing.
    fn writable(&self) -> Result<(), Status> {
        if self.inner.disk_full.load(Ordering::SeqCst) {
            return Err(Status::resource_exhausted(
                "the coordinator's disk is full: it accepts no changes until space is freed in its data directory (what it accepted before is kept); retry later",
            ));
        }
        let pending = self.inner.pending_writes.load(Ordering::SeqCst);
        if pending >= self.inner.max_pending_writes {
            return Err(Status::resource_exhausted(format!(
                "the coordinator is overloaded: {pending} accepted changes wait to be written; retry shortly"
            )));
        }
        Ok(())
    }

    /// Refuses a worker over its request rate (`worker_requests_per_second`).
    ///
    /// The limiter holds one entry per key it has seen lately (dropped after a quiet
    /// minute). Keys are free to make, so once it tracks [`MAX_LIMITED_KEYS`] it stops
    /// limiting until the next prune rather than grow without bound under a flood of
    /// fresh keys (which the handlers refuse right after as unregistered anyway).
    fn admit(&self, worker: WorkerId) -> Result<(), Status> {
        let Some(limiter) = &self.inner.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_LIMITED_KEYS {
            return Ok(());
        }
        match limiter.check_key(&worker) {
            Err(_) => Err(Status::resource_exhausted(format!(
                "worker {worker} makes more than {} requests per second; slow down",
                self.inner.worker_rate
            ))),
            Ok(()) => Ok(()),
        }
    }

    /// Admits a call that follows from leased work (heartbeat, asking for more work,
    /// certificate, failure, dispute, misbehaviour report): it spends one of the calls the worker's leases earned
    /// ([`BACKED_CALLS_PER_LEASE`]) if it has any, and only otherwise counts against the
    /// request rate ([`CoordinatorService::admit`]). So an honest worker on tiny units is
    /// never refused, while a key flooding without work is.
    fn admit_backed(&self, state: &mut State, worker: WorkerId) -> Result<(), Status> {
        if let Some(entry) = state.workers.get_mut(&worker)
            && entry.backed > 0
        {
            entry.backed -= 1;
            return Ok(());
        }
        self.admit(worker)
    }

    /// Refuses a project the data dir's disk has no room for: twice its size (rows and
    /// write-ahead log) plus [`DISK_RESERVE`] for the results of the projects already
    /// accepted. A file system that cannot say is not a reason to refuse.
    fn room_for(&self, spec: &ProjectSpec) -> Result<(), Status> {
        let size = spec.module.len()
            + spec.reducer.as_ref().map_or(0, Vec::len)
            + spec.manifest.len()
            + spec
                .units
                .iter()
                .map(|(name, input)| name.len() + input.len() + 64)
                .sum::<usize>();
        let need = 2 * size as u64 + DISK_RESERVE;
        match fs4::available_space(&self.inner.data_dir) {
            Ok(free) if free < need => Err(Status::resource_exhausted(format!(
                "the coordinator's disk is too full for this project: {} MiB free in {}, it needs {} MiB (twice the project's {} MiB plus {} MiB kept for results); nothing was created",
                free >> 20,
                self.inner.data_dir.display(),
                need.div_ceil(1 << 20),
                (size as u64).div_ceil(1 << 20),
                DISK_RESERVE >> 20
            ))),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(
                    "cannot read the free space of {}: {e}; accepting the project unchecked",
                    self.inner.data_dir.display()
                );
                Ok(())
            }
        }
    }

    /// Waits until a queued barrier is on disk; while the disk is full, at most
    /// [`FULL_DISK_PATIENCE`], then refuses (what the caller would report is not durable).
    async fn durable(
        &self,
        committed: tokio::sync::oneshot::Receiver<Result<(), Status>>,
    ) -> Result<(), Status> {
        let mut committed = std::pin::pin!(Self::committed(committed));
        loop {
            match tokio::time::timeout(FULL_DISK_PATIENCE, &mut committed).await {
                Ok(result) => return result,
                Err(_) if self.inner.disk_full.load(Ordering::SeqCst) => {
                    return Err(Status::resource_exhausted(
                        "the coordinator's disk is full: its latest changes are not on disk yet, so it reports no counts until space is freed in its data directory",
                    ));
                }
                Err(_) => {} // slow, not full: keep waiting
            }
        }
    }

    /// Waits until a queued job is on disk.
    async fn committed(
        committed: tokio::sync::oneshot::Receiver<Result<(), Status>>,
    ) -> Result<(), Status> {
        committed
            .await
            .map_err(|_| to_status(Error::ShuttingDown))?
    }

    /// Checks that `worker` answers at `peer_addr`: calls its `Peer.Prove` with a fresh
    /// nonce and verifies the signature (`protocol::membership`). The error says why not.
    async fn prove_peer(&self, worker: WorkerId, peer_addr: &str) -> Result<(), String> {
        let addr: std::net::SocketAddr = peer_addr
            .parse()
            .map_err(|_| format!("{peer_addr:?} is not host:port"))?;
        let mut nonce = [0u8; protocol::membership::NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no OS random source: {e}"))?;
        let coordinator = self.inner.key.id();
        let call = async {
            // Over peer TLS, accepting only a certificate bound to the registering worker's
            // key: whoever else answers at the address gets no further than the handshake.
            let channel = connections::peer_tls::endpoint(addr, worker)
                .map_err(|e| e.to_string())?
                .connect_timeout(PROVE_TIMEOUT)
                .timeout(PROVE_TIMEOUT)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to its peer service at {addr}: {e}"))?;
            pb::peer_client::PeerClient::new(channel)
                .prove(pb::ProveRequest {
                    nonce: nonce.to_vec(),
                    peer_addr: peer_addr.to_string(),
                    coordinator_key: coordinator.0.to_vec(),
                })
                .await
                .map(Response::into_inner)
                .map_err(|s| format!("its peer service at {addr} refused Prove: {}", s.message()))
        };
        let answer = tokio::time::timeout(PROVE_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer from {addr} within {PROVE_TIMEOUT:?}"))??;
        if answer.public_key != worker.0 {
            return Err(format!("another worker answers at {addr}"));
        }
        protocol::membership::verify_peer_proof(
            worker,
            coordinator,
            &nonce,
            peer_addr,
            &answer.signature,
        )
        .map_err(|e| format!("proof from {addr}: {e}"))
    }

    /// What a worker is told about its peers: a worker that accepts connections gets a
    /// random sample to seed SWIM with; one behind NAT (no peer address) takes every live
    /// reachable worker, because it chooses a unit's boards from that list itself.
    fn peers_for(&self, state: &mut State, worker: WorkerId, now: u64) -> Vec<pb::PeerInfo> {
        let inbound = state
            .workers
            .get(&worker)
            .is_some_and(|w| !w.peer_addr.is_empty());
        if inbound {
            self.peer_sample(state, worker, now)
        } else {
            self.peers(state, worker, now)
        }
    }

    /// Up to [`PEER_SAMPLE`] distinct live workers with a peer address, other than `except`.
    fn peer_sample(&self, state: &mut State, except: WorkerId, now: u64) -> Vec<pb::PeerInfo> {
        let n = state.listed.len();
        let mut picked: HashSet<WorkerId> = HashSet::new();
        let mut out = Vec::new();
        // Few draws: a large fleet gives a sample quickly; a small one is taken whole.
        let draws = if n <= PEER_SAMPLE * 2 {
            0
        } else {
            PEER_SAMPLE * 4
        };
        for _ in 0..draws {
            if out.len() >= PEER_SAMPLE {
                break;
            }
            let id = state.listed[(state.rng.next_u64() % n as u64) as usize];
            self.offer_peer(state, id, except, now, &mut picked, &mut out);
        }
        if draws == 0 {
            for i in 0..n {
                let id = state.listed[i];
                self.offer_peer(state, id, except, now, &mut picked, &mut out);
            }
        }
        out
    }

    fn offer_peer(
        &self,
        state: &State,
        id: WorkerId,
        except: WorkerId,
        now: u64,
        picked: &mut HashSet<WorkerId>,
        out: &mut Vec<pb::PeerInfo>,
    ) {
        if id == except || out.len() >= PEER_SAMPLE || picked.contains(&id) {
            return;
        }
        if let Some(w) = state.workers.get(&id)
            && !w.peer_addr.is_empty()
            && now.saturating_sub(w.last_seen) <= self.inner.lease_ms
        {
            picked.insert(id);
            out.push(pb::PeerInfo {
                public_key: id.0.to_vec(),
                addr: w.peer_addr.clone(),
            });
        }
    }

    fn peers(&self, state: &State, except: WorkerId, now: u64) -> Vec<pb::PeerInfo> {
        state
            .workers
            .iter()
            .filter(|(id, w)| {
                // Workers behind NAT (no peer address) are never anyone's board.
                **id != except
                    && !w.peer_addr.is_empty()
                    && now.saturating_sub(w.last_seen) <= self.inner.lease_ms
            })
            .map(|(id, w)| pb::PeerInfo {
                public_key: id.0.to_vec(),
                addr: w.peer_addr.clone(),
            })
            .collect()
    }

    /// Admits an authenticated call's stamp once ([`ReplayGuard`]); a stamp off the
    /// coordinator's clock is refused with the clock in the `fallow-now` header, so the
    /// worker can correct itself and retry.
    fn fresh(state: &mut State, worker: WorkerId, stamp: &CallStamp) -> Result<(), Status> {
        let now = now_us();
        state
            .calls
            .admit(worker, stamp.timestamp_us, now)
            .map_err(|refusal| {
                let mut status = Status::unauthenticated(format!("worker {worker}: {refusal}"));
                if let Ok(value) = (now / 1000).to_string().parse() {
                    status.metadata_mut().insert(call::NOW_HEADER, value);
                }
                status
            })
    }

    fn known_worker(state: &mut State, worker: WorkerId, now: u64) -> Result<(), Status> {
        match state.workers.get_mut(&worker) {
            Some(w) => {
                w.last_seen = now;
                Ok(())
            }
            None => Err(to_status(Error::UnknownWorker(worker.to_string()))),
        }
    }

    /// Persists scheduler `changes`, releases the state lock, and starts the reducer of any
    /// project that a failed unit just finished.
    async fn commit(
        &self,
        state: tokio::sync::MutexGuard<'_, State>,
        changes: Vec<crate::scheduler::Change>,
        now: u64,
    ) -> Result<(), Status> {
        let any_failed = changes
            .iter()
            .any(|c| matches!(c, crate::scheduler::Change::UnitFailed { .. }));
        let finished: Vec<ProjectId> = if any_failed {
            state
                .sched
                .projects()
                .filter(|p| p.finished())
                .map(|p| p.id)
                .collect()
        } else {
            Vec::new()
        };
        let committed = if changes.is_empty() {
            // Nothing changed, but the answer may rest on changes not yet on disk.
            self.queue(Vec::new())
        } else {
            self.queue(vec![(Write::Changes(changes), now)])
        };
        drop(state);
        Self::committed(committed).await?;
        for p in finished {
            self.maybe_reduce(p).await;
        }
        Ok(())
    }

    /// Projects (oldest first) with the same module, inputs and terms as `spec`: the
    /// scheduler's numbers narrow them down, the store compares the inputs.
    async fn duplicates_of(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        terms: Digest,
    ) -> Result<Vec<ProjectId>, Status> {
        let candidates: Vec<ProjectId> = {
            let state = self.inner.state.lock().await;
            state
                .sched
                .projects()
                .filter(|p| {
                    p.signer.as_ref().is_some_and(|g| g.terms == terms)
                        && p.module == module
                        && p.limits == spec.limits
                        && p.quorum == spec.quorum
                        && p.stats.total == spec.units.len() as u64
                })
                .map(|p| p.id)
                .collect()
        };
        let mut same = Vec::new();
        for id in candidates {
            if self
                .inner
                .store
                .same_units(id, &spec.units)
                .await
                .map_err(to_status)?
            {
                same.push(id);
            }
        }
        Ok(same)
    }

    /// Sends units whose stored outputs failed their digest check back for verification
    /// (`Scheduler::reverify`: other workers run them again), durably.
    pub(crate) async fn reverify(&self, corrupt: &[CorruptOutput]) {
        for c in corrupt {
            let ran = match self.inner.store.unit_workers(c.unit).await {
                Ok(ran) => ran,
                Err(e) => {
                    tracing::error!(unit = %c.unit, "cannot send {c} back for verification: {e}");
                    continue;
                }
            };
            let mut state = self.inner.state.lock().await;
            let now = now_ms();
            let changes = state.sched.reverify(c.unit, &ran, now);
            if changes.is_empty() {
                continue; // sent back already
            }
            tracing::error!(
                unit = %c.unit,
                "the stored output of {c} changed on disk since it was verified (no longer matching its digest): not served; sent back to be verified again"
            );
            // Not `commit`: nothing here finishes a project, and `commit` may start reducers,
            // which call this.
            let committed = self.queue(vec![(Write::Changes(changes), now)]);
            drop(state);
            if let Err(e) = Self::committed(committed).await {
                tracing::error!(unit = %c.unit, "cannot record that {c} goes back for verification: {}", e.message());
            }
        }
        self.inner.dashboard.changed();
    }

    /// Online workers by state, as their heartbeats report it.
    fn fleet(state: &State, now: u64, lease_ms: u64) -> Fleet {
        Fleet::count(
            state
                .workers
                .values()
                .map(|w| (w.reported.at(w.last_seen, now, lease_ms), &w.reported)),
        )
    }

    /// Units that want a replica no online account may take (`Scheduler::waiting`).
    fn waiting(state: &State, now: u64, lease_ms: u64) -> Vec<crate::scheduler::Waiting> {
        let online: HashSet<&str> = state
            .workers
            .values()
            .filter(|w| now.saturating_sub(w.last_seen) <= lease_ms)
            .map(|w| w.account.as_str())
            .collect();
        state.sched.waiting(&online)
    }

    /// Logs each unit that newly waits for a worker of another account, once until it
    /// stops waiting (a few by name, the rest counted).
    fn log_waiting(state: &mut State, waiting: &[crate::scheduler::Waiting]) {
        let new: Vec<&crate::scheduler::Waiting> = waiting
            .iter()
            .filter(|w| !state.waiting_logged.contains(&w.unit))
            .collect();
        for w in new.iter().take(fleet::WAITING_NAMED) {
            tracing::warn!(project = %w.project, "{}", fleet::waiting_sentence(w.unit, w.accounts));
        }
        if new.len() > fleet::WAITING_NAMED {
            tracing::warn!(
                "{} more units need a worker of another account: every online account has run them",
                new.len() - fleet::WAITING_NAMED
            );
        }
        state.waiting_logged = waiting.iter().map(|w| w.unit).collect();
    }

    /// Starts the reducer of `project` if it is finished and has no aggregate yet.
    async fn maybe_reduce(&self, project: ProjectId) {
        let job = {
            let state = self.inner.state.lock().await;
            match state.sched.project(project) {
                Some(p) if p.finished() && p.aggregate == Aggregate::Pending => {
                    p.reducer.map(|r| (r, p.limits))
                }
                _ => None,
            }
        };
        let Some((reducer, limits)) = job else { return };
        {
            let mut reducing = self
                .inner
                .reducing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !reducing.insert(project) {
                return;
            }
        }
        let service = self.clone();
        self.inner.tasks.spawn(async move {
            let inner = &service.inner;
            match crate::reducer::reduce(
                &*inner.store,
                inner.sandbox.clone(),
                project,
                reducer,
                limits,
            )
            .await
            {
                Ok(aggregate) => {
                    inner
                        .state
                        .lock()
                        .await
                        .sched
                        .set_aggregate(project, aggregate);
                    inner.dashboard.changed();
                }
                Err(Error::CorruptOutputs(corrupt)) => {
                    tracing::error!(%project, "reducer not run: {}", Error::CorruptOutputs(corrupt.clone()));
                    service.reverify(&corrupt).await;
                }
                Err(e) => tracing::error!(%project, "cannot store aggregate: {e}"),
            }
            inner
                .reducing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&project);
        });
    }

    async fn status_of(&self, id: Option<ProjectId>) -> Result<Vec<pb::ProjectStatus>, Status> {
        let state = self.inner.state.lock().await;
        if let Some(id) = id
            && state.sched.project(id).is_none()
        {
            return Err(to_status(Error::UnknownProject(id)));
        }
        let now = now_ms();
        let fleet = Self::fleet(&state, now, self.inner.lease_ms);
        let waiting = Self::waiting(&state, now, self.inner.lease_ms);
        let mut out = Vec::new();
        for p in state
            .sched
            .projects()
            .filter(|p| id.is_none_or(|id| id == p.id))
        {
            let waits: Vec<&crate::scheduler::Waiting> =
                waiting.iter().filter(|w| w.project == p.id).collect();
            let in_progress = state.sched.in_progress(p.id);
            let s = p.stats;
            let aggregate_error = match &p.aggregate {
                Aggregate::Failed(e) => e.clone(),
                Aggregate::Pending | Aggregate::Ready => String::new(),
            };
            out.push(pb::ProjectStatus {
                id: p.id.0,
                name: p.name.clone(),
                total: s.total,
                verified: s.verified,
                failed: s.failed,
                in_progress,
                pending: s.total.saturating_sub(s.verified + s.failed + in_progress),
                finished: p.finished()
                    && (p.reducer.is_none() || p.aggregate != Aggregate::Pending),
                executions: s.executions,
                disputes: s.disputes,
                has_reducer: p.reducer.is_some(),
                aggregate_ready: p.aggregate == Aggregate::Ready,
                aggregate_error,
                replication: p.replication,
                quorum: p.quorum,
                credit: s.credit,
                solo: s.solo,
                spot_checks: s.spot_checks,
                mismatches: s.mismatches,
                reopened: s.reopened,
                submitter: p.signer.map(|g| g.key.to_hex()).unwrap_or_default(),
                workers_running: fleet.running,
                workers_suspended: fleet.suspended,
                workers_idle: fleet.idle,
                fleet: fleet.sentence(),
                waiting: fleet::waiting_sentences(&waits),
            });
        }
        // The scheduler runs ahead of the disk (answers wait for the group commit): report
        // only what is durable, so a crash never makes a reported count go back.
        let durable = self.queue(Vec::new());
        drop(state);
        self.durable(durable).await?;
        Ok(out)
    }
}

/// The dashboard's one window into the state: a capture under the lock, timed.
impl<S: Store> dashboard::Source for CoordinatorService<S> {
    type Store = S;

    async fn capture(&self) -> (dashboard::snapshot::Capture, Duration) {
        let mut state = self.inner.state.lock().await;
        let held = std::time::Instant::now();
        let now = now_ms();
        let waiting = Self::waiting(&state, now, self.inner.lease_ms);
        Self::log_waiting(&mut state, &waiting);
        let mut capture = dashboard::snapshot::Capture::take(
            &state.sched,
            state.workers.iter().map(|(id, w)| (*id, w.last_seen)),
            self.inner.lease_ms,
            now,
        );
        capture.reported = state
            .workers
            .iter()
            .map(|(id, w)| (*id, w.reported.clone()))
            .collect();
        for p in capture.projects.iter_mut() {
            let waits: Vec<&crate::scheduler::Waiting> =
                waiting.iter().filter(|w| w.project == p.id).collect();
            p.waiting = fleet::waiting_sentences(&waits);
        }
        // Published only once what it shows is on disk (see `status_of`).
        let durable = self.queue(Vec::new());
        drop(state);
        let held = held.elapsed();
        if let Err(e) = Self::committed(durable).await {
            tracing::warn!("dashboard snapshot: {}", e.message());
        }
        (capture, held)
    }

    fn store(&self) -> &S {
        &self.inner.store
    }

    async fn reverify(&self, corrupt: Vec<CorruptOutput>) {
        CoordinatorService::reverify(self, &corrupt).await;
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::ResultItem, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> Coordinator for CoordinatorService<S> {
    type GetResultsStream = ResultStream;

    async fn submit_project(
        &self,
        request: Request<pb::SubmitProjectRequest>,
    ) -> Result<Response<pb::SubmitProjectResponse>, Status> {
        self.writable()?;
        let request = request.into_inner();
        let once = request.once;
        let spec = ProjectSpec::try_from(request).map_err(|e| to_status(e.into()))?;
        self.room_for(&spec)?;
        // Compiling a module takes tens of milliseconds: keep it off the async threads.
        let sandbox = self.inner.sandbox.clone();
        let (spec, signer) = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            // Every unit's signature, before anything else: a project its submitter did
            // not sign as sent is refused whole, naming the first bad unit.
            let key = spec.verify_signatures().map_err(|e| to_status(e.into()))?;
            let signer = protocol::provenance::Signer {
                key,
                terms: spec.terms(),
            };
            sandbox
                .inspect(&spec.module)
                .map_err(|e| Status::invalid_argument(format!("wasm: {e}")))?;
            if let Some(r) = &spec.reducer {
                sandbox
                    .inspect(r)
                    .map_err(|e| Status::invalid_argument(format!("[reduce].wasm: {e}")))?;
            }
            Ok((spec, signer))
        })
        .await
        .map_err(|e| Status::internal(format!("module check panicked: {e}")))??;
        let module = Digest::of(&spec.module);
        let duplicates = self.duplicates_of(&spec, module, signer.terms).await?;
        let duplicate_ids: Vec<u64> = duplicates.iter().map(|p| p.0).collect();
        if once && let Some(first) = duplicates.first() {
            tracing::info!(project = %first, name = %spec.name, "submitted again with --once: nothing created");
            return Ok(Response::new(pb::SubmitProjectResponse {
                project_id: first.0,
                duplicates: duplicate_ids,
                reused: true,
            }));
        }
        let reducer = spec.reducer.as_deref().map(Digest::of);
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        let (id, units) = self
            .inner
            .store
            .insert_project(&spec, module, reducer, now)
            .await
            .map_err(to_status)?;
        state.sched.add_project(crate::scheduler::Project {
            id,
            name: spec.name.trim().to_string(),
            replication: spec.replication,
            quorum: spec.quorum,
            max_replicas: spec.max_replicas,
            limits: spec.limits,
            module,
            reducer,
            stats: crate::scheduler::ProjectStats {
                total: units.len() as u64,
                ..Default::default()
            },
            aggregate: Aggregate::Pending,
            adaptive: spec.adaptive,
            error_bound: spec.error_bound,
            signer: Some(signer),
        });
        for unit in units.iter().copied() {
            state.sched.add_unit(
                unit,
                id,
                UnitStatus::Pending,
                spec.replication,
                spec.quorum,
                Vec::new(),
                Vec::new(),
                now,
            );
        }
        tracing::info!(project = %id, name = %spec.name, units = units.len(), submitter = %signer.key, "project accepted");
        self.inner.dashboard.changed();
        if !duplicates.is_empty() {
            tracing::info!(project = %id, earlier = ?duplicate_ids, "the same module, inputs and terms were submitted before");
        }
        Ok(Response::new(pb::SubmitProjectResponse {
            project_id: id.0,
            duplicates: duplicate_ids,
            reused: false,
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let id = request.into_inner().project_id;
        let projects = self.status_of((id != 0).then_some(ProjectId(id))).await?;
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    async fn get_results(
        &self,
        request: Request<pb::GetResultsRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let project = ProjectId(request.into_inner().project_id);
        if self
            .inner
            .state
            .lock()
            .await
            .sched
            .project(project)
            .is_none()
        {
            return Err(to_status(Error::UnknownProject(project)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            let store = &service.inner.store;
            let send = |item| tx.send(Ok(pb::ResultItem { item: Some(item) }));
            let mut after = None;
            // Outputs that fail their digest check: once there is one the answer is an
            // error, and the rest is read only to find every such output.
            let mut corrupt = Vec::new();
            loop {
                let page = match store.verified_outputs(project, after.clone(), 256).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { break };
                after = Some(last.name().to_string());
                for v in page {
                    let v = match v {
                        StoredOutput::Intact(v) if corrupt.is_empty() => v,
                        StoredOutput::Intact(_) => continue,
                        StoredOutput::Corrupt(c) => {
                            corrupt.push(c);
                            continue;
                        }
                    };
                    let item = pb::result_item::Item::Verified(pb::VerifiedOutput {
                        unit: v.name,
                        output: v.output,
                        digest: v.digest.0.to_vec(),
                        fuel: v.fuel,
                        signers: v.signers.iter().map(|s| s.0.to_vec()).collect(),
                    });
                    if send(item).await.is_err() {
                        return;
                    }
                }
            }
            if !corrupt.is_empty() {
                service.reverify(&corrupt).await;
                let _ = tx
                    .send(Err(to_status(Error::CorruptOutputs(corrupt))))
                    .await;
                return;
            }
            match store.failed_units(project).await {
                Ok(failed) => {
                    for (unit, reason) in failed {
                        if send(pb::result_item::Item::Failed(pb::FailedUnit {
                            unit,
                            reason,
                        }))
                        .await
                        .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                    return;
                }
            }
            match store.aggregate(project).await {
                Ok(Some(Ok(bytes))) => {
                    let _ = send(pb::result_item::Item::Aggregate(bytes)).await;
                }
                Ok(Some(Err(e))) => {
                    let _ = send(pb::result_item::Item::AggregateError(e)).await;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("RegisterWorker", &request, &request.get_ref().public_key)?;
        let subnet = subnet_of(request.remote_addr());
        self.inner.registrations.admit(subnet.as_deref())?;
        let r = request.into_inner();
        self.admit(id)?;
        let registration = protocol::Registration {
            name: &r.name,
            account: &r.account,
            team: &r.team,
            peer_addr: &r.peer_addr,
        };
        protocol::identity::verify_registration(id, &registration, &r.signature)
            .map_err(|e| to_status(e.into()))?;
        check_name("worker name", &r.name, false)?;
        check_name("account", &r.account, false)?;
        check_name("team", &r.team, true)?;
        if r.platform.len() > MAX_ACCOUNT_LEN || r.platform.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "platform must be at most 64 printable characters",
            ));
        }
        if !r.peer_addr.is_empty() && r.peer_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "peer_addr {:?} is not host:port (an IP address and a port), or empty for a worker that accepts no connections",
                r.peer_addr
            )));
        }
        let cores = r.cores.clamp(1, 1024);
        // A replayed registration is refused before it costs a proof round trip.
        Self::fresh(&mut *self.inner.state.lock().await, id, &stamp)?;
        // Vouch only for an address the worker proves it answers at (outside the lock: a
        // network round trip). Otherwise it works on without inbound connections.
        let (peer_addr, peer_warning) = if r.peer_addr.is_empty() {
            (String::new(), String::new())
        } else {
            match self.prove_peer(id, &r.peer_addr).await {
                Ok(()) => (r.peer_addr.clone(), String::new()),
                Err(why) => {
                    tracing::warn!(worker = %id, peer_addr = %r.peer_addr, "peer address not vouched for: {why}; registered without inbound connections");
                    (String::new(), why)
                }
            }
        };
        let now = now_ms();
        let credential = peer_addr
            .parse()
            .ok()
            .map(|addr| protocol::membership::Credential::issue(&self.inner.key, id, addr, now));
        let mut state = self.inner.state.lock().await;
        let worker = StoredWorker {
            id,
            name: r.name.clone(),
            peer_addr: peer_addr.clone(),
            cores,
            account: r.account.clone(),
            team: r.team.clone(),
            platform: r.platform.clone(),
            subnet: subnet.clone(),
        };
        let committed = self.queue(vec![(Write::Worker(worker.clone()), now)]);
        state.sched.register(
            id,
            &WorkerInfo {
                account: r.account.clone(),
                team: r.team.clone(),
                subnet,
            },
        );
        let listed = !peer_addr.is_empty();
        let previous_backed = state.workers.get(&id).map_or(0, |w| w.backed);
        let previous = state.workers.insert(
            id,
            WorkerEntry {
                peer_addr,
                last_seen: now,
                account: r.account.clone(),
                team: r.team.clone(),
                backed: previous_backed,
                reported: Reported::default(),
                vouched_until: credential.as_ref().map_or(0, |c| c.expires_ms),
            },
        );
        if listed {
            // Only a reachable worker changes what workers behind NAT need to know.
            state.peers_version += 1;
            if previous.is_none_or(|p| p.peer_addr.is_empty()) && !state.listed.contains(&id) {
                state.listed.push(id);
            }
        }
        let peers = self.peers_for(&mut state, id, now);
        drop(state);
        Self::committed(committed).await?;
        self.inner.dashboard.worker_registered(&worker);
        tracing::info!(worker = %id, name = %r.name, account = %r.account, cores, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            heartbeat_ms: (self.inner.lease_ms / 4).max(100),
            lease_ms: self.inner.lease_ms,
            peers,
            now_ms: now_ms(),
            coordinator_key: self.inner.key.id().0.to_vec(),
            membership_credential: credential.map(|c| c.to_bytes()).unwrap_or_default(),
            peer_warning,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (id, stamp) = authenticate("Heartbeat", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        if Self::known_worker(&mut state, id, now).is_err() {
            return Ok(Response::new(pb::HeartbeatResponse {
                unknown_worker: true,
                now_ms: now,
                ..Default::default()
            }));
        }
        Self::fresh(&mut state, id, &stamp)?;
        self.admit_backed(&mut state, id)?;
        let held: Vec<UnitId> = r.held_units.iter().map(|&u| UnitId(u)).collect();
        let reported = Reported::from_wire(&r.run_state, &r.state_reason);
        if let Some(w) = state.workers.get_mut(&id)
            && w.reported != reported
        {
            match reported.state {
                RunState::Suspended => {
                    tracing::info!(worker = %id, account = %w.account, "worker suspended: {}", reported.reason)
                }
                _ if w.reported.state == RunState::Suspended => {
                    tracing::info!(worker = %id, account = %w.account, "worker no longer suspended")
                }
                _ => {}
            }
            w.reported = reported;
            self.inner.dashboard.changed();
        }
        let settled = state.sched.heartbeat(id, &held, now);
        let version = state.peers_version;
        let peers = if r.peers_version != version {
            self.peers_for(&mut state, id, now)
        } else {
            Vec::new()
        };
        // Renew the membership credential of a vouched worker well before it expires.
        let credential = state.workers.get_mut(&id).and_then(|w| {
            let due = w.vouched_until.saturating_sub(now) < protocol::membership::RENEW_BEFORE_MS;
            let addr = w.peer_addr.parse().ok().filter(|_| due)?;
            let c = protocol::membership::Credential::issue(&self.inner.key, id, addr, now);
            w.vouched_until = c.expires_ms;
            Some(c.to_bytes())
        });
        Ok(Response::new(pb::HeartbeatResponse {
            settled_units: settled.iter().map(|u| u.0).collect(),
            peers_version: version,
            peers,
            unknown_worker: false,
            now_ms: now,
            membership_credential: credential.unwrap_or_default(),
        }))
    }

    async fn request_work(
        &self,
        request: Request<pb::WorkRequest>,
    ) -> Result<Response<pb::WorkResponse>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("RequestWork", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let max = r.max_units.clamp(1, MAX_UNITS_PER_REQUEST) as usize;
        let accept_keys = r
            .accept_submitters
            .iter()
            .take(MAX_ACCEPTED_SUBMITTERS + 1)
            .map(|k| SubmitterKey::from_slice("WorkRequest.accept_submitters", k))
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| to_status(e.into()))?;
        if accept_keys.len() > MAX_ACCEPTED_SUBMITTERS {
            return Err(Status::invalid_argument(format!(
                "WorkRequest.accept_submitters: more than {MAX_ACCEPTED_SUBMITTERS} keys"
            )));
        }
        let allow_unsigned = r.allow_unsigned;
        let accept = move |p: &crate::scheduler::Project| match &p.signer {
            Some(s) => accept_keys.is_empty() || accept_keys.contains(&s.key),
            None => allow_unsigned,
        };
        let now = now_ms();
        let (leases, projects, committed, capped) = {
            let mut state = self.inner.state.lock().await;
            Self::known_worker(&mut state, id, now)?;
            Self::fresh(&mut state, id, &stamp)?;
            // Asking for the next unit is part of the work a lease pays for: a worker on
            // tiny units asks as often as it finishes one.
            self.admit_backed(&mut state, id)?;
            let assigned = state.sched.assign_from(id, max, now, &accept);
            let capped = assigned.capped;
            let leases = assigned.leases;
            if let Some(entry) = state.workers.get_mut(&id) {
                let earned = BACKED_CALLS_PER_LEASE.saturating_mul(leases.len() as u32);
                entry.backed = entry.backed.saturating_add(earned).min(MAX_BACKED_CALLS);
            }
            self.inner.dashboard.assigned(leases.len());
            let committed = if leases.is_empty() {
                None
            } else {
                let rows: Vec<(UnitId, WorkerId)> = leases.iter().map(|l| (l.unit, id)).collect();
                Some(self.queue(vec![
                    (Write::Assignments(rows), now),
                    (Write::Changes(assigned.changes), now),
                ]))
            };
            let projects: HashMap<ProjectId, crate::scheduler::Project> = leases
                .iter()
                .filter_map(|l| state.sched.project(l.project).map(|p| (p.id, p.clone())))
                .collect();
            (leases, projects, committed, capped)
        };
        if let Some(committed) = committed {
            Self::committed(committed).await?;
        }
        // Every leased unit's name and input in one query.
        let ids: Vec<UnitId> = leases.iter().map(|l| l.unit).collect();
        let mut inputs: HashMap<UnitId, LeasedInput> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.inner
                .store
                .unit_inputs(&ids)
                .await
                .map_err(to_status)?
                .into_iter()
                .map(|u| (u.unit, u))
                .collect()
        };
        let mut assignments = Vec::with_capacity(leases.len());
        for lease in leases {
            let Some(p) = projects.get(&lease.project) else {
                continue;
            };
            let LeasedInput {
                name,
                mut input,
                signature,
                ..
            } = inputs
                .remove(&lease.unit)
                .ok_or_else(|| to_status(Error::UnknownUnit(lease.unit)))?;
            if self.inner.tamper_inputs {
                input.push(b'!');
            }
            // A signed project's units all carry a signature (`SubmitProject` refuses one
            // without), so both are set or neither.
            let signed = p
                .signer
                .zip(signature)
                .map(|(signer, signature)| Signed { signer, signature });
            let assignment = Assignment {
                project: lease.project,
                unit: lease.unit,
                name,
                input,
                module: p.module,
                limits: p.limits,
                quorum: p.quorum,
                lease: Duration::from_millis(self.inner.lease_ms),
                signed,
                // Boards file the worker's commitment only with this (protocol::ticket, which
                // explains the expiry).
                ticket: Some(
                    self.inner.key.sign_ticket(
                        id,
                        lease.project,
                        lease.unit,
                        lease
                            .until
                            .saturating_add(protocol::ticket::GRACE_MS.max(self.inner.lease_ms)),
                    ),
                ),
            };
            assignments.push(pb::Assignment::from(&assignment));
        }
        let retry_after_ms = if assignments.is_empty() {
            IDLE_RETRY_MS
        } else {
            0
        };
        let reason = match capped {
            Some(limit) if assignments.is_empty() => format!(
                "this worker holds {limit} unfinished units of projects with a quorum, its limit \
                 for now (it rises by one with each of its results another account confirms)"
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::WorkResponse {
            assignments,
            retry_after_ms,
            reason,
        }))
    }

    async fn get_module(
        &self,
        request: Request<pb::GetModuleRequest>,
    ) -> Result<Response<pb::GetModuleResponse>, Status> {
        let remote = request.remote_addr();
        let digest = Digest::from_slice("digest", &request.into_inner().digest)
            .map_err(|e| to_status(e.into()))?;
        let store = self.inner.store.as_ref();
        match self.inner.modules.serve(store, digest, remote).await? {
            Some((module, sending)) => {
                let mut response = Response::new(pb::GetModuleResponse { module });
                // The caller's turn and the module's share of the send budget, held until
                // the response has been sent (`connections::KeepUntilSent`).
                response.extensions_mut().insert(sending);
                Ok(response)
            }
            None => Err(to_status(Error::UnknownModule(digest))),
        }
    }

    async fn report_failure(
        &self,
        request: Request<pb::FailureReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("ReportFailure", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let failure = wire::failure_from_wire(r.kind, r.detail).map_err(|e| to_status(e.into()))?;
        let unit = UnitId(r.unit_id);
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, id, now)?;
        Self::fresh(&mut state, id, &stamp)?;
        self.admit_backed(&mut state, id)?;
        tracing::info!(%unit, worker = %id, reason = %failure, "execution failed");
        if let Some(project) = state.sched.unit_project(unit) {
            self.inner.dashboard.execution_failed(
                ExecutionFailure {
                    at_ms: now,
                    project,
                    unit,
                    worker: id,
                    reason: failure.to_string(),
                },
                failure.kind.as_str(),
            );
        }
        let changes = state
            .sched
            .report_failure(id, unit, failure)
            .map_err(to_status)?;
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn submit_certificate(
        &self,
        request: Request<pb::CertificateSubmission>,
    ) -> Result<Response<pb::CertificateAck>, Status> {
        self.writable()?;
        let (submitter, stamp) = authenticate(
            "SubmitCertificate",
            &request,
            &request.get_ref().submitter_key,
        )?;
        let r = request.into_inner();
        let cert = Certificate {
            unit: UnitId(r.unit_id),
            claims: wire::claims_from_wire(r.claims).map_err(|e| to_status(e.into()))?,
        };
        let output = r.output;
        let dashboard = &self.inner.dashboard;
        let (unit, claims) = (cert.unit, cert.claims.len());
        // The signatures (the expensive part) are checked before the state is locked.
        let checked = SignedCertificate::check(cert).map_err(|e| {
            tracing::warn!(%unit, "certificate rejected: {e}");
            dashboard.certificate(claims, CertificateOutcome::Rejected);
            to_status(e)
        })?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, submitter, now)?;
        Self::fresh(&mut state, submitter, &stamp)?;
        self.admit_backed(&mut state, submitter)?;
        let submitted = state
            .sched
            .submit_checked(&checked, Some(&output))
            .map_err(|e| {
                tracing::warn!(%unit, "certificate rejected: {e}");
                dashboard.certificate(claims, CertificateOutcome::Rejected);
                to_status(e)
            })?;
        let verified = match submitted.verdict {
            Verdict::Verified(v) => v,
            other => {
                let recorded = other == Verdict::Recorded;
                // Even a duplicate waits: the verdict it repeats may not be on disk yet.
                let committed = if submitted.changes.is_empty() {
                    self.queue(Vec::new())
                } else {
                    self.queue(vec![(Write::Changes(submitted.changes), now)])
                };
                drop(state);
                Self::committed(committed).await?;
                dashboard.certificate(
                    claims,
                    if recorded {
                        CertificateOutcome::Recorded
                    } else {
                        CertificateOutcome::Duplicate
                    },
                );
                return Ok(Response::new(pb::CertificateAck {
                    accepted: false,
                    recorded,
                }));
            }
        };
        let credit: Vec<CreditTo> = verified
            .signers
            .iter()
            .map(|w| {
                let entry = state.workers.get(w);
                CreditTo {
                    worker: *w,
                    account: entry.map_or_else(|| w.to_string(), |e| e.account.clone()),
                    team: entry.map(|e| e.team.clone()).unwrap_or_default(),
                }
            })
            .collect();
        // The scheduler moves on now; the answer waits until the writes below are committed,
        // in order with every other request's.
        let changes = state.sched.mark_verified(unit, &verified);
        if changes.iter().any(|c| matches!(c, Change::Reopen { .. })) {
            tracing::warn!(%unit, "a trusted worker's result disagreed: its unchecked results are re-opened");
        }
        let project = checked
            .certificate()
            .claims
            .first()
            .and_then(|c| state.sched.project(c.project))
            .map(|p| (p.id, p.finished()));
        let digest = verified.digest;
        let committed = self.queue(vec![
            (Write::Changes(submitted.changes), now),
            (
                Write::Verified {
                    unit,
                    output,
                    verified,
                    credit,
                },
                now,
            ),
            (Write::Changes(changes), now),
        ]);
        drop(state);
        Self::committed(committed).await?;
        dashboard.certificate(claims, CertificateOutcome::Accepted);
        tracing::debug!(%unit, %digest, "unit verified");
        if let Some((p, true)) = project {
            tracing::info!(project = %p, "all units settled");
            self.maybe_reduce(p).await;
        }
        Ok(Response::new(pb::CertificateAck {
            accepted: true,
            recorded: true,
        }))
    }

    async fn report_dispute(
        &self,
        request: Request<pb::Dispute>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (reporter, stamp) =
            authenticate("ReportDispute", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let claims = wire::claims_from_wire(r.claims).map_err(|e| to_status(e.into()))?;
        let unit = UnitId(r.unit_id);
        let checked = SignedCertificate::check(Certificate {
            unit,
            claims: claims.clone(),
        })
        .map_err(|e| {
            tracing::warn!(%unit, worker = %reporter, "dispute rejected: {e}");
            to_status(e)
        })?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, reporter, now)?;
        Self::fresh(&mut state, reporter, &stamp)?;
        self.admit_backed(&mut state, reporter)?;
        let submitted = state.sched.submit_checked(&checked, None).map_err(|e| {
            tracing::warn!(%unit, worker = %reporter, "dispute rejected: {e}");
            to_status(e)
        })?;
        let raised = submitted
            .changes
            .iter()
            .any(|c| matches!(c, Change::Target { .. }));
        if raised {
            tracing::info!(%unit, claims = claims.len(), "claims disagree; extra replica issued");
        }
        self.inner.dashboard.dispute(claims.len(), raised);
        self.commit(state, submitted.changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_misbehaviour(
        &self,
        request: Request<pb::Evidence>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (reporter, stamp) = authenticate(
            "ReportMisbehaviour",
            &request,
            &request.get_ref().reporter_key,
        )?;
        let r = request.into_inner();
        let evidence = Evidence::try_from(r).map_err(|e| to_status(e.into()))?;
        let (offender, unit) = evidence.offender().map_err(|e| to_status(e.into()))?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, reporter, now)?;
        Self::fresh(&mut state, reporter, &stamp)?;
        self.admit_backed(&mut state, reporter)?;
        let changes = state
            .sched
            .misbehaviour(offender, unit)
            .map_err(to_status)?;
        tracing::warn!(%unit, worker = %offender, reporter = %reporter, "signed proof of a changed answer: trust reset");
        self.inner.dashboard.changed();
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let (accounts, teams) = self.inner.store.leaderboard().await.map_err(to_status)?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts
                .into_iter()
                .map(|a| pb::AccountInfo {
                    name: a.name,
                    team: a.team,
                    credit: a.credit,
                    verified: a.verified,
                    workers: a.workers,
                })
                .collect(),
            teams: teams
                .into_iter()
                .map(|t| pb::TeamInfo {
                    name: t.name,
                    credit: t.credit,
                    accounts: t.accounts,
                })
                .collect(),
        }))
    }

    async fn return_units(
        &self,
        request: Request<pb::ReturnUnitsRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("ReturnUnits", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        self.admit(id)?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, id, now)?;
        Self::fresh(&mut state, id, &stamp)?;
        let returned = r.unit_ids.len();
        // Work handed back earns no calls: leasing and returning must not farm them.
        if let Some(entry) = state.workers.get_mut(&id) {
            let forfeit =
                BACKED_CALLS_PER_LEASE.saturating_mul(returned.min(u32::MAX as usize) as u32);
            entry.backed = entry.backed.saturating_sub(forfeit);
        }
        let mut changes = Vec::new();
        for unit in r.unit_ids {
            changes.extend(state.sched.give_back(id, UnitId(unit)));
        }
        tracing::info!(worker = %id, units = returned, "units handed back");
        self.inner.dashboard.changed();
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_limited_per_network_and_loopback_is_exempt() {
        let limiter = RegistrationLimiter::new(60);
        for _ in 0..REGISTRATION_BURST {
            assert!(limiter.admit(Some("203.0.113.0/24")).is_ok());
        }
        let refused = limiter
            .admit(Some("203.0.113.0/24"))
            .expect_err("over the burst");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("203.0.113.0/24"),
            "{}",
            refused.message()
        );
        // Another network, and loopback, are not held back by it.
        assert!(limiter.admit(Some("198.51.100.0/24")).is_ok());
        for _ in 0..2 * REGISTRATION_BURST {
            assert!(limiter.admit(None).is_ok());
        }
        // 0 turns it off.
        let off = RegistrationLimiter::new(0);
        for _ in 0..2 * REGISTRATION_BURST {
            assert!(off.admit(Some("203.0.113.0/24")).is_ok());
        }
    }
}
