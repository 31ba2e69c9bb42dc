//! A claim: "worker W ran unit U of project P; the output has BLAKE3 digest D and used F
//! fuel", signed by W. Claims are what workers gossip to each other; quorum certificates
//! are made of them.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::{Digest, Error, Identity, ProjectId, UnitId, WorkerId};

/// Domain separation: a claim signature can never be mistaken for any other signature.
const CLAIM_CONTEXT: &[u8] = b"fallow/claim/v1\0";

/// A signed claim about one execution of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The project the unit belongs to.
    pub project: ProjectId,
    /// The unit that was run.
    pub unit: UnitId,
    /// BLAKE3 of the output bytes.
    pub digest: Digest,
    /// Fuel the execution consumed; deterministic, so matching replicas report it equal.
    pub fuel: u64,
    /// Who ran it and signed.
    pub worker: WorkerId,
    /// ed25519 signature over [`Claim::signed_bytes`].
    pub signature: [u8; 64],
}

impl Claim {
    /// Makes and signs a claim as `identity`.
    pub fn sign(
        identity: &Identity,
        project: ProjectId,
        unit: UnitId,
        digest: Digest,
        fuel: u64,
    ) -> Self {
        let worker = identity.id();
        let signature = identity.sign_raw(&signed_bytes(project, unit, digest, fuel, worker));
        Claim {
            project,
            unit,
            digest,
            fuel,
            worker,
            signature,
        }
    }

    /// The exact bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(self.project, self.unit, self.digest, self.fuel, self.worker)
    }

    /// Checks the signature (strict ed25519: no malleable or small-order keys).
    pub fn verify(&self) -> Result<(), Error> {
        verify_signature(self.worker, &self.signed_bytes(), &self.signature).map_err(|_| {
            Error::BadSignature {
                worker: self.worker,
                unit: self.unit,
            }
        })
    }
}

fn signed_bytes(
    project: ProjectId,
    unit: UnitId,
    digest: Digest,
    fuel: u64,
    worker: WorkerId,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(CLAIM_CONTEXT.len() + 8 + 8 + 32 + 8 + 32);
    m.extend_from_slice(CLAIM_CONTEXT);
    m.extend_from_slice(&project.0.to_le_bytes());
    m.extend_from_slice(&unit.0.to_le_bytes());
    m.extend_from_slice(&digest.0);
    m.extend_from_slice(&fuel.to_le_bytes());
    m.extend_from_slice(&worker.0);
    m
}

/// Verifies an ed25519 signature by `worker` over `message`.
pub(crate) fn verify_signature(
    worker: WorkerId,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ed25519_dalek::SignatureError> {
    let key = VerifyingKey::from_bytes(&worker.0)?;
    let signature = Signature::from_slice(signature)?;
    key.verify_strict(message, &signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim::sign(
            &Identity::from_seed([1; 32]),
            ProjectId(3),
            UnitId(9),
            Digest::of(b"42\n"),
            1000,
        )
    }

    #[test]
    fn signed_claim_verifies() {
        assert!(claim().verify().is_ok());
    }

    #[test]
    fn any_tampered_field_breaks_the_signature() {
        type Tamper = Box<dyn Fn(&mut Claim)>;
        let tampered: Vec<Tamper> = vec![
            Box::new(|c| c.project = ProjectId(4)),
            Box::new(|c| c.unit = UnitId(10)),
            Box::new(|c| c.digest = Digest::of(b"43\n")),
            Box::new(|c| c.fuel = 999),
            Box::new(|c| c.worker = Identity::from_seed([2; 32]).id()),
            Box::new(|c| c.signature[0] ^= 1),
        ];
        for tamper in tampered {
            let mut c = claim();
            tamper(&mut c);
            assert!(c.verify().is_err(), "tampered claim verified: {c:?}");
        }
    }
}
