//! Signed projects: the submitter's ed25519 key signs every work unit together with the
//! project's terms, so a worker checks, before it runs anything, that the module, the
//! limits and the input it was handed are exactly what the submitter published: a
//! coordinator (or anyone between it and its store) cannot swap the module, loosen a limit
//! or edit an input without the signature failing.
//!
//! One signature per unit, not one per project: a worker sees only the units it is leased,
//! and a unit's signature is all it needs (96 bytes with the key), with no Merkle proof for
//! the coordinator to compute. Each signs:
//!
//! ```text
//! "fallow/project-unit/v1\0" ‖ terms ‖ module digest ‖ limits ‖ quorum ‖ len ‖ unit name ‖ BLAKE3(input)
//!     [‖ data list digest, only when the project has `[data]` files (crate::data::list_digest)]
//! terms = BLAKE3("fallow/project-terms/v1\0" ‖ name ‖ BLAKE3(manifest) ‖ reducer digest
//!                ‖ replication ‖ max_replicas ‖ adaptive ‖ error bound ‖ number of units)
//! ```
//!
//! so every unit signature also covers the manifest text, the reducer and the replication
//! settings (the coordinator recomputes `terms` from what it was sent), while the worker
//! needs only the 32-byte `terms` digest besides what an assignment already carries.
//! Compared with BOINC's code signing (RSA-1024 over MD5 of the application files), this is
//! ed25519 over BLAKE3, and it covers the inputs and limits, not only the binary.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

use crate::manifest::ProjectSpec;
use crate::{Digest, Error, Identity, Limits, WorkerId};

const TERMS_CONTEXT: &[u8] = b"fallow/project-terms/v1\0";
const UNIT_CONTEXT: &[u8] = b"fallow/project-unit/v1\0";

/// Below this many units a submission's signatures are checked on one thread.
const PARALLEL_FROM: usize = 2048;

/// A project submitter's public key (ed25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubmitterKey(pub [u8; 32]);

impl SubmitterKey {
    /// The key of a submitter identity.
    pub fn of(identity: &Identity) -> Self {
        SubmitterKey(identity.id().0)
    }

    /// From wire bytes: exactly 32 bytes that are a valid ed25519 public key.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, Error> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::malformed(field, format!("{} bytes, expected 32", bytes.len())))?;
        VerifyingKey::from_bytes(&key)
            .map_err(|_| Error::malformed(field, "not an ed25519 public key"))?;
        Ok(SubmitterKey(key))
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SubmitterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SubmitterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmitterKey({})", &self.to_hex()[..16])
    }
}

impl FromStr for SubmitterKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = hex::decode(s.trim()).map_err(|e| {
            Error::malformed(
                "submitter key",
                format!("{s:?} is not hex ({e}); expected the 64 hex digits `fallow key` prints"),
            )
        })?;
        SubmitterKey::from_slice("submitter key", &bytes)
    }
}

/// Who signed a project and the digest of its terms: what a coordinator keeps per project
/// and sends with every unit, beside the unit's own signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// The submitter's key.
    pub key: SubmitterKey,
    /// [`ProjectSpec::terms`].
    pub terms: Digest,
}

/// A signed project's signatures: the submitter's key and one signature per unit, in the
/// order of [`ProjectSpec::units`].
#[derive(Clone, PartialEq, Eq)]
pub struct Signatures {
    /// Who signed.
    pub key: SubmitterKey,
    /// `units[i]` signs unit `i` (see the module docs).
    pub units: Vec<[u8; 64]>,
}

impl fmt::Debug for Signatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signatures({:?}, {} units)", self.key, self.units.len())
    }
}

/// Everything one unit's signature covers: what a worker checks before running the unit.
#[derive(Debug, Clone, Copy)]
pub struct UnitTerms<'a> {
    /// The digest of the project's other terms ([`ProjectSpec::terms`]).
    pub terms: Digest,
    /// The project module.
    pub module: Digest,
    /// The sandbox limits the unit runs under.
    pub limits: Limits,
    /// Matching results needed.
    pub quorum: u32,
    /// The unit's name.
    pub name: &'a str,
    /// The unit's stdin.
    pub input: &'a [u8],
    /// [`crate::data::list_digest`] of the project's data files; `None` without data, so
    /// a project without data signs exactly the bytes it signed before data existed.
    pub data: Option<Digest>,
}

impl UnitTerms<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(UNIT_CONTEXT.len() + 32 * 3 + 48 + self.name.len());
        m.extend_from_slice(UNIT_CONTEXT);
        m.extend_from_slice(&self.terms.0);
        m.extend_from_slice(&self.module.0);
        let l = &self.limits;
        m.extend_from_slice(&l.fuel.to_le_bytes());
        m.extend_from_slice(&l.memory_mb.to_le_bytes());
        m.extend_from_slice(&l.wall_seconds.to_le_bytes());
        m.extend_from_slice(&l.max_output_bytes.to_le_bytes());
        m.push(u8::from(l.nan_canonicalization));
        m.extend_from_slice(&l.max_checkpoint_bytes.to_le_bytes());
        m.extend_from_slice(&self.quorum.to_le_bytes());
        m.extend_from_slice(&(self.name.len() as u64).to_le_bytes());
        m.extend_from_slice(self.name.as_bytes());
        m.extend_from_slice(blake3::hash(self.input).as_bytes());
        // Fixed-size fields end the message, so 32 more bytes cannot be read as another
        // unit's message.
        if let Some(data) = self.data {
            m.extend_from_slice(&data.0);
        }
        m
    }

    /// The submitter's signature over this unit.
    pub fn sign(&self, submitter: &Identity) -> [u8; 64] {
        submitter.sign_raw(&self.message())
    }

    /// Checks `signature` (`verify_strict`) against `key`.
    pub fn verify(&self, key: SubmitterKey, signature: &[u8]) -> Result<(), Error> {
        crate::claim::verify_signature(WorkerId(key.0), &self.message(), signature).map_err(|_| {
            Error::ProjectSignature(format!(
                "the signature on unit {:?} does not verify under submitter key {key}: its \
                 module, limits, input, data files or project terms are not what that key signed",
                self.name
            ))
        })
    }
}

impl ProjectSpec {
    /// The digest of the terms every unit signature covers besides the unit itself.
    pub fn terms(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(TERMS_CONTEXT);
        h.update(&(self.name.len() as u64).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(blake3::hash(self.manifest.as_bytes()).as_bytes());
        match &self.reducer {
            Some(r) => {
                h.update(&[1]);
                h.update(blake3::hash(r).as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
        h.update(&self.replication.to_le_bytes());
        h.update(&self.max_replicas.to_le_bytes());
        h.update(&[u8::from(self.adaptive)]);
        h.update(&self.error_bound.to_bits().to_le_bytes());
        h.update(&(self.units.len() as u64).to_le_bytes());
        Digest(*h.finalize().as_bytes())
    }

    /// What unit `i`'s signature covers (`terms` from [`ProjectSpec::terms`]).
    pub fn unit_terms(&self, terms: Digest, i: usize) -> Option<UnitTerms<'_>> {
        self.unit_terms_with(terms, Digest::of(&self.module), i)
    }

    /// [`ProjectSpec::unit_terms`] with the module digest computed once by the caller.
    fn unit_terms_with(&self, terms: Digest, module: Digest, i: usize) -> Option<UnitTerms<'_>> {
        let (name, input) = self.units.get(i)?;
        Some(UnitTerms {
            terms,
            module,
            limits: self.limits,
            quorum: self.quorum,
            name,
            input,
            data: crate::data::list_digest(&self.data),
        })
    }

    /// Signs every unit with the submitter's key (replacing any earlier signatures).
    pub fn sign(&mut self, submitter: &Identity) {
        let terms = self.terms();
        let module = Digest::of(&self.module);
        let units = (0..self.units.len())
            .filter_map(|i| self.unit_terms_with(terms, module, i))
            .map(|unit| unit.sign(submitter))
            .collect();
        self.signatures = Some(Signatures {
            key: SubmitterKey::of(submitter),
            units,
        });
    }

    /// Checks that the project is signed and that every unit's signature verifies (on all
    /// cores for big projects). Returns the signer. The error names the first bad unit.
    pub fn verify_signatures(&self) -> Result<SubmitterKey, Error> {
        let Some(sig) = &self.signatures else {
            return Err(Error::ProjectSignature(
                "the project is not signed: `fallow submit` signs it with your submitter key \
                 (see `fallow key`); a client older than signed projects cannot submit"
                    .into(),
            ));
        };
        if sig.units.len() != self.units.len() {
            return Err(Error::ProjectSignature(format!(
                "{} unit signatures for {} units",
                sig.units.len(),
                self.units.len()
            )));
        }
        let terms = self.terms();
        let module = Digest::of(&self.module);
        let check = |range: std::ops::Range<usize>| -> Result<(), Error> {
            for i in range {
                if let Some(unit) = self.unit_terms_with(terms, module, i) {
                    unit.verify(sig.key, &sig.units[i])?;
                }
            }
            Ok(())
        };
        let n = self.units.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(8);
        if n < PARALLEL_FROM || threads < 2 {
            check(0..n)?;
        } else {
            let chunk = n.div_ceil(threads);
            let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * chunk).min(n)..((t + 1) * chunk).min(n);
                        s.spawn(move || check(range))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::ProjectSignature(
                                "a verifying thread panicked".into(),
                            ))
                        })
                    })
                    .collect()
            });
            results.into_iter().collect::<Result<Vec<()>, Error>>()?;
        }
        Ok(sig.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(units: usize) -> ProjectSpec {
        ProjectSpec {
            name: "p".into(),
            module: b"\0asm module".to_vec(),
            reducer: None,
            replication: 2,
            quorum: 2,
            max_replicas: 5,
            adaptive: true,
            error_bound: 0.02,
            limits: Limits::default(),
            units: (0..units)
                .map(|i| (format!("u{i}"), format!("{i}\n").into_bytes()))
                .collect(),
            manifest: "name = \"p\"".into(),
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        }
    }

    /// The data list is signed: a coordinator that swaps a data file (or its size or name)
    /// breaks every unit's signature, and a worker checking one unit sees it.
    #[test]
    fn swapping_a_data_file_breaks_the_signature() {
        let alice = Identity::from_seed([7; 32]);
        let mut p = spec(2);
        p.data = vec![crate::data::DataFile {
            name: "table".into(),
            size: 3,
            digest: Digest::of(b"abc"),
        }];
        p.sign(&alice);
        assert!(p.verify_signatures().is_ok());
        let key = SubmitterKey::of(&alice);
        let sig = p.signatures.as_ref().expect("signed").units[0];
        let unit = p.unit_terms(p.terms(), 0).expect("unit 0");
        assert!(unit.verify(key, &sig).is_ok());
        let mut swapped = p.data.clone();
        swapped[0].digest = Digest::of(b"abd");
        let tampered = UnitTerms {
            data: crate::data::list_digest(&swapped),
            ..unit
        };
        assert!(tampered.verify(key, &sig).is_err());
        let mut q = p.clone();
        q.data.clear();
        assert!(q.verify_signatures().is_err(), "dropping the data is seen");
    }

    #[test]
    fn a_signed_project_verifies_and_names_its_signer() {
        let alice = Identity::from_seed([7; 32]);
        let mut p = spec(5);
        p.sign(&alice);
        assert_eq!(
            p.verify_signatures().expect("valid"),
            SubmitterKey::of(&alice)
        );
        // Big enough to be checked on several threads.
        let mut big = spec(PARALLEL_FROM + 3);
        big.sign(&alice);
        assert!(big.verify_signatures().is_ok());
        let last = big.units.len() - 1;
        big.units[last].1.push(b'!');
        let e = big.verify_signatures().expect_err("tampered").to_string();
        assert!(e.contains(&format!("u{last}")), "{e}");
    }

    #[test]
    fn unsigned_or_short_signature_lists_are_refused() {
        let e = spec(2)
            .verify_signatures()
            .expect_err("unsigned")
            .to_string();
        assert!(e.contains("not signed"), "{e}");
        let mut p = spec(2);
        p.sign(&Identity::from_seed([1; 32]));
        p.signatures.as_mut().map(|s| s.units.pop());
        assert!(
            p.verify_signatures()
                .expect_err("short")
                .to_string()
                .contains("1 unit signatures for 2 units")
        );
    }

    #[test]
    fn every_signed_term_is_covered() {
        let alice = Identity::from_seed([7; 32]);
        let mut base = spec(3);
        base.sign(&alice);
        type Edit = fn(&mut ProjectSpec);
        let edits: &[(&str, Edit)] = &[
            ("name", |p| p.name.push('x')),
            ("manifest", |p| p.manifest.push(' ')),
            ("module", |p| p.module.push(0)),
            ("reducer", |p| p.reducer = Some(b"r".to_vec())),
            ("replication", |p| p.replication += 1),
            ("quorum", |p| p.quorum -= 1),
            ("max_replicas", |p| p.max_replicas += 1),
            ("adaptive", |p| p.adaptive = false),
            ("error_bound", |p| p.error_bound = 0.03),
            ("fuel", |p| p.limits.fuel += 1),
            ("memory", |p| p.limits.memory_mb += 1),
            ("wall", |p| p.limits.wall_seconds += 1),
            ("output", |p| p.limits.max_output_bytes += 1),
            ("nan", |p| p.limits.nan_canonicalization ^= true),
            ("checkpoint", |p| p.limits.max_checkpoint_bytes += 1),
            ("unit name", |p| p.units[1].0.push('x')),
            ("unit input", |p| p.units[1].1.push(b'x')),
            ("unit order", |p| p.units.swap(0, 2)),
            ("unit count", |p| {
                p.units.pop();
                p.signatures.as_mut().map(|s| s.units.pop());
            }),
        ];
        for (what, edit) in edits {
            let mut p = base.clone();
            edit(&mut p);
            assert!(
                p.verify_signatures().is_err(),
                "changing the {what} kept the signatures valid"
            );
        }
        // Another key's signatures are valid, but name another signer.
        let mut p = base.clone();
        p.sign(&Identity::from_seed([8; 32]));
        assert_ne!(p.verify_signatures().ok(), base.verify_signatures().ok());
    }

    #[test]
    fn a_worker_checks_one_unit_with_the_terms_digest_alone() {
        let alice = Identity::from_seed([7; 32]);
        let mut p = spec(3);
        p.sign(&alice);
        let key = SubmitterKey::of(&alice);
        let terms = p.terms();
        let sig = p.signatures.as_ref().expect("signed").units[1];
        let unit = p.unit_terms(terms, 1).expect("unit 1");
        assert!(unit.verify(key, &sig).is_ok());
        let tampered = UnitTerms {
            input: b"1\n!",
            ..unit
        };
        let e = tampered
            .verify(key, &sig)
            .expect_err("tampered")
            .to_string();
        assert!(e.contains("\"u1\"") && e.contains(&key.to_hex()), "{e}");
        let other = SubmitterKey::of(&Identity::from_seed([8; 32]));
        assert!(unit.verify(other, &sig).is_err());
        assert!(unit.verify(key, &sig[..63]).is_err());
    }

    #[test]
    fn keys_parse_from_hex_and_refuse_garbage() {
        let key = SubmitterKey::of(&Identity::from_seed([7; 32]));
        assert_eq!(key.to_hex().parse::<SubmitterKey>().expect("hex"), key);
        assert!("zz".parse::<SubmitterKey>().is_err());
        assert!(
            "00".parse::<SubmitterKey>()
                .expect_err("short")
                .to_string()
                .contains("expected 32")
        );
    }
}
