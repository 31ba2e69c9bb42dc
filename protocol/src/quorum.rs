//! The tally a worker keeps for each unit it holds while the quorum forms, with
//! commit–reveal: a sans-IO state machine fed with what the unit's boards report
//! ([`crate::board::View`]) and with `now`, returning what to send.
//!
//! Per unit: after executing, the worker **commits** (sends its seal to the boards). It
//! **reveals** once the boards report at least `quorum` commitments, or when
//! [`Timing::reveal_after_ms`] has passed since it committed (it may be the only replica:
//! under adaptive replication a trusted worker cannot tell a solo unit from a spot-checked
//! one). It **submits a certificate** as soon as `quorum` revealed claims agree with its own,
//! or, failing that, a partial one (its own claim and any agreeing ones) once it revealed
//! alone or [`Timing::submit_after_ms`] passed: the coordinator combines partial
//! certificates with the claims it already has. Disagreeing reveals are reported as a
//! dispute.

use std::collections::{BTreeMap, HashMap};

use crate::board::View;
use crate::certificate::MAX_CLAIMS;
use crate::claim::Commitment;
use crate::{Claim, Digest, Error, UnitId, WorkerId};

/// What the worker's shell should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this commitment to the unit's boards.
    Commit {
        /// The unit.
        unit: UnitId,
        /// Our commitment.
        commitment: Commitment,
    },
    /// Send our claim (the opening of our commitment) to the unit's boards.
    Reveal {
        /// The unit.
        unit: UnitId,
        /// Our claim.
        claim: Claim,
    },
    /// Submit these agreeing claims plus our output to the coordinator. `complete` is true
    /// when they reach the quorum this worker was told; otherwise it is a partial
    /// certificate the coordinator may still complete with claims it already holds.
    SubmitCertificate {
        /// The unit.
        unit: UnitId,
        /// Agreeing claims, ours included.
        claims: Vec<Claim>,
        /// Whether they reach the quorum.
        complete: bool,
    },
    /// Report disagreeing claims to the coordinator.
    ReportDispute {
        /// The unit.
        unit: UnitId,
        /// All claims seen.
        claims: Vec<Claim>,
    },
}

/// Deadlines of the commit–reveal exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Reveal after this long (ms) since committing even without `quorum` commitments.
    pub reveal_after_ms: u64,
    /// Submit a partial certificate after this long (ms) since committing.
    pub submit_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reveal_after_ms: 2_000,
            submit_after_ms: 6_000,
        }
    }
}

#[derive(Debug)]
struct Tally {
    quorum: u32,
    own: Option<Claim>,
    committed_at: u64,
    commitments: u32,
    revealed: bool,
    claims: BTreeMap<WorkerId, Claim>,
    certified: bool,
    partial_sent: usize,
    disputed_at: usize,
}

/// The worker's tallies, one per held unit.
#[derive(Debug, Default)]
pub struct QuorumBook {
    units: HashMap<UnitId, Tally>,
    timing: Timing,
}

impl QuorumBook {
    /// An empty book with the given deadlines.
    pub fn new(timing: Timing) -> Self {
        QuorumBook {
            units: HashMap::new(),
            timing,
        }
    }

    /// Starts tracking a unit leased to us with the project's `quorum`.
    pub fn hold(&mut self, unit: UnitId, quorum: u32) {
        self.units.entry(unit).or_insert_with(|| Tally {
            quorum: quorum.max(1),
            own: None,
            committed_at: 0,
            commitments: 0,
            revealed: false,
            claims: BTreeMap::new(),
            certified: false,
            partial_sent: 0,
            disputed_at: 0,
        });
    }

    /// Whether we track `unit`.
    pub fn holds(&self, unit: UnitId) -> bool {
        self.units.contains_key(&unit)
    }

    /// Stops tracking a unit (settled, handed back or expired).
    pub fn release(&mut self, unit: UnitId) {
        self.units.remove(&unit);
    }

    /// Units we hold.
    pub fn held(&self) -> Vec<UnitId> {
        self.units.keys().copied().collect()
    }

    /// Our own claim for a unit, once executed.
    pub fn own(&self, unit: UnitId) -> Option<&Claim> {
        self.units.get(&unit).and_then(|t| t.own.as_ref())
    }

    /// Whether we revealed our claim for a unit.
    pub fn revealed(&self, unit: UnitId) -> bool {
        self.units.get(&unit).is_some_and(|t| t.revealed)
    }

    /// Revealed claims we know for a unit (ours included once revealed).
    pub fn claims(&self, unit: UnitId) -> Vec<Claim> {
        self.units
            .get(&unit)
            .map(|t| t.claims.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Our execution finished: commit.
    pub fn add_own(&mut self, claim: Claim, now: u64) -> Vec<Action> {
        let Some(t) = self.units.get_mut(&claim.unit) else {
            return Vec::new();
        };
        let unit = claim.unit;
        let commitment = claim.commitment();
        t.own = Some(claim);
        t.committed_at = now;
        let mut actions = vec![Action::Commit { unit, commitment }];
        actions.extend(Self::evaluate(unit, t, self.timing, now));
        actions
    }

    /// What one of the unit's boards reports. Reveals are checked again here (a board may
    /// lie); a bad one fails the whole view with the error and changes nothing.
    pub fn observe(&mut self, unit: UnitId, view: View, now: u64) -> Result<Vec<Action>, Error> {
        let Some(t) = self.units.get_mut(&unit) else {
            return Ok(Vec::new());
        };
        let project = t.own.as_ref().map(|c| c.project);
        for claim in view.reveals.iter().take(MAX_CLAIMS) {
            if claim.unit != unit || project.is_some_and(|p| p != claim.project) {
                return Err(Error::malformed(
                    "View.reveals",
                    format!("a claim for unit {} in the view of unit {unit}", claim.unit),
                ));
            }
            // Boards repeat the reveals on every poll: verify each one once.
            if t.claims.get(&claim.worker) != Some(claim) {
                claim.verify()?;
            }
        }
        t.commitments = t.commitments.max(view.commitments);
        if t.revealed {
            for claim in view.reveals.into_iter().take(MAX_CLAIMS) {
                if t.claims.len() >= MAX_CLAIMS {
                    break;
                }
                t.claims.entry(claim.worker).or_insert(claim);
            }
        }
        Ok(Self::evaluate(unit, t, self.timing, now))
    }

    /// Deadlines: call periodically.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let timing = self.timing;
        let mut units: Vec<UnitId> = self.units.keys().copied().collect();
        units.sort_unstable();
        let mut actions = Vec::new();
        for unit in units {
            if let Some(t) = self.units.get_mut(&unit) {
                actions.extend(Self::evaluate(unit, t, timing, now));
            }
        }
        actions
    }

    fn evaluate(unit: UnitId, t: &mut Tally, timing: Timing, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(own) = t.own.clone() else {
            return actions;
        };
        let waited = now.saturating_sub(t.committed_at);
        if !t.revealed && (t.commitments >= t.quorum || waited >= timing.reveal_after_ms) {
            t.revealed = true;
            t.claims.insert(own.worker, own.clone());
            actions.push(Action::Reveal {
                unit,
                claim: own.clone(),
            });
        }
        if !t.revealed || t.certified {
            return actions;
        }
        let mut by_result: BTreeMap<(Digest, u64), Vec<&Claim>> = BTreeMap::new();
        for c in t.claims.values() {
            by_result.entry((c.digest, c.fuel)).or_default().push(c);
        }
        let agreeing: Vec<Claim> = by_result
            .get(&(own.digest, own.fuel))
            .map(|cs| cs.iter().map(|c| (*c).clone()).collect())
            .unwrap_or_default();
        if agreeing.len() as u32 >= t.quorum {
            t.certified = true;
            actions.push(Action::SubmitCertificate {
                unit,
                claims: agreeing.into_iter().take(t.quorum as usize).collect(),
                complete: true,
            });
        } else if (t.commitments < t.quorum || waited >= timing.submit_after_ms)
            && agreeing.len() > t.partial_sent
        {
            // Alone when we revealed, or the others are slow: let the coordinator combine.
            t.partial_sent = agreeing.len();
            actions.push(Action::SubmitCertificate {
                unit,
                claims: agreeing,
                complete: false,
            });
        }
        if by_result.len() > 1 && t.claims.len() > t.disputed_at {
            t.disputed_at = t.claims.len();
            actions.push(Action::ReportDispute {
                unit,
                claims: t.claims.values().cloned().collect(),
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use crate::{Identity, ProjectId};

    const U: UnitId = UnitId(5);

    fn claim(n: u8, output: &[u8]) -> Claim {
        Claim::sign(
            &Identity::from_seed([n; 32]),
            ProjectId(1),
            U,
            Digest::of(output),
            10,
        )
    }

    fn id(n: u8) -> WorkerId {
        Identity::from_seed([n; 32]).id()
    }

    /// Two holders and one board, driven until quiet; returns what each submitted.
    fn run_pair(a: Claim, b: Claim) -> Vec<Action> {
        // Boards file commitments only with the coordinator's lease ticket.
        let coordinator = Identity::from_seed([200; 32]);
        let mut board = Board::default().vouched_by(coordinator.id());
        let mut books = [QuorumBook::default(), QuorumBook::default()];
        let ids = [a.worker, b.worker];
        let mut out = Vec::new();
        for (book, c) in books.iter_mut().zip([a, b]) {
            book.hold(U, 2);
            for act in book.add_own(c, 0) {
                if let Action::Commit { commitment, .. } = act {
                    let ticket = coordinator.sign_ticket(
                        commitment.worker,
                        commitment.project,
                        commitment.unit,
                        u64::MAX,
                    );
                    board
                        .commit(commitment.with_ticket(Some(ticket)), 0)
                        .expect("commit");
                }
            }
        }
        for round in 0..4 {
            for (i, book) in books.iter_mut().enumerate() {
                let view = board.view(U, ids[i]);
                for act in book.observe(U, view, round).expect("valid view") {
                    match act {
                        Action::Reveal { claim, .. } => board.reveal(claim, round).expect("opens"),
                        other => out.push(other),
                    }
                }
            }
        }
        out
    }

    #[test]
    fn two_honest_holders_reveal_after_both_commit_and_certify() {
        let out = run_pair(claim(1, b"x"), claim(2, b"x"));
        let certs = out
            .iter()
            .filter(|a| matches!(a, Action::SubmitCertificate { complete: true, claims, .. } if claims.len() == 2))
            .count();
        assert_eq!(certs, 2, "{out:?}");
    }

    #[test]
    fn disagreement_is_reported_not_certified() {
        let out = run_pair(claim(1, b"x"), claim(2, b"lie"));
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::ReportDispute { claims, .. } if claims.len() == 2))
        );
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::SubmitCertificate { complete: true, .. }))
        );
    }

    #[test]
    fn alone_it_reveals_at_the_deadline_and_submits_a_partial_certificate() {
        let t = Timing::default();
        let mut book = QuorumBook::new(t);
        book.hold(U, 2);
        let own = claim(1, b"x");
        assert!(matches!(
            &book.add_own(own.clone(), 100)[..],
            [Action::Commit { .. }]
        ));
        assert!(
            book.tick(100 + t.reveal_after_ms - 1).is_empty(),
            "no reveal before the deadline"
        );
        let acts = book.tick(100 + t.reveal_after_ms);
        assert!(
            matches!(&acts[..], [Action::Reveal { .. }, Action::SubmitCertificate { complete: false, claims, .. }] if claims.len() == 1),
            "{acts:?}"
        );
        assert!(
            book.tick(100 + t.submit_after_ms).is_empty(),
            "a partial goes once"
        );
    }

    #[test]
    fn nothing_is_learned_or_sent_before_our_own_result() {
        let mut book = QuorumBook::default();
        book.hold(U, 2);
        let view = View {
            commitments: 2,
            reveals: vec![claim(2, b"x")],
            committed: Vec::new(),
        };
        assert!(book.observe(U, view, 10_000).expect("ok").is_empty());
        assert!(book.claims(U).is_empty());
        assert!(book.tick(10_000).is_empty());
    }

    #[test]
    fn forged_and_misrouted_reveals_fail_the_view() {
        let mut book = QuorumBook::default();
        book.hold(U, 2);
        book.add_own(claim(1, b"x"), 0);
        let mut forged = claim(2, b"x");
        forged.fuel = 11;
        let bad = View {
            commitments: 2,
            reveals: vec![forged],
            committed: Vec::new(),
        };
        assert!(book.observe(U, bad, 1).is_err());
        let mut elsewhere = claim(2, b"x");
        elsewhere.unit = UnitId(6);
        let bad = View {
            commitments: 2,
            reveals: vec![elsewhere],
            committed: Vec::new(),
        };
        assert!(book.observe(U, bad, 1).is_err());
        assert!(!book.claims(U).iter().any(|c| c.worker == id(2)));
        assert!(
            !book.revealed(U),
            "a bad view does not count toward the reveal"
        );
    }
}
