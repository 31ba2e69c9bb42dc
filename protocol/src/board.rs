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
//! - until then a holder learns only *how many* commitments exist, not whose.
//!
//! Every refusal is counted by reason ([`Board::rejections`]) and, where the offending
//! message carries a valid signature, attributed to the worker that signed it
//! ([`Rejection::offender`]), so the shell can report it to the coordinator.

use std::collections::{BTreeMap, HashMap};

use crate::certificate::MAX_CLAIMS;
use crate::claim::Commitment;
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
}

impl Reason {
    /// Every reason, in a stable order (for metrics and reports).
    pub const ALL: [Reason; 8] = [
        Reason::BadSignature,
        Reason::RevealWithoutCommitment,
        Reason::RevealMismatch,
        Reason::Equivocation,
        Reason::Replayed,
        Reason::TooManyClaims,
        Reason::BoardFull,
        Reason::WrongProject,
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
}

impl Board {
    /// An empty board.
    pub fn new(limits: BoardLimits) -> Self {
        Board {
            limits,
            ..Default::default()
        }
    }

    /// Takes a commitment; returns the number of distinct commitments for its unit.
    pub fn commit(&mut self, c: Commitment, now: u64) -> Result<u32, Rejection> {
        let unit = c.unit;
        let reject = |reason, offender| Rejection {
            reason,
            unit,
            offender,
        };
        if c.verify().is_err() {
            return Err(self.count(reject(Reason::BadSignature, None)));
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

    fn id(n: u8) -> WorkerId {
        Identity::from_seed([n; 32]).id()
    }

    #[test]
    fn reveals_are_shown_only_to_workers_that_revealed() {
        let mut b = Board::default();
        let (a, c) = (claim(1, b"x"), claim(2, b"x"));
        assert_eq!(b.commit(a.commitment(), 0), Ok(1));
        assert_eq!(b.commit(c.commitment(), 0), Ok(2));
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
        let mut b = Board::default();
        let (a, c) = (claim(1, b"x"), claim(2, b"x"));
        let (views, rejected) = b.exchange(
            vec![a.commitment(), c.commitment()],
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
        let mut b = Board::default();
        let honest = claim(1, b"x");
        let copier = Identity::from_seed([2; 32]);
        let guess = Claim::sign(&copier, ProjectId(1), UnitId(5), Digest::of(b"?"), 10);
        b.commit(honest.commitment(), 0).expect("commit");
        b.commit(guess.commitment(), 0).expect("commit");
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
        });
        let a = claim(1, b"x");
        let mut forged = a.commitment();
        forged.seal[0] ^= 1;
        assert_eq!(
            b.commit(forged, 0).map_err(|r| r.reason),
            Err(Reason::BadSignature)
        );
        b.commit(a.commitment(), 0).expect("commit");
        assert_eq!(
            b.commit(a.commitment(), 0).map_err(|r| r.reason),
            Err(Reason::Replayed)
        );
        let other = claim(1, b"y");
        let r = b.commit(other.commitment(), 0).expect_err("equivocation");
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
            b.commit(next.commitment(), 0).map_err(|r| r.reason),
            Err(Reason::BoardFull)
        );
        b.expire(1000);
        assert!(b.is_empty());
        let total: u64 = b.rejections().values().sum();
        assert_eq!(total, 6);
    }
}
