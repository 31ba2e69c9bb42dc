//! Who is in the network: SWIM membership and failure detection with
//! [foca](https://docs.rs/foca), over UDP.
//!
//! Only workers that accept inbound connections are members: they are the ones that can be
//! rendezvous boards. A member's foca identity is its worker key, the address of its peer
//! service (UDP for SWIM on the same port number as the gRPC listener) and a `bump` (the
//! start time in ms, renewed when the cluster declares us down), so a restarted worker
//! replaces its old incarnation.
//!
//! foca is itself the sans-IO core (it returns packets to send, timers to schedule and
//! notifications through [`foca::AccumulatingRuntime`]); this module is its shell, following
//! foca's documented pattern: one task owns the `Foca` value and feeds it UDP datagrams
//! (`handle_data`), due timer events (`handle_timer`, from an ordered timer queue driven by
//! a tokio sleep) and commands; after each input it drains the runtime. The live member list
//! is published on a `watch` channel that readers snapshot without locking foca.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use protocol::WorkerId;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// A member of the network: a worker that accepts inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Its key.
    pub id: WorkerId,
    /// Its peer service (gRPC over TCP; SWIM over UDP on the same port number).
    pub addr: SocketAddr,
}

/// The identity foca gossips. `Addr` is the worker key: two identities with the same key
/// are the same worker, and the newer `bump` wins.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct SwimId {
    key: [u8; 32],
    addr: SocketAddr,
    bump: u64,
}

impl std::fmt::Debug for SwimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", WorkerId(self.key), self.addr, self.bump)
    }
}

impl foca::Identity for SwimId {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        // Declared down by mistake (a pause, a lost packet burst): rejoin as a newer self.
        Some(SwimId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> [u8; 32] {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

impl SwimId {
    fn member(&self) -> Member {
        Member {
            id: WorkerId(self.key),
            addr: self.addr,
        }
    }
}

/// Membership settings.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This worker.
    pub me: Member,
    /// Expected network size; sets how often updates are retransmitted and how long a
    /// suspect has to refute (foca's `Config::new_lan`). Default 64; being off by 10x only
    /// changes detection time a little.
    pub expected_size: u32,
    /// SWIM probe period. Default 1 s (foca's LAN preset). Tests shorten it.
    pub probe_period: Duration,
}

impl MembershipConfig {
    /// The defaults for `me`.
    pub fn new(me: Member) -> Self {
        MembershipConfig {
            me,
            expected_size: 64,
            probe_period: Duration::from_secs(1),
        }
    }

    fn foca(&self) -> Config {
        let size = NonZeroU32::new(self.expected_size.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = Config::new_lan(size);
        if self.probe_period != config.probe_period {
            let scale = self.probe_period.as_secs_f64() / config.probe_period.as_secs_f64();
            config.probe_period = self.probe_period;
            config.probe_rtt = config.probe_rtt.mul_f64(scale);
            config.suspect_to_down_after = config.suspect_to_down_after.mul_f64(scale);
            if let Some(g) = config.periodic_gossip.as_mut() {
                g.frequency = g.frequency.mul_f64(scale);
            }
            if let Some(a) = config.periodic_announce.as_mut() {
                a.frequency = a.frequency.mul_f64(scale);
            }
        }
        config
    }
}

enum Command {
    /// Announce ourselves to workers the coordinator listed that foca does not know yet.
    Seed(Vec<Member>),
}

/// The running membership: owner of the SWIM task. Cheap reads of the live members;
/// [`MembershipHandle::shutdown`] leaves the cluster and stops the task.
#[derive(Debug)]
pub struct MembershipHandle {
    members: watch::Receiver<Arc<Vec<Member>>>,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    local: SocketAddr,
}

impl MembershipHandle {
    /// Live members, this worker included, sorted by id.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().clone()
    }

    /// A receiver that sees every change of the live member list.
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.clone()
    }

    /// The UDP address the SWIM socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Announces us to `peers` not yet known as live (the coordinator's list is the seed;
    /// SWIM spreads the rest). Never blocks: a full command queue drops the seed, and the
    /// next heartbeat brings it again.
    pub fn seed(&self, peers: Vec<Member>) {
        let known = self.members();
        let unknown: Vec<Member> = peers
            .into_iter()
            .filter(|p| !known.iter().any(|k| k.id == p.id))
            .collect();
        if !unknown.is_empty() {
            let _ = self.commands.try_send(Command::Seed(unknown));
        }
    }

    /// Leaves the cluster (members learn at once rather than after a suspicion timeout)
    /// and stops the task. Later calls return at once.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        // Only the handle's owner calls this; the lock is never held across the await.
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Joins the network on `socket` (bound by the caller, so it can pick the port of its gRPC
/// listener) and starts the SWIM task.
pub fn spawn(config: MembershipConfig, socket: UdpSocket) -> Result<MembershipHandle, Error> {
    let local = socket
        .local_addr()
        .map_err(|e| Error::Config(format!("membership socket: {e}")))?;
    // 32 bytes for foca's generator (probe targets, gossip fan-out), 8 for ours.
    let mut seed = [0u8; 40];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::Config(format!("no OS random source for membership: {e}")))?;
    let me = SwimId {
        key: config.me.id.0,
        addr: config.me.addr,
        bump: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64),
    };
    let foca_config = config.foca();
    let max_packet = foca_config.max_packet_size.get();
    let foca = Foca::new(
        me,
        foca_config,
        SmallRng::from_seed(first(&seed)),
        PostcardCodec,
    );
    let (members_tx, members) = watch::channel(Arc::new(vec![config.me]));
    let (commands, commands_rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let shell = Shell {
        foca,
        runtime: AccumulatingRuntime::new(),
        socket,
        timers: BinaryHeap::new(),
        sequence: 0,
        members: members_tx,
        me: config.me,
        max_packet,
        announced: HashMap::new(),
        rng: SmallRng::seed_from_u64(u64::from_le_bytes(first(&seed[32..]))),
        leaving: false,
    };
    let task = tokio::spawn(shell.run(commands_rx, stop.clone()));
    Ok(MembershipHandle {
        members,
        commands,
        stop,
        task: std::sync::Mutex::new(Some(task)),
        local,
    })
}

/// Don't announce to the same listed peer more often than this (it may be down, or not a
/// member at all).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
/// Announce to at most this many listed peers per seed: one live member is enough to join,
/// SWIM spreads the rest, and announcing to a large list would be traffic in the size of
/// the network.
const ANNOUNCE_AT_MOST: usize = 3;

struct Shell {
    foca: Foca<SwimId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>,
    runtime: AccumulatingRuntime<SwimId>,
    socket: UdpSocket,
    /// Due timer events, earliest first; the sequence number keeps events due at the same
    /// instant in submission order, which foca relies on.
    timers: BinaryHeap<Reverse<(Instant, u64, Timer<SwimId>)>>,
    sequence: u64,
    members: watch::Sender<Arc<Vec<Member>>>,
    me: Member,
    max_packet: usize,
    announced: HashMap<WorkerId, Instant>,
    rng: SmallRng,
    leaving: bool,
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut buf = vec![0u8; self.max_packet + 1];
        loop {
            let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                _ = stop.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, _from)) => {
                        // foca checks size, framing and that the sender is not us; a bad
                        // datagram is dropped with a debug log, never trusted.
                        if let Err(e) = self.foca.handle_data(&buf[..len], &mut self.runtime) {
                            tracing::debug!("membership: dropped a datagram: {e}");
                        }
                    }
                    // ICMP errors from a dead peer surface here on some platforms.
                    Err(e) => tracing::debug!("membership socket: {e}"),
                },
                Some(command) = commands.recv() => match command {
                    Command::Seed(peers) => self.announce(peers),
                },
                _ = sleep_until_opt(next) => {
                    let now = Instant::now();
                    while let Some(Reverse((at, _, _))) = self.timers.peek() {
                        if *at > now {
                            break;
                        }
                        if let Some(Reverse((_, _, timer))) = self.timers.pop()
                            && let Err(e) = self.foca.handle_timer(timer, &mut self.runtime)
                        {
                            tracing::debug!("membership timer: {e}");
                        }
                    }
                }
            }
            self.drain().await;
        }
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!("membership: leaving: {e}");
        }
        self.drain().await;
    }

    fn announce(&mut self, peers: Vec<Member>) {
        let now = Instant::now();
        let mut due: Vec<Member> = peers
            .into_iter()
            .filter(|p| {
                p.id != self.me.id
                    && self
                        .announced
                        .get(&p.id)
                        .is_none_or(|at| now.duration_since(*at) >= ANNOUNCE_EVERY)
            })
            .collect();
        // A random few, so that a dead peer early in the list does not always win.
        for i in 0..due.len().min(ANNOUNCE_AT_MOST) {
            let j = self.rng.random_range(i..due.len());
            due.swap(i, j);
        }
        due.truncate(ANNOUNCE_AT_MOST);
        for peer in due {
            self.announced.insert(peer.id, now);
            // bump 0 loses every conflict: the peer's real identity replaces it as soon as
            // it answers.
            let target = SwimId {
                key: peer.id.0,
                addr: peer.addr,
                bump: 0,
            };
            if let Err(e) = self.foca.announce(target, &mut self.runtime) {
                tracing::debug!("membership: announce to {}: {e}", peer.addr);
            }
        }
        // Keep the map bounded by the peers we were told about recently.
        self.announced
            .retain(|_, at| now.duration_since(*at) < ANNOUNCE_EVERY * 6);
    }

    /// Sends what foca asked to send, schedules its timers and republishes the live member
    /// list if it changed.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            // UDP is fire-and-forget; SWIM tolerates loss by design.
            if let Err(e) = self.socket.send_to(&data, to.addr).await {
                tracing::debug!("membership: send to {}: {e}", to.addr);
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.sequence += 1;
            self.timers
                .push(Reverse((now + after, self.sequence, timer)));
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::debug!(member = ?id, "member up");
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(member = ?id, "member down");
                    changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::debug!(?old, ?new, "member renamed");
                    changed = true;
                }
                // Leaving makes us down on purpose; otherwise renew() rejoins at once.
                OwnedNotification::Defunct if !self.leaving => {
                    tracing::warn!("membership: the cluster declared this worker down; rejoining")
                }
                _ => {}
            }
        }
        if changed {
            let mut live: Vec<Member> = self
                .foca
                .iter_members()
                .map(|m| m.id().member())
                .filter(|m| m.id != self.me.id)
                .collect();
            live.push(self.me);
            live.sort();
            live.dedup_by_key(|m| m.id);
            self.members.send_replace(Arc::new(live));
        }
    }
}

/// The first `N` bytes of `bytes` (callers pass enough).
fn first<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Identity;

    async fn start(n: u8) -> MembershipHandle {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let me = Member {
            id: Identity::from_seed([n; 32]).id(),
            addr,
        };
        let config = MembershipConfig {
            probe_period: Duration::from_millis(100),
            expected_size: 4,
            ..MembershipConfig::new(me)
        };
        spawn(config, socket).expect("spawn")
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn members_find_each_other_from_one_seed_and_see_a_leaver_go() {
        let a = start(1).await;
        let b = start(2).await;
        let c = start(3).await;
        let me = |h: &MembershipHandle| {
            h.members()[..]
                .iter()
                .find(|m| m.addr == h.local_addr())
                .copied()
        };
        let (ma, mb) = (me(&a).expect("a"), me(&b).expect("b"));
        // b and c only know a; SWIM tells each about the other.
        b.seed(vec![ma]);
        c.seed(vec![ma]);
        until("three members everywhere", || {
            [&a, &b, &c].iter().all(|h| h.members().len() == 3)
        })
        .await;
        assert!(c.members().contains(&mb), "c learned b through gossip");
        b.shutdown().await;
        until("b gone from a and c", || {
            [&a, &c]
                .iter()
                .all(|h| !h.members().iter().any(|m| m.id == mb.id))
        })
        .await;
        a.shutdown().await;
        c.shutdown().await;
    }

    #[tokio::test]
    async fn garbage_datagrams_are_ignored() {
        let a = start(1).await;
        let junk = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for len in [0usize, 1, 7, 1500, 9000] {
            let _ = junk.send_to(&vec![0xAB; len], a.local_addr()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.members().len(), 1, "nobody joined from garbage");
        let b = start(2).await;
        b.seed(a.members().to_vec());
        until("a still works", || a.members().len() == 2).await;
        a.shutdown().await;
        b.shutdown().await;
    }
}
