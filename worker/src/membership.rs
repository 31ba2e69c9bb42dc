//! Who is in the network: SWIM membership and failure detection with
//! [foca](https://docs.rs/foca), over UDP.
//!
//! Only workers that accept inbound connections are members: they are the ones that can be
//! rendezvous boards. A member's foca identity is its worker key, the address of its peer
//! service (UDP for SWIM on the same port number as the gRPC listener) and a `bump` (the
//! start time in ms, renewed when the cluster declares us down), so a restarted worker
//! replaces its old incarnation.
//!
//! # Who is admitted
//!
//! foca trusts whatever its transport hands it and replies to the address an identity
//! names, so this shell admits only what the coordinator vouches for
//! (`protocol::membership`): a worker joins once registration gave it a **credential** —
//! the coordinator's signature over its key and the peer address the coordinator proved it
//! answers at — and its SWIM identity carries that credential. Every datagram is signed by
//! the sender's worker key (`sign_datagram`). Before `handle_data`, `gate::Gate::admit`
//! (sans-IO, in its own module so the `membership` fuzz target runs it as is) drops a
//! datagram unless its signature verifies under the sender identity's key, the sender's
//! credential verifies under the coordinator key and has not expired, the UDP source is
//! the credentialed address, and it is addressed to our key; every identity named inside
//! it (probe targets and origins) must be credentialed too, and gossiped members without a
//! valid credential are stripped. A source may introduce at most
//! [`NEW_PER_SOURCE_PER_MINUTE`] unknown members a minute and the table holds at most
//! `max_members`. So nothing makes a worker send UDP to an address the coordinator has not
//! verified for the key it is sent to. A replayed datagram can at most make a member send
//! to a vouched member. Expired members are declared down locally. Refusals are counted
//! ([`MembershipHandle::counters`], exported as `fallow_worker_membership_*`).
//!
//! The price of the source check: a member's datagrams must leave from its advertised
//! address. A worker behind a NAT that rewrites UDP source ports differently from its
//! forwarded port (symmetric NAT), or on a multi-homed host whose kernel picks another
//! source IP, is dropped by the others and never becomes a board; like a worker whose UDP
//! is blocked, it then sees no members but itself and its claims reach the coordinator as
//! partial certificates. A worker the coordinator gives no credential sends nothing and
//! chooses boards from the coordinator's list instead, as one behind NAT does.
//!
//! Nothing is sent before the first credential, and foca starts afresh with it. Renewal
//! changes the identity (foca's `change_identity`: the old one is declared down, the new
//! one replaces it by `win_addr_conflict`), once every five minutes per member.
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
use std::sync::atomic::Ordering;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use protocol::membership::{Credential, DATAGRAM_SIGNATURE_LEN, sign_datagram};
use protocol::{Identity, WorkerId};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

mod gate;

pub use gate::Counters;
use gate::{Gate, SwimId};

/// A member of the network: a worker that accepts inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Its key.
    pub id: WorkerId,
    /// Its peer service (gRPC over TCP; SWIM over UDP on the same port number).
    pub addr: SocketAddr,
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
    /// The most members kept (others gossiped to us are dropped and counted). Default
    /// 4096: far above any fleet one coordinator serves today, small enough that a flood
    /// costs a few MiB at worst.
    pub max_members: usize,
    /// The most members one source may introduce that we did not know, per minute
    /// (others it gossips are dropped and counted). Default
    /// [`NEW_PER_SOURCE_PER_MINUTE`].
    pub new_per_source_per_minute: u32,
}

impl MembershipConfig {
    /// The defaults for `me`.
    pub fn new(me: Member) -> Self {
        MembershipConfig {
            me,
            expected_size: 64,
            probe_period: Duration::from_secs(1),
            max_members: 4096,
            new_per_source_per_minute: NEW_PER_SOURCE_PER_MINUTE,
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
    /// The coordinator's key and its (renewed) credential for us.
    Credential(WorkerId, Credential),
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
    me: Member,
    counters: Arc<Counters>,
    credentialed: std::sync::atomic::AtomicBool,
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

    /// This worker as a member (its advertised peer address).
    pub fn me(&self) -> Member {
        self.me
    }

    /// What the admission check refused so far, and the table's size.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Hands over the coordinator's key and credential for us: the first one lets us join,
    /// later ones renew it. A credential for another key or address is ignored (logged).
    pub fn set_credential(&self, coordinator: WorkerId, credential: Credential) {
        if credential.worker != self.me.id || credential.addr != self.me.addr {
            tracing::warn!(
                "membership: the coordinator's credential names {}@{}, not us ({}@{}); not joining",
                credential.worker,
                credential.addr,
                self.me.id,
                self.me.addr
            );
            return;
        }
        self.credentialed.store(true, Ordering::Relaxed);
        // Never dropped silently: the shell reads commands as fast as it reads packets.
        let _ = self
            .commands
            .try_send(Command::Credential(coordinator, credential));
    }

    /// Whether the coordinator gave us a credential: without one nobody admits us, and we
    /// see no members but ourselves.
    pub fn credentialed(&self) -> bool {
        self.credentialed.load(Ordering::Relaxed)
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
/// listener) and starts the SWIM task. `identity` signs our datagrams; nothing is sent
/// until [`MembershipHandle::set_credential`] gives us a credential. Refusals are counted
/// in `counters` (may be shared by the caller's memberships; read by its metrics).
pub fn spawn(
    config: MembershipConfig,
    identity: Arc<Identity>,
    socket: UdpSocket,
    counters: Arc<Counters>,
) -> Result<MembershipHandle, Error> {
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
        bump: unix_ms(),
        expires_ms: 0,
        signature: Vec::new(),
    };
    let foca_config = config.foca();
    let max_packet = foca_config.max_packet_size.get();
    let foca = Foca::new(
        me,
        foca_config.clone(),
        SmallRng::from_seed(first(&seed)),
        PostcardCodec,
    );
    let (members_tx, members) = watch::channel(Arc::new(vec![config.me]));
    let (commands, commands_rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    // The list starts with us.
    counters.live.fetch_add(1, Ordering::Relaxed);
    let shell = Shell {
        identity,
        gate: Gate::new(
            config.me.id,
            config.max_members,
            config.new_per_source_per_minute,
            counters.clone(),
        ),
        foca,
        foca_config,
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
        me: config.me,
        counters,
        credentialed: Default::default(),
    })
}

/// A source may introduce at most this many members we did not know in a minute, by
/// default: an honest member's feed to a newcomer is the whole table, so this is generous
/// for joining (the rest arrives through later gossip) and bounds what one source can push
/// at us.
pub const NEW_PER_SOURCE_PER_MINUTE: u32 = 256;

/// Don't announce to the same listed peer more often than this (it may be down, or not a
/// member at all).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
/// Announce to at most this many listed peers per seed: one live member is enough to join,
/// SWIM spreads the rest, and announcing to a large list would be traffic in the size of
/// the network.
const ANNOUNCE_AT_MOST: usize = 3;
struct Shell {
    identity: Arc<Identity>,
    gate: Gate,
    foca: Foca<SwimId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>,
    /// For the fresh start at the first credential.
    foca_config: Config,
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
        // foca fills packets up to `max_packet`; each carries our signature in front, and
        // one byte more shows a datagram too long to be one of ours.
        let mut buf = vec![0u8; self.max_packet + DATAGRAM_SIGNATURE_LEN + 1];
        loop {
            let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                _ = stop.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        // The gate checks signature, credentials and source; foca then checks
                        // size, framing and that the sender is not us.
                        let foca = &self.foca;
                        let known = || foca.iter_membership_state().map(|m| m.id().key).collect();
                        if let Some(payload) = self.gate.admit(&buf[..len], from, unix_ms(), known)
                            && let Err(e) = self.foca.handle_data(&payload, &mut self.runtime)
                        {
                            tracing::debug!("membership: dropped a datagram: {e}");
                        }
                    }
                    // ICMP errors from a dead peer surface here on some platforms.
                    Err(e) => tracing::debug!("membership socket: {e}"),
                },
                Some(command) = commands.recv() => match command {
                    Command::Seed(peers) => self.announce(peers),
                    Command::Credential(coordinator, credential) => {
                        self.credential(coordinator, credential)
                    }
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
                    self.expire();
                }
            }
            self.drain().await;
        }
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!("membership: leaving: {e}");
        }
        self.drain().await;
        self.count_live(0);
    }

    /// Moves the shared live-members gauge from what we published last to `now`.
    fn count_live(&self, now: usize) {
        let before = self.members.borrow().len();
        let live = &self.gate.counters().live;
        if now >= before {
            live.fetch_add((now - before) as u64, Ordering::Relaxed);
        } else {
            live.fetch_sub((before - now) as u64, Ordering::Relaxed);
        }
    }

    fn credential(&mut self, coordinator: WorkerId, credential: Credential) {
        self.gate.set_coordinator(coordinator);
        let current = self.foca.identity().clone();
        if current.expires_ms >= credential.expires_ms && !current.signature.is_empty() {
            return;
        }
        // `set_credential` passes on only credentials for our key and address.
        let renewed = SwimId::new(&credential, current.bump);
        if current.signature.is_empty() {
            // The first one: nothing was sent or admitted without it, so foca starts afresh
            // with it. A rename would gossip the uncredentialed identity as down, and every
            // member would strip (and count) it.
            self.foca = Foca::new(
                renewed,
                self.foca_config.clone(),
                SmallRng::seed_from_u64(self.rng.random()),
                PostcardCodec,
            );
            return;
        }
        if let Err(e) = self.foca.change_identity(renewed, &mut self.runtime) {
            tracing::debug!("membership: new credential: {e}");
        }
    }

    /// Declares down the members whose credential expired (their signatures were checked
    /// when they were admitted).
    fn expire(&mut self) {
        let now = unix_ms();
        let expired: Vec<foca::Member<SwimId>> = self
            .foca
            .iter_members()
            .filter(|m| m.id().expires_ms <= now)
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        if !expired.is_empty()
            && let Err(e) = self
                .foca
                .apply_many(expired.into_iter(), false, &mut self.runtime)
        {
            tracing::debug!("membership: expiring members: {e}");
        }
    }

    fn announce(&mut self, peers: Vec<Member>) {
        if self.foca.identity().signature.is_empty() {
            // Without a credential nobody would admit us; the next heartbeat seeds again.
            return;
        }
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
            // The address is the coordinator's (it lists only proven ones); the receiver
            // checks only that the key is its own.
            let target = SwimId {
                key: peer.id.0,
                addr: peer.addr,
                bump: 0,
                expires_ms: 0,
                signature: Vec::new(),
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
            let data = sign_datagram(&self.identity, &data);
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
            self.count_live(live.len());
            self.members.send_replace(Arc::new(live));
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
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
    use std::sync::atomic::AtomicU64;

    use foca::{Codec, Message};
    use protocol::Identity;
    use protocol::membership::split_datagram;

    use super::gate::tests::signed_datagram;
    use super::*;

    /// The coordinator of these tests: it vouches for members by signing credentials.
    fn coordinator() -> Identity {
        Identity::from_seed([200; 32])
    }

    /// A member on loopback; vouched for by [`coordinator`] when `vouched`.
    async fn start_with(n: u8, vouched: bool, max_members: usize) -> MembershipHandle {
        start_issued(n, vouched, max_members, unix_ms()).await
    }

    /// [`start_with`], its credential issued at `issued_ms` (for one that expires soon).
    async fn start_issued(
        n: u8,
        vouched: bool,
        max_members: usize,
        issued_ms: u64,
    ) -> MembershipHandle {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let identity = Arc::new(Identity::from_seed([n; 32]));
        let me = Member {
            id: identity.id(),
            addr,
        };
        let config = MembershipConfig {
            probe_period: Duration::from_millis(100),
            expected_size: 4,
            max_members,
            ..MembershipConfig::new(me)
        };
        let handle = spawn(config, identity, socket, Arc::default()).expect("spawn");
        let c = coordinator();
        if vouched {
            handle.set_credential(c.id(), Credential::issue(&c, me.id, addr, issued_ms));
        } else {
            // It knows the coordinator's key but has no credential for itself.
            let other = Identity::from_seed([201; 32]);
            handle.set_credential(c.id(), Credential::issue(&other, me.id, addr, unix_ms()));
        }
        handle
    }

    async fn start(n: u8) -> MembershipHandle {
        start_with(n, true, 4096).await
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn swim(c: &Credential) -> SwimId {
        SwimId::new(c, 1)
    }

    fn bare(key: [u8; 32], addr: SocketAddr) -> SwimId {
        SwimId {
            key,
            addr,
            bump: 1,
            expires_ms: u64::MAX,
            signature: vec![7; 64],
        }
    }

    /// A socket that counts what it receives.
    async fn counter() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let bytes = Arc::new(AtomicU64::new(0));
        let seen = bytes.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                seen.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        (addr, bytes, task)
    }

    #[tokio::test]
    async fn members_find_each_other_from_one_seed_and_see_a_leaver_go() {
        let a = start(1).await;
        let b = start(2).await;
        let c = start(3).await;
        let (ma, mb) = (a.me(), b.me());
        // b and c only know a; SWIM tells each about the other.
        b.seed(vec![ma]);
        c.seed(vec![ma]);
        until("three members everywhere", || {
            [&a, &b, &c].iter().all(|h| h.members().len() == 3)
        })
        .await;
        assert!(c.members().contains(&mb), "c learned b through gossip");
        for h in [&a, &b, &c] {
            let counters = h.counters();
            assert_eq!(
                (
                    counters.datagrams(),
                    counters.members.load(Ordering::Relaxed)
                ),
                (0, 0),
                "honest traffic is never refused: {counters:?}"
            );
        }
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

    #[tokio::test]
    async fn only_members_the_coordinator_vouches_for_are_admitted() {
        let a = start(1).await;
        let b = start(2).await;
        // Its credential is signed by another key: it announces itself, nobody admits it.
        let c = start_with(3, false, 4096).await;
        let ma = a.me();
        b.seed(vec![ma]);
        c.seed(vec![ma]);
        until("a and b see each other", || {
            a.members().len() == 2 && b.members().len() == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for h in [&a, &b] {
            assert!(
                !h.members().iter().any(|m| m.id == c.me().id),
                "the member without a valid credential is not admitted"
            );
        }
        assert_eq!(c.members().len(), 1, "and it admits nobody either");
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    }

    #[tokio::test]
    async fn a_renewed_credential_keeps_a_member_and_an_expired_one_drops_it() {
        let ttl = protocol::membership::CREDENTIAL_TTL_MS;
        let a = start(1).await;
        let b = start(2).await;
        // c's credential expires in three seconds and is never renewed (as when the
        // coordinator stops vouching for it).
        let c = start_issued(3, true, 4096, unix_ms() - ttl + 3_000).await;
        b.seed(vec![a.me()]);
        c.seed(vec![a.me()]);
        until("three members everywhere", || {
            [&a, &b, &c].iter().all(|h| h.members().len() == 3)
        })
        .await;
        // b's is renewed: it changes identity (a later credential) and stays a member.
        let coordinator = coordinator();
        b.set_credential(
            coordinator.id(),
            Credential::issue(&coordinator, b.me().id, b.me().addr, unix_ms() + 1_000),
        );
        until("c dropped by a and b", || {
            [&a, &b]
                .iter()
                .all(|h| !h.members().iter().any(|m| m.id == c.me().id))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            a.members().iter().any(|m| m.id == b.me().id)
                && b.members().iter().any(|m| m.id == a.me().id),
            "a and b stay members across b's renewal"
        );
        for h in [a, b, c] {
            h.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_spoofed_announce_makes_a_member_send_nothing_to_a_third_address() {
        let a = start(1).await;
        let b = start(2).await;
        b.seed(vec![a.me()]);
        until("a and b see each other", || a.members().len() == 2).await;
        let (victim, received, task) = counter().await;
        let attacker = Identity::from_seed([66; 32]);
        let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let c = coordinator();
        let dst = bare(a.me().id.0, a.me().addr);
        let forged = Credential::issue(&attacker, attacker.id(), victim, unix_ms());
        let b_credential = Credential::issue(&c, b.me().id, b.me().addr, unix_ms());
        let attacks = [
            // An Announce naming the victim, no credential at all.
            signed_datagram(
                &attacker,
                bare(attacker.id().0, victim),
                dst.clone(),
                Message::Announce,
                &[],
            ),
            // With a credential the attacker signed itself.
            signed_datagram(
                &attacker,
                swim(&forged),
                dst.clone(),
                Message::Announce,
                &[],
            ),
            // b's real identity (replayed from the wire) but not b's signature.
            signed_datagram(
                &attacker,
                swim(&b_credential),
                dst.clone(),
                Message::Announce,
                &[],
            ),
            // A probe request whose target is the victim.
            signed_datagram(
                &attacker,
                swim(&forged),
                dst.clone(),
                Message::PingReq {
                    target: bare([9; 32], victim),
                    probe_number: 1,
                },
                &[],
            ),
        ];
        for _ in 0..50 {
            for d in &attacks {
                raw.send_to(d, a.local_addr()).await.expect("send");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A real vouched member's packet sent from a spoofed source (here: another socket)
        // is refused for its source.
        let b_signed = signed_datagram(
            &Identity::from_seed([2; 32]),
            swim(&b_credential),
            dst.clone(),
            Message::Announce,
            &[],
        );
        raw.send_to(&b_signed, a.local_addr()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            received.load(Ordering::Relaxed),
            0,
            "nothing reached the victim"
        );
        let drops = a.counters();
        assert!(
            drops.datagrams() >= 201,
            "every spoofed datagram was counted: {drops:?}"
        );
        assert!(drops.wrong_source.load(Ordering::Relaxed) >= 1, "{drops:?}");
        assert_eq!(a.members().len(), 2, "nobody joined");
        task.abort();
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_flood_of_fake_members_leaves_a_bounded_table_of_vouched_members() {
        const CAP: usize = 16;
        let a = start_with(1, true, CAP).await;
        let (victim, received, task) = counter().await;
        // The attacker is a vouched member itself (it registered one worker honestly).
        let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let attacker = Identity::from_seed([66; 32]);
        let c = coordinator();
        let mine = Credential::issue(
            &c,
            attacker.id(),
            raw.local_addr().expect("addr"),
            unix_ms(),
        );
        // Join properly first: a's answer to our Announce names its current identity.
        let announce = signed_datagram(
            &attacker,
            swim(&mine),
            bare(a.me().id.0, a.me().addr),
            Message::Announce,
            &[],
        );
        raw.send_to(&announce, a.local_addr()).await.expect("send");
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut buf))
            .await
            .expect("a answers a vouched member")
            .expect("recv");
        let (_, payload) = split_datagram(&buf[..n]).expect("signed");
        let dst = Codec::<SwimId>::decode_header(&mut PostcardCodec, &mut &payload[..])
            .expect("header")
            .src;
        let mut sent = 0;
        // Eight members a datagram fit foca's 1,400-byte packets.
        for round in 0..100u32 {
            // Fakes naming the victim without a credential, and fakes with real credentials
            // for unused loopback ports (as if the coordinator had vouched for them).
            let fakes: Vec<SwimId> = (0..8u32)
                .map(|i| {
                    let mut key = [0u8; 32];
                    key[..4].copy_from_slice(&(round * 100 + i).to_le_bytes());
                    key[31] = 1;
                    if i % 2 == 0 {
                        bare(key, victim)
                    } else {
                        let addr: SocketAddr = format!("127.0.0.9:{}", 1000 + round * 8 + i)
                            .parse()
                            .expect("addr");
                        swim(&Credential::issue(&c, WorkerId(key), addr, unix_ms()))
                    }
                })
                .collect();
            let d = signed_datagram(&attacker, swim(&mine), dst.clone(), Message::Gossip, &fakes);
            raw.send_to(&d, a.local_addr()).await.expect("send");
            sent += fakes.len();
            // Paced so the socket buffer of the receiver does not drop any.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let members = a.members();
        assert!(
            members.len() <= CAP + 1,
            "table bounded: {} members",
            members.len()
        );
        assert!(
            members.iter().all(|m| m.addr != victim),
            "no uncredentialed member admitted"
        );
        assert_eq!(
            a.counters().live.load(Ordering::Relaxed) as usize,
            members.len(),
            "the exported gauge is the table"
        );
        assert!(
            a.counters().members.load(Ordering::Relaxed) as usize >= sent - CAP,
            "the rest were counted: {:?}",
            a.counters()
        );
        assert_eq!(
            received.load(Ordering::Relaxed),
            0,
            "nothing reached the victim"
        );
        task.abort();
        a.shutdown().await;
    }
}
