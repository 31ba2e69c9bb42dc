//! One coordinator this worker works for ([`Attached`]): its registration and heartbeats,
//! its peer service and membership, and the state the loops share ([`Shared`]). The
//! shell's other parts are submodules, each an `impl Shared` block over the same state:
//! - `work`: the cores' loop — leasing (with prefetch), running, checkpointing and
//!   handing back units.
//! - `exchange`: the gossip loop — polling the boards of held units and uploading
//!   certificates.
//! - `board`: our own rendezvous board as the peer service serves it, and the evidence
//!   it reports.
//! - `failover`: the coordinators of one deployment (`--coordinator URL1,URL2`), the
//!   current one asked, the next when it is unreachable.

mod board;
mod coordinator;
mod exchange;
mod failover;
mod outbox;
#[cfg(test)]
mod tests;
mod work;

pub(crate) use work::core_loop;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::board::{Board, BoardLimits};
use protocol::{Identity, UnitId, WorkerId};
use sandbox::Sandbox;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::coordinator::Coordinator;
use self::failover::{Failover, Reach};
use crate::checkpoints::Checkpoints;
use crate::config::{AttachmentConfig, WorkerConfig};
use crate::executor::Executor;
use crate::lifecycle::{self, Lifecycle};
use crate::membership::{self, Member, MembershipConfig, MembershipHandle};
use crate::modules::Modules;
use crate::rpc::{self, CoordinatorClient, Introduction, PeerClient, PeerInfo};
use crate::{Error, Stats, control, lock, metrics, provenance};

/// What every attachment of one worker shares: the guest threads, the checkpoint store,
/// the preferences and policy, the counters and the stop signal.
pub(crate) struct Common {
    /// This worker's key (`DATA/worker.key`), the same for every coordinator.
    pub(crate) identity: Arc<Identity>,
    /// The account credit goes to (`--account`, or [`default_account`]).
    pub(crate) account: String,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) control: Arc<control::Control>,
    pub(crate) policy: Arc<provenance::Policy>,
    pub(crate) executor: Arc<Executor>,
    pub(crate) checkpoints: Arc<Checkpoints>,
    /// Project data files, content-addressed: one cache for every coordinator.
    pub(crate) data: Arc<crate::data::DataCache>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) stats: Arc<Stats>,
    /// SWIM datagrams and members the memberships refused (one count for all coordinators).
    pub(crate) membership_counters: Arc<membership::Counters>,
    pub(crate) cancel: CancellationToken,
}

/// One coordinator this worker works for: its state, peer server and membership.
pub(crate) struct Attached {
    pub(crate) shared: Arc<Shared>,
    pub(crate) advertised: String,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    peer_stop: CancellationToken,
}

impl Attached {
    pub(crate) async fn start(
        config: Arc<WorkerConfig>,
        attachment: AttachmentConfig,
        common: &Common,
    ) -> Result<Attached, Error> {
        let identity = common.identity.clone();
        let account = common.account.clone();
        // One client per coordinator of the deployment, each with its own connection and
        // its own view of that coordinator's clock.
        let clients = attachment
            .urls
            .iter()
            .map(|url| {
                CoordinatorClient::enrolled(
                    url,
                    identity.clone(),
                    &config.trust(),
                    config.enroll_token.as_deref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let coordinator = Failover::new(
            attachment
                .urls
                .iter()
                .cloned()
                .zip(
                    clients
                        .iter()
                        .map(|c| Arc::new(c.clone()) as Arc<dyn Coordinator>),
                )
                .collect(),
        );
        let sockets = if config.inbound {
            match bind_peer(attachment.peer_listen).await {
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
                let advertise = match attachment.peer_advertise {
                    Some(a) => a,
                    None => {
                        SocketAddr::new(advertise_ip(coordinator.url(), local).await, local.port())
                    }
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
            data: common.data.clone(),
            control: common.control.clone(),
            policy: common.policy.clone(),
            checkpoints: common.checkpoints.clone(),
            fault_fired: std::sync::atomic::AtomicBool::new(false),
            outbox: outbox::Outbox::default(),
            life: Mutex::new(Lifecycle::new(lifecycle::Settings {
                me: identity.id(),
                cores: config.cores as f64 * attachment.share_fraction,
                prefetch: config.prefetch,
            })),
            identity,
            account,
            coordinator: Arc::new(coordinator),
            clients,
            board: Mutex::new(OwnBoard {
                board: Board::new(BoardLimits::default()),
                reported: HashSet::new(),
            }),
            membership,
            peers: Mutex::new(Peers::default()),
            metrics: common.metrics.clone(),
            stats: common.stats.clone(),
            executor: common.executor.clone(),
            started: Instant::now(),
            tasks: TaskTracker::new(),
            cancel: common.cancel.clone(),
            config,
            attachment,
        });
        let advertised = advertise.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            coordinator = %shared.attachment.deployment(),
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

    pub(crate) async fn stop(self) {
        self.peer_stop.cancel();
        if let Some(server) = self.server {
            let _ = server.await;
        }
        self.shared.stop_membership().await;
    }
}

/// Our rendezvous board, and the offenders it has reported.
struct OwnBoard {
    board: Board,
    /// Offenders already reported from our board, so a replayed proof is reported once.
    reported: HashSet<(UnitId, WorkerId)>,
}

/// What an attachment knows of its peers.
#[derive(Default)]
struct Peers {
    /// The version of the coordinator's peer list.
    version: u64,
    /// The coordinator's peer list: the seed for membership, and the member list itself
    /// for a worker without inbound connections.
    list: Vec<PeerInfo>,
    /// The coordinator's key, learnt at registration: membership credentials verify under it.
    coordinator_key: Option<WorkerId>,
    /// Boards that failed us recently, avoided until the instant given.
    suspects: HashMap<WorkerId, Instant>,
    /// Open connections to boards, by address and key.
    clients: HashMap<(SocketAddr, WorkerId), PeerClient>,
}

pub(crate) struct Shared {
    identity: Arc<Identity>,
    account: String,
    /// The worker's settings, validated once and shared by every attachment.
    config: Arc<WorkerConfig>,
    /// What is this coordinator's own: its URL, share and peer address.
    attachment: AttachmentConfig,
    /// Module downloads, misbehaviour reports and the coordinator's clock: one client per
    /// coordinator of the deployment, in the order of `coordinator`'s members.
    clients: Vec<CoordinatorClient>,
    /// Registration and the calls about units, to the deployment's current coordinator
    /// (the same clients; twins in the shell's tests).
    coordinator: Arc<Failover>,
    /// Every unit this attachment holds, from lease to release, and their commit–reveal
    /// exchanges: one lock for all of the units' state.
    life: Mutex<Lifecycle>,
    /// Our rendezvous board (members only; a no-inbound worker never gets asked).
    board: Mutex<OwnBoard>,
    membership: Option<MembershipHandle>,
    /// What this attachment knows of its peers and how it reaches their boards.
    peers: Mutex<Peers>,
    stats: Arc<Stats>,
    metrics: Arc<metrics::Metrics>,
    control: Arc<control::Control>,
    /// Whose projects this worker runs (shared by every attached coordinator).
    policy: Arc<provenance::Policy>,
    executor: Arc<Executor>,
    modules: Modules,
    /// Project data files (shared with the worker's other attachments).
    data: Arc<crate::data::DataCache>,
    checkpoints: Arc<Checkpoints>,
    /// Certificates on their way to the coordinator, several to a call.
    outbox: outbox::Outbox,
    /// [`Fault::LocalFailureOnce`] has fired.
    fault_fired: std::sync::atomic::AtomicBool,
    /// When this attachment started: the lifecycle's clock counts from here.
    started: Instant,
    pub(crate) tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Shared {
    /// The client of the deployment's current coordinator.
    fn client(&self) -> &CoordinatorClient {
        // `clients` is not empty (one per URL, and a deployment has one) and in the order
        // of the failover's members; the modulo only guards a test's shorter list.
        let (i, _) = self.coordinator.current();
        &self.clients[i % self.clients.len()]
    }

    /// The lifecycle's clock: the time since this attachment started.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn stop_membership(&self) {
        if let Some(m) = &self.membership {
            m.shutdown().await;
        }
    }

    /// Registers, retrying until the coordinator answers; `None` if shut down first.
    pub(crate) async fn register(&self, advertise: &str) -> Option<Duration> {
        let mut attempt = 0u32;
        loop {
            let me = Introduction {
                name: &self.config.name,
                account: &self.account,
                team: &self.config.team,
                peer_addr: advertise,
                cores: self.config.cores as u32,
            };
            match self.coordinator.register(&self.identity, me).await {
                Ok(reg) => {
                    // Our board files commitments only with this coordinator's tickets.
                    match reg.coordinator_key {
                        Some(key) => lock(&self.board).board.set_coordinator(key),
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
                    {
                        let mut peers = lock(&self.peers);
                        peers.version = 0;
                        peers.list = reg.peers;
                    }
                    tracing::info!(coordinator = %self.coordinator.url(), "registered");
                    return Some(reg.heartbeat);
                }
                Err(e) if e.is_transient() => {
                    if attempt.is_multiple_of(8) {
                        tracing::warn!(
                            "waiting for coordinator at {}: {e}",
                            self.coordinator.url()
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
        let coordinator = coordinator.or(lock(&self.peers).coordinator_key);
        if let (Some(m), Some(coordinator), Some(credential)) =
            (&self.membership, coordinator, credential)
        {
            lock(&self.peers).coordinator_key = Some(coordinator);
            m.set_credential(coordinator, credential);
        }
    }

    fn seed_membership(&self, peers: &[PeerInfo]) {
        if let Some(m) = &self.membership {
            m.seed(peers_as_members(peers));
        }
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
        let busy = lock(&self.life).busy();
        rpc::RunReport {
            state: if busy { "running" } else { "idle" },
            reason: String::new(),
        }
    }

    /// Keeps leases alive, drops settled units, refreshes the peer list and seeds the
    /// membership with it.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>, mut every: Duration, advertise: String) {
        let mut failures = 0u32;
        let mut prove_retry = PROVE_RETRY_FIRST;
        let mut next_prove = Instant::now() + prove_retry;
        // The registration `run` made was with the coordinator current then.
        let mut moves = self.coordinator.moves();
        loop {
            // A worker that knows no peers yet (it registered before the others) asks
            // again soon: without peers it has no boards to gossip with, and its results
            // could only go to the coordinator as partial certificates. One whose beat
            // failed, with other coordinators to move to, tries again soon too, so that
            // it finds out within the failover time rather than a heartbeat interval.
            let wait = if lock(&self.peers).list.is_empty() {
                every.min(PEERLESS_HEARTBEAT)
            } else if failures > 0 && self.coordinator.len() > 1 {
                every.min(FAILED_BEAT_RETRY)
            } else {
                every
            };
            if !pause(&self.cancel, wait).await {
                return;
            }
            // Moved to another coordinator of the deployment (by this loop or any other
            // call): register with it under the same key. The units held stay held; the
            // beat below names them, and the new coordinator, on the same database,
            // renews their leases.
            if self.coordinator.moves() != moves {
                let held = lock(&self.life).held().len();
                tracing::info!(
                    coordinator = %self.coordinator.url(),
                    "registering with the deployment's next coordinator; keeping the {held} units held"
                );
                match self.register(&advertise).await {
                    Some(h) => every = h,
                    None => return, // shut down
                }
                moves = self.coordinator.moves();
                failures = 0;
            }
            // Suspended past the grace: hand back what has no result and no checkpoint,
            // and renew only the leases of units whose result is in.
            let held = self.units_to_renew().await;
            let version = lock(&self.peers).version;
            // A coordinator that stops answering (a cut link drops packets, it does not
            // refuse them) must not leave the worker silent until the request timeout: a
            // beat with no answer within its interval counts as failed.
            let patience = every.max(Duration::from_secs(1));
            let report = self.run_report();
            let (at, _) = self.coordinator.current();
            let url = self.coordinator.url().to_string();
            let beat = tokio::time::timeout(
                patience,
                self.coordinator.heartbeat(&held, version, &report),
            )
            .await;
            let beat = match beat {
                Ok(beat) => beat.map_err(|e| e.to_string()),
                Err(_) => {
                    self.coordinator.note(at, Reach::Unreachable);
                    Err(format!(
                        "no answer from {url} within {patience:?}; holding {} units whose leases lapse if this lasts",
                        held.len()
                    ))
                }
            };
            match beat {
                Ok(reply) => {
                    if failures > 0 {
                        tracing::info!("coordinator reachable again");
                    }
                    failures = 0;
                    lock(&self.life).settled(&reply.settled);
                    if let Some(peers) = reply.peers {
                        let mut known = lock(&self.peers);
                        (known.version, known.list) = peers;
                    }
                    self.vouched(None, reply.credential);
                    // Every beat, not only on change: a seed that was down at first may be
                    // up now (the membership rate-limits announcements per peer).
                    let peers = lock(&self.peers).list.clone();
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

/// How soon a worker that knows no peers heartbeats again (to learn them).
const PEERLESS_HEARTBEAT: Duration = Duration::from_secs(1);

/// How soon a worker whose heartbeat failed beats again, when its deployment has other
/// coordinators to move to (well within [`failover::FAILOVER_AFTER`]).
const FAILED_BEAT_RETRY: Duration = Duration::from_secs(1);

/// A worker with a peer service whose address the coordinator could not prove registers
/// again after this, then after twice as long each time up to [`PROVE_RETRY_MAX`]: a proof
/// that timed out on a loaded machine, or a port forwarded a little late, must not keep it
/// out of the membership for good.
const PROVE_RETRY_FIRST: Duration = Duration::from_secs(10);

/// The longest wait between such registrations.
const PROVE_RETRY_MAX: Duration = Duration::from_secs(600);

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
