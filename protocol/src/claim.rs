//! Signed claims with commit–reveal: "unit U produced output with digest D using F fuel".
//!
//! A worker publishes a claim in two steps so that a lazy worker cannot copy someone
//! else's result:
//!
//! 1. **Commitment.** It signs a *seal*, `BLAKE3-derive-key(digest ‖ fuel ‖ worker ‖
//!    project ‖ unit ‖ salt)` with a fresh random 32-byte salt, and publishes only
//!    ([`Commitment`]) the seal and the signature. The seal says nothing about the digest.
//! 2. **Reveal.** Once the unit's quorum of commitments has been seen (or a deadline
//!    passed), it publishes the [`Claim`]: digest, fuel and salt together with the same
//!    signature. Anyone recomputes the seal and checks the signature, so a reveal that does
//!    not open its commitment cannot verify.
//!
//! A copier that waits for someone's reveal must have committed before it (reveals are only
//! handed to workers whose commitment is on file, see [`crate::board`]), and a seal made
//! before knowing the digest cannot open to it. Both messages are domain separated and
//! bind the project, unit and worker, so a claim cannot be replayed for another unit.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::{Digest, Error, Identity, ProjectId, UnitId, WorkerId};

/// Domain separation for the signed commitment (never valid as any other Fallow signature).
const COMMITMENT_CONTEXT: &[u8] = b"fallow/commitment/v1\0";
/// BLAKE3 derive-key context of the seal.
const SEAL_CONTEXT: &str = "fallow 2026 claim seal v1";

/// A seal: the hash a commitment signs (see the module docs).
pub type Seal = [u8; 32];

/// The first step of a claim: a signed seal that hides the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// The project.
    pub project: ProjectId,
    /// The unit.
    pub unit: UnitId,
    /// Who commits (its public key).
    pub worker: WorkerId,
    /// The seal over the digest, fuel and salt.
    pub seal: Seal,
    /// ed25519 signature over the commitment bytes.
    pub signature: [u8; 64],
    /// The coordinator's lease ticket for (worker, project, unit), which a board needs to
    /// file the commitment ([`crate::ticket`]). Not covered by the worker's signature (the
    /// coordinator signs it); boards drop it once checked, so views never carry it.
    pub ticket: Option<crate::ticket::Ticket>,
}

impl Commitment {
    /// The same commitment carrying `ticket`.
    pub fn with_ticket(mut self, ticket: Option<crate::ticket::Ticket>) -> Self {
        self.ticket = ticket;
        self
    }

    /// Checks the signature (`verify_strict`: no malleable or small-order keys).
    pub fn verify(&self) -> Result<(), Error> {
        let message = commitment_bytes(self.project, self.unit, self.worker, &self.seal);
        verify_signature(self.worker, &message, &self.signature).map_err(|_| Error::BadSignature {
            worker: self.worker,
            unit: self.unit,
        })
    }
}

/// The revealed claim: the commitment's opening plus its signature. Verifying a claim
/// proves that the worker committed to exactly this digest and fuel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The project.
    pub project: ProjectId,
    /// The unit.
    pub unit: UnitId,
    /// BLAKE3 of the output.
    pub digest: Digest,
    /// Fuel the execution used (deterministic, so all honest replicas agree).
    pub fuel: u64,
    /// Who claims (its public key).
    pub worker: WorkerId,
    /// The random salt that hid the digest in the commitment.
    pub salt: [u8; 32],
    /// The commitment's signature.
    pub signature: [u8; 64],
}

impl Claim {
    /// Seals and signs a claim with a fresh random salt.
    pub fn sign(
        identity: &Identity,
        project: ProjectId,
        unit: UnitId,
        digest: Digest,
        fuel: u64,
    ) -> Self {
        let mut salt = [0u8; 32];
        // The OS random source failing is not recoverable here and leaks nothing: fall back
        // to a salt derived from the key and the claim, which still hides the digest from
        // anyone who does not hold the secret key.
        if getrandom::fill(&mut salt).is_err() {
            salt = identity.derive_salt(project, unit, digest, fuel);
        }
        Self::sign_with_salt(identity, project, unit, digest, fuel, salt)
    }

    /// Seals and signs a claim with a given salt (simulations and tests use this to stay
    /// deterministic).
    pub fn sign_with_salt(
        identity: &Identity,
        project: ProjectId,
        unit: UnitId,
        digest: Digest,
        fuel: u64,
        salt: [u8; 32],
    ) -> Self {
        let worker = identity.id();
        let seal = seal(project, unit, worker, digest, fuel, &salt);
        let signature = identity.sign_raw(&commitment_bytes(project, unit, worker, &seal));
        Claim {
            project,
            unit,
            digest,
            fuel,
            worker,
            salt,
            signature,
        }
    }

    /// The seal this claim opens.
    pub fn seal(&self) -> Seal {
        seal(
            self.project,
            self.unit,
            self.worker,
            self.digest,
            self.fuel,
            &self.salt,
        )
    }

    /// The commitment to publish before revealing this claim.
    pub fn commitment(&self) -> Commitment {
        Commitment {
            project: self.project,
            unit: self.unit,
            worker: self.worker,
            seal: self.seal(),
            signature: self.signature,
            ticket: None,
        }
    }

    /// Whether this claim opens `commitment` (same unit, worker and seal). Does not check
    /// the signature: call [`Claim::verify`] for that.
    pub fn opens(&self, commitment: &Commitment) -> bool {
        self.project == commitment.project
            && self.unit == commitment.unit
            && self.worker == commitment.worker
            && self.seal() == commitment.seal
    }

    /// Checks the signature over the recomputed seal.
    pub fn verify(&self) -> Result<(), Error> {
        self.commitment().verify()
    }
}

fn seal(
    project: ProjectId,
    unit: UnitId,
    worker: WorkerId,
    digest: Digest,
    fuel: u64,
    salt: &[u8; 32],
) -> Seal {
    let mut h = blake3::Hasher::new_derive_key(SEAL_CONTEXT);
    h.update(&digest.0);
    h.update(&fuel.to_le_bytes());
    h.update(&worker.0);
    h.update(&project.0.to_le_bytes());
    h.update(&unit.0.to_le_bytes());
    h.update(salt);
    *h.finalize().as_bytes()
}

fn commitment_bytes(project: ProjectId, unit: UnitId, worker: WorkerId, seal: &Seal) -> Vec<u8> {
    let mut m = Vec::with_capacity(COMMITMENT_CONTEXT.len() + 8 + 8 + 32 + 32);
    m.extend_from_slice(COMMITMENT_CONTEXT);
    m.extend_from_slice(&project.0.to_le_bytes());
    m.extend_from_slice(&unit.0.to_le_bytes());
    m.extend_from_slice(&worker.0);
    m.extend_from_slice(seal);
    m
}

/// Verifies an ed25519 signature by `worker` with `verify_strict`.
#[cfg(not(fuzzing))]
pub(crate) fn verify_signature(
    worker: WorkerId,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ed25519_dalek::SignatureError> {
    verify_strict(worker, message, signature)
}

fn verify_strict(
    worker: WorkerId,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ed25519_dalek::SignatureError> {
    let key = VerifyingKey::from_bytes(&worker.0)?;
    let signature = Signature::from_slice(signature)?;
    key.verify_strict(message, &signature)
}

/// Fuzz builds only (`cfg(fuzzing)`, set by cargo-fuzz): the verdict for a (key, message,
/// signature) triple seen before is remembered, so the fuzz targets spend their time in
/// Fallow's logic rather than re-checking the same ed25519 signatures (FUZZING.md). Every
/// triple is still checked for real the first time; the cache is keyed by a BLAKE3 hash of
/// all three and dropped when it reaches a million entries.
#[cfg(fuzzing)]
pub(crate) fn verify_signature(
    worker: WorkerId,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ed25519_dalek::SignatureError> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static SEEN: RefCell<HashMap<[u8; 32], bool>> = RefCell::new(HashMap::new());
    }
    let mut h = blake3::Hasher::new();
    h.update(&worker.0);
    h.update(&(signature.len() as u64).to_le_bytes());
    h.update(signature);
    h.update(message);
    let key = *h.finalize().as_bytes();
    if let Some(ok) = SEEN.with(|s| s.borrow().get(&key).copied()) {
        return if ok {
            Ok(())
        } else {
            Err(ed25519_dalek::SignatureError::new())
        };
    }
    let verdict = verify_strict(worker, message, signature);
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= 1_000_000 {
            s.clear();
        }
        s.insert(key, verdict.is_ok());
    });
    verdict
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
    fn signed_claim_and_its_commitment_verify() {
        let c = claim();
        assert!(c.verify().is_ok());
        assert!(c.commitment().verify().is_ok());
        assert!(c.opens(&c.commitment()));
    }

    #[test]
    fn salts_are_fresh_so_equal_results_have_unlinkable_seals() {
        let (a, b) = (claim(), claim());
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.commitment().seal, b.commitment().seal);
    }

    #[test]
    fn any_tampered_field_breaks_the_claim() {
        type Tamper = Box<dyn Fn(&mut Claim)>;
        let tampered: Vec<Tamper> = vec![
            Box::new(|c| c.project = ProjectId(4)),
            Box::new(|c| c.unit = UnitId(10)),
            Box::new(|c| c.digest = Digest::of(b"43\n")),
            Box::new(|c| c.fuel = 999),
            Box::new(|c| c.worker = Identity::from_seed([2; 32]).id()),
            Box::new(|c| c.salt[0] ^= 1),
            Box::new(|c| c.signature[0] ^= 1),
        ];
        for tamper in tampered {
            let mut c = claim();
            tamper(&mut c);
            assert!(c.verify().is_err(), "tampered claim verified: {c:?}");
        }
    }

    #[test]
    fn a_copied_digest_cannot_open_an_earlier_commitment() {
        let copier = Identity::from_seed([2; 32]);
        // The copier committed to a guess before seeing anything.
        let guess = Claim::sign(&copier, ProjectId(3), UnitId(9), Digest::of(b"?"), 1000);
        let committed = guess.commitment();
        // Then it sees the honest reveal and re-signs the honest digest.
        let honest = claim();
        let copied = Claim::sign(&copier, ProjectId(3), UnitId(9), honest.digest, honest.fuel);
        assert!(copied.verify().is_ok(), "a fresh claim verifies on its own");
        assert!(
            !copied.opens(&committed),
            "but it does not open the commitment made before"
        );
    }
}
