//! Fallow's volunteer worker. It registers with a coordinator, leases work units, runs each
//! in the sandbox, signs a claim about the output, exchanges claims with its peers and, when
//! a quorum of independent workers agrees with its own output, submits the quorum
//! certificate with the output bytes.
//!
//! # Layout
//! - [`run`] and `Shared`: the async shell — one loop per core fetching and running units,
//!   a heartbeat loop, a republish loop, and the peer server.
//! - [`protocol::quorum::QuorumBook`] (sans-IO) decides when to certify or dispute.
//! - `executor`: the guest threads; guest code never runs on the async runtime.
//! - `modules`: module fetch, on-disk cache and compilation.
//! - `rpc`: the gRPC boundary (coordinator client, peer service and client).
//! - `metrics`: Prometheus counters, served on `--metrics ADDR`.

#![forbid(unsafe_code)]

mod executor;

pub use executor::guest_cpu_time;
mod metrics;
mod modules;
pub mod rpc;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::quorum::{Action, QuorumBook};
use protocol::{Claim, Digest, Failure, Identity, UnitId};
use sandbox::{Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use executor::Executor;
use modules::Modules;
use rpc::{Assignment, ClaimSink, CoordinatorClient, PeerClient, PeerInfo};

/// The one error type of the `worker` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; the text names it.
    #[error("{0}")]
    Config(String),
    /// An RPC failed (coordinator or peer unreachable, or it refused the call).
    #[error("{call}: {}", status.message())]
    Rpc {
        /// The call.
        call: &'static str,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// Malformed data from the coordinator or a peer.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// A module could not be fetched or compiled.
    #[error("module: {0}")]
    Module(String),
    /// The sandbox could not start.
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    /// A file in the data directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The peer server failed.
    #[error("peer server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether retrying later may succeed (the other side is down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// Test-only misbehaviour, to prove that verification catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Change every output before signing it (a lying or broken worker).
    CorruptOutput,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL. Default `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// Data directory (identity key, module cache). Default `./fallow-worker`.
    pub data_dir: PathBuf,
    /// Units run at once. Default: all cores.
    pub cores: usize,
    /// Name shown to the coordinator. Default: the host name.
    pub name: String,
    /// Where the peer service listens. Default `0.0.0.0:0` (any free port).
    pub peer_listen: SocketAddr,
    /// Address peers use to reach us. Default: the listen port on the local address that
    /// routes to the coordinator.
    pub peer_advertise: Option<SocketAddr>,
    /// How long a graceful shutdown waits for running units before handing them back.
    pub drain: Duration,
    /// Test-only fault injection.
    pub fault: Option<Fault>,
    /// Where to serve `GET /metrics` (Prometheus text format). Default: nowhere.
    pub metrics: Option<SocketAddr>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            data_dir: PathBuf::from("fallow-worker"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: "worker".into(),
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer_advertise: None,
            drain: Duration::from_secs(10),
            fault: None,
            metrics: None,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings, naming the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cores == 0 || self.cores > 1024 {
            return Err(Error::Config(format!(
                "--cores must be between 1 and 1024 (got {})",
                self.cores
            )));
        }
        if self.name.is_empty() || self.name.len() > 64 || self.name.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "--name must be 1 to 64 printable characters (got {:?})",
                self.name
            )));
        }
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(Error::Config(format!(
                "--coordinator must be a URL such as http://127.0.0.1:7070 (got {:?})",
                self.coordinator
            )));
        }
        Ok(())
    }
}

/// A unit this worker holds.
struct Held {
    output: Option<Vec<u8>>,
    own: Option<Claim>,
    published: Instant,
    certifying: bool,
}

struct Shared {
    identity: Identity,
    config: WorkerConfig,
    client: CoordinatorClient,
    book: Mutex<QuorumBook>,
    held: Mutex<HashMap<UnitId, Held>>,
    peers: Mutex<(u64, Vec<PeerInfo>)>,
    peer_clients: Mutex<HashMap<String, PeerClient>>,
    executor: Executor,
    modules: Modules,
    tasks: TaskTracker,
    cancel: CancellationToken,
    metrics: Arc<metrics::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here are single map operations: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a worker until `shutdown` completes, then drains: running units get
/// `config.drain` to finish, and whatever is still unverified is handed back.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    // Two workers on one data dir would share an identity and trip over each other's
    // leases: the lock lives as long as this function.
    let _lock = lock_data_dir(&config.data_dir)?;
    let identity = Identity::load_or_create(&config.data_dir.join("worker.key"))?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: config.cores as u32 + 1,
        ..SandboxConfig::default()
    })?);
    let executor = Executor::new(sandbox.clone(), config.cores)
        .map_err(|e| Error::Config(format!("cannot start guest threads: {e}")))?;
    let client = CoordinatorClient::new(&config.coordinator, identity.id())?;
    let listener = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .map_err(|e| Error::Config(format!("--peer-listen {}: {e}", config.peer_listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("peer listener: {e}")))?;
    let advertise = match config.peer_advertise {
        Some(a) => a,
        None => SocketAddr::new(advertise_ip(&config.coordinator, local).await, local.port()),
    };
    let shared = Arc::new(Shared {
        modules: Modules::new(config.data_dir.join("modules"), sandbox),
        identity,
        client,
        book: Mutex::new(QuorumBook::new()),
        held: Mutex::new(HashMap::new()),
        peers: Mutex::new((0, Vec::new())),
        peer_clients: Mutex::new(HashMap::new()),
        executor,
        tasks: TaskTracker::new(),
        cancel: CancellationToken::new(),
        metrics: Arc::new(metrics::Metrics::new()),
        config,
    });
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = shared.config.metrics {
        let (local, server) = metrics::serve(
            addr,
            shared.metrics.clone(),
            metrics_stop.clone().cancelled_owned(),
        )
        .await?;
        tracing::info!("metrics on http://{local}/metrics");
        tokio::spawn(server);
    }
    tracing::info!(worker = %shared.identity.id(), peer = %advertise, cores = shared.config.cores, "worker starting");

    let peer_stop = CancellationToken::new();
    let server = {
        let stop = peer_stop.clone();
        let svc = rpc::PeerService::new(shared.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        )
    };

    {
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            cancel.cancel();
        });
    }
    let heartbeat = match shared.register(&advertise.to_string()).await {
        Some(h) => h,
        None => {
            peer_stop.cancel();
            return Ok(()); // shut down before the coordinator answered
        }
    };
    let mut loops = tokio::task::JoinSet::new();
    for slot in 0..shared.config.cores {
        loops.spawn(shared.clone().slot_loop(slot));
    }
    loops.spawn(
        shared
            .clone()
            .heartbeat_loop(heartbeat, advertise.to_string()),
    );
    loops.spawn(shared.clone().republish_loop());

    shared.cancel.cancelled().await;
    tracing::info!(
        "shutting down: draining running units for up to {:?}",
        shared.config.drain
    );
    let drained = tokio::time::timeout(shared.config.drain, async {
        while loops.join_next().await.is_some() {}
        shared.tasks.close();
        shared.tasks.wait().await;
    })
    .await;
    loops.abort_all();
    let unfinished: Vec<UnitId> = lock(&shared.held).keys().copied().collect();
    if !unfinished.is_empty() {
        match shared.client.return_units(&unfinished).await {
            Ok(()) => tracing::info!(units = unfinished.len(), "handed unfinished units back"),
            Err(e) => tracing::warn!(
                "could not hand {} units back ({e}); their leases will expire",
                unfinished.len()
            ),
        }
    }
    if drained.is_err() {
        tracing::warn!("drain deadline passed; abandoned running executions");
    }
    peer_stop.cancel();
    metrics_stop.cancel();
    let _ = server.await;
    Ok(())
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let path = dir.join("lock");
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "another worker is using --data {}; give each worker its own data directory",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// The local IP this machine uses to reach the coordinator (so peers on the same network
/// can reach us); the listen IP if it is specific; loopback as a last resort.
async fn advertise_ip(coordinator: &str, local: SocketAddr) -> std::net::IpAddr {
    if !local.ip().is_unspecified() {
        return local.ip();
    }
    let hostport = coordinator
        .split("://")
        .nth(1)
        .unwrap_or(coordinator)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if let Ok(mut addrs) = tokio::net::lookup_host(hostport).await
        && let Some(target) = addrs.next()
    {
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        if let Ok(sock) = tokio::net::UdpSocket::bind(bind).await
            && sock.connect(target).await.is_ok()
            && let Ok(addr) = sock.local_addr()
        {
            return addr.ip();
        }
    }
    std::net::IpAddr::from([127, 0, 0, 1])
}

/// Sleeps for `d` unless cancelled; returns false when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Exponential backoff for an unreachable coordinator: 250 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(5)).min(5_000))
}

/// How long a worker whose quorum was completed by a peer's push waits before submitting
/// the certificate itself: the pushing peer saw the same quorum when it pulled our claim
/// and normally submits first, so waiting saves a second upload of the output.
const PUSHED_QUORUM_GRACE: Duration = Duration::from_secs(2);

/// Who completed a quorum: us (submit now) or a peer's push (wait, the peer submits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Own,
    PeerPush,
}

impl ClaimSink for Shared {
    fn on_claim(self: &Arc<Self>, claim: Claim) -> Result<(), protocol::Error> {
        self.receive(claim, Trigger::PeerPush)
    }

    fn claims_for(&self, unit: UnitId) -> Vec<Claim> {
        lock(&self.book).claims(unit)
    }
}

impl Shared {
    fn receive(self: &Arc<Self>, claim: Claim, trigger: Trigger) -> Result<(), protocol::Error> {
        self.metrics.claims_received(1);
        let actions = lock(&self.book).add_remote(claim)?;
        self.act(actions, trigger);
        Ok(())
    }

    /// Registers, retrying until the coordinator answers; `None` if shut down first.
    async fn register(&self, advertise: &str) -> Option<Duration> {
        let mut attempt = 0u32;
        loop {
            let cores = self.config.cores as u32;
            match self
                .client
                .register(&self.identity, &self.config.name, advertise, cores)
                .await
            {
                Ok(reg) => {
                    *lock(&self.peers) = (0, reg.peers);
                    tracing::info!(coordinator = %self.config.coordinator, "registered");
                    return Some(reg.heartbeat);
                }
                Err(e) if e.is_transient() => {
                    if attempt.is_multiple_of(8) {
                        tracing::warn!(
                            "waiting for coordinator at {}: {e}",
                            self.config.coordinator
                        );
                    }
                }
                Err(e) => tracing::error!("registration refused: {e}"),
            }
            attempt += 1;
            if !pause(&self.cancel, backoff(attempt)).await {
                return None;
            }
        }
    }

    /// One core's loop: lease a unit, run it, publish the claim; repeat until shutdown.
    async fn slot_loop(self: Arc<Self>, slot: usize) {
        let mut failures = 0u32;
        while !self.cancel.is_cancelled() {
            let asked = Instant::now();
            let work = tokio::select! {
                _ = self.cancel.cancelled() => return,
                w = self.client.request_work(1) => w,
            };
            match work {
                Ok((units, _)) if !units.is_empty() => {
                    failures = 0;
                    self.metrics.idle(asked.elapsed());
                    for a in units {
                        self.execute(a).await;
                    }
                }
                Ok((_, wait)) => {
                    let waiting = pause(&self.cancel, wait).await;
                    self.metrics.idle(asked.elapsed());
                    if !waiting {
                        return;
                    }
                }
                Err(e) => {
                    if failures.is_multiple_of(8) {
                        tracing::warn!(slot, "cannot get work: {e}");
                    }
                    failures += 1;
                    if !pause(&self.cancel, backoff(failures)).await {
                        return;
                    }
                }
            }
        }
    }

    async fn execute(self: &Arc<Self>, a: Assignment) {
        lock(&self.held).insert(
            a.unit,
            Held {
                output: None,
                own: None,
                published: Instant::now(),
                certifying: false,
            },
        );
        lock(&self.book).hold(a.unit, a.quorum);
        self.metrics.held(lock(&self.held).len());
        let compiled = match self
            .modules
            .get(&self.client, a.module, a.limits.nan_canonicalization)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(unit = %a.unit, "cannot prepare module: {e}");
                if e.is_transient() {
                    // The coordinator is unreachable: drop the unit here; its lease expires and
                    // the coordinator gives it to someone else.
                    self.release(a.unit);
                    return;
                }
                let failure = Failure::new(protocol::FailureKind::BadModule, e.to_string());
                self.report_failure(a.unit, failure).await;
                return;
            }
        };
        let seed = protocol::unit_seed(&a.name, &a.input);
        let started = Instant::now();
        let result = self.executor.run(compiled, a.input, seed, a.limits).await;
        match &result {
            Ok(exec) => self.metrics.ran("ok", exec.fuel, started.elapsed()),
            Err(failure) => self.metrics.ran(failure.kind.as_str(), 0, started.elapsed()),
        }
        if !lock(&self.held).contains_key(&a.unit) {
            return; // settled by others while we ran
        }
        match result {
            Ok(mut exec) => {
                if self.config.fault == Some(Fault::CorruptOutput) {
                    exec.output
                        .extend_from_slice(b"\n(corrupted by fault injection)\n");
                    exec.digest = Digest::of(&exec.output);
                }
                tracing::debug!(unit = %a.unit, name = %a.name, fuel = exec.fuel, ms = started.elapsed().as_millis() as u64, "unit ran");
                let claim = Claim::sign(&self.identity, a.project, a.unit, exec.digest, exec.fuel);
                if let Some(h) = lock(&self.held).get_mut(&a.unit) {
                    h.output = Some(exec.output);
                    h.own = Some(claim.clone());
                    h.published = Instant::now();
                }
                let actions = lock(&self.book).add_own(claim.clone());
                self.act(actions, Trigger::Own);
                self.publish(claim).await;
            }
            Err(failure) => {
                tracing::info!(unit = %a.unit, name = %a.name, reason = %failure, "unit failed");
                self.report_failure(a.unit, failure).await;
            }
        }
    }

    async fn report_failure(&self, unit: UnitId, failure: Failure) {
        let mut attempt = 0u32;
        loop {
            match self.client.report_failure(unit, &failure).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && !self.cancel.is_cancelled() => {
                    attempt += 1;
                    if !pause(&self.cancel, backoff(attempt)).await {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(%unit, "failure report not taken: {e}");
                    break;
                }
            }
        }
        self.release(unit);
    }

    fn release(&self, unit: UnitId) {
        let held = {
            let mut held = lock(&self.held);
            held.remove(&unit);
            held.len()
        };
        self.metrics.held(held);
        lock(&self.book).release(unit);
    }

    /// Carries out quorum-book actions in the background.
    fn act(self: &Arc<Self>, actions: Vec<Action>, trigger: Trigger) {
        for action in actions {
            match action {
                Action::SubmitCertificate { unit, claims } => {
                    let output = {
                        let mut held = lock(&self.held);
                        match held.get_mut(&unit) {
                            Some(h) if !h.certifying => {
                                h.certifying = true;
                                h.output.clone()
                            }
                            _ => None,
                        }
                    };
                    let Some(output) = output else { continue };
                    let me = self.clone();
                    self.tasks.spawn(async move {
                        let (client, cancel) = (&me.client, &me.cancel);
                        if trigger == Trigger::PeerPush {
                            if !pause(cancel, PUSHED_QUORUM_GRACE).await {
                                return;
                            }
                            let version = lock(&me.peers).0;
                            if let Ok(reply) = client.heartbeat(&[unit], version).await
                                && reply.settled.contains(&unit)
                            {
                                me.release(unit);
                                return; // the peer certified it
                            }
                        }
                        let mut attempt = 0u32;
                        loop {
                            match client.submit_certificate(unit, &claims, &output).await {
                                Ok(accepted) => {
                                    me.metrics.certificate(accepted);
                                    tracing::debug!(%unit, accepted, "certificate submitted");
                                    break;
                                }
                                Err(e) if e.is_transient() => {
                                    attempt += 1;
                                    if attempt % 8 == 1 {
                                        tracing::warn!(%unit, "certificate not delivered yet: {e}");
                                    }
                                    if !pause(cancel, backoff(attempt)).await {
                                        return; // shutdown: the unit is handed back
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(%unit, "certificate refused: {e}");
                                    break;
                                }
                            }
                        }
                        me.release(unit);
                    });
                }
                Action::ReportDispute { unit, claims } => {
                    let client = self.client.clone();
                    self.tasks.spawn(async move {
                        tracing::info!(%unit, claims = claims.len(), "claims disagree; reporting a dispute");
                        if let Err(e) = client.dispute(unit, &claims).await {
                            tracing::warn!(%unit, "dispute not taken: {e}");
                        }
                    });
                }
            }
        }
    }

    /// Pushes `claim` to every peer and pulls their claims for its unit.
    async fn publish(self: &Arc<Self>, claim: Claim) {
        let peers = lock(&self.peers).1.clone();
        let mut exchanges = tokio::task::JoinSet::new();
        for peer in peers {
            let client = {
                let mut clients = lock(&self.peer_clients);
                match clients.get(&peer.addr) {
                    Some(c) => c.clone(),
                    None => match PeerClient::new(&peer.addr) {
                        Ok(c) => {
                            clients.insert(peer.addr.clone(), c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::debug!("skipping peer: {e}");
                            continue;
                        }
                    },
                }
            };
            let claim = claim.clone();
            self.metrics.claims_sent(1);
            exchanges.spawn(async move {
                (
                    peer,
                    client
                        .exchange(std::slice::from_ref(&claim), &[claim.unit])
                        .await,
                )
            });
        }
        while let Some(done) = exchanges.join_next().await {
            let Ok((peer, result)) = done else { continue };
            match result {
                Ok(claims) => {
                    for c in claims {
                        if let Err(e) = self.receive(c, Trigger::Own) {
                            tracing::warn!(peer = %peer.id, "peer returned a bad claim: {e}");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.id, addr = %peer.addr, "claim exchange failed: {e}")
                }
            }
        }
    }

    /// Keeps leases alive, drops settled units, refreshes the peer list.
    async fn heartbeat_loop(self: Arc<Self>, mut every: Duration, advertise: String) {
        let mut failures = 0u32;
        loop {
            if !pause(&self.cancel, every).await {
                return;
            }
            let held: Vec<UnitId> = lock(&self.held).keys().copied().collect();
            let version = lock(&self.peers).0;
            match self.client.heartbeat(&held, version).await {
                Ok(reply) => {
                    if failures > 0 {
                        tracing::info!("coordinator reachable again");
                    }
                    failures = 0;
                    for unit in reply.settled {
                        self.release(unit);
                    }
                    if let Some(peers) = reply.peers {
                        *lock(&self.peers) = peers;
                    }
                    if reply.unknown_worker {
                        tracing::warn!("coordinator does not know this worker; registering again");
                        if let Some(h) = self.register(&advertise).await {
                            every = h;
                        }
                    }
                }
                Err(e) => {
                    if failures.is_multiple_of(8) {
                        tracing::warn!("heartbeat failed: {e}");
                    }
                    failures += 1;
                }
            }
        }
    }

    /// Claims can miss each other (a peer was down or not yet known): units still waiting
    /// for their quorum are published again every few seconds.
    async fn republish_loop(self: Arc<Self>) {
        const EVERY: Duration = Duration::from_secs(2);
        loop {
            if !pause(&self.cancel, EVERY).await {
                return;
            }
            let waiting: Vec<Claim> = {
                let mut held = lock(&self.held);
                held.values_mut()
                    .filter(|h| !h.certifying && h.published.elapsed() >= EVERY)
                    .filter_map(|h| {
                        h.published = Instant::now();
                        h.own.clone()
                    })
                    .collect()
            };
            for claim in waiting {
                self.publish(claim).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worker_cannot_use_the_same_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = lock_data_dir(dir.path()).expect("first lock");
        let err = lock_data_dir(dir.path())
            .expect_err("second lock taken")
            .to_string();
        assert!(err.contains("another worker"), "{err}");
    }

    #[test]
    fn settings_are_validated_naming_the_flag() {
        let bad = [
            WorkerConfig {
                cores: 0,
                ..Default::default()
            },
            WorkerConfig {
                name: String::new(),
                ..Default::default()
            },
            WorkerConfig {
                coordinator: "127.0.0.1:7070".into(),
                ..Default::default()
            },
        ];
        for (config, flag) in bad.into_iter().zip(["--cores", "--name", "--coordinator"]) {
            let err = config.validate().expect_err("accepted").to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    /// On a single-threaded runtime, a guest that spins for a second must not stop other
    /// tasks: the ticker keeps running while the guest computes.
    #[test]
    fn guests_never_block_the_async_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let sandbox = Arc::new(
                Sandbox::new(SandboxConfig {
                    slots: 1,
                    max_memory_mb: 64,
                    ..Default::default()
                })
                .expect("sandbox"),
            );
            let executor = Executor::new(sandbox.clone(), 1).expect("executor");
            let spin = artifacts::hostile::SPIN;
            let compiled = sandbox
                .compile(Digest::of(spin), spin, false)
                .expect("compile");
            let limits = protocol::Limits {
                fuel: 1 << 50,
                wall_seconds: 1,
                ..Default::default()
            };
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let ticker = {
                let ticks = ticks.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            };
            let outcome = executor.run(compiled, Vec::new(), [0; 32], limits).await;
            ticker.abort();
            assert_eq!(
                outcome.map_err(|f| f.kind).err(),
                Some(protocol::FailureKind::Timeout)
            );
            assert!(
                ticks.load(std::sync::atomic::Ordering::Relaxed) > 5,
                "the runtime was blocked while the guest ran"
            );
        });
    }
}
