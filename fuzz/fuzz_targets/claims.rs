//! Claims and certificates: arbitrary (raw, validly signed, or signed then tampered) claims
//! through `Claim::verify`, `Claim::opens`, `Commitment::verify` and
//! `certificate::check` against arbitrary unit facts and output bytes.
//!
//! Nothing may panic, and `check` may accept a certificate only if it really is one: every
//! claim verifies, is for the unit, signs the output's digest and the same fuel, and comes
//! from a distinct assigned worker, at least `quorum` of them.

#![no_main]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use protocol::certificate::{Certificate, MAX_CLAIMS, UnitFacts, check};
use protocol::{Claim, Digest, Identity, ProjectId, UnitId, WorkerId};

/// Four signers, made once: deriving a public key costs as much as a signature.
static SIGNERS: LazyLock<Vec<Identity>> =
    LazyLock::new(|| (1..=4).map(|n| Identity::from_seed([n; 32])).collect());

#[derive(Debug, Arbitrary)]
enum ClaimInput {
    /// Bytes from anywhere: almost never a valid signature or even a valid key.
    Raw {
        project: u64,
        unit: u64,
        digest: [u8; 32],
        fuel: u64,
        worker: [u8; 32],
        salt: [u8; 32],
        signature: [u8; 32],
        signature_hi: [u8; 32],
    },
    /// A genuine claim by one of the signers over `output`.
    Signed {
        signer: u8,
        project: u8,
        unit: u8,
        /// `None`: signs the certificate's output; `Some`: some other bytes.
        output: Option<Vec<u8>>,
        fuel: u8,
        salt: u8,
        tamper: Option<Tamper>,
    },
}

#[derive(Debug, Arbitrary)]
enum Tamper {
    Project(u64),
    Unit(u64),
    Digest(u8),
    Fuel(u64),
    Salt(u8),
    Signature(u8, u8),
    Worker(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    claims: Vec<ClaimInput>,
    /// Repeat the claim list this many times (a cheap way past `MAX_CLAIMS`).
    repeat: u8,
    cert_unit: u8,
    project: u8,
    unit: u8,
    quorum: u32,
    max_output_bytes: u64,
    /// Bit `i` set: signer `i` held a lease on the unit.
    assigned: u8,
    /// Raw worker ids that also held a lease.
    assigned_raw: Vec<[u8; 32]>,
    output: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let claims: Vec<Claim> = input
        .claims
        .iter()
        .take(2 * MAX_CLAIMS)
        .map(|c| make_claim(c, &input.output))
        .collect();
    for c in &claims {
        single_claim(c);
    }
    for pair in claims.windows(2) {
        // `opens` is a pure comparison: a claim opens another's commitment only if it is
        // the same worker's claim for the same unit with the same seal.
        if pair[0].opens(&pair[1].commitment()) {
            assert_eq!(pair[0].seal(), pair[1].seal());
            assert_eq!(pair[0].worker, pair[1].worker);
        }
    }

    let mut assigned: HashSet<WorkerId> = input.assigned_raw.iter().map(|k| WorkerId(*k)).collect();
    for (i, s) in SIGNERS.iter().enumerate() {
        if input.assigned & (1 << i) != 0 {
            assigned.insert(s.id());
        }
    }
    let repeat = usize::from(input.repeat % 70).max(1);
    let cert = Certificate {
        unit: UnitId(u64::from(input.cert_unit % 4)),
        claims: claims.iter().cloned().cycle().take(claims.len() * repeat).collect(),
    };
    let facts = UnitFacts {
        project: ProjectId(u64::from(input.project % 3)),
        unit: UnitId(u64::from(input.unit % 4)),
        quorum: input.quorum,
        max_output_bytes: input.max_output_bytes,
        assigned: &assigned,
    };
    if let Ok(v) = check(&cert, &facts, &input.output) {
        assert_eq!(cert.unit, facts.unit);
        assert!(cert.claims.len() <= MAX_CLAIMS);
        assert!(input.output.len() as u64 <= facts.max_output_bytes);
        assert_eq!(v.digest, Digest::of(&input.output));
        assert!(v.signers.len() as u64 >= u64::from(facts.quorum));
        assert_eq!(v.signers.len(), cert.claims.len());
        let distinct: HashSet<_> = v.signers.iter().collect();
        assert_eq!(distinct.len(), v.signers.len(), "a signer counted twice");
        for c in &cert.claims {
            assert!(c.verify().is_ok(), "accepted a claim that does not verify");
            assert!(assigned.contains(&c.worker));
            assert_eq!((c.project, c.unit), (facts.project, facts.unit));
            assert_eq!((c.digest, c.fuel), (v.digest, v.fuel));
        }
    }
});

fn single_claim(c: &Claim) {
    let commitment = c.commitment();
    assert!(c.opens(&commitment));
    let ok = c.verify().is_ok();
    assert_eq!(ok, commitment.verify().is_ok());
    if ok {
        // A claim verifies only under one of our signers' keys (no forgeries).
        assert!(SIGNERS.iter().any(|s| s.id() == c.worker), "forged claim verified");
    }
}

/// `Claim::sign_with_salt`, remembered: signing costs as much as verifying, and the same
/// few claims come up again and again (protocol remembers verdicts the same way under
/// `cfg(fuzzing)`).
fn signed(signer: &Identity, project: ProjectId, unit: UnitId, digest: Digest, fuel: u64, salt: [u8; 32]) -> Claim {
    thread_local! {
        static MADE: RefCell<HashMap<(WorkerId, u64, u64, [u8; 32], u64, [u8; 32]), Claim>> =
            RefCell::new(HashMap::new());
    }
    let key = (signer.id(), project.0, unit.0, digest.0, fuel, salt);
    if let Some(c) = MADE.with(|m| m.borrow().get(&key).cloned()) {
        return c;
    }
    let c = Claim::sign_with_salt(signer, project, unit, digest, fuel, salt);
    MADE.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 100_000 {
            m.clear();
        }
        m.insert(key, c.clone());
    });
    c
}

fn make_claim(input: &ClaimInput, cert_output: &[u8]) -> Claim {
    match input {
        ClaimInput::Raw {
            project,
            unit,
            digest,
            fuel,
            worker,
            salt,
            signature,
            signature_hi,
        } => {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(signature);
            sig[32..].copy_from_slice(signature_hi);
            Claim {
                project: ProjectId(*project),
                unit: UnitId(*unit),
                digest: Digest(*digest),
                fuel: *fuel,
                worker: WorkerId(*worker),
                salt: *salt,
                signature: sig,
            }
        }
        ClaimInput::Signed {
            signer,
            project,
            unit,
            output,
            fuel,
            salt,
            tamper,
        } => {
            let signer = &SIGNERS[usize::from(*signer) % SIGNERS.len()];
            let output = output.as_deref().unwrap_or(cert_output);
            let mut c = signed(
                signer,
                ProjectId(u64::from(*project % 3)),
                UnitId(u64::from(*unit % 4)),
                Digest::of(output),
                u64::from(*fuel % 4),
                [*salt; 32],
            );
            match tamper {
                None => {}
                Some(Tamper::Project(p)) => c.project = ProjectId(*p),
                Some(Tamper::Unit(u)) => c.unit = UnitId(*u),
                Some(Tamper::Digest(d)) => c.digest.0[usize::from(*d) % 32] ^= 1,
                Some(Tamper::Fuel(f)) => c.fuel = *f,
                Some(Tamper::Salt(s)) => c.salt[usize::from(*s) % 32] ^= 1,
                Some(Tamper::Signature(i, x)) => c.signature[usize::from(*i) % 64] ^= x,
                Some(Tamper::Worker(w)) => c.worker = SIGNERS[usize::from(*w) % SIGNERS.len()].id(),
            }
            c
        }
    }
}
