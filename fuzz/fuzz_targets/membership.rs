//! Who may be a SWIM member, on arbitrary input: the membership credential codec
//! (`protocol::membership::Credential`) and the admission check every SWIM datagram passes
//! before foca sees it (`worker::membership::gate`, included from the worker's source as it
//! is). The first byte picks the mode:
//!
//! - `0`: the rest is one datagram, received from `127.0.0.1:7001` (the first member's
//!   address) at a fixed time by a gate that knows the coordinator key;
//! - `1`: the rest is a credential's wire bytes;
//! - otherwise, up to 32 steps: raw datagrams and datagrams built from identities with
//!   genuine, forged, stretched, moved or missing credentials, signed by their key or
//!   another, addressed to us or not, naming probe targets, gossiping members, sent from
//!   the credentialed address or another, optionally tampered with; the clock moving
//!   forward (and, rarely, back); the coordinator key set or changed; credentials decoded
//!   and tampered with.
//!
//! Properties beyond "does not panic", each checked here without the gate's cache:
//! - a credential the decoder accepts re-encodes to bytes that decode to it; one that
//!   verifies under the coordinator key is one the coordinator issued, not yet expired;
//! - a datagram is admitted only if its signature verifies under its sender's key, the
//!   sender's credential verifies at that time under the coordinator key, it came from the
//!   credentialed address, it is addressed to us, and the identity it names (a probe's
//!   target or origin) is credentialed too: nothing makes a member send to an address the
//!   coordinator has not vouched for;
//! - what the gate passes on has the same header bytes and trailing bytes, and a
//!   subsequence of the gossiped members, each credentialed (or us); new members never
//!   fill the table past `max_members`, and (while the clock only moves forward) one
//!   source never introduces more than twice `per_source` in any minute;
//! - every refused datagram is counted exactly once, an admitted one not at all, and every
//!   stripped member once.

#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/membership/gate.rs"]
mod gate;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use arbitrary::{Arbitrary, Unstructured};
use foca::{Codec, Header, Member, Message, PostcardCodec, State};
use gate::{Counters, Gate, SwimId};
use libfuzzer_sys::fuzz_target;
use protocol::membership::{Credential, sign_datagram, split_datagram, verify_datagram};
use protocol::{Identity, WorkerId};

/// The time credentials are issued at (Unix ms); they expire ten minutes later.
const T0: u64 = 1_800_000_000_000;
/// Members with credentials; index `KEYS` is us.
const KEYS: usize = 6;
/// Small caps, so that inputs reach them.
const MAX_MEMBERS: usize = 4;
const PER_SOURCE: u32 = 2;

static COORDINATOR: LazyLock<Identity> = LazyLock::new(|| Identity::from_seed([200; 32]));
/// Another network's coordinator: its credentials are forgeries here.
static OTHER: LazyLock<Identity> = LazyLock::new(|| Identity::from_seed([201; 32]));
/// The members, then us.
static IDS: LazyLock<Vec<Identity>> =
    LazyLock::new(|| (1..=KEYS as u8 + 1).map(|i| Identity::from_seed([i; 32])).collect());
/// Genuine credentials, and the same statements signed by [`OTHER`] (each signed once:
/// signing per execution would dominate the run time).
static CREDENTIALS: LazyLock<Vec<(Credential, Credential)>> = LazyLock::new(|| {
    IDS.iter()
        .enumerate()
        .map(|(i, id)| {
            (
                Credential::issue(&COORDINATOR, id.id(), addr(i), T0),
                Credential::issue(&OTHER, id.id(), addr(i), T0),
            )
        })
        .collect()
});

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16 + 1))
}

fn me() -> WorkerId {
    IDS[KEYS].id()
}

/// Which credential an identity carries.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Vouch {
    Genuine,
    /// Signed by another coordinator.
    Forged,
    /// None at all (the format before credentials carried none either).
    Missing,
    /// The genuine signature with another address.
    Moved,
    /// The genuine signature with a later expiry.
    Stretched,
}

#[derive(Debug, Arbitrary)]
struct Who {
    key: u8,
    vouch: Vouch,
    bump: u8,
}

impl Who {
    fn swim_id(&self) -> SwimId {
        let i = self.key as usize % (KEYS + 1);
        let (genuine, forged) = &CREDENTIALS[i];
        let mut id = SwimId::new(genuine, u64::from(self.bump));
        match self.vouch {
            Vouch::Genuine => {}
            Vouch::Forged => id.signature = forged.signature.to_vec(),
            Vouch::Missing => (id.expires_ms, id.signature) = (0, Vec::new()),
            Vouch::Moved => id.addr = addr(i + 1),
            Vouch::Stretched => id.expires_ms += 1,
        }
        id
    }
}

#[derive(Debug, Arbitrary)]
enum Msg {
    Ping,
    Ack,
    PingReq(Who),
    IndirectPing(Who),
    IndirectAck(Who),
    ForwardedAck(Who),
    Announce,
    Feed,
    Gossip,
    Broadcast,
    TurnUndead,
}

impl Msg {
    fn message(&self, probe_number: u8) -> Message<SwimId> {
        match self {
            Msg::Ping => Message::Ping(probe_number),
            Msg::Ack => Message::Ack(probe_number),
            Msg::PingReq(w) => Message::PingReq {
                target: w.swim_id(),
                probe_number,
            },
            Msg::IndirectPing(w) => Message::IndirectPing {
                origin: w.swim_id(),
                probe_number,
            },
            Msg::IndirectAck(w) => Message::IndirectAck {
                target: w.swim_id(),
                probe_number,
            },
            Msg::ForwardedAck(w) => Message::ForwardedAck {
                origin: w.swim_id(),
                probe_number,
            },
            Msg::Announce => Message::Announce,
            Msg::Feed => Message::Feed,
            Msg::Gossip => Message::Gossip,
            Msg::Broadcast => Message::Broadcast,
            Msg::TurnUndead => Message::TurnUndead,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// Bytes from `from` (an index into the members' addresses).
    Raw { bytes: Vec<u8>, from: u8 },
    /// A datagram from `src` signed by `signer` (its own key if `None`).
    Datagram {
        src: Who,
        signer: Option<u8>,
        /// To us if `None`, else to that member.
        dst: Option<u8>,
        message: Msg,
        probe_number: u8,
        members: Vec<(Who, u8)>,
        trailing: Vec<u8>,
        /// From the sender's address if `None`, else from that member's.
        from: Option<u8>,
        /// Flip bits of one byte after signing.
        tamper: Option<(u16, u8)>,
    },
    /// Ours if true, another network's if false.
    Coordinator(bool),
    /// Forward by this many ms times 64 (up to about 3 days).
    Clock(u32),
    /// Back by this many ms.
    ClockBack(u16),
    Credential(Vec<u8>),
    TamperCredential { who: u8, at: u8, xor: u8 },
}

/// One input's gate, its model of foca's table and what it checked.
struct Run {
    gate: Gate,
    /// The key the gate was last given.
    coordinator: Option<WorkerId>,
    counters: Arc<Counters>,
    now: u64,
    known: HashSet<[u8; 32]>,
    /// Per source, the times it introduced new members (while the clock only went forward).
    introduced: HashMap<SocketAddr, Vec<u64>>,
    went_back: bool,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut run = Run::new();
    match mode {
        0 => {
            run.set_coordinator(COORDINATOR.id());
            run.offer(rest, addr(0));
        }
        1 => check_credential(rest, T0),
        _ => run.steps(rest),
    }
});

impl Run {
    fn new() -> Self {
        let counters = Arc::new(Counters::default());
        Run {
            gate: Gate::new(me(), MAX_MEMBERS, PER_SOURCE, counters.clone()),
            coordinator: None,
            counters,
            now: T0,
            known: HashSet::new(),
            introduced: HashMap::new(),
            went_back: false,
        }
    }

    fn steps(&mut self, data: &[u8]) {
        let mut u = Unstructured::new(data);
        // Signing dominates the cost: at most four built datagrams per input.
        let mut signatures = 0;
        for _ in 0..32 {
            if u.is_empty() {
                break;
            }
            let Ok(step) = Step::arbitrary(&mut u) else {
                break;
            };
            match step {
                Step::Raw { bytes, from } => self.offer(&bytes, addr(from as usize % KEYS)),
                Step::Datagram {
                    src,
                    signer,
                    dst,
                    message,
                    probe_number,
                    members,
                    trailing,
                    from,
                    tamper,
                } => {
                    signatures += 1;
                    if signatures > 4 {
                        continue;
                    }
                    let header = Header {
                        src: src.swim_id(),
                        src_incarnation: 0,
                        dst: match dst {
                            None => Who {
                                key: KEYS as u8,
                                vouch: Vouch::Missing,
                                bump: 0,
                            },
                            Some(k) => Who {
                                key: k,
                                vouch: Vouch::Genuine,
                                bump: 0,
                            },
                        }
                        .swim_id(),
                        message: message.message(probe_number),
                    };
                    let mut payload = Vec::new();
                    PostcardCodec
                        .encode_header(&header, &mut payload)
                        .expect("a header encodes");
                    if !members.is_empty() {
                        payload.extend_from_slice(&(members.len() as u16).to_be_bytes());
                        for (who, state) in &members {
                            let state = [State::Alive, State::Suspect, State::Down][*state as usize % 3];
                            PostcardCodec
                                .encode_member(&Member::new(who.swim_id(), 0, state), &mut payload)
                                .expect("a member encodes");
                        }
                    }
                    payload.extend_from_slice(&trailing);
                    let signer = match signer {
                        None => src.key as usize % (KEYS + 1),
                        Some(s) => s as usize % (KEYS + 1),
                    };
                    let mut datagram = sign_datagram(&IDS[signer], &payload);
                    if let Some((at, xor)) = tamper {
                        let at = at as usize % datagram.len();
                        datagram[at] ^= xor;
                    }
                    let from = match from {
                        None => header.src.addr,
                        Some(f) => addr(f as usize % (KEYS + 1)),
                    };
                    self.offer(&datagram, from);
                }
                Step::Coordinator(ours) => {
                    let key = if ours { &*COORDINATOR } else { &*OTHER };
                    self.set_coordinator(key.id());
                }
                Step::Clock(ms) => self.now = self.now.saturating_add(u64::from(ms) * 64),
                Step::ClockBack(ms) => {
                    self.now -= u64::from(ms);
                    self.went_back |= ms > 0;
                }
                Step::Credential(bytes) => check_credential(&bytes, self.now),
                Step::TamperCredential { who, at, xor } => {
                    let genuine = &CREDENTIALS[who as usize % (KEYS + 1)].0;
                    let mut bytes = genuine.to_bytes();
                    let at = at as usize % bytes.len();
                    bytes[at] ^= xor;
                    if let Ok(c) = Credential::from_bytes("credential", &bytes)
                        && c != *genuine
                    {
                        assert!(
                            c.verify(COORDINATOR.id(), self.now).is_err(),
                            "a tampered credential verifies: {c:?}"
                        );
                    }
                }
            }
        }
    }

    fn set_coordinator(&mut self, key: WorkerId) {
        self.gate.set_coordinator(key);
        self.coordinator = Some(key);
    }

    /// Offers `datagram` from `from` to the gate and checks what it did.
    fn offer(&mut self, datagram: &[u8], from: SocketAddr) {
        let refused_before = self.counters.datagrams();
        let stripped_before = self.counters.members.load(Ordering::Relaxed);
        let known = self.known.clone();
        let admitted = self.gate.admit(datagram, from, self.now, || known.clone());
        let refused = self.counters.datagrams() - refused_before;
        let stripped = self.counters.members.load(Ordering::Relaxed) - stripped_before;
        let Some(out) = admitted else {
            assert_eq!((refused, stripped), (1, 0), "a refusal is counted once");
            return;
        };
        assert_eq!(refused, 0, "an admitted datagram is not counted as refused");
        let coordinator = self.coordinator.expect("nothing is admitted without a key");

        // The datagram itself.
        let (signature, payload) = split_datagram(datagram).expect("admitted, so signed");
        let mut rest = payload;
        let header: Header<SwimId> = PostcardCodec
            .decode_header(&mut rest)
            .expect("admitted, so it decodes");
        assert!(verify_datagram(WorkerId(header.src.key), signature, payload));
        assert!(vouched(&header.src, coordinator, self.now), "uncredentialed sender");
        assert_eq!(header.src.addr, from, "admitted from another address");
        assert_eq!(header.dst.key, me().0, "admitted a datagram for another worker");
        if let Some(named) = named(&header.message) {
            assert!(vouched(named, coordinator, self.now), "names an uncredentialed identity");
        }

        // What foca gets: the same header, credentialed members, the same tail.
        let header_len = payload.len() - rest.len();
        assert_eq!(&out[..header_len], &payload[..header_len]);
        self.known.insert(header.src.key);
        if rest.len() < 2 || header.message == Message::Broadcast {
            assert_eq!(out, payload, "passed on as it came");
            assert_eq!(stripped, 0);
            return;
        }
        let sent = decode_members(&mut rest).expect("admitted, so its members decode");
        let mut out_rest = &out[header_len..];
        let kept = decode_members(&mut out_rest).expect("what the gate passes on decodes");
        assert_eq!(out_rest, rest, "the tail after the members is kept");
        assert_eq!(stripped, (sent.len() - kept.len()) as u64, "every stripped member counted");
        let mut next = sent.iter();
        assert!(
            kept.iter().all(|k| next.any(|s| s == k)),
            "the kept members are a subsequence of those sent"
        );
        let mut fresh = 0;
        for m in &kept {
            let id = m.id();
            if id.key == me().0 {
                continue;
            }
            assert!(vouched(id, coordinator, self.now), "kept an uncredentialed member");
            if !known.contains(&id.key) {
                fresh += 1;
            }
        }
        assert!(
            fresh <= MAX_MEMBERS.saturating_sub(known.len()),
            "the table grew past its cap"
        );
        for m in &kept {
            if m.id().key != me().0 {
                self.known.insert(m.id().key);
            }
        }
        if fresh > 0 && !self.went_back {
            let times = self.introduced.entry(from).or_default();
            times.extend(std::iter::repeat_n(self.now, fresh));
            let recent = times.iter().filter(|&&t| t + 60_000 > self.now).count();
            assert!(
                recent <= 2 * PER_SOURCE as usize,
                "{recent} new members from {from} within a minute"
            );
        }
    }
}

/// Whether `coordinator` vouches for `id` at `now`, checked afresh.
fn vouched(id: &SwimId, coordinator: WorkerId, now: u64) -> bool {
    id.credential()
        .is_some_and(|c| c.verify(coordinator, now).is_ok())
}

/// The identity a message names besides sender and receiver.
fn named(message: &Message<SwimId>) -> Option<&SwimId> {
    match message {
        Message::PingReq { target, .. } | Message::IndirectAck { target, .. } => Some(target),
        Message::IndirectPing { origin, .. } | Message::ForwardedAck { origin, .. } => {
            Some(origin)
        }
        _ => None,
    }
}

/// foca's layout after the header: a big-endian u16 count, then the members.
fn decode_members(rest: &mut &[u8]) -> Option<Vec<Member<SwimId>>> {
    let (count, tail) = rest.split_first_chunk::<2>()?;
    *rest = tail;
    (0..u16::from_be_bytes(*count))
        .map(|_| PostcardCodec.decode_member(&mut *rest).ok())
        .collect()
}

/// The credential decoder's properties on `bytes` at `now`.
fn check_credential(bytes: &[u8], now: u64) {
    let Ok(c) = Credential::from_bytes("credential", bytes) else {
        return;
    };
    let again = Credential::from_bytes("credential", &c.to_bytes());
    assert_eq!(again.ok().as_ref(), Some(&c), "a credential round-trips");
    if c.verify(COORDINATOR.id(), now).is_ok() {
        assert!(
            CREDENTIALS.iter().any(|(genuine, _)| *genuine == c),
            "a credential the coordinator never issued verifies: {c:?}"
        );
        assert!(now < c.expires_ms, "an expired credential verifies");
    }
}
