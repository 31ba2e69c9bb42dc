//! The admission check in front of foca (see [`super`]'s "Who is admitted"): the SWIM
//! identity with its credential ([`SwimId`]), and [`Gate`], which decides from a datagram's
//! bytes, its UDP source and the time alone whether foca sees it, and which gossiped members
//! it may learn of. Sans-IO, so the fuzz target `membership` includes this file as it is
//! (`fuzz/fuzz_targets/membership.rs`): it may use only std, foca, serde and `protocol`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foca::{Codec, Header, Message, PostcardCodec};
use protocol::WorkerId;
use protocol::membership::{Credential, split_datagram, verify_datagram};

/// The identity foca gossips. `Addr` is the worker key: two identities with the same key
/// are the same worker, and the newer `bump` (then the later credential) wins. It carries
/// the coordinator's credential for (key, addr): `expires_ms` and `signature` (empty for
/// the bare identity we announce to, which is never admitted into a table).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SwimId {
    /// The worker key (foca's `Addr`).
    pub key: [u8; 32],
    /// Its peer address (SWIM on UDP there).
    pub addr: SocketAddr,
    /// Start time in ms, renewed when the cluster declares us down: the newer wins.
    pub bump: u64,
    /// The credential's end of validity (Unix ms); 0 without one.
    pub expires_ms: u64,
    /// The coordinator's signature over (key, addr, expires_ms); empty without one.
    pub signature: Vec<u8>,
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
        (self.bump, self.expires_ms) > (adversary.bump, adversary.expires_ms)
    }
}

impl SwimId {
    /// The identity `credential` vouches for (its worker key and address), incarnation
    /// `bump`.
    pub fn new(credential: &Credential, bump: u64) -> Self {
        SwimId {
            key: credential.worker.0,
            addr: credential.addr,
            bump,
            expires_ms: credential.expires_ms,
            signature: credential.signature.to_vec(),
        }
    }

    /// The credential this identity carries (not verified); `None` if it has none.
    pub fn credential(&self) -> Option<Credential> {
        Some(Credential {
            worker: WorkerId(self.key),
            addr: self.addr,
            expires_ms: self.expires_ms,
            signature: self.signature.as_slice().try_into().ok()?,
        })
    }

    /// Whether the coordinator `coordinator` vouches for this identity at `now_ms`.
    pub fn vouched(&self, coordinator: WorkerId, now_ms: u64) -> bool {
        self.credential()
            .is_some_and(|c| c.verify(coordinator, now_ms).is_ok())
    }
}

/// The length of the window [`Gate`] counts a source's new members in.
const MINUTE_MS: u64 = 60_000;

/// Datagrams and members refused by the admission check, by reason, and the members in
/// the table. One set may be shared by several memberships (one per coordinator): the
/// refusals and the table sizes add up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Arrived before registration told us the coordinator's key: normal for a moment at
    /// start, as members may learn of us a beat before we learn we are vouched for.
    pub early: AtomicU64,
    /// Unsigned, badly signed or not framed as SWIM.
    pub unsigned: AtomicU64,
    /// The sender, or an identity it names, has no valid credential (none, forged, expired).
    pub uncredentialed: AtomicU64,
    /// The UDP source is not the sender's credentialed address (spoofed or relayed).
    pub wrong_source: AtomicU64,
    /// Addressed to another worker (a replay).
    pub not_for_us: AtomicU64,
    /// Gossiped members stripped: uncredentialed, over the per-source cap or the table cap.
    pub members: AtomicU64,
    /// Live members in the table now, this worker included (a gauge).
    pub live: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The datagram counters by reason, as exported (`fallow_worker_membership_drops`).
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("early", get(&self.early)),
            ("unsigned", get(&self.unsigned)),
            ("uncredentialed", get(&self.uncredentialed)),
            ("wrong_source", get(&self.wrong_source)),
            ("not_for_us", get(&self.not_for_us)),
        ]
    }

    /// All datagrams dropped (members stripped not included).
    pub fn datagrams(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// The admission check in front of foca (see the module doc): signatures, credentials,
/// source address, caps. Its own counters; no I/O, time an argument.
#[derive(Debug)]
pub struct Gate {
    me: WorkerId,
    /// `None` until registration told us the coordinator's key: then nothing is admitted.
    coordinator: Option<WorkerId>,
    max_members: usize,
    per_source: u32,
    /// Per source: start of its current minute (Unix ms) and members it introduced in it.
    introduced: HashMap<SocketAddr, (u64, u32)>,
    /// Credentials already verified under `coordinator`, by key (address, expiry,
    /// signature): the same identity arrives in nearly every datagram, and a lookup is far
    /// cheaper than a verification.
    verified: HashMap<[u8; 32], (SocketAddr, u64, Vec<u8>)>,
    counters: Arc<Counters>,
}

impl Gate {
    /// The gate of worker `me`, admitting nobody until [`Gate::set_coordinator`], its
    /// table capped at `max_members`, `per_source` new members a minute from one source;
    /// refusals counted in `counters`.
    pub fn new(me: WorkerId, max_members: usize, per_source: u32, counters: Arc<Counters>) -> Self {
        Gate {
            me,
            coordinator: None,
            max_members: max_members.max(1),
            per_source,
            introduced: HashMap::new(),
            verified: HashMap::new(),
            counters,
        }
    }

    /// What it counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Credentials verify under `coordinator` from now on. A different key forgets every
    /// credential verified under the old one.
    pub fn set_coordinator(&mut self, coordinator: WorkerId) {
        if self.coordinator != Some(coordinator) {
            self.verified.clear();
            self.coordinator = Some(coordinator);
        }
    }

    /// Whether `coordinator` vouches for `id` at `now_ms`, verifying each credential once.
    fn vouched(&mut self, id: &SwimId, coordinator: WorkerId, now_ms: u64) -> bool {
        if now_ms >= id.expires_ms {
            return false;
        }
        if self
            .verified
            .get(&id.key)
            .is_some_and(|(addr, expires, sig)| {
                *addr == id.addr && *expires == id.expires_ms && *sig == id.signature
            })
        {
            return true;
        }
        if !id.vouched(coordinator, now_ms) {
            return false;
        }
        if self.verified.len() >= self.max_members.saturating_mul(2) {
            self.verified.clear();
        }
        self.verified
            .insert(id.key, (id.addr, id.expires_ms, id.signature.clone()));
        true
    }

    /// The foca payload of `datagram`, received from `from` at `now_ms` (Unix ms), if it is
    /// admitted, with the gossiped members that are not stripped out; `None` (counted)
    /// otherwise. `known` gives the keys in foca's table; it is called only for an admitted
    /// datagram that gossips members, so junk costs no walk over the table.
    pub fn admit(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
        known: impl FnOnce() -> HashSet<[u8; 32]>,
    ) -> Option<Vec<u8>> {
        let Some(coordinator) = self.coordinator else {
            Counters::bump(&self.counters.early);
            return None;
        };
        let Some((signature, payload)) = split_datagram(datagram) else {
            Counters::bump(&self.counters.unsigned);
            return None;
        };
        let mut rest = payload;
        let Ok(header) = Codec::<SwimId>::decode_header(&mut PostcardCodec, &mut rest) else {
            Counters::bump(&self.counters.unsigned);
            return None;
        };
        if !verify_datagram(WorkerId(header.src.key), signature, payload) {
            Counters::bump(&self.counters.unsigned);
            return None;
        }
        let named_ok = match named(&header) {
            Some(id) => self.vouched(id, coordinator, now_ms),
            None => true,
        };
        if !self.vouched(&header.src, coordinator, now_ms) || !named_ok {
            Counters::bump(&self.counters.uncredentialed);
            return None;
        }
        if header.src.addr != from {
            Counters::bump(&self.counters.wrong_source);
            return None;
        }
        if header.dst.key != self.me.0 {
            Counters::bump(&self.counters.not_for_us);
            return None;
        }
        let header_len = payload.len() - rest.len();
        if rest.len() < 2 || header.message == Message::Broadcast {
            return Some(payload.to_vec());
        }
        // foca's layout after the header: a big-endian u16 count, then the members.
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut budget = *self.introduced.entry(from).or_insert((now_ms, 0));
        // A new minute, or the clock went back.
        if !(budget.0..budget.0.saturating_add(MINUTE_MS)).contains(&now_ms) {
            budget = (now_ms, 0);
        }
        let known = known();
        let mut table = known.len();
        // Counted once the whole datagram is admitted: one that fails to decode further on
        // is refused as a whole, and counted once, for that.
        let mut stripped = 0u64;
        for _ in 0..count {
            let before = rest;
            let Ok(member) = Codec::<SwimId>::decode_member(&mut PostcardCodec, &mut rest) else {
                Counters::bump(&self.counters.unsigned);
                return None;
            };
            let bytes = &before[..before.len() - rest.len()];
            let id = member.id();
            let fresh = !known.contains(&id.key) && id.key != self.me.0;
            // Caps first: they are cheaper than a signature.
            let keep = id.key == self.me.0
                || ((!fresh || (budget.1 < self.per_source && table < self.max_members))
                    && self.vouched(id, coordinator, now_ms));
            if keep {
                if fresh {
                    budget.1 += 1;
                    table += 1;
                }
                kept.push(bytes);
            } else {
                stripped += 1;
            }
        }
        self.counters.members.fetch_add(stripped, Ordering::Relaxed);
        self.introduced.insert(from, budget);
        // Keep the per-source map as bounded as the table it protects.
        if self.introduced.len() > self.max_members.saturating_mul(2) {
            self.introduced
                .retain(|_, (at, _)| now_ms.saturating_sub(*at) < MINUTE_MS);
        }
        let mut out = Vec::with_capacity(payload.len());
        out.extend_from_slice(&payload[..header_len]);
        out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for bytes in kept {
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(rest);
        Some(out)
    }
}

/// The identity a message names besides sender and receiver (a probe's target or origin):
/// foca sends to it, so it must be vouched for too.
fn named(header: &Header<SwimId>) -> Option<&SwimId> {
    match &header.message {
        Message::PingReq { target: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::ForwardedAck { origin: id, .. } => Some(id),
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use foca::{Member, State};
    use protocol::Identity;
    use protocol::membership::sign_datagram;

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    /// Workers 1–4 (vouched at 127.0.0.1:700N), 9 is us.
    fn id(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn coordinator() -> Identity {
        id(200)
    }

    fn at(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n)))
    }

    /// Worker `n` as it announces itself: vouched for by `by` at `at(n)` from `T0`.
    fn swim(n: u8, by: &Identity) -> SwimId {
        SwimId::new(&Credential::issue(by, id(n).id(), at(n), T0), 1)
    }

    fn vouched(n: u8) -> SwimId {
        swim(n, &coordinator())
    }

    /// `message` from `src` to us gossiping `members`, signed by `signer`.
    fn datagram(signer: u8, src: SwimId, message: Message<SwimId>, members: &[SwimId]) -> Vec<u8> {
        datagram_to(vouched(9), signer, src, message, members)
    }

    /// [`datagram`] to `dst`.
    fn datagram_to(
        dst: SwimId,
        signer: u8,
        src: SwimId,
        message: Message<SwimId>,
        members: &[SwimId],
    ) -> Vec<u8> {
        signed_datagram(&id(signer), src, dst, message, members)
    }

    /// A SWIM datagram as a member (or a raw socket) sends it: `message` from `src` to
    /// `dst` gossiping `members` (alive), signed by `signer`.
    pub(in crate::membership) fn signed_datagram(
        signer: &Identity,
        src: SwimId,
        dst: SwimId,
        message: Message<SwimId>,
        members: &[SwimId],
    ) -> Vec<u8> {
        let header = Header {
            src,
            src_incarnation: 0,
            dst,
            message,
        };
        let mut payload = Vec::new();
        PostcardCodec
            .encode_header(&header, &mut payload)
            .expect("header");
        if !members.is_empty() {
            payload.extend_from_slice(&(members.len() as u16).to_be_bytes());
            for m in members {
                let member = Member::new(m.clone(), 0, State::Alive);
                PostcardCodec
                    .encode_member(&member, &mut payload)
                    .expect("member");
            }
        }
        sign_datagram(signer, &payload)
    }

    /// What the gate did with one datagram.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Passed on with this many gossiped members (and this many stripped).
        Admitted { kept: usize, stripped: u64 },
        /// Refused, counted under this reason.
        Refused(&'static str),
    }

    /// Offers `datagram` from `from` at `now_ms` to `gate`, whose table holds `known`.
    fn offer(
        gate: &mut Gate,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
        known: &[u8],
    ) -> Outcome {
        let before = gate.counters().by_reason();
        let stripped = gate.counters().members.load(Ordering::Relaxed);
        let known: HashSet<[u8; 32]> = known.iter().map(|&n| id(n).id().0).collect();
        let out = gate.admit(datagram, from, now_ms, || known);
        let after = gate.counters().by_reason();
        let stripped = gate.counters().members.load(Ordering::Relaxed) - stripped;
        match out {
            Some(payload) => {
                assert_eq!(before, after, "an admitted datagram is not counted");
                let mut rest = &payload[..];
                let _: Header<SwimId> = PostcardCodec.decode_header(&mut rest).expect("header");
                let kept = match rest.split_first_chunk::<2>() {
                    Some((count, _)) => usize::from(u16::from_be_bytes(*count)),
                    None => 0,
                };
                Outcome::Admitted { kept, stripped }
            }
            None => {
                let counted: Vec<&str> = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| a.1 == b.1 + 1)
                    .map(|(b, _)| b.0)
                    .collect();
                assert_eq!(counted.len(), 1, "a refusal is counted once: {counted:?}");
                assert_eq!(stripped, 0, "a refused datagram strips no member");
                Outcome::Refused(counted[0])
            }
        }
    }

    fn gate() -> Gate {
        let mut gate = Gate::new(id(9).id(), 4, 2, Arc::default());
        gate.set_coordinator(coordinator().id());
        gate
    }

    #[test]
    fn the_gate_admits_only_vouched_senders_at_their_address_naming_vouched_identities() {
        use Outcome::*;
        let other = id(201);
        let expired = T0 + protocol::membership::CREDENTIAL_TTL_MS;
        let mut moved = vouched(1);
        moved.addr = at(5);
        let announce = |src: SwimId| datagram(1, src, Message::Announce, &[]);
        let probe = |target: SwimId| {
            datagram(
                1,
                vouched(1),
                Message::PingReq {
                    target,
                    probe_number: 1,
                },
                &[],
            )
        };
        // A vouched member's datagram to another member, replayed to us.
        let for_another = datagram_to(vouched(2), 1, vouched(1), Message::Announce, &[]);
        let mut tampered = announce(vouched(1));
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let cases: Vec<(&str, Vec<u8>, SocketAddr, u64, Outcome)> = vec![
            (
                "vouched, from its address",
                announce(vouched(1)),
                at(1),
                T0,
                Admitted {
                    kept: 0,
                    stripped: 0,
                },
            ),
            ("junk", vec![7; 100], at(1), T0, Refused("unsigned")),
            (
                "too short to be signed",
                vec![7; 64],
                at(1),
                T0,
                Refused("unsigned"),
            ),
            (
                "signed by another key",
                datagram(2, vouched(1), Message::Announce, &[]),
                at(1),
                T0,
                Refused("unsigned"),
            ),
            (
                "tampered after signing",
                tampered,
                at(1),
                T0,
                Refused("unsigned"),
            ),
            (
                "credential by another coordinator",
                announce(swim(1, &other)),
                at(1),
                T0,
                Refused("uncredentialed"),
            ),
            (
                "credential expired",
                announce(vouched(1)),
                at(1),
                expired,
                Refused("uncredentialed"),
            ),
            (
                "credential for another address",
                announce(moved.clone()),
                at(5),
                T0,
                Refused("uncredentialed"),
            ),
            (
                "from another address",
                announce(vouched(1)),
                at(5),
                T0,
                Refused("wrong_source"),
            ),
            (
                "for another worker",
                for_another,
                at(1),
                T0,
                Refused("not_for_us"),
            ),
            (
                "probe of a vouched member",
                probe(vouched(2)),
                at(1),
                T0,
                Admitted {
                    kept: 0,
                    stripped: 0,
                },
            ),
            (
                "probe of an unvouched address",
                probe(moved),
                at(1),
                T0,
                Refused("uncredentialed"),
            ),
        ];
        for (what, d, from, now, want) in cases {
            assert_eq!(offer(&mut gate(), &d, from, now, &[]), want, "{what}");
        }
        // A credential verified once is remembered, but only under the key it verified
        // under (found by the `membership` fuzz target).
        let mut g = gate();
        let d = announce(vouched(1));
        assert_eq!(
            offer(&mut g, &d, at(1), T0, &[]),
            Admitted {
                kept: 0,
                stripped: 0
            }
        );
        g.set_coordinator(other.id());
        assert_eq!(
            offer(&mut g, &d, at(1), T0, &[]),
            Refused("uncredentialed"),
            "after the coordinator key changed"
        );
        let mut early = Gate::new(id(9).id(), 4, 2, Arc::default());
        assert_eq!(
            offer(&mut early, &announce(vouched(1)), at(1), T0, &[]),
            Refused("early"),
            "before the coordinator key is known"
        );
    }

    /// Found by the `membership` fuzz target: a datagram whose gossip strips a member and
    /// then fails to decode was refused and counted, and its stripped member counted too.
    #[test]
    fn a_datagram_refused_part_way_through_its_gossip_is_counted_once() {
        let header = Header {
            src: vouched(1),
            src_incarnation: 0,
            dst: vouched(9),
            message: Message::<SwimId>::Gossip,
        };
        let mut payload = Vec::new();
        PostcardCodec
            .encode_header(&header, &mut payload)
            .expect("header");
        // Two members announced, one sent: a forged one, which would be stripped.
        payload.extend_from_slice(&2u16.to_be_bytes());
        let forged = Member::new(swim(3, &id(201)), 0, State::Alive);
        PostcardCodec
            .encode_member(&forged, &mut payload)
            .expect("member");
        let datagram = sign_datagram(&id(1), &payload);
        assert_eq!(
            offer(&mut gate(), &datagram, at(1), T0, &[1]),
            Outcome::Refused("unsigned")
        );
    }

    #[test]
    fn gossip_keeps_vouched_members_within_the_caps() {
        use Outcome::*;
        let gossip = |members: &[SwimId]| datagram(1, vouched(1), Message::Gossip, members);
        let other = id(201);
        let mut g = gate();
        // Two vouched, one forged, one without a credential: the last two stripped.
        let mut bare = vouched(4);
        bare.signature.clear();
        let mixed = gossip(&[vouched(2), swim(3, &other), vouched(3), bare]);
        assert_eq!(
            offer(&mut g, &mixed, at(1), T0, &[1]),
            Admitted {
                kept: 2,
                stripped: 2
            }
        );
        // The same source within the minute: its two new members are used up; known ones
        // and we still pass.
        let more = gossip(&[vouched(4), vouched(2), vouched(9)]);
        assert_eq!(
            offer(&mut g, &more, at(1), T0 + 1_000, &[1, 2, 3]),
            Admitted {
                kept: 2,
                stripped: 1
            }
        );
        // A minute later, or after the clock went back, it may introduce two again.
        assert_eq!(
            offer(&mut g, &more, at(1), T0 + 61_000, &[1, 2, 3]),
            Admitted {
                kept: 3,
                stripped: 0
            }
        );
        let mut g = gate();
        assert_eq!(
            offer(&mut g, &mixed, at(1), T0, &[1]),
            Admitted {
                kept: 2,
                stripped: 2
            }
        );
        assert_eq!(
            offer(&mut g, &more, at(1), T0 - 1, &[1, 2, 3]),
            Admitted {
                kept: 3,
                stripped: 0
            }
        );
        // A full table (4) takes no new member from anyone.
        let full = gossip(&[vouched(4), vouched(2)]);
        assert_eq!(
            offer(&mut gate(), &full, at(1), T0, &[1, 2, 3, 5]),
            Admitted {
                kept: 1,
                stripped: 1
            }
        );
    }
}
