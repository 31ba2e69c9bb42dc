//! Which projects this worker runs: every unit's submitter signature is checked before the
//! unit runs (`protocol::provenance`), and the signer must be one the volunteer accepts.
//!
//! - `--submitter-key HEX` (repeatable): only projects signed by those keys. The list goes
//!   to the coordinator with every work request, so other projects' units are not even
//!   leased here.
//! - Without it, any signed project; each signer seen for the first time is logged loudly
//!   and appended to `DATA/known_submitters`, so the volunteer can see whose code ran here.
//! - Projects from before projects were signed run only with `--allow-unsigned-projects`.
//!
//! A unit whose signature does not verify (the coordinator handed out a module, limits or
//! input the submitter did not sign) is never run: it is reported as a `bad_signature`
//! failure. A unit from a signer this worker does not accept is handed back unrun.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::provenance::{SubmitterKey, UnitTerms};

use crate::Error;
use crate::rpc::Assignment;

/// The file, in the data dir, that lists the submitter keys whose projects ran here.
pub const KNOWN_SUBMITTERS_FILE: &str = "known_submitters";

/// Why a unit is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The signature does not verify: report the unit as failed (`bad_signature`).
    BadSignature(String),
    /// Signed by a key this worker does not accept, or not signed: hand it back.
    NotAccepted(String),
}

/// The worker's policy for whose projects it runs.
#[derive(Debug)]
pub struct Policy {
    /// Sorted, without duplicates.
    pinned: Vec<SubmitterKey>,
    allow_unsigned: bool,
    known: Mutex<HashSet<SubmitterKey>>,
    file: PathBuf,
}

impl Policy {
    /// Reads `DATA/known_submitters` (lines of `HEX first-seen-from`); a line that is not a
    /// key is an error naming the file, never ignored.
    pub fn load(
        data_dir: &Path,
        pinned: &[SubmitterKey],
        allow_unsigned: bool,
    ) -> Result<Self, Error> {
        let file = data_dir.join(KNOWN_SUBMITTERS_FILE);
        let mut known = HashSet::new();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let Some(hex) = line.split_whitespace().next() else {
                        continue;
                    };
                    let key = hex.parse::<SubmitterKey>().map_err(|e| {
                        Error::Config(format!("{} line {}: {e}", file.display(), n + 1))
                    })?;
                    known.insert(key);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&file, e)),
        }
        let mut pinned = pinned.to_vec();
        pinned.sort();
        pinned.dedup();
        Ok(Policy {
            pinned,
            allow_unsigned,
            known: Mutex::new(known),
            file,
        })
    }

    /// The keys to send with work requests (empty: any signed project).
    pub fn accepted(&self) -> &[SubmitterKey] {
        &self.pinned
    }

    /// Whether to ask for units of unsigned projects too.
    pub fn allow_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// Checks a unit before it runs. `coordinator` is only for the log and the record.
    pub fn check(&self, coordinator: &str, a: &Assignment) -> Result<(), Refusal> {
        let Some(signed) = &a.signed else {
            return if self.allow_unsigned {
                Ok(())
            } else {
                Err(Refusal::NotAccepted(format!(
                    "project {} is not signed (submitted before projects were signed); \
                     run it only with --allow-unsigned-projects",
                    a.project
                )))
            };
        };
        UnitTerms {
            terms: signed.signer.terms,
            module: a.module,
            limits: a.limits,
            quorum: a.quorum,
            name: &a.name,
            input: &a.input,
            data: protocol::data::list_digest(&a.data),
        }
        .verify(signed.signer.key, &signed.signature)
        .map_err(|e| Refusal::BadSignature(e.to_string()))?;
        let key = signed.signer.key;
        if !self.pinned.is_empty() {
            return if self.pinned.binary_search(&key).is_ok() {
                Ok(())
            } else {
                Err(Refusal::NotAccepted(format!(
                    "project {} is signed by {key}, which is not one of this worker's --submitter-key",
                    a.project
                )))
            };
        }
        let new = crate::lock(&self.known).insert(key);
        if new {
            tracing::warn!(
                submitter = %key,
                %coordinator,
                project = %a.project,
                "running a project signed by a submitter key not seen before; pass \
                 --submitter-key to run only keys you trust (recorded in {})",
                self.file.display()
            );
            if let Err(e) = self.record(key, coordinator) {
                tracing::warn!(
                    "cannot record the submitter key in {}: {e}",
                    self.file.display()
                );
            }
        }
        Ok(())
    }

    fn record(&self, key: SubmitterKey, coordinator: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        // The coordinator URL without its fingerprint is enough to say where it came from.
        let from = coordinator.split('#').next().unwrap_or(coordinator);
        writeln!(f, "{key} {from}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::manifest::ProjectSpec;
    use protocol::provenance::Signer;
    use protocol::{Digest, Identity, Limits, ProjectId, UnitId};

    use super::*;
    use crate::rpc::Signed;

    fn spec() -> ProjectSpec {
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
            units: vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
            manifest: String::new(),
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        }
    }

    /// Unit `i` of `spec` as the coordinator hands it out.
    fn assignment(spec: &ProjectSpec, i: usize) -> Assignment {
        let signed = spec.signatures.as_ref().map(|s| Signed {
            signer: Signer {
                key: s.key,
                terms: spec.terms(),
            },
            signature: s.units[i],
        });
        Assignment {
            project: ProjectId(1),
            unit: UnitId(i as u64),
            name: spec.units[i].0.clone(),
            input: spec.units[i].1.clone(),
            module: Digest::of(&spec.module),
            limits: spec.limits,
            quorum: spec.quorum,
            lease: Duration::from_secs(60),
            signed,
            ticket: None,
            data: Vec::new(),
        }
    }

    #[test]
    fn signed_units_run_and_new_signers_are_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = Identity::from_seed([1; 32]);
        let mut p = spec();
        p.sign(&alice);
        let policy = Policy::load(dir.path(), &[], false).expect("policy");
        assert_eq!(policy.check("http://c", &assignment(&p, 0)), Ok(()));
        assert_eq!(policy.check("http://c", &assignment(&p, 1)), Ok(()));
        let text = std::fs::read_to_string(dir.path().join(KNOWN_SUBMITTERS_FILE)).expect("file");
        assert_eq!(text, format!("{} http://c\n", SubmitterKey::of(&alice)));
        // Read back on restart.
        let again = Policy::load(dir.path(), &[], false).expect("reload");
        assert!(crate::lock(&again.known).contains(&SubmitterKey::of(&alice)));
        std::fs::write(dir.path().join(KNOWN_SUBMITTERS_FILE), "nonsense\n").expect("write");
        let e = Policy::load(dir.path(), &[], false)
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("known_submitters line 1"), "{e}");
    }

    #[test]
    fn tampered_units_are_bad_signatures_whatever_the_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = Identity::from_seed([1; 32]);
        let mut p = spec();
        p.sign(&alice);
        let policy = Policy::load(dir.path(), &[], true).expect("policy");
        type Tamper = fn(&mut Assignment);
        let tampers: &[(&str, Tamper)] = &[
            ("input", |a| a.input.push(b'!')),
            ("name", |a| a.name.push('!')),
            ("module", |a| a.module = Digest::of(b"other module")),
            ("fuel", |a| a.limits.fuel *= 10),
            ("memory", |a| a.limits.memory_mb *= 2),
            ("quorum", |a| a.quorum = 1),
            ("signature", |a| {
                if let Some(s) = a.signed.as_mut() {
                    s.signature[3] ^= 1;
                }
            }),
            ("key", |a| {
                if let Some(s) = a.signed.as_mut() {
                    s.signer.key = SubmitterKey::of(&Identity::from_seed([9; 32]));
                }
            }),
        ];
        for (what, tamper) in tampers {
            let mut a = assignment(&p, 1);
            tamper(&mut a);
            match policy.check("http://c", &a) {
                Err(Refusal::BadSignature(e)) => assert!(e.contains("unit \"b"), "{what}: {e}"),
                other => panic!("tampered {what}: {other:?}"),
            }
        }
    }

    #[test]
    fn pinned_keys_and_unsigned_projects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = Identity::from_seed([1; 32]);
        let bob = Identity::from_seed([2; 32]);
        let mut by_alice = spec();
        by_alice.sign(&alice);
        let mut by_bob = spec();
        by_bob.sign(&bob);
        let unsigned = spec();
        let policy = Policy::load(dir.path(), &[SubmitterKey::of(&alice)], false).expect("policy");
        assert_eq!(policy.accepted(), &[SubmitterKey::of(&alice)]);
        assert_eq!(policy.check("c", &assignment(&by_alice, 0)), Ok(()));
        assert!(matches!(
            policy.check("c", &assignment(&by_bob, 0)),
            Err(Refusal::NotAccepted(e)) if e.contains("not one of this worker's --submitter-key")
        ));
        assert!(matches!(
            policy.check("c", &assignment(&unsigned, 0)),
            Err(Refusal::NotAccepted(e)) if e.contains("--allow-unsigned-projects")
        ));
        let lenient = Policy::load(dir.path(), &[], true).expect("policy");
        assert_eq!(lenient.check("c", &assignment(&unsigned, 0)), Ok(()));
        // Pinned keys are not recorded as "seen": the volunteer chose them.
        assert!(!dir.path().join(KNOWN_SUBMITTERS_FILE).exists());
    }
}
