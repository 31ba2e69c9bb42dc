//! Fallow's volunteer worker. It registers with a coordinator under a volunteer account,
//! leases work units, runs each in the sandbox and publishes its result by commit–reveal on
//! the unit's rendezvous boards (peers chosen by hashing the unit over the live
//! membership); when a quorum of independent workers agrees with its own output it submits
//! the quorum certificate with the output bytes.
//!
//! # Layout
//! - [`run`] and `Shared`: the async shell — one loop per core fetching and running units,
//!   the gossip loop (polls the boards of held units), the heartbeat loop, and the peer
//!   server with this worker's own board.
//! - `gossip`: [`gossip::Holder`], the sans-IO holder side (which boards, what to send,
//!   what the answers mean) around [`protocol::quorum::QuorumBook`].
//! - `membership`: SWIM membership with foca over UDP, for workers that accept inbound
//!   connections (the members, who can be boards).
//! - `stats`: counters of exchanges, board refusals by reason and reports.
//! - `metrics`: Prometheus text format on `--metrics ADDR` (executions, fuel, busy and
//!   idle time, and the `stats`).
//! - `executor`: the guest threads; guest code never runs on the async runtime.
//! - `modules`: module fetch, on-disk cache and compilation.
//! - `checkpoints`: checkpoints of running units on disk (atomic writes, keyed by
//!   coordinator, project, unit, module and input), resumed after a restart.
//! - `rpc`: the gRPC boundary (coordinator client, peer service and client).
//! - `peer_limiter`: how often a connection, an address or a worker key may call the
//!   peer service.
//! - [`tls`]: how the coordinator is reached: plain HTTP on loopback, TLS pinned to its
//!   certificate's SHA-256 (in the URL or trusted on first use) anywhere else.
//! - [`provenance`]: whose projects run here: each unit's submitter signature is checked
//!   before it runs, against `--submitter-key` or a record of signers seen.
//! - `prefs`: the volunteer's preferences (`prefs.toml`, flags on top, live changes).
//! - `policy`: the sans-IO decision to run, throttle or suspend, from readings and time.
//! - `sources`: the real readings (idle time, CPU load, battery, local time) and the
//!   lowest OS priority for guest threads.
//! - `gate`: where guest threads are held (suspension, cores, memory) and slowed (CPU
//!   limit), and each running unit's progress.
//! - `control`: the policy loop, live preferences and the loopback control API with its
//!   client (`fallow worker status|suspend|resume|prefs`).

#![forbid(unsafe_code)]

mod checkpoints;
pub mod control;
mod executor;
pub mod gate;
pub mod policy;
pub mod prefs;
pub mod provenance;
pub mod sources;

pub use executor::guest_cpu_time;
pub mod gossip;
pub mod membership;
mod metrics;
mod modules;
mod peer_limiter;
pub mod rpc;
mod shares;
mod stats;
pub mod tls;

pub use stats::{Stats, StatsSnapshot};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::board::{Board, BoardLimits, Reason, Rejection};
use protocol::claim::Commitment;
use protocol::evidence::Evidence;
use protocol::quorum::Timing;
use protocol::{Claim, Digest, Failure, Identity, ProjectId, UnitId, WorkerId};
use sandbox::{Finished, Proceed, Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use checkpoints::{Checkpoints, Key, Throttle};
use executor::Executor;
use gossip::{Effect, Holder, PollConfig, Reply, Request};
use membership::{Member, MembershipConfig, MembershipHandle};
use modules::Modules;
use rpc::{Assignment, BoardHost, CoordinatorClient, Introduction, PeerClient, PeerInfo};
use shares::{Shares, prefetch};

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
    /// The module does not compile or instantiate: the module's fault (reported as
    /// `bad_module`). Never used for this worker's own trouble.
    #[error("module: {0}")]
    Module(String),
    /// This worker's own trouble, not the unit's: a guest thread gone, bad bytes in
    /// transit, an injected test fault. Units it hits are handed back, not failed.
    #[error("{0}")]
    Local(String),
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
    /// The peer service's TLS identity or a peer's endpoint could not be made.
    #[error(transparent)]
    PeerTls(#[from] connections::Error),
    /// The local control API: the worker is not running, refused the token or the
    /// request; the text says which and what to do.
    #[error("{0}")]
    Control(String),
    /// The coordinator's TLS certificate is not the pinned one; nothing was sent. The text
    /// names both fingerprints.
    #[error("{0}")]
    Certificate(String),
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
    /// The first unit's preparation fails once as a local I/O error would (a worker-side,
    /// non-deterministic failure): the unit must be handed back, not failed.
    LocalFailureOnce,
}

/// A coordinator to work for and its resource share (`--attach URL[=SHARE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// Coordinator URL.
    pub url: String,
    /// Resource share: cores are split over time in proportion to the shares of the
    /// coordinators that have work. Default 100 (BOINC's); 1 to 1,000,000.
    pub share: u32,
}

/// The default resource share.
pub const DEFAULT_SHARE: u32 = 100;

impl Attach {
    /// Parses `URL` or `URL=SHARE`.
    pub fn parse(s: &str) -> Result<Attach, Error> {
        let (url, share) = match s.rsplit_once('=') {
            // `https://HOST:PORT#sha256=HEX` without a share.
            Some((url, _)) if url.ends_with("#sha256") => (s, DEFAULT_SHARE),
            Some((url, share)) => {
                let share = share.trim().parse::<u32>().ok().filter(|s| (1..=1_000_000).contains(s)).ok_or_else(|| {
                    Error::Config(format!(
                        "--attach {s}: the share after `=` must be a whole number from 1 to 1000000 (got {share:?})"
                    ))
                })?;
                (url, share)
            }
            None => (s, DEFAULT_SHARE),
        };
        Ok(Attach {
            url: url.trim().to_string(),
            share,
        })
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL, when `attach` is empty. Default `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// Coordinators to work for, with their shares; empty: `coordinator` alone. Each gets
    /// its own registration, peer service (the first on `peer_listen`, the others on any
    /// free port) and membership; the cores are shared by resource share.
    pub attach: Vec<Attach>,
    /// Most units buffered per coordinator beyond the running ones, to keep cores busy
    /// across network hiccups. Default 2; 0 turns the buffer off. The buffer never takes
    /// more than the cores can start before the units' deadlines (their lease time).
    pub prefetch: usize,
    /// Data directory (identity key, module cache). Default `./fallow-worker`.
    pub data_dir: PathBuf,
    /// Units run at once. Default: all cores.
    pub cores: usize,
    /// Name shown to the coordinator. Default: the host name.
    pub name: String,
    /// Volunteer account the credit goes to: 1 to 64 printable characters. Default
    /// (`None`): `anon-` and the first 8 hex digits of the worker key.
    pub account: Option<String>,
    /// Team of the account: up to 64 printable characters; empty for none. Default empty.
    pub team: String,
    /// Whether to accept inbound connections: serve the peer service (a rendezvous board)
    /// and join the SWIM membership. Default true. False (`--no-inbound`, for workers behind
    /// NAT) still takes full part: it talks to boards over connections it opens itself.
    pub inbound: bool,
    /// Where the peer service listens: gRPC on TCP, and SWIM membership on UDP on the same
    /// port number. Default `0.0.0.0:0` (any free port free for both). If it cannot be
    /// bound the worker carries on without inbound connections.
    pub peer_listen: SocketAddr,
    /// Address peers use to reach us (TCP and UDP). Default: the listen port on the local
    /// address that routes to the coordinator.
    pub peer_advertise: Option<SocketAddr>,
    /// How long a graceful shutdown waits for running units: those whose guest
    /// checkpoints stop at their next checkpoint, the others may finish; what is still
    /// running then is handed back (or kept, if it has a checkpoint on disk).
    pub drain: Duration,
    /// Least time between two checkpoints of one unit written to disk. Default 30 s
    /// (BOINC writes at most every 60 s); 0 writes every checkpoint the guest saves. A
    /// crash loses at most this much plus one of the guest's own checkpoint intervals.
    pub checkpoint_every: Duration,
    /// Test-only fault injection.
    pub fault: Option<Fault>,
    /// Where to serve `GET /metrics` (Prometheus text format). Default: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Preference overrides (key → value as `fallow worker prefs set` takes it), applied
    /// over `<data>/prefs.toml`: the `fallow worker` flags. Default none.
    pub prefs: BTreeMap<String, String>,
    /// Allow plain `http://` to a coordinator that is not on loopback
    /// (`--insecure-plaintext`). Default false: off loopback only `https://` is accepted,
    /// pinned by `#sha256=` in the URL or on first use (`DATA/known_coordinators`).
    pub insecure_plaintext: bool,
    /// The enrollment token sent with every coordinator call (`--enroll-token`), for a
    /// coordinator that takes only enrolled workers. Default none.
    pub enroll_token: Option<String>,
    /// Run only projects signed by these submitter keys (`--submitter-key`). Default
    /// empty: any signed project, each new signer logged and recorded
    /// (`DATA/known_submitters`).
    pub submitters: Vec<protocol::SubmitterKey>,
    /// Also run projects submitted before projects were signed
    /// (`--allow-unsigned-projects`). Default false.
    pub allow_unsigned: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            attach: Vec::new(),
            prefetch: 2,
            data_dir: PathBuf::from("fallow-worker"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: "worker".into(),
            account: None,
            team: String::new(),
            inbound: true,
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer_advertise: None,
            drain: Duration::from_secs(10),
            checkpoint_every: Duration::from_secs(30),
            fault: None,
            metrics: None,
            prefs: BTreeMap::new(),
            insecure_plaintext: false,
            enroll_token: None,
            submitters: Vec::new(),
            allow_unsigned: false,
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
        if let Some(account) = &self.account
            && !printable(account, 1)
        {
            return Err(Error::Config(format!(
                "--account must be 1 to 64 printable characters, no control characters (got {account:?})"
            )));
        }
        if !printable(&self.team, 0) {
            return Err(Error::Config(format!(
                "--team must be at most 64 printable characters, no control characters (got {:?})",
                self.team
            )));
        }
        if self.attach.is_empty() {
            if !is_url(&self.coordinator) {
                return Err(Error::Config(format!(
                    "--coordinator must be a URL such as http://127.0.0.1:7070 (got {:?})",
                    self.coordinator
                )));
            }
            tls::connect(&self.coordinator, &self.trust())?;
        }
        let mut seen = HashSet::new();
        for a in &self.attach {
            if !is_url(&a.url) {
                return Err(Error::Config(format!(
                    "--attach must be a URL such as http://127.0.0.1:7070, optionally with =SHARE (got {:?})",
                    a.url
                )));
            }
            tls::connect(&a.url, &self.trust())?;
            if !(1..=1_000_000).contains(&a.share) {
                return Err(Error::Config(format!(
                    "--attach {}: the share must be from 1 to 1000000 (got {})",
                    a.url, a.share
                )));
            }
            if !seen.insert(a.url.trim_end_matches('/')) {
                return Err(Error::Config(format!(
                    "--attach {} is given twice; attach each coordinator once",
                    a.url
                )));
            }
        }
        Ok(())
    }

    /// How this worker trusts coordinators: pins learnt on first use go to
    /// `DATA/known_coordinators`.
    pub fn trust(&self) -> tls::Trust {
        tls::Trust {
            known: Some(self.data_dir.join(tls::KNOWN_COORDINATORS)),
            allow_plaintext: self.insecure_plaintext,
        }
    }

    /// The coordinators to work for: `attach`, or `coordinator` with the default share.
    pub fn attachments(&self) -> Vec<Attach> {
        if self.attach.is_empty() {
            vec![Attach {
                url: self.coordinator.clone(),
                share: DEFAULT_SHARE,
            }]
        } else {
            self.attach.clone()
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// `min` to 64 characters, none of them control characters, and not only blanks.
fn printable(s: &str, min: usize) -> bool {
    let n = s.chars().count();
    (min..=64).contains(&n) && !s.chars().any(char::is_control) && (n == 0 || !s.trim().is_empty())
}

/// The account of a worker started without `--account`.
pub fn default_account(worker: WorkerId) -> String {
    format!("anon-{}", hex::encode(&worker.0[..4]))
}

/// A unit this worker holds.
struct Held {
    project: ProjectId,
    /// Its checkpoint files, for a module that checkpoints.
    checkpoint: Option<Key>,
    output: Option<Vec<u8>>,
    /// A certificate upload is running; the next one waits here (the latest wins).
    uploading: bool,
    next_certificate: Option<(Vec<Claim>, bool)>,
}

impl Held {
    /// A unit just leased (or taken back), with no result yet.
    fn new(project: ProjectId, checkpoint: Option<Key>) -> Held {
        Held {
            project,
            checkpoint,
            output: None,
            uploading: false,
            next_certificate: None,
        }
    }
}

struct Shared {
    identity: Arc<Identity>,
    account: String,
    config: WorkerConfig,
    client: CoordinatorClient,
    holder: Mutex<Holder>,
    held: Mutex<HashMap<UnitId, Held>>,
    /// Our rendezvous board (members only; a no-inbound worker never gets asked).
    board: Mutex<Board>,
    /// Offenders already reported from our board, so a replayed proof is reported once.
    reported: Mutex<HashSet<(UnitId, WorkerId)>>,
    membership: Option<MembershipHandle>,
    /// The coordinator's key, learnt at registration: membership credentials verify under it.
    coordinator_key: Mutex<Option<WorkerId>>,
    /// The coordinator's peer list and its version: the seed for membership, and the
    /// member list itself for a worker without inbound connections.
    peers: Mutex<(u64, Vec<PeerInfo>)>,
    /// Boards that failed us recently, avoided until the instant given.
    suspects: Mutex<HashMap<WorkerId, Instant>>,
    peer_clients: Mutex<HashMap<(SocketAddr, WorkerId), PeerClient>>,
    stats: Arc<Stats>,
    metrics: Arc<metrics::Metrics>,
    control: Arc<control::Control>,
    /// Whose projects this worker runs (shared by every attached coordinator).
    policy: Arc<provenance::Policy>,
    executor: Arc<Executor>,
    modules: Modules,
    checkpoints: Arc<Checkpoints>,
    /// Units with a checkpoint on disk from before a restart, run before asking for more.
    resume: Mutex<VecDeque<Assignment>>,
    /// Prefetched units (leased, held, not started) and when they came.
    buffer: Mutex<VecDeque<(Assignment, Instant)>>,
    /// Wall time of a unit here (moving average) and the lease units come with.
    unit_time: Mutex<Option<(Duration, Duration)>>,
    /// This coordinator's share of all shares (1 when it is the only one).
    share_fraction: f64,
    /// Work requests failed in a row.
    failures: Mutex<u32>,
    /// [`Fault::LocalFailureOnce`] has fired.
    fault_fired: std::sync::atomic::AtomicBool,
    /// The coordinator's last reason for no work, and when it was logged.
    no_work_said: Mutex<Option<(String, Instant)>>,
    started: Instant,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here are single map or state-machine operations that do not panic
    // midway: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a worker until `shutdown` completes, then drains: running units get
/// `config.drain` to finish, and whatever is still unverified is handed back.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with_stats(config, shutdown, Arc::new(Stats::default())).await
}

/// [`run`], counting gossip and board activity into `stats` (readable while it runs).
pub async fn run_with_stats(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    // Two workers on one data dir would share an identity and trip over each other's
    // leases: the lock lives as long as this function.
    let _lock = lock_data_dir(&config.data_dir)?;
    // Loaded once: every attached coordinator knows this worker by the same key.
    let identity = Arc::new(Identity::load_or_create(
        &config.data_dir.join("worker.key"),
    )?);
    let account = config
        .account
        .clone()
        .unwrap_or_else(|| default_account(identity.id()));
    let attachments = config.attachments();
    let coordinators = attachments
        .iter()
        .map(|a| a.url.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (control, control_server) = start_control(
        &config,
        &identity,
        &account,
        &coordinators,
        Box::new(sources::SystemSources::new()),
    )
    .await?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: config.cores as u32 + 1,
        ..SandboxConfig::default()
    })?);
    let membership_counters = Arc::new(membership::Counters::default());
    let common = Common {
        identity: identity.clone(),
        account: account.clone(),
        executor: Arc::new(
            Executor::new(sandbox.clone(), config.cores)
                .map_err(|e| Error::Config(format!("cannot start guest threads: {e}")))?,
        ),
        sandbox,
        checkpoints: Arc::new(Checkpoints::open(config.data_dir.join("checkpoints"))?),
        control,
        policy: Arc::new(provenance::Policy::load(
            &config.data_dir,
            &config.submitters,
            config.allow_unsigned,
        )?),
        metrics: Arc::new(metrics::Metrics::new(
            stats.clone(),
            membership_counters.clone(),
        )),
        stats,
        membership_counters,
        cancel: CancellationToken::new(),
    };
    let total: u64 = attachments.iter().map(|a| u64::from(a.share)).sum();
    let mut attached = Vec::with_capacity(attachments.len());
    for (i, at) in attachments.iter().enumerate() {
        let mut c = config.clone();
        c.coordinator = at.url.clone();
        if i > 0 {
            // One peer port per coordinator: the first gets the one asked for.
            c.peer_listen.set_port(0);
            c.peer_advertise = None;
        }
        let fraction = f64::from(at.share) / total.max(1) as f64;
        attached.push(Attached::start(c, fraction, &common).await?);
    }

    let metrics_stop = CancellationToken::new();
    if let Some(addr) = config.metrics {
        let (local, server) = metrics::serve(
            addr,
            common.metrics.clone(),
            metrics_stop.clone().cancelled_owned(),
        )
        .await?;
        tracing::info!("metrics on http://{local}/metrics");
        tokio::spawn(server);
    }
    {
        let cancel = common.cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            cancel.cancel();
        });
    }
    let mut loops = tokio::task::JoinSet::new();
    let mut registered = Vec::new();
    for a in &attached {
        match a.shared.register(&a.advertised).await {
            Some(heartbeat) => registered.push(heartbeat),
            None => break, // shut down before every coordinator answered
        }
    }
    if registered.len() == attached.len() {
        for (a, heartbeat) in attached.iter().zip(registered) {
            a.shared.take_back_checkpointed_units().await;
            loops.spawn(
                a.shared
                    .clone()
                    .heartbeat_loop(heartbeat, a.advertised.clone()),
            );
            loops.spawn(a.shared.clone().gossip_loop());
        }
        let shares = Arc::new(Mutex::new(Shares::new(
            &attachments.iter().map(|a| a.share).collect::<Vec<_>>(),
        )));
        let all: Arc<Vec<Arc<Shared>>> =
            Arc::new(attached.iter().map(|a| a.shared.clone()).collect());
        for slot in 0..config.cores {
            loops.spawn(core_loop(
                slot,
                all.clone(),
                shares.clone(),
                common.control.clone(),
                common.cancel.clone(),
            ));
        }
    }

    common.cancel.cancelled().await;
    tracing::info!(
        "shutting down: draining running units for up to {:?}",
        config.drain
    );
    let drained = tokio::time::timeout(config.drain, async {
        while loops.join_next().await.is_some() {}
        for a in &attached {
            a.shared.tasks.close();
            a.shared.tasks.wait().await;
        }
    })
    .await;
    loops.abort_all();
    for a in &attached {
        a.shared.settle_held_units(drained.is_err()).await;
    }
    tracing::info!("gossip: {}", common.stats.snapshot());
    metrics_stop.cancel();
    for a in attached {
        a.stop().await;
    }
    common.control.stop();
    control_server.shutdown().await;
    Ok(())
}

/// What every attachment of one worker shares: the guest threads, the checkpoint store,
/// the preferences and policy, the counters and the stop signal.
struct Common {
    /// This worker's key (`DATA/worker.key`), the same for every coordinator.
    identity: Arc<Identity>,
    /// The account credit goes to (`--account`, or [`default_account`]).
    account: String,
    sandbox: Arc<Sandbox>,
    control: Arc<control::Control>,
    policy: Arc<provenance::Policy>,
    executor: Arc<Executor>,
    checkpoints: Arc<Checkpoints>,
    metrics: Arc<metrics::Metrics>,
    stats: Arc<Stats>,
    /// SWIM datagrams and members the memberships refused (one count for all coordinators).
    membership_counters: Arc<membership::Counters>,
    cancel: CancellationToken,
}

/// One coordinator this worker works for: its state, peer server and membership.
struct Attached {
    shared: Arc<Shared>,
    advertised: String,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    peer_stop: CancellationToken,
}

impl Attached {
    async fn start(
        config: WorkerConfig,
        share_fraction: f64,
        common: &Common,
    ) -> Result<Attached, Error> {
        let identity = common.identity.clone();
        let account = common.account.clone();
        let client = CoordinatorClient::enrolled(
            &config.coordinator,
            identity.clone(),
            &config.trust(),
            config.enroll_token.as_deref(),
        )?;
        let sockets = if config.inbound {
            match bind_peer(config.peer_listen).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "{e}; carrying on without inbound connections (as with --no-inbound): \
                         this worker talks to boards but is never one"
                    );
                    None
                }
            }
        } else {
            None
        };
        let (listener, membership, advertise) = match sockets {
            Some((listener, udp)) => {
                let local = listener
                    .local_addr()
                    .map_err(|e| Error::Config(format!("peer listener: {e}")))?;
                let advertise = match config.peer_advertise {
                    Some(a) => a,
                    None => SocketAddr::new(
                        advertise_ip(&config.coordinator, local).await,
                        local.port(),
                    ),
                };
                let me = Member {
                    id: identity.id(),
                    addr: advertise,
                };
                let membership = membership::spawn(
                    MembershipConfig::new(me),
                    identity.clone(),
                    udp,
                    common.membership_counters.clone(),
                )?;
                (Some(listener), Some(membership), Some(advertise))
            }
            None => (None, None, None),
        };
        let shared = Arc::new(Shared {
            modules: Modules::new(
                config.data_dir.join("modules"),
                common.sandbox.clone(),
                common.control.disk_cap(),
            ),
            control: common.control.clone(),
            policy: common.policy.clone(),
            checkpoints: common.checkpoints.clone(),
            resume: Mutex::new(VecDeque::new()),
            buffer: Mutex::new(VecDeque::new()),
            unit_time: Mutex::new(None),
            share_fraction,
            failures: Mutex::new(0),
            fault_fired: std::sync::atomic::AtomicBool::new(false),
            no_work_said: Mutex::new(None),
            identity,
            account,
            client,
            holder: Mutex::new(Holder::new(Timing::default(), PollConfig::default())),
            held: Mutex::new(HashMap::new()),
            board: Mutex::new(Board::new(BoardLimits::default())),
            reported: Mutex::new(HashSet::new()),
            membership,
            coordinator_key: Mutex::new(None),
            peers: Mutex::new((0, Vec::new())),
            suspects: Mutex::new(HashMap::new()),
            peer_clients: Mutex::new(HashMap::new()),
            metrics: common.metrics.clone(),
            stats: common.stats.clone(),
            executor: common.executor.clone(),
            started: Instant::now(),
            tasks: TaskTracker::new(),
            cancel: common.cancel.clone(),
            config,
        });
        let advertised = advertise.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            coordinator = %shared.config.coordinator,
            worker = %shared.identity.id(),
            account = %shared.account,
            peer = if advertised.is_empty() { "none (no inbound connections)" } else { advertised.as_str() },
            cores = shared.config.cores,
            "worker starting"
        );
        let peer_stop = CancellationToken::new();
        let server = match listener {
            None => None,
            Some(listener) => Some((
                listener,
                // Served over TLS with a fresh key bound to this worker's key: peers reach
                // this board encrypted, and only as this worker (`connections::peer_tls`).
                connections::peer_tls::PeerTls::new(&shared.identity)?.server_config(),
            )),
        };
        let server = server.map(|(listener, tls)| {
            let stop = peer_stop.clone();
            let svc = rpc::PeerService::new(shared.clone());
            // As the coordinator's: a cap per address (loopback exempt), idle connections
            // closed, keepalive, a request timeout (`connections`, default limits).
            let connections = connections::Connections::new(connections::Limits::default());
            let server = connections::server(connections.limits()).tls_config(tls);
            tokio::spawn(async move {
                server?
                    .layer(connections.layer())
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        connections.incoming(listener),
                        stop.cancelled_owned(),
                    )
                    .await
            })
        });
        Ok(Attached {
            shared,
            advertised,
            server,
            peer_stop,
        })
    }

    async fn stop(self) {
        self.peer_stop.cancel();
        if let Some(server) = self.server {
            let _ = server.await;
        }
        self.shared.stop_membership().await;
    }
}

/// One core: works for the attachment [`Shares::pick`] names, one unit at a time, until
/// shutdown. Its time is charged to that attachment; an attachment without work is
/// skipped until it said to ask again.
async fn core_loop(
    slot: usize,
    attached: Arc<Vec<Arc<Shared>>>,
    shares: Arc<Mutex<Shares>>,
    control: Arc<control::Control>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        // Suspended, or this core is over `max_cores`: lease nothing until allowed.
        if !control.wait_to_lease(slot, &cancel).await {
            return;
        }
        let now = Instant::now();
        let pick = lock(&shares).pick(now);
        let Some(i) = pick else {
            let wake = lock(&shares).next_wake(now);
            let wait = wake.map_or(GOSSIP_TICK, |w| w.saturating_duration_since(now));
            let waited = pause(&cancel, wait).await;
            if let Some(first) = attached.first() {
                first.metrics.idle(now.elapsed());
            }
            if !waited {
                return;
            }
            continue;
        };
        let ticket = lock(&shares).start(i, now);
        let shared = &attached[i];
        match shared.next_unit(slot).await {
            Next::Unit(a) => {
                shared.execute(*a).await;
                lock(&shares).finish(ticket, Instant::now());
            }
            Next::Wait(d) => lock(&shares).no_work(ticket, Instant::now() + d),
            Next::Stop => {
                lock(&shares).no_work(ticket, Instant::now());
                return;
            }
        }
    }
}

/// What a core gets from an attachment.
enum Next {
    /// A unit to run.
    Unit(Box<Assignment>),
    /// Nothing now: ask again after this long.
    Wait(Duration),
    /// Shutting down.
    Stop,
}

/// Loads the preferences, decides once from a first reading, starts the policy loop and
/// the control API.
async fn start_control(
    config: &WorkerConfig,
    identity: &Identity,
    account: &str,
    coordinators: &str,
    mut sources: Box<dyn sources::Sources>,
) -> Result<(Arc<control::Control>, control::ControlServer), Error> {
    // Readings block (sysinfo, X11): not on the async threads.
    let (sources, first) = tokio::task::spawn_blocking(move || {
        let first = sources.read();
        (sources, first)
    })
    .await
    .map_err(|e| Error::Config(format!("reading the machine failed: {e}")))?;
    let control =
        control::Control::new(&config.data_dir, config.cores, config.prefs.clone(), first)?;
    control.spawn_loop(sources)?;
    let server = control::serve(
        control.clone(),
        control::Identity {
            worker: identity.id().to_string(),
            account: account.to_string(),
            coordinator: coordinators.to_string(),
        },
        &config.data_dir,
    )
    .await?;
    tracing::info!(
        "control API on {} (token in {}); state: {:?}",
        server.addr,
        config.data_dir.join(control::TOKEN_FILE).display(),
        control.decision().state
    );
    Ok((control, server))
}

/// Binds the peer service's TCP listener and the membership's UDP socket on the same port
/// number (so one address, and one port to forward, serves both). With port 0 the OS picks
/// the TCP port; if that UDP port happens to be taken, try another.
async fn bind_peer(
    listen: SocketAddr,
) -> Result<(tokio::net::TcpListener, tokio::net::UdpSocket), Error> {
    let mut last = None;
    for _ in 0..8 {
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Config(format!("--peer-listen {listen} (TCP): {e}")))?;
        let port = tcp
            .local_addr()
            .map_err(|e| Error::Config(format!("--peer-listen {listen}: {e}")))?
            .port();
        match tokio::net::UdpSocket::bind(SocketAddr::new(listen.ip(), port)).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => {
                return Err(Error::Config(format!(
                    "--peer-listen {listen} (UDP, for membership): {e}"
                )));
            }
        }
    }
    Err(Error::Config(format!(
        "--peer-listen {listen}: no port free for both TCP and UDP ({})",
        last.map_or_else(String::new, |e| e.to_string())
    )))
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
        .split(['/', '#'])
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

/// Least time between two logs of the same reason for no work.
const NO_WORK_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a core waits after handing a unit back for its own trouble.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// How soon a worker that knows no peers heartbeats again (to learn them).
const PEERLESS_HEARTBEAT: Duration = Duration::from_secs(1);

/// A worker with a peer service whose address the coordinator could not prove registers
/// again after this, then after twice as long each time up to [`PROVE_RETRY_MAX`]: a proof
/// that timed out on a loaded machine, or a port forwarded a little late, must not keep it
/// out of the membership for good.
const PROVE_RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between such registrations.
const PROVE_RETRY_MAX: Duration = Duration::from_secs(600);
/// How often the gossip loop wakes; each unit is polled at its own pace
/// ([`PollConfig`]), this only bounds the added latency.
const GOSSIP_TICK: Duration = Duration::from_millis(250);

/// Holders that reach the same quorum normally see it within one poll of each other. The
/// first-ranked claimant ([`gossip::submit_rank`]) uploads the output at once; each later
/// rank waits this much longer and uploads only if the unit is still not settled, so the
/// output normally travels once.
const SUBMIT_GRACE: Duration = Duration::from_secs(2);

/// A board that failed an exchange is avoided this long (its units go to the next-ranked
/// members meanwhile); SWIM removes it for good if it is really gone.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How often our board drops the units untouched for `BoardLimits::ttl_ms`.
const BOARD_SWEEP: Duration = Duration::from_secs(10);

impl BoardHost for Shared {
    fn exchange(
        &self,
        commitments: Vec<Commitment>,
        reveals: Vec<Claim>,
        want: &[UnitId],
    ) -> Reply {
        self.serve(commitments, reveals, want)
    }

    fn refused(&self, why: &'static str) {
        tracing::debug!(why, "refused a board exchange");
        self.stats.refused();
    }

    fn prove(
        &self,
        coordinator: WorkerId,
        nonce: &[u8; protocol::membership::NONCE_LEN],
        peer_addr: &str,
    ) -> Option<(WorkerId, [u8; 64])> {
        // Only the address we advertise: we vouch for nothing else.
        let me = self.membership.as_ref()?.me();
        (me.addr.to_string() == peer_addr).then(|| {
            (
                self.identity.id(),
                self.identity.sign_peer_proof(coordinator, nonce, peer_addr),
            )
        })
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Our board answers one exchange (from a peer, or from ourselves without RPC).
    /// Refusals are counted by reason; those that prove misbehaviour are reported.
    fn serve(&self, commitments: Vec<Commitment>, reveals: Vec<Claim>, want: &[UnitId]) -> Reply {
        // The board runs on the coordinator's clock: lease tickets expire on it.
        let now = self.client.coordinator_now_ms();
        // Kept to pair an offender's message with its filed commitment; bounded by the
        // request limits.
        let (sent_commitments, sent_reveals) = (commitments.clone(), reveals.clone());
        let (views, rejected, evidence) = {
            let mut board = lock(&self.board);
            let (views, rejected) = board.exchange(commitments, reveals, want, now);
            let evidence = evidence(&board, &rejected, &sent_commitments, &sent_reveals);
            (views, rejected, evidence)
        };
        self.stats.served();
        for r in &rejected {
            self.stats.rejected(r.reason);
            match r.offender {
                Some(w) => {
                    tracing::warn!(unit = %r.unit, worker = %w, reason = r.reason.as_str(), "board caught a worker changing its answer")
                }
                None => {
                    tracing::debug!(unit = %r.unit, reason = r.reason.as_str(), "board refused a message")
                }
            }
        }
        for e in evidence {
            self.report_misbehaviour(e);
        }
        Reply {
            views,
            rejected: rejected.into_iter().map(|r| (r.unit, r.reason)).collect(),
        }
    }

    fn report_misbehaviour(&self, evidence: Evidence) {
        let Ok((worker, unit)) = evidence.offender() else {
            return; // proves nothing: never accuse on it
        };
        {
            let mut reported = lock(&self.reported);
            if reported.len() > 10_000 {
                reported.clear();
            }
            if !reported.insert((unit, worker)) {
                return;
            }
        }
        self.stats.misbehaviour();
        let client = self.client.clone();
        self.tasks.spawn(async move {
            tracing::warn!(%unit, %worker, "reporting misbehaviour to the coordinator");
            if let Err(e) = client.report_misbehaviour(&evidence).await {
                tracing::warn!(%unit, %worker, "misbehaviour report not taken: {e}");
            }
        });
    }

    async fn stop_membership(&self) {
        if let Some(m) = &self.membership {
            m.shutdown().await;
        }
    }

    /// Registers, retrying until the coordinator answers; `None` if shut down first.
    async fn register(&self, advertise: &str) -> Option<Duration> {
        let mut attempt = 0u32;
        loop {
            let me = Introduction {
                name: &self.config.name,
                account: &self.account,
                team: &self.config.team,
                peer_addr: advertise,
                cores: self.config.cores as u32,
            };
            match self.client.register(&self.identity, me).await {
                Ok(reg) => {
                    // Our board files commitments only with this coordinator's tickets.
                    match reg.coordinator_key {
                        Some(key) => lock(&self.board).set_coordinator(key),
                        None => tracing::warn!(
                            "the coordinator sends no key (older version): our board files no commitments"
                        ),
                    }
                    self.vouched(reg.coordinator_key, reg.credential);
                    if !reg.peer_warning.is_empty() {
                        tracing::warn!(
                            "the coordinator does not vouch for peer address {advertise}: {}; \
                             working without inbound connections (never a board)",
                            reg.peer_warning
                        );
                    }
                    self.seed_membership(&reg.peers);
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

    /// Hands the coordinator's membership credential for us to the membership (which joins
    /// only with one).
    fn vouched(
        &self,
        coordinator: Option<WorkerId>,
        credential: Option<protocol::membership::Credential>,
    ) {
        let coordinator = coordinator.or(*lock(&self.coordinator_key));
        if let (Some(m), Some(coordinator), Some(credential)) =
            (&self.membership, coordinator, credential)
        {
            *lock(&self.coordinator_key) = Some(coordinator);
            m.set_credential(coordinator, credential);
        }
    }

    fn seed_membership(&self, peers: &[PeerInfo]) {
        if let Some(m) = &self.membership {
            m.seed(peers_as_members(peers));
        }
    }

    /// The members a unit's boards are chosen from: SWIM's live members for a member, the
    /// coordinator's list of reachable workers for a worker without inbound connections
    /// (or whose peer address the coordinator does not vouch for: nobody admits it into
    /// the membership); minus boards that failed us recently.
    fn members(&self) -> Vec<Member> {
        let mut members = match &self.membership {
            Some(m) if m.credentialed() => m.members().to_vec(),
            _ => peers_as_members(&lock(&self.peers).1),
        };
        let now = Instant::now();
        let mut suspects = lock(&self.suspects);
        suspects.retain(|_, until| *until > now);
        let me = self.identity.id();
        members.retain(|m| m.id == me || !suspects.contains_key(&m.id));
        members
    }

    fn suspect(&self, board: WorkerId) {
        if board != self.identity.id() {
            lock(&self.suspects).insert(board, Instant::now() + SUSPECT_FOR);
        }
    }

    /// A client for `board`'s board at `addr`, connecting only to that worker (TLS bound
    /// to its key).
    fn peer_client(&self, board: WorkerId, addr: SocketAddr) -> Result<PeerClient, Error> {
        let mut clients = lock(&self.peer_clients);
        if let Some(c) = clients.get(&(addr, board)) {
            return Ok(c.clone());
        }
        let c = PeerClient::new(addr, board)?;
        if clients.len() > 1024 {
            clients.clear(); // members come and go; reconnecting is cheap
        }
        clients.insert((addr, board), c.clone());
        Ok(c)
    }

    /// The next unit for a core working for this coordinator: a unit to resume, a
    /// buffered one, or one asked for now (together with enough to refill the buffer).
    async fn next_unit(self: &Arc<Self>, slot: usize) -> Next {
        if self.cancel.is_cancelled() {
            return Next::Stop;
        }
        if let Some(a) = lock(&self.resume).pop_front() {
            return Next::Unit(Box::new(a));
        }
        self.hand_back_overdue();
        loop {
            let Some((a, _)) = lock(&self.buffer).pop_front() else {
                break;
            };
            if lock(&self.held).contains_key(&a.unit) {
                return Next::Unit(Box::new(a)); // still ours (not settled meanwhile)
            }
        }
        let want = self
            .prefetch_target()
            .saturating_sub(lock(&self.buffer).len());
        let asked = Instant::now();
        let work = tokio::select! {
            _ = self.cancel.cancelled() => return Next::Stop,
            w = self.client.request_work_why(
                1 + want as u32,
                self.policy.accepted(),
                self.policy.allow_unsigned(),
            ) => w,
        };
        self.metrics.idle(asked.elapsed());
        match work {
            Ok((units, _, _)) if !units.is_empty() => {
                *lock(&self.failures) = 0;
                let mut units = units.into_iter();
                let first = units.next();
                let now = Instant::now();
                for a in units {
                    // Held at once, so heartbeats keep its lease and a shutdown hands it back.
                    lock(&self.held).insert(a.unit, Held::new(a.project, None));
                    lock(&self.buffer).push_back((a, now));
                }
                match first {
                    Some(a) => Next::Unit(Box::new(a)),
                    None => Next::Wait(Duration::ZERO),
                }
            }
            Ok((_, wait, reason)) => {
                self.say_why_no_work(reason);
                Next::Wait(wait)
            }
            Err(e) => {
                let failures = {
                    let mut failures = lock(&self.failures);
                    *failures += 1;
                    *failures
                };
                if failures % 8 == 1 {
                    tracing::warn!(slot, coordinator = %self.config.coordinator, "cannot get work: {e}");
                }
                Next::Wait(backoff(failures))
            }
        }
    }

    /// Logs the coordinator's reason for giving no work (at most once a minute, and when
    /// it changes), so a capped worker is not silently idle.
    fn say_why_no_work(&self, reason: String) {
        let mut last = lock(&self.no_work_said);
        if reason.is_empty() {
            *last = None;
            return;
        }
        let due = match &*last {
            Some((said, at)) => *said != reason || at.elapsed() >= NO_WORK_LOG_EVERY,
            None => true,
        };
        if due {
            tracing::info!(coordinator = %self.config.coordinator, "no work for now: {reason}");
            *last = Some((reason, Instant::now()));
        }
    }

    /// How many units to keep buffered: what this coordinator's share of the cores can
    /// start within half the units' lease at the measured unit time, at most `prefetch`.
    fn prefetch_target(&self) -> usize {
        let Some((unit, lease)) = *lock(&self.unit_time) else {
            return 0;
        };
        let cores = self.config.cores as f64 * self.share_fraction;
        prefetch::target(Some(unit), cores, lease, self.config.prefetch)
    }

    /// Hands back buffered units that could no longer start and finish within their
    /// lease, while another worker still can.
    fn hand_back_overdue(self: &Arc<Self>) {
        let unit = lock(&self.unit_time).map(|(u, _)| u);
        let now = Instant::now();
        let overdue: Vec<UnitId> = {
            let mut buffer = lock(&self.buffer);
            let (late, keep): (Vec<_>, Vec<_>) = buffer
                .drain(..)
                .partition(|(a, at)| prefetch::overdue(now - *at, unit, a.lease));
            *buffer = keep.into();
            late.into_iter().map(|(a, _)| a.unit).collect()
        };
        if overdue.is_empty() {
            return;
        }
        for u in &overdue {
            self.release(*u);
        }
        tracing::info!(
            units = overdue.len(),
            "handing buffered units back early: they could not start before their deadline"
        );
        let client = self.client.clone();
        self.tasks.spawn(async move {
            if let Err(e) = client.return_units(&overdue).await {
                tracing::warn!(
                    "could not hand buffered units back ({e}); their leases will expire"
                );
            }
        });
    }

    /// After the drain: units with a checkpoint on disk keep their lease (a restart within
    /// the coordinator's lease time resumes them here; otherwise the lease expires and
    /// another worker runs them); everything else goes back now.
    async fn settle_held_units(&self, overran: bool) {
        let (kept, unfinished): (Vec<_>, Vec<_>) = lock(&self.held)
            .iter()
            .map(|(unit, h)| (*unit, h.checkpoint.clone()))
            .partition(|(_, key)| {
                key.as_ref()
                    .is_some_and(|k| self.checkpoints.load(k).is_some())
            });
        for (unit, _) in &kept {
            tracing::info!(%unit, "kept unit with its checkpoint; restart this worker before its lease expires to resume it");
        }
        let unfinished: Vec<UnitId> = unfinished.into_iter().map(|(u, _)| u).collect();
        if !unfinished.is_empty() {
            match self.client.return_units(&unfinished).await {
                Ok(()) => tracing::info!(units = unfinished.len(), "handed unfinished units back"),
                Err(e) => tracing::warn!(
                    "could not hand {} units back ({e}); their leases will expire",
                    unfinished.len()
                ),
            }
        }
        if overran {
            tracing::warn!(
                kept = kept.len(),
                handed_back = unfinished.len(),
                "drain deadline passed with executions still running; their units are accounted for above"
            );
        }
    }

    async fn execute(self: &Arc<Self>, a: Assignment) {
        // The submitter's signature first: nothing unsigned by a key this worker accepts,
        // or changed since it was signed, is fetched, compiled or run.
        match self.policy.check(&self.config.coordinator, &a) {
            Ok(()) => {}
            Err(provenance::Refusal::BadSignature(e)) => {
                tracing::warn!(unit = %a.unit, project = %a.project, "refusing to run a unit: {e}");
                lock(&self.held).insert(a.unit, Held::new(a.project, None));
                let failure = Failure::new(protocol::FailureKind::BadSignature, e);
                self.report_failure(a.unit, failure).await;
                return;
            }
            Err(provenance::Refusal::NotAccepted(e)) => {
                tracing::warn!(unit = %a.unit, "handing a unit back unrun: {e}");
                self.release(a.unit);
                if let Err(e) = self.client.return_units(&[a.unit]).await {
                    tracing::warn!(unit = %a.unit, "could not hand it back ({e}); its lease will expire");
                }
                return;
            }
        }
        lock(&self.held).insert(a.unit, Held::new(a.project, None));
        lock(&self.holder).hold(a.unit, a.project, a.quorum, a.ticket);
        let prepared = if self.config.fault == Some(Fault::LocalFailureOnce)
            && !self
                .fault_fired
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            Err(Error::io(
                &self.config.data_dir.join("modules"),
                std::io::Error::other("injected by --fault local-failure-once"),
            ))
        } else {
            self.modules
                .get(&self.client, a.module, a.limits.nan_canonicalization)
                .await
        };
        let compiled = match prepared {
            Ok(c) => c,
            // Only the module's own fault fails the unit (`bad_module`).
            Err(e @ Error::Module(_)) => {
                tracing::warn!(unit = %a.unit, "module does not compile: {e}");
                let failure = Failure::new(protocol::FailureKind::BadModule, e.to_string());
                self.report_failure(a.unit, failure).await;
                return;
            }
            Err(e) => {
                self.hand_back_local(a.unit, &e).await;
                return;
            }
        };
        let seed = protocol::unit_seed(&a.name, &a.input);
        let key = compiled
            .checkpoints()
            .then(|| Key::new(&self.config.coordinator, &a));
        let resume = key.as_ref().and_then(|k| self.checkpoints.load(k));
        if let Some(h) = lock(&self.held).get_mut(&a.unit) {
            h.checkpoint = key.clone();
        }
        if let Some(c) = &resume {
            tracing::info!(unit = %a.unit, name = %a.name, checkpoint = c.segment, fuel = c.fuel, "resuming unit from its checkpoint");
        }
        let on_checkpoint = self.checkpoint_sink(key.clone(), &a);
        let started = Instant::now();
        let pacer = self
            .control
            .gate()
            .pacer(a.unit, a.project, &a.name, &a.limits);
        let result = self
            .executor
            .run_resumable(
                compiled,
                a.input.clone(),
                seed,
                a.limits,
                resume,
                Box::new(pacer),
                on_checkpoint,
            )
            .await;
        let result = match result {
            Err(e) => {
                self.control.gate().finished(gate::Finished {
                    unit: a.unit.0,
                    name: a.name.clone(),
                    result: "handed back".to_string(),
                    fuel: 0,
                    seconds: started.elapsed().as_secs_f64(),
                });
                self.hand_back_local(a.unit, &e).await;
                return;
            }
            Ok(r) => r,
        };
        let result = match result {
            Ok(Finished::Stopped(c)) => {
                // Shutting down: the checkpoint is on disk; the unit stays held so the
                // drain keeps its lease for a restart.
                tracing::info!(unit = %a.unit, checkpoint = c.segment, "stopped unit at its checkpoint for shutdown");
                self.metrics.ran("stopped", 0, started.elapsed());
                self.control.gate().finished(gate::Finished {
                    unit: a.unit.0,
                    name: a.name.clone(),
                    result: "stopped".to_string(),
                    fuel: c.fuel,
                    seconds: started.elapsed().as_secs_f64(),
                });
                return;
            }
            Ok(Finished::Done(exec)) => {
                if exec.resumed_from == 0 {
                    let took = started.elapsed();
                    let mut t = lock(&self.unit_time);
                    let avg = t.map_or(took, |(avg, _)| (avg * 3 + took) / 4);
                    *t = Some((avg, a.lease));
                }
                Ok(exec)
            }
            Err(f) => Err(f),
        };
        if let Some(k) = &key {
            self.checkpoints.remove(k);
        }
        let (kind, fuel, fuel_here) = match &result {
            Ok(exec) => ("ok", exec.fuel, exec.fuel_here),
            Err(failure) => (failure.kind.as_str(), 0, 0),
        };
        self.metrics.ran(kind, fuel_here, started.elapsed());
        self.control.gate().finished(gate::Finished {
            unit: a.unit.0,
            name: a.name.clone(),
            result: kind.to_string(),
            fuel,
            seconds: started.elapsed().as_secs_f64(),
        });
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
                tracing::info!(
                    unit = %a.unit,
                    name = %a.name,
                    fuel = exec.fuel,
                    fuel_here = exec.fuel_here,
                    resumed_from = exec.resumed_from,
                    checkpoints = exec.checkpoints,
                    ms = started.elapsed().as_millis() as u64,
                    "unit ran"
                );
                let claim = Claim::sign(&self.identity, a.project, a.unit, exec.digest, exec.fuel);
                if let Some(h) = lock(&self.held).get_mut(&a.unit) {
                    h.output = Some(exec.output);
                }
                let now = self.now_ms();
                let effects = lock(&self.holder).add_own(claim, now);
                self.carry_out(effects);
            }
            Err(failure) => {
                tracing::info!(unit = %a.unit, name = %a.name, reason = %failure, "unit failed");
                self.report_failure(a.unit, failure).await;
            }
        }
    }

    /// What the guest thread does with each checkpoint of a unit: write it to disk (at
    /// most once per `checkpoint_every`, always when stopping), and stop there if the
    /// worker is shutting down — unless it could not be written, then carry on.
    fn checkpoint_sink(
        &self,
        key: Option<Key>,
        a: &Assignment,
    ) -> Box<dyn FnMut(&sandbox::Checkpoint) -> Proceed + Send> {
        let Some(key) = key else {
            return Box::new(|_| Proceed::Continue);
        };
        let store = self.checkpoints.clone();
        let cancel = self.cancel.clone();
        let coordinator = self.config.coordinator.clone();
        let mut throttle = Throttle::new(self.config.checkpoint_every);
        // The input can be large: the record is built from this copy once, at the first write.
        let assignment = a.clone();
        Box::new(move |c| {
            let stop = cancel.is_cancelled();
            if !throttle.due(Instant::now(), stop) {
                return Proceed::Continue;
            }
            match store.save(&key, &coordinator, &assignment, c) {
                Ok(()) => {
                    tracing::info!(unit = %assignment.unit, checkpoint = c.segment, fuel = c.fuel, "checkpoint written");
                    if stop {
                        Proceed::Stop
                    } else {
                        Proceed::Continue
                    }
                }
                Err(e) => {
                    tracing::warn!(unit = %assignment.unit, "cannot write checkpoint: {e}");
                    Proceed::Continue
                }
            }
        })
    }

    /// After (re)registering: units with a checkpoint on disk whose lease this worker
    /// still holds are queued to resume first; the others went elsewhere meanwhile, and
    /// their checkpoints are deleted.
    async fn take_back_checkpointed_units(&self) {
        let pending = self.checkpoints.pending(&self.config.coordinator);
        if pending.is_empty() {
            return;
        }
        let units: Vec<UnitId> = pending.iter().map(|a| a.unit).collect();
        let version = lock(&self.peers).0;
        let settled: HashSet<UnitId> = match self
            .client
            .heartbeat(&units, version, &self.run_report())
            .await
        {
            Ok(reply) => reply.settled.into_iter().collect(),
            Err(e) => {
                // Leases are renewed by the next heartbeat if the coordinator comes back;
                // running them meanwhile risks nothing but duplicated effort.
                tracing::warn!(
                    "cannot check checkpointed units with the coordinator ({e}); resuming them"
                );
                HashSet::new()
            }
        };
        let mut queue = lock(&self.resume);
        for a in pending {
            if settled.contains(&a.unit) {
                tracing::info!(unit = %a.unit, "checkpointed unit is no longer ours; deleting its checkpoint");
                self.checkpoints
                    .remove(&Key::new(&self.config.coordinator, &a));
            } else {
                tracing::info!(unit = %a.unit, name = %a.name, "taking back a checkpointed unit");
                // Held from now on, so heartbeats renew its lease even while this worker is
                // suspended before the unit starts again.
                lock(&self.held).insert(
                    a.unit,
                    Held::new(a.project, Some(Key::new(&self.config.coordinator, &a))),
                );
                queue.push_back(a);
            }
        }
    }

    /// This worker's own trouble (`e`: its disk, its cache, its guest threads, the
    /// network) stopped `unit`: hand it back rather than fail it. A handed-back replica
    /// does not count against the unit, and this worker stays eligible for it, so a small
    /// fleet whose every account must run the unit still completes it. The core waits a
    /// little before asking for work again, so a persistent local fault does not spin.
    async fn hand_back_local(&self, unit: UnitId, e: &Error) {
        tracing::warn!(%unit, "handing the unit back: this worker's own trouble, not the unit's: {e}");
        self.release(unit);
        if let Err(e) = self.client.return_units(&[unit]).await {
            tracing::warn!(%unit, "could not hand it back ({e}); its lease will expire");
        }
        pause(&self.cancel, LOCAL_RETRY).await;
    }

    /// What this worker reports with its heartbeats: suspended (and why), running (it
    /// holds a unit without a result) or idle.
    fn run_report(&self) -> rpc::RunReport {
        let decision = self.control.decision();
        if let Some(reason) = decision.reason_text() {
            return rpc::RunReport {
                state: "suspended",
                reason,
            };
        }
        let busy = lock(&self.held).values().any(|h| h.output.is_none());
        rpc::RunReport {
            state: if busy { "running" } else { "idle" },
            reason: String::new(),
        }
    }

    /// Suspended for `suspend_hand_back_seconds`: the units held without a result or a
    /// checkpoint on disk go back to the coordinator now (a paused execution of one of
    /// them, if it ever resumes, finds its unit released and drops its result), so the
    /// fleet runs them instead of waiting for this machine. Checkpointed units are kept,
    /// but only within their current lease. Returns the units whose leases to renew:
    /// those whose result is in.
    async fn hand_back_while_suspended(&self) -> Vec<UnitId> {
        // Copied out first: the checkpoint files are read without holding the lock.
        let held: Vec<(UnitId, bool, Option<Key>)> = lock(&self.held)
            .iter()
            .map(|(unit, h)| (*unit, h.output.is_some(), h.checkpoint.clone()))
            .collect();
        let mut renew = Vec::new();
        let mut back = Vec::new();
        for (unit, done, key) in held {
            if done {
                renew.push(unit);
            } else if key.is_none_or(|k| self.checkpoints.load(&k).is_none()) {
                back.push(unit);
            }
        }
        if !back.is_empty() {
            for unit in &back {
                self.release(*unit);
            }
            lock(&self.buffer).retain(|(a, _)| !back.contains(&a.unit));
            let reason = self.control.decision().reason_text().unwrap_or_default();
            match self.client.return_units(&back).await {
                Ok(()) => tracing::info!(
                    units = back.len(),
                    "suspended ({reason}) past suspend_hand_back_seconds: handed the units without a result or checkpoint back"
                ),
                Err(e) => tracing::warn!(
                    units = back.len(),
                    "suspended past suspend_hand_back_seconds, but could not hand units back ({e}); their leases will expire"
                ),
            }
        }
        renew
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
        lock(&self.held).remove(&unit);
        lock(&self.holder).release(unit);
    }

    /// Polls the boards of held units until shutdown: one batched exchange per board.
    async fn gossip_loop(self: Arc<Self>) {
        let me = self.identity.id();
        let mut swept = Instant::now();
        loop {
            if !pause(&self.cancel, GOSSIP_TICK).await {
                return;
            }
            if swept.elapsed() >= BOARD_SWEEP {
                swept = Instant::now();
                lock(&self.board).expire(self.client.coordinator_now_ms());
            }
            let members = self.members();
            let ids: Vec<WorkerId> = members.iter().map(|m| m.id).collect();
            let now = self.now_ms();
            let (effects, requests) = {
                let mut holder = lock(&self.holder);
                let effects = holder.tick(now);
                (effects, holder.plan(&ids, now))
            };
            self.carry_out(effects);
            let mut exchanges = tokio::task::JoinSet::new();
            for request in requests {
                self.stats.sent(rpc::request_len(&request));
                if request.board == me {
                    // Our own board: no RPC.
                    let reply = self.serve(
                        request.commitments.clone(),
                        request.reveals.clone(),
                        &request.want,
                    );
                    self.on_reply(&request, Ok(reply));
                    continue;
                }
                let client = members
                    .iter()
                    .find(|m| m.id == request.board)
                    .map(|m| self.peer_client(m.id, m.addr));
                match client {
                    Some(Ok(client)) => {
                        exchanges.spawn(async move {
                            let reply = client.exchange(&request).await;
                            (request, reply)
                        });
                    }
                    Some(Err(e)) => self.on_reply(&request, Err(e)),
                    None => {} // cannot happen: boards are drawn from `members`
                }
            }
            while let Some(done) = exchanges.join_next().await {
                if let Ok((request, reply)) = done {
                    self.on_reply(&request, reply);
                }
            }
        }
    }

    fn on_reply(self: &Arc<Self>, request: &Request, reply: Result<Reply, Error>) {
        match reply {
            Ok(reply) => {
                let now = self.now_ms();
                let effects = lock(&self.holder).on_reply(request, reply, now);
                self.carry_out(effects);
            }
            Err(e) => {
                tracing::debug!(board = %request.board, "exchange failed: {e}");
                self.stats.failed();
                lock(&self.holder).on_failure(request);
                self.suspect(request.board);
            }
        }
    }

    /// Carries out what the holder decided, in the background.
    fn carry_out(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Certificate {
                    unit,
                    claims,
                    complete,
                } => self.certify(unit, claims, complete),
                Effect::Dispute { unit, claims } => {
                    self.stats.dispute();
                    let client = self.client.clone();
                    self.tasks.spawn(async move {
                        tracing::info!(%unit, claims = claims.len(), "claims disagree; reporting a dispute");
                        if let Err(e) = client.dispute(unit, &claims).await {
                            tracing::warn!(%unit, "dispute not taken: {e}");
                        }
                    });
                }
                Effect::Misbehaviour(evidence) => self.report_misbehaviour(*evidence),
                Effect::BadBoard { board, problem } => {
                    tracing::warn!(%board, "board sent bad data ({problem}); avoiding it");
                    self.suspect(board);
                }
            }
        }
    }

    /// Queues a certificate for `unit`; one upload per unit runs at a time, and a newer
    /// certificate replaces a queued one (a complete one is never replaced by a partial).
    fn certify(self: &Arc<Self>, unit: UnitId, claims: Vec<Claim>, complete: bool) {
        {
            let mut held = lock(&self.held);
            let Some(h) = held.get_mut(&unit) else { return };
            if h.output.is_none() {
                return;
            }
            if !h
                .next_certificate
                .as_ref()
                .is_some_and(|(_, c)| *c && !complete)
            {
                h.next_certificate = Some((claims, complete));
            }
            if h.uploading {
                return;
            }
            h.uploading = true;
        }
        let me = self.clone();
        self.tasks.spawn(async move { me.upload(unit).await });
    }

    async fn upload(self: Arc<Self>, unit: UnitId) {
        loop {
            let next = {
                let mut held = lock(&self.held);
                let Some(h) = held.get_mut(&unit) else { return };
                match (h.next_certificate.take(), &h.output) {
                    (Some((claims, complete)), Some(output)) => {
                        (h.project, claims, complete, output.clone())
                    }
                    _ => {
                        h.uploading = false;
                        return;
                    }
                }
            };
            let (project, claims, complete, output) = next;
            if complete && !self.wait_turn(project, unit, &claims).await {
                return; // settled by another claimant (released), or shutting down
            }
            self.stats.certificate(complete);
            let mut attempt = 0u32;
            let outcome = loop {
                match self.client.submit_certificate(unit, &claims, &output).await {
                    Ok(outcome) => break Some(outcome),
                    Err(e) if e.is_transient() => {
                        attempt += 1;
                        if attempt % 8 == 1 {
                            tracing::warn!(%unit, "certificate not delivered yet: {e}");
                        }
                        if !pause(&self.cancel, backoff(attempt)).await {
                            return; // shutdown: the unit is handed back
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%unit, "certificate refused: {e}");
                        break None;
                    }
                }
            };
            tracing::debug!(%unit, complete, ?outcome, "certificate submitted");
            match outcome {
                // Kept toward the quorum but not verified yet: hold on, more may come.
                Some(o) if o.recorded && !o.accepted => {}
                // Verified (by us or before us), or refused: nothing more to do here.
                _ => {
                    self.release(unit);
                    return;
                }
            }
        }
    }

    /// Waits our turn to upload a complete certificate; false if the unit got settled
    /// meanwhile (and is released) or we are shutting down.
    async fn wait_turn(&self, project: ProjectId, unit: UnitId, claims: &[Claim]) -> bool {
        let rank = gossip::submit_rank(project, unit, self.identity.id(), claims);
        if rank == 0 {
            return true;
        }
        if !pause(&self.cancel, SUBMIT_GRACE * rank as u32).await {
            return false;
        }
        let version = lock(&self.peers).0;
        match self
            .client
            .heartbeat(&[unit], version, &self.run_report())
            .await
        {
            Ok(reply) if reply.settled.contains(&unit) => {
                self.release(unit);
                false
            }
            _ => true,
        }
    }

    /// Keeps leases alive, drops settled units, refreshes the peer list and seeds the
    /// membership with it.
    async fn heartbeat_loop(self: Arc<Self>, mut every: Duration, advertise: String) {
        let mut failures = 0u32;
        let mut prove_retry = PROVE_RETRY_FIRST;
        let mut next_prove = Instant::now() + prove_retry;
        loop {
            // A worker that knows no peers yet (it registered before the others) asks
            // again soon: without peers it has no boards to gossip with, and its results
            // could only go to the coordinator as partial certificates.
            let wait = if lock(&self.peers).1.is_empty() {
                every.min(PEERLESS_HEARTBEAT)
            } else {
                every
            };
            if !pause(&self.cancel, wait).await {
                return;
            }
            // Suspended past the grace: hand back what has no result and no checkpoint,
            // and renew only the leases of units whose result is in.
            let held: Vec<UnitId> = if self.control.decision().hand_back {
                self.hand_back_while_suspended().await
            } else {
                lock(&self.held).keys().copied().collect()
            };
            let version = lock(&self.peers).0;
            // A coordinator that stops answering (a cut link drops packets, it does not
            // refuse them) must not leave the worker silent until the request timeout: a
            // beat with no answer within its interval counts as failed.
            let patience = every.max(Duration::from_secs(1));
            let report = self.run_report();
            let beat =
                tokio::time::timeout(patience, self.client.heartbeat(&held, version, &report))
                    .await;
            let beat = match beat {
                Ok(beat) => beat.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "no answer from {} within {patience:?}; holding {} units whose leases lapse if this lasts",
                    self.config.coordinator,
                    held.len()
                )),
            };
            match beat {
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
                    self.vouched(None, reply.credential);
                    // Every beat, not only on change: a seed that was down at first may be
                    // up now (the membership rate-limits announcements per peer).
                    let peers = lock(&self.peers).1.clone();
                    self.seed_membership(&peers);
                    let unproven = self.membership.as_ref().is_some_and(|m| !m.credentialed());
                    if reply.unknown_worker {
                        tracing::warn!("coordinator does not know this worker; registering again");
                        if let Some(h) = self.register(&advertise).await {
                            every = h;
                        }
                    } else if unproven && Instant::now() >= next_prove {
                        tracing::info!(
                            "registering again so that the coordinator tries our peer address {advertise} once more"
                        );
                        if let Some(h) = self.register(&advertise).await {
                            every = h;
                        }
                        prove_retry = (prove_retry * 2).min(PROVE_RETRY_MAX);
                        next_prove = Instant::now() + prove_retry;
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
}

/// Proof for each refusal of our board that names an offender: the commitment on file
/// paired with the offending message from the request (a second commitment, or a reveal
/// that does not open the first).
fn evidence(
    board: &Board,
    rejected: &[Rejection],
    commitments: &[Commitment],
    reveals: &[Claim],
) -> Vec<Evidence> {
    rejected
        .iter()
        .filter_map(|r| {
            let offender = r.offender?;
            let filed = board.commitment(r.unit, offender)?.clone();
            match r.reason {
                Reason::Equivocation => commitments
                    .iter()
                    .find(|c| c.unit == r.unit && c.worker == offender && c.seal != filed.seal)
                    .map(|c| Evidence::Equivocation(filed, c.clone())),
                Reason::RevealMismatch => reveals
                    .iter()
                    .find(|c| c.unit == r.unit && c.worker == offender && !c.opens(&filed))
                    .map(|c| Evidence::Mismatch(filed, c.clone())),
                _ => None,
            }
        })
        .collect()
}

/// The coordinator's peers that accept inbound connections, as members.
fn peers_as_members(peers: &[PeerInfo]) -> Vec<Member> {
    peers
        .iter()
        .filter_map(|p| {
            Some(Member {
                id: p.id,
                addr: p.addr.parse().ok()?,
            })
        })
        .collect()
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

    #[test]
    fn pinned_coordinator_urls_attach_with_and_without_a_share() {
        let pin = format!("sha256={}", "ab".repeat(32));
        let url = format!("https://example.org:7070#{pin}");
        for (arg, share) in [(url.clone(), DEFAULT_SHARE), (format!("{url}=300"), 300)] {
            let a = Attach::parse(&arg).expect(&arg);
            assert_eq!((a.url.as_str(), a.share), (url.as_str(), share), "{arg}");
        }
        let config = WorkerConfig {
            attach: vec![Attach::parse(&url).expect("pinned")],
            ..Default::default()
        };
        assert!(config.validate().is_ok());
        // Plain HTTP off loopback needs --insecure-plaintext.
        let mut config = WorkerConfig {
            coordinator: "http://10.0.0.1:7070".into(),
            ..Default::default()
        };
        let err = config.validate().expect_err("plaintext").to_string();
        assert!(err.contains("--insecure-plaintext"), "{err}");
        config.insecure_plaintext = true;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_board_turns_a_copier_and_an_equivocator_into_evidence_the_coordinator_accepts() {
        let coordinator = Identity::from_seed([200; 32]);
        let mut board = Board::default().vouched_by(coordinator.id());
        // Commitments as holders send them: with their lease tickets.
        let c = |claim: &Claim| {
            let t = coordinator.sign_ticket(claim.worker, claim.project, claim.unit, u64::MAX);
            claim.commitment().with_ticket(Some(t))
        };
        let honest = Claim::sign(
            &Identity::from_seed([1; 32]),
            ProjectId(1),
            UnitId(5),
            Digest::of(b"x"),
            10,
        );
        let copier = Identity::from_seed([2; 32]);
        let guess = Claim::sign(&copier, ProjectId(1), UnitId(5), Digest::of(b"?"), 10);
        let cheat = Identity::from_seed([3; 32]);
        let first = Claim::sign(&cheat, ProjectId(1), UnitId(5), Digest::of(b"a"), 10);
        let second = Claim::sign(&cheat, ProjectId(1), UnitId(5), Digest::of(b"b"), 10);
        board.exchange(
            vec![c(&honest), c(&guess), c(&first)],
            vec![honest.clone()],
            &[],
            0,
        );
        // The copier reveals the honest digest; the cheat commits again differently.
        let copied = Claim::sign(&copier, ProjectId(1), UnitId(5), honest.digest, 10);
        let commitments = vec![c(&second)];
        let reveals = vec![copied.clone()];
        let (_, rejected) = board.exchange(commitments.clone(), reveals.clone(), &[], 1);
        let found = evidence(&board, &rejected, &commitments, &reveals);
        let offenders: Vec<(WorkerId, UnitId)> = found
            .iter()
            .map(|e| e.offender().expect("valid proof"))
            .collect();
        assert_eq!(
            offenders,
            vec![(cheat.id(), UnitId(5)), (copier.id(), UnitId(5))],
            "{found:?}"
        );
        // A harmless refusal (a replay) accuses nobody.
        let (_, rejected) = board.exchange(vec![c(&honest)], Vec::new(), &[], 2);
        assert!(evidence(&board, &rejected, &[c(&honest)], &[]).is_empty());
    }

    #[test]
    fn accounts_and_teams_are_validated_and_default_from_the_key() {
        let with = |account: Option<&str>, team: &str| WorkerConfig {
            account: account.map(str::to_string),
            team: team.to_string(),
            ..Default::default()
        };
        for (account, team) in [
            (None, ""),
            (Some("alice"), ""),
            (Some("Ünïcode Lab ☃"), "team 7"),
            (Some(&*"a".repeat(64)), &*"t".repeat(64)),
        ] {
            assert!(
                with(account, team).validate().is_ok(),
                "{account:?} {team:?}"
            );
        }
        for (account, team, flag) in [
            (Some(""), "", "--account"),
            (Some("   "), "", "--account"),
            (Some(&*"a".repeat(65)), "", "--account"),
            (Some("bad\nline"), "", "--account"),
            (Some("tab\there"), "", "--account"),
            (Some("ok"), "\u{7}", "--team"),
            (Some("ok"), &*"t".repeat(65), "--team"),
        ] {
            let err = with(account, team)
                .validate()
                .expect_err("accepted")
                .to_string();
            assert!(err.contains(flag) && err.contains("printable"), "{err}");
        }
        let id = Identity::from_seed([5; 32]).id();
        let account = default_account(id);
        assert_eq!(account, format!("anon-{}", &hex::encode(id.0)[..8]));
        assert!(with(Some(&account), "").validate().is_ok());
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
            struct NoPace;
            impl sandbox::Pacer for NoPace {
                fn pace(&mut self, _fuel_used: u64) {}
            }
            let outcome = executor
                .run(compiled, Vec::new(), [0; 32], limits, Box::new(NoPace))
                .await;
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
