//! A quorum certificate: `quorum` claims from distinct workers that agree on the digest and
//! the fuel, plus the output bytes they sign. The coordinator never compares outputs or
//! re-runs anything; it accepts a result only when [`check`] passes.

use std::collections::HashSet;

use crate::{Claim, Digest, Error, ProjectId, UnitId, WorkerId};

/// Claims offered as proof that a unit's output is verified.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The unit the certificate verifies.
    pub unit: UnitId,
    /// At least `quorum` agreeing claims from distinct workers.
    pub claims: Vec<Claim>,
}

/// What the checker knows about the unit from its own records.
#[derive(Debug)]
pub struct UnitFacts<'a> {
    /// The project the unit belongs to.
    pub project: ProjectId,
    /// The unit.
    pub unit: UnitId,
    /// Matching claims needed.
    pub quorum: u32,
    /// Largest output the project allows.
    pub max_output_bytes: u64,
    /// Workers that held (or hold) a lease on this unit.
    pub assigned: &'a HashSet<WorkerId>,
}

/// A certificate that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The agreed digest.
    pub digest: Digest,
    /// The agreed fuel (the credit each signer earns).
    pub fuel: u64,
    /// The distinct signers, in claim order.
    pub signers: Vec<WorkerId>,
}

/// Upper bound on claims in one certificate; anything larger is refused before any
/// signature is checked, so a flood of claims costs the checker nothing.
pub const MAX_CLAIMS: usize = 64;

/// Checks `cert` against the coordinator's own facts about the unit and the output bytes.
pub fn check(cert: &Certificate, facts: &UnitFacts<'_>, output: &[u8]) -> Result<Verified, Error> {
    check_with(cert, facts, output, true)
}

/// [`check`] for claims whose signatures the caller has already verified (each with
/// [`Claim::verify`]), e.g. votes it accepted earlier: everything but the signatures.
pub fn check_verified_claims(
    cert: &Certificate,
    facts: &UnitFacts<'_>,
    output: &[u8],
) -> Result<Verified, Error> {
    check_with(cert, facts, output, false)
}

fn check_with(
    cert: &Certificate,
    facts: &UnitFacts<'_>,
    output: &[u8],
    verify_signatures: bool,
) -> Result<Verified, Error> {
    let reject = |reason: String| Error::Certificate {
        unit: cert.unit,
        reason,
    };
    if cert.unit != facts.unit {
        return Err(reject(format!(
            "is for unit {} but was checked against {}",
            cert.unit, facts.unit
        )));
    }
    if cert.claims.len() > MAX_CLAIMS {
        return Err(reject(format!(
            "{} claims (at most {MAX_CLAIMS})",
            cert.claims.len()
        )));
    }
    if output.len() as u64 > facts.max_output_bytes {
        return Err(reject(format!(
            "output is {} bytes, over the project's max_output_bytes {}",
            output.len(),
            facts.max_output_bytes
        )));
    }
    let digest = Digest::of(output);
    let mut signers = Vec::new();
    let mut seen = HashSet::new();
    let mut fuel = None;
    for claim in &cert.claims {
        if claim.unit != facts.unit || claim.project != facts.project {
            return Err(reject(format!(
                "a claim by {} is for project {} unit {}",
                claim.worker, claim.project, claim.unit
            )));
        }
        if claim.digest != digest {
            return Err(reject(format!(
                "a claim by {} signs digest {} but the output hashes to {digest}",
                claim.worker, claim.digest
            )));
        }
        if *fuel.get_or_insert(claim.fuel) != claim.fuel {
            return Err(reject(format!(
                "claims disagree on fuel used ({} vs {})",
                fuel.unwrap_or(0),
                claim.fuel
            )));
        }
        if !facts.assigned.contains(&claim.worker) {
            return Err(reject(format!(
                "{} never held a lease on this unit",
                claim.worker
            )));
        }
        if !seen.insert(claim.worker) {
            return Err(reject(format!("{} signed twice", claim.worker)));
        }
        if verify_signatures {
            claim.verify()?;
        }
        signers.push(claim.worker);
    }
    if (signers.len() as u32) < facts.quorum {
        return Err(reject(format!(
            "{} distinct signers, quorum is {}",
            signers.len(),
            facts.quorum
        )));
    }
    Ok(Verified {
        digest,
        fuel: fuel.unwrap_or(0),
        signers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    const P: ProjectId = ProjectId(1);
    const U: UnitId = UnitId(7);

    fn worker(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn claim(n: u8, output: &[u8], fuel: u64) -> Claim {
        Claim::sign(&worker(n), P, U, Digest::of(output), fuel)
    }

    /// One table, one helper: each case is a certificate, the output, and whether it passes.
    fn check_case(claims: Vec<Claim>, output: &[u8], quorum: u32) -> Result<Verified, Error> {
        let assigned: HashSet<WorkerId> = (1..=4).map(|n| worker(n).id()).collect();
        let facts = UnitFacts {
            project: P,
            unit: U,
            quorum,
            max_output_bytes: 16,
            assigned: &assigned,
        };
        check(&Certificate { unit: U, claims }, &facts, output)
    }

    #[test]
    fn quorum_of_matching_claims_passes() {
        let v = check_case(vec![claim(1, b"ok", 5), claim(2, b"ok", 5)], b"ok", 2).expect("valid");
        assert_eq!(v.fuel, 5);
        assert_eq!(v.signers.len(), 2);
    }

    #[test]
    fn bad_certificates_are_rejected_with_a_reason() {
        let mut forged = claim(2, b"ok", 5);
        forged.signature[10] ^= 0xff;
        let cases: Vec<(&str, Vec<Claim>, &[u8])> = vec![
            ("too few", vec![claim(1, b"ok", 5)], b"ok"),
            (
                "same signer twice",
                vec![claim(1, b"ok", 5), claim(1, b"ok", 5)],
                b"ok",
            ),
            (
                "output differs",
                vec![claim(1, b"ok", 5), claim(2, b"ok", 5)],
                b"no",
            ),
            (
                "fuel inflated",
                vec![claim(1, b"ok", 5), claim(2, b"ok", 9)],
                b"ok",
            ),
            (
                "never assigned",
                vec![claim(1, b"ok", 5), claim(9, b"ok", 5)],
                b"ok",
            ),
            ("forged", vec![claim(1, b"ok", 5), forged], b"ok"),
            (
                "oversized",
                vec![claim(1, &[0; 17], 5), claim(2, &[0; 17], 5)],
                &[0; 17],
            ),
        ];
        for (name, claims, output) in cases {
            assert!(check_case(claims, output, 2).is_err(), "{name} passed");
        }
    }
}
