//! The quorum tally a worker keeps for each unit it holds, as a sans-IO state machine:
//! claims go in (its own and its peers'), actions come out.

use std::collections::{BTreeMap, HashMap};

use crate::certificate::MAX_CLAIMS;
use crate::{Claim, Digest, Error, UnitId, WorkerId};

/// What the worker should do after a claim was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `quorum` claims agree with our own result: submit them with our output bytes.
    SubmitCertificate {
        /// The unit.
        unit: UnitId,
        /// The agreeing claims, our own included.
        claims: Vec<Claim>,
    },
    /// Claims disagree and no digest has a quorum yet: tell the coordinator, which issues
    /// extra replicas.
    ReportDispute {
        /// The unit.
        unit: UnitId,
        /// All distinct claims seen.
        claims: Vec<Claim>,
    },
}

#[derive(Debug)]
struct Tally {
    quorum: u32,
    own: Option<Digest>,
    claims: BTreeMap<WorkerId, Claim>,
    certified: bool,
    disputed_at: usize,
}

/// Claims per held unit. Claims for units this worker does not hold are ignored: each
/// worker pulls what it needs when it publishes its own claim, so nobody stores claims for
/// everyone (memory grows with a worker's own work, not with the network).
#[derive(Debug, Default)]
pub struct QuorumBook {
    units: HashMap<UnitId, Tally>,
}

impl QuorumBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// This worker now holds `unit` (it was leased to it).
    pub fn hold(&mut self, unit: UnitId, quorum: u32) {
        self.units.entry(unit).or_insert_with(|| Tally {
            quorum: quorum.max(1),
            own: None,
            claims: BTreeMap::new(),
            certified: false,
            disputed_at: 0,
        });
    }

    /// Whether `unit` is held.
    pub fn holds(&self, unit: UnitId) -> bool {
        self.units.contains_key(&unit)
    }

    /// Forgets a settled (verified, failed or returned) unit.
    pub fn release(&mut self, unit: UnitId) {
        self.units.remove(&unit);
    }

    /// The claims held for `unit` (what a peer asking for it gets).
    pub fn claims(&self, unit: UnitId) -> Vec<Claim> {
        self.units
            .get(&unit)
            .map(|t| t.claims.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records this worker's own signed result.
    pub fn add_own(&mut self, claim: Claim) -> Vec<Action> {
        let Some(t) = self.units.get_mut(&claim.unit) else {
            return Vec::new();
        };
        t.own = Some(claim.digest);
        t.claims.insert(claim.worker, claim.clone());
        Self::evaluate(claim.unit, t)
    }

    /// Records a peer's claim after checking its signature. Claims for units not held are
    /// dropped (`Ok` with no actions); a bad signature is an error for the caller to count.
    pub fn add_remote(&mut self, claim: Claim) -> Result<Vec<Action>, Error> {
        let Some(t) = self.units.get_mut(&claim.unit) else {
            return Ok(Vec::new());
        };
        if t.claims.contains_key(&claim.worker) {
            // Replays are harmless; a second, different claim by the same worker is ignored:
            // the first one stands.
            return Ok(Vec::new());
        }
        if t.claims.len() >= MAX_CLAIMS {
            return Ok(Vec::new());
        }
        claim.verify()?;
        let unit = claim.unit;
        t.claims.insert(claim.worker, claim);
        Ok(Self::evaluate(unit, t))
    }

    fn evaluate(unit: UnitId, t: &mut Tally) -> Vec<Action> {
        let mut by_digest: BTreeMap<(Digest, u64), Vec<&Claim>> = BTreeMap::new();
        for c in t.claims.values() {
            by_digest.entry((c.digest, c.fuel)).or_default().push(c);
        }
        let mut actions = Vec::new();
        if let Some(own) = t.own
            && !t.certified
            && let Some((_, agreeing)) = by_digest
                .iter()
                .find(|((d, _), cs)| *d == own && cs.len() as u32 >= t.quorum)
        {
            t.certified = true;
            actions.push(Action::SubmitCertificate {
                unit,
                claims: agreeing
                    .iter()
                    .take(t.quorum as usize)
                    .map(|c| (*c).clone())
                    .collect(),
            });
        }
        if by_digest.len() > 1 && !t.certified && t.claims.len() > t.disputed_at {
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
    use crate::{Identity, ProjectId};

    fn claim(n: u8, output: &[u8]) -> Claim {
        Claim::sign(
            &Identity::from_seed([n; 32]),
            ProjectId(1),
            UnitId(5),
            Digest::of(output),
            10,
        )
    }

    #[test]
    fn agreeing_peer_completes_the_quorum() {
        let mut book = QuorumBook::new();
        book.hold(UnitId(5), 2);
        assert!(book.add_own(claim(1, b"x")).is_empty());
        let actions = book.add_remote(claim(2, b"x")).expect("valid");
        assert!(
            matches!(&actions[..], [Action::SubmitCertificate { claims, .. }] if claims.len() == 2)
        );
        // A late third agreeing claim does not submit twice.
        assert!(book.add_remote(claim(3, b"x")).expect("valid").is_empty());
    }

    #[test]
    fn a_liar_causes_a_dispute_then_the_honest_majority_certifies() {
        let mut book = QuorumBook::new();
        book.hold(UnitId(5), 2);
        book.add_own(claim(1, b"x"));
        let a = book.add_remote(claim(2, b"lie")).expect("valid");
        assert!(matches!(&a[..], [Action::ReportDispute { claims, .. }] if claims.len() == 2));
        let b = book.add_remote(claim(3, b"x")).expect("valid");
        assert!(matches!(&b[..], [Action::SubmitCertificate { claims, .. }]
            if claims.iter().all(|c| c.digest == Digest::of(b"x"))));
    }

    #[test]
    fn forged_replayed_and_unheld_claims_change_nothing() {
        let mut book = QuorumBook::new();
        book.hold(UnitId(5), 2);
        book.add_own(claim(1, b"x"));
        let mut forged = claim(2, b"x");
        forged.fuel = 11;
        assert!(book.add_remote(forged).is_err());
        assert!(book.add_remote(claim(1, b"x")).expect("replay").is_empty());
        let mut elsewhere = claim(2, b"x");
        elsewhere.unit = UnitId(6);
        assert!(book.add_remote(elsewhere).expect("unheld").is_empty());
        assert_eq!(book.claims(UnitId(5)).len(), 1);
    }
}
