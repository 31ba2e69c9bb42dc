//! Proof that a worker changed its answer for a unit: what a board reports to the
//! coordinator (`ReportMisbehaviour`) and the coordinator checks before it punishes anyone.

use crate::claim::Commitment;
use crate::{Claim, Error, UnitId, WorkerId};

/// Proof that a worker changed its answer for a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A signed claim that does not open the same worker's signed commitment.
    Mismatch(Commitment, Claim),
    /// Two different signed commitments by one worker for one unit.
    Equivocation(Commitment, Commitment),
}

impl Evidence {
    /// The worker the evidence is against, if it proves anything: both messages must be
    /// validly signed by the same worker, be about the same unit, and differ.
    pub fn offender(&self) -> Result<(WorkerId, UnitId), Error> {
        let bad = |why: &str| Err(Error::malformed("Evidence", why.to_string()));
        let (first, second) = match self {
            Evidence::Mismatch(c, claim) => {
                if claim.opens(c) {
                    return bad("the claim opens the commitment: nothing wrong");
                }
                claim.verify()?;
                (c, claim.commitment())
            }
            Evidence::Equivocation(a, b) => {
                if a.seal == b.seal {
                    return bad("the commitments are the same");
                }
                b.verify()?;
                (a, b.clone())
            }
        };
        first.verify()?;
        if first.worker != second.worker
            || first.unit != second.unit
            || first.project != second.project
        {
            return bad("the two messages are by different workers or about different units");
        }
        Ok((first.worker, first.unit))
    }
}
