//! The board a rendezvous peer keeps for the units that hash to it (see
//! [`crate::rendezvous`]): commitments and reveals of the workers holding each unit. A
//! sans-IO state machine: the worker's peer service feeds it messages with `now`.
//!
//! Rules that make commit–reveal hold:
//! - a reveal is taken only from a worker whose commitment is already on the board, and only
//!   if it opens that commitment ([`Reason::RevealWithoutCommitment`],
//!   [`Reason::RevealMismatch`]);
//! - a second, different commitment by the same worker for the same unit is equivocation and
//!   is refused; the first stands ([`Reason::Equivocation`]);
//! - reveals are handed out only to workers whose own reveal is on the board
//!   ([`Board::view`]), so nobody learns a digest before it has bound itself to its own;
//! - until then a holder learns only *how many* commitments exist, not whose;
//! - a commitment is filed only with the coordinator's lease ticket for exactly its worker,
//!   project and unit, unexpired when first accepted ([`crate::ticket`]), checked against
//!   the one coordinator key the board's worker registered with ([`Board::vouched_by`]).
//!   So nobody but the workers holding a unit can occupy it (no junk project blocking the
//!   real one, no filling a unit to [`MAX_CLAIMS`] or the board with made-up units), and a
//!   board that knows no coordinator key yet files nothing ([`Reason::NoCoordinatorKey`]).
//!
//! Every refusal is counted by reason ([`Board::rejections`]) and, where the offending
//! message carries a valid signature, attributed to the worker that signed it
//! ([`Rejection::offender`]), so the shell can report it to the coordinator.

use std::collections::{BTreeMap, HashMap};

use crate::certificate::MAX_CLAIMS;
use crate::claim::Commitment;
use crate::ticket::TicketError;
use crate::{Claim, ProjectId, UnitId, WorkerId};

/// Why a board refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The signature does not verify (forged or corrupted).
    BadSignature,
    /// A reveal arrived from a worker with no commitment on this board.
    RevealWithoutCommitment,
    /// A reveal does not open the worker's commitment (e.g. a copied digest).
    RevealMismatch,
    /// A second, different commitment by the same worker for the same unit.
    Equivocation,
    /// The exact same message again (harmless; counted to spot replays).
    Replayed,
    /// The unit already has [`MAX_CLAIMS`] commitments.
    TooManyClaims,
    /// The board holds its maximum number of units.
    BoardFull,
    /// A message for a unit this board knows under another project.
    WrongProject,
    /// A commitment without a lease ticket.
    NoTicket,
    /// A lease ticket that is not the coordinator's for this worker, project and unit.
    BadTicket,
    /// A lease ticket past its expiry when the commitment first arrived.
    TicketExpired,
    /// The board's worker does not know its coordinator's key yet (not registered, or a
    /// coordinator too old to send it), so it cannot check tickets.
    NoCoordinatorKey,
}

impl Reason {
    /// Every reason, in a stable order (for metrics and reports).
    pub const ALL: [Reason; 12] = [
        Reason::BadSignature,
        Reason::RevealWithoutCommitment,
        Reason::RevealMismatch,
        Reason::Equivocation,
        Reason::Replayed,
        Reason::TooManyClaims,
        Reason::BoardFull,
        Reason::WrongProject,
        Reason::NoTicket,
        Reason::BadTicket,
        Reason::TicketExpired,
        Reason::NoCoordinatorKey,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadSignature => "bad_signature",
            Reason::RevealWithoutCommitment => "reveal_without_commitment",
            Reason::RevealMismatch => "reveal_mismatch",
            Reason::Equivocation => "equivocation",
            Reason::Replayed => "replayed",
            Reason::TooManyClaims => "too_many_claims",
            Reason::BoardFull => "board_full",
            Reason::WrongProject => "wrong_project",
            Reason::NoTicket => "no_ticket",
            Reason::BadTicket => "bad_ticket",
            Reason::TicketExpired => "ticket_expired",
            Reason::NoCoordinatorKey => "no_coordinator_key",
        }
    }
}

/// A refused message: why, and who is provably to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// The unit.
    pub unit: UnitId,
    /// The worker that signed the offending message, when the refusal proves misbehaviour
    /// (mismatch or equivocation: two valid signatures over different seals).
    pub offender: Option<WorkerId>,
}

/// Bounds that keep a board's memory proportional to the work routed to it.
#[derive(Debug, Clone, Copy)]
pub struct BoardLimits {
    /// Most units on the board at once.
    pub max_units: usize,
    /// A unit untouched this long (ms) is dropped.
    pub ttl_ms: u64,
}

impl Default for BoardLimits {
    fn default() -> Self {
        BoardLimits {
            max_units: 100_000,
            ttl_ms: 30 * 60 * 1000,
        }
    }
}

#[derive(Debug)]
struct Entry {
    project: ProjectId,
    commitments: BTreeMap<WorkerId, Commitment>,
    reveals: BTreeMap<WorkerId, Claim>,
    touched: u64,
}

/// What a holder may see of a unit (see [`Board::view`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Distinct commitments on the board.
    pub commitments: u32,
    /// The reveals on the board, only if the asker's own reveal is among them.
    pub reveals: Vec<Claim>,
    /// Commitments on the board, only if the asker has revealed (lets holders see
    /// equivocation across boards).
    pub committed: Vec<Commitment>,
}

/// A rendezvous peer's board.
#[derive(Debug, Default)]
pub struct Board {
    units: HashMap<UnitId, Entry>,
    limits: BoardLimits,
    rejections: BTreeMap<Reason, u64>,
    /// The key whose lease tickets admit commitments (`None`: admit none).
    coordinator: Option<WorkerId>,
}

impl Board {
    /// An empty board.
    pub fn new(limits: BoardLimits) -> Self {
        Board {
            limits,
            ..Default::default()
        }
    }

    /// Accept commitments with lease tickets signed by `coordinator` (the key the board's
    /// worker registered with; one board serves one coordinator).
    pub fn vouched_by(mut self, coordinator: WorkerId) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    /// Sets or changes the coordinator key (learnt at registration, after the board
    /// started serving).
    pub fn set_coordinator(&mut self, coordinator: WorkerId) {
        self.coordinator = Some(coordinator);
    }

    /// Takes a commitment; returns the number of distinct commitments for its unit. `now`
    /// is Unix ms (lease tickets expire on it). The ticket is checked and dropped: the
    /// board keeps and shows the commitment alone.
    pub fn commit(&mut self, mut c: Commitment, now: u64) -> Result<u32, Rejection> {
        let unit = c.unit;
        let reject = |reason, offender| Rejection {
            reason,
            unit,
            offender,
        };
        if c.verify().is_err() {
            return Err(self.count(reject(Reason::BadSignature, None)));
        }
        let Some(coordinator) = self.coordinator else {
            return Err(self.count(reject(Reason::NoCoordinatorKey, None)));
        };
        let Some(ticket) = c.ticket.take() else {
            return Err(self.count(reject(Reason::NoTicket, None)));
        };
        // Expiry bounds when a worker's commitment is first accepted; once one is on file,
        // a re-sent one is a replay and a different one equivocation, whatever the age.
        let filed = self.commitment(unit, c.worker).is_some();
        match ticket.verify(coordinator, c.worker, c.project, unit, now) {
            Ok(()) => {}
            Err(TicketError::Expired) if filed => {}
            Err(TicketError::Expired) => {
                return Err(self.count(reject(Reason::TicketExpired, None)));
            }
            Err(TicketError::BadSignature) => {
                return Err(self.count(reject(Reason::BadTicket, None)));
            }
        }
        if !self.units.contains_key(&unit) && self.units.len() >= self.limits.max_units {
            return Err(self.count(reject(Reason::BoardFull, None)));
        }
        let entry = self.units.entry(unit).or_insert_with(|| Entry {
            project: c.project,
            commitments: BTreeMap::new(),
            reveals: BTreeMap::new(),
            touched: now,
        });
        if entry.project != c.project {
            return Err(self.count(reject(Reason::WrongProject, None)));
        }
        entry.touched = now;
        match entry.commitments.get(&c.worker) {
            Some(old) if old.seal == c.seal => {
                return Err(self.count(reject(Reason::Replayed, None)));
            }
            Some(_) => return Err(self.count(reject(Reason::Equivocation, Some(c.worker)))),
            None => {}
        }
        if entry.commitments.len() >= MAX_CLAIMS {
            return Err(self.count(reject(Reason::TooManyClaims, None)));
        }
        entry.commitments.insert(c.worker, c);
        Ok(entry.commitments.len() as u32)
    }

    /// Takes a reveal.
    pub fn reveal(&mut self, claim: Claim, now: u64) -> Result<(), Rejection> {
        let unit = claim.unit;
        let reject = |reason, offender| Rejection {
            reason,
            unit,
            offender,
        };
        if claim.verify().is_err() {
            return Err(self.count(reject(Reason::BadSignature, None)));
        }
        let Some(entry) = self.units.get_mut(&unit) else {
            return Err(self.count(reject(Reason::RevealWithoutCommitment, None)));
        };
        if entry.project != claim.project {
            return Err(self.count(reject(Reason::WrongProject, None)));
        }
        let Some(commitment) = entry.commitments.get(&claim.worker) else {
            return Err(self.count(reject(Reason::RevealWithoutCommitment, None)));
        };
        if !claim.opens(commitment) {
            // Both the commitment and this claim carry the worker's valid signature over
            // different seals: proof that it changed its answer.
            return Err(self.count(reject(Reason::RevealMismatch, Some(claim.worker))));
        }
        entry.touched = now;
        if entry.reveals.contains_key(&claim.worker) {
            return Err(self.count(reject(Reason::Replayed, None)));
        }
        entry.reveals.insert(claim.worker, claim);
        Ok(())
    }

    /// What `asker` may see of `unit`: the commitment count always; the reveals and
    /// commitments only once its own reveal is on the board.
    pub fn view(&self, unit: UnitId, asker: WorkerId) -> View {
        let Some(entry) = self.units.get(&unit) else {
            return View::default();
        };
        let mut view = View {
            commitments: entry.commitments.len() as u32,
            ..View::default()
        };
        if entry.reveals.contains_key(&asker) {
            view.reveals = entry.reveals.values().cloned().collect();
            view.committed = entry.commitments.values().cloned().collect();
        }
        view
    }

    /// One request from a holder (the Peer `Exchange` RPC): take its commitments, then its
    /// reveals, then answer for each wanted unit. A presented reveal that is on the board
    /// entitles the asker to that unit's reveals, so a request needs no extra signature:
    /// only a worker that revealed (or someone it showed its claim to) can present it.
    pub fn exchange(
        &mut self,
        commitments: Vec<Commitment>,
        reveals: Vec<Claim>,
        want: &[UnitId],
        now: u64,
    ) -> (Vec<(UnitId, View)>, Vec<Rejection>) {
        let mut rejected = Vec::new();
        for c in commitments {
            if let Err(r) = self.commit(c, now) {
                rejected.push(r);
            }
        }
        let mut presented: HashMap<UnitId, WorkerId> = HashMap::new();
        for claim in reveals {
            let (unit, worker) = (claim.unit, claim.worker);
            let filed = self
                .units
                .get(&unit)
                .and_then(|e| e.reveals.get(&worker))
                .is_some_and(|r| *r == claim);
            if filed {
                presented.insert(unit, worker); // a re-sent reveal: not a replay
                continue;
            }
            match self.reveal(claim, now) {
                Ok(()) => {
                    presented.insert(unit, worker);
                }
                Err(r) => rejected.push(r),
            }
        }
        let views = want
            .iter()
            .map(|&unit| {
                let view = match presented.get(&unit) {
                    Some(&worker) => self.view(unit, worker),
                    None => View {
                        commitments: self
                            .units
                            .get(&unit)
                            .map_or(0, |e| e.commitments.len() as u32),
                        ..View::default()
                    },
                };
                (unit, view)
            })
            .collect();
        (views, rejected)
    }

    /// The commitment `worker` filed for `unit`, if any: with a [`Rejection`] naming an
    /// offender, the shell pairs it with the offending message as evidence.
    pub fn commitment(&self, unit: UnitId, worker: WorkerId) -> Option<&Commitment> {
        self.units.get(&unit)?.commitments.get(&worker)
    }

    /// Drops units untouched for the TTL.
    pub fn expire(&mut self, now: u64) {
        let ttl = self.limits.ttl_ms;
        self.units
            .retain(|_, e| now.saturating_sub(e.touched) < ttl);
    }

    /// Units on the board.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether the board is empty.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Refusals so far, by reason.
    pub fn rejections(&self) -> &BTreeMap<Reason, u64> {
        &self.rejections
    }

    fn count(&mut self, r: Rejection) -> Rejection {
        *self.rejections.entry(r.reason).or_default() += 1;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Digest, Identity};

    fn claim(n: u8, output: &[u8]) -> Claim {
        Claim::sign(
            &Identity::from_seed([n; 32]),
            ProjectId(1),
            UnitId(5),
            Digest::of(output),
            10,
        )
    }

    /// The coordinator the test boards take tickets from.
    fn coordinator() -> Identity {
        Identity::from_seed([200; 32])
    }

    fn board() -> Board {
        Board::default().vouched_by(coordinator().id())
    }

    /// `claim`'s commitment with a lease ticket for it, valid until `u64::MAX`.
    fn ticketed(claim: &Claim) -> Commitment {
        let t = coordinator().sign_ticket(claim.worker, claim.project, claim.unit, u64::MAX);
        claim.commitment().with_ticket(Some(t))
    }

    fn id(n: u8) -> WorkerId {
        Identity::from_seed([n; 32]).id()
    }

    #[test]
    fn reveals_are_shown_only_to_workers_that_revealed() {
        let mut b = board();
        let (a, c) = (claim(1, b"x"), claim(2, b"x"));
        assert_eq!(b.commit(ticketed(&a), 0), Ok(1));
        assert_eq!(b.commit(ticketed(&c), 0), Ok(2));
        b.reveal(a.clone(), 1).expect("opens");
        // Worker 2 sees the count but not worker 1's digest until it reveals its own.
        let before = b.view(UnitId(5), id(2));
        assert_eq!((before.commitments, before.reveals.len()), (2, 0));
        assert!(
            before.committed.is_empty(),
            "who holds the unit stays hidden"
        );
        b.reveal(c, 2).expect("opens");
        assert_eq!(b.view(UnitId(5), id(2)).reveals.len(), 2);
        assert_eq!(b.view(UnitId(5), id(1)).reveals.len(), 2);
        assert!(b.view(UnitId(5), id(3)).reveals.is_empty());
    }

    #[test]
    fn exchange_shows_reveals_only_to_askers_presenting_their_filed_reveal() {
        let mut b = board();
        let (a, c) = (claim(1, b"x"), claim(2, b"x"));
        let (views, rejected) = b.exchange(
            vec![ticketed(&a), ticketed(&c)],
            vec![a.clone()],
            &[UnitId(5)],
            0,
        );
        assert!(rejected.is_empty());
        assert_eq!(views[0].1.reveals, vec![a.clone()]);
        // Asking without presenting anything shows the count only.
        let (views, _) = b.exchange(Vec::new(), Vec::new(), &[UnitId(5)], 1);
        assert_eq!((views[0].1.commitments, views[0].1.reveals.len()), (2, 0));
        // Re-sending a filed reveal is how a holder polls: not counted as a replay.
        let (views, rejected) = b.exchange(Vec::new(), vec![c.clone()], &[UnitId(5)], 2);
        assert!(rejected.is_empty());
        assert_eq!(views[0].1.reveals.len(), 2);
        let (_, rejected) = b.exchange(Vec::new(), vec![c], &[UnitId(5)], 3);
        assert!(rejected.is_empty());
        assert!(b.rejections().is_empty());
    }

    #[test]
    fn a_lazy_copier_is_caught_and_named() {
        let mut b = board();
        let honest = claim(1, b"x");
        let copier = Identity::from_seed([2; 32]);
        let guess = Claim::sign(&copier, ProjectId(1), UnitId(5), Digest::of(b"?"), 10);
        b.commit(ticketed(&honest), 0).expect("commit");
        b.commit(ticketed(&guess), 0).expect("commit");
        b.reveal(honest.clone(), 1).expect("reveal");
        // The copier cannot see the honest digest without revealing first...
        assert!(b.view(UnitId(5), copier.id()).reveals.is_empty());
        // ...and whatever it reveals after copying it from elsewhere does not open its seal.
        let copied = Claim::sign(&copier, ProjectId(1), UnitId(5), honest.digest, 10);
        let r = b.reveal(copied, 2).expect_err("caught");
        assert_eq!(
            (r.reason, r.offender),
            (Reason::RevealMismatch, Some(copier.id()))
        );
        assert_eq!(b.rejections()[&Reason::RevealMismatch], 1);
    }

    #[test]
    fn forged_replayed_equivocating_and_uncommitted_messages_are_counted() {
        let mut b = Board::new(BoardLimits {
            max_units: 1,
            ttl_ms: 100,
        })
        .vouched_by(coordinator().id());
        let a = claim(1, b"x");
        let mut forged = ticketed(&a);
        forged.seal[0] ^= 1;
        assert_eq!(
            b.commit(forged, 0).map_err(|r| r.reason),
            Err(Reason::BadSignature)
        );
        b.commit(ticketed(&a), 0).expect("commit");
        assert_eq!(
            b.commit(ticketed(&a), 0).map_err(|r| r.reason),
            Err(Reason::Replayed)
        );
        let other = claim(1, b"y");
        let r = b.commit(ticketed(&other), 0).expect_err("equivocation");
        assert_eq!((r.reason, r.offender), (Reason::Equivocation, Some(id(1))));
        assert_eq!(
            b.reveal(claim(3, b"x"), 0).map_err(|r| r.reason),
            Err(Reason::RevealWithoutCommitment)
        );
        let mut elsewhere = claim(4, b"x");
        elsewhere.unit = UnitId(6);
        assert_eq!(
            b.reveal(elsewhere.clone(), 0).map_err(|r| r.reason),
            Err(Reason::BadSignature),
            "a claim replayed under another unit breaks its signature"
        );
        let next = Claim::sign(
            &Identity::from_seed([4; 32]),
            ProjectId(1),
            UnitId(6),
            Digest::of(b"x"),
            1,
        );
        assert_eq!(
            b.commit(ticketed(&next), 0).map_err(|r| r.reason),
            Err(Reason::BoardFull)
        );
        b.expire(1000);
        assert!(b.is_empty());
        let total: u64 = b.rejections().values().sum();
        assert_eq!(total, 6);
    }

    /// What a flood of well-formed, self-signed junk did to a board before tickets: a
    /// commitment under a made-up project took the unit (`wrong_project` for the real
    /// one), 64 filled it (`too_many_claims`). Now none is filed and the real
    /// commitments are.
    #[test]
    fn junk_without_tickets_blocks_nothing() {
        let mut b = board();
        let attacker = Identity::from_seed([66; 32]);
        let decoy = Claim::sign(&attacker, ProjectId(99), UnitId(5), Digest::of(b"?"), 1);
        assert_eq!(
            b.commit(decoy.commitment(), 0).map_err(|r| r.reason),
            Err(Reason::NoTicket)
        );
        for n in 0..MAX_CLAIMS as u64 + 8 {
            let mut seed = [0; 32];
            seed[..8].copy_from_slice(&(n + 1000).to_le_bytes());
            let sybil = Identity::from_seed(seed);
            let junk = Claim::sign(&sybil, ProjectId(1), UnitId(5), Digest::of(b"?"), 1);
            assert_eq!(
                b.commit(junk.commitment(), 0).map_err(|r| r.reason),
                Err(Reason::NoTicket)
            );
        }
        assert!(b.is_empty(), "nothing filed, not even an empty unit");
        assert_eq!(b.commit(ticketed(&claim(1, b"x")), 0), Ok(1));
        assert_eq!(b.commit(ticketed(&claim(2, b"x")), 0), Ok(2));
        assert_eq!(b.rejections()[&Reason::NoTicket], MAX_CLAIMS as u64 + 9);
    }

    #[test]
    fn a_ticket_admits_only_its_own_worker_project_and_unit_until_it_expires() {
        let check = |ticket: crate::ticket::Ticket, now| {
            let mut b = board();
            let c = claim(1, b"x").commitment().with_ticket(Some(ticket));
            b.commit(c, now).map_err(|r| r.reason)
        };
        let key = coordinator();
        let (w, other) = (id(1), id(2));
        let (p, u) = (ProjectId(1), UnitId(5));
        assert_eq!(check(key.sign_ticket(w, p, u, 10), 10), Ok(1));
        let bad = Err(Reason::BadTicket);
        assert_eq!(check(key.sign_ticket(other, p, u, 10), 0), bad);
        assert_eq!(check(key.sign_ticket(w, ProjectId(2), u, 10), 0), bad);
        assert_eq!(check(key.sign_ticket(w, p, UnitId(6), 10), 0), bad);
        let stranger = Identity::from_seed([7; 32]);
        assert_eq!(
            check(stranger.sign_ticket(w, p, u, 10), 0),
            bad,
            "another key"
        );
        assert_eq!(
            check(key.sign_ticket(w, p, u, 10), 11),
            Err(Reason::TicketExpired)
        );
        // Expiry bounds the first acceptance only: a filed commitment re-sent later is
        // the usual replay, and its reveal is taken.
        let mut b = board();
        let a = claim(1, b"x");
        let c = a
            .commitment()
            .with_ticket(Some(key.sign_ticket(w, p, u, 10)));
        assert_eq!(b.commit(c.clone(), 5), Ok(1));
        assert_eq!(b.commit(c, 50).map_err(|r| r.reason), Err(Reason::Replayed));
        b.reveal(a.clone(), 60).expect("reveal after expiry");
        // Boards keep and show the commitment without its ticket.
        assert_eq!(b.commitment(u, w), Some(&a.commitment()));
    }

    #[test]
    fn a_board_without_its_coordinator_key_files_nothing() {
        let mut b = Board::default();
        assert_eq!(
            b.commit(ticketed(&claim(1, b"x")), 0).map_err(|r| r.reason),
            Err(Reason::NoCoordinatorKey)
        );
        b.set_coordinator(coordinator().id());
        assert_eq!(b.commit(ticketed(&claim(1, b"x")), 0), Ok(1));
    }
}
