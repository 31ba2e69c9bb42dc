//! An ed25519 key pair kept in a file: a worker's identity (in its data dir), and a
//! project submitter's signing key (`fallow key`).

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use crate::{Error, WorkerId};

/// Domain separation for registration signatures.
const REGISTER_CONTEXT: &[u8] = b"fallow/register/v2\0";

/// Domain separation for binding a peer TLS key to a worker key ([`Identity::sign_peer_tls`]).
const PEER_TLS_CONTEXT: &[u8] = b"fallow/peer-tls/v1\0";

/// A worker's signing key. The public half is its [`WorkerId`].
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id())
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Identity {
            path: "<os random>".into(),
            message: e.to_string(),
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The identity whose secret seed is `seed` (tests and simulations use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key at `path`, or creates it (mode 0600 on Unix) if the file does not exist.
    /// A file that exists but is not a key is an error, never silently replaced: replacing
    /// it would throw away the worker's credit and leases.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let err = |message: String| Error::Identity {
            path: path.to_path_buf(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let text =
                    String::from_utf8(bytes).map_err(|_| err("not a hex key file".into()))?;
                let seed = hex::decode(text.trim()).map_err(|e| err(format!("not hex: {e}")))?;
                let seed: [u8; 32] = seed
                    .try_into()
                    .map_err(|_| err("expected 32 bytes of hex (64 digits)".into()))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                // A per-process temporary name, then a hard link that fails if the key
                // appeared meanwhile: two processes creating the same key file at once
                // (e.g. two `fallow submit`s) end up with one key, never half of one.
                let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
                std::fs::write(&tmp, hex::encode(identity.key.to_bytes()))
                    .map_err(|e| err(e.to_string()))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| err(e.to_string()))?;
                }
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(identity),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path)
                    }
                    Err(e) => Err(err(e.to_string())),
                }
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// This worker's id (its public key).
    pub fn id(&self) -> WorkerId {
        WorkerId(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` as is; callers add their own domain separation.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs a registration, proving the worker owns its key and binding the account and
    /// team it works for (so nobody can move a worker's credit to another account).
    pub fn sign_registration(&self, registration: &Registration<'_>) -> [u8; 64] {
        self.sign_raw(&registration.message())
    }

    /// Binds a TLS key to this worker: a signature over the DER `SubjectPublicKeyInfo` of
    /// the certificate its peer service serves. The TLS key is a separate key, so the
    /// worker key never signs a TLS handshake (whose signed bytes a client partly chooses).
    pub fn sign_peer_tls(&self, spki_der: &[u8]) -> [u8; 64] {
        self.sign_raw(&peer_tls_message(spki_der))
    }

    /// A secret derived from the key for one purpose (`context`, a fixed string naming it,
    /// as BLAKE3's `derive_key` asks): the coordinators of a deployment share the
    /// coordinator key, so each derives the same secret, and no one without the key can.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.key.as_bytes())
    }

    /// A salt derived from the secret key, for when the OS random source fails: as hidden
    /// from others as a random one, though not fresh per claim.
    pub(crate) fn derive_salt(
        &self,
        project: crate::ProjectId,
        unit: crate::UnitId,
        digest: crate::Digest,
        fuel: u64,
    ) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.key.as_bytes());
        h.update(&project.0.to_le_bytes());
        h.update(&unit.0.to_le_bytes());
        h.update(&digest.0);
        h.update(&fuel.to_le_bytes());
        *h.finalize().as_bytes()
    }
}

/// What a worker states when it registers; all of it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration<'a> {
    /// Display name of the machine.
    pub name: &'a str,
    /// Volunteer account the worker's credit goes to.
    pub account: &'a str,
    /// Team of the account ("" for none).
    pub team: &'a str,
    /// host:port of its peer service ("" when it accepts no inbound connections).
    pub peer_addr: &'a str,
}

impl Registration<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = REGISTER_CONTEXT.to_vec();
        for field in [self.name, self.account, self.team, self.peer_addr] {
            m.extend_from_slice(&(field.len() as u64).to_le_bytes());
            m.extend_from_slice(field.as_bytes());
        }
        m
    }
}

/// Checks a registration signature made by [`Identity::sign_registration`].
pub fn verify_registration(
    worker: WorkerId,
    registration: &Registration<'_>,
    signature: &[u8],
) -> Result<(), Error> {
    crate::claim::verify_signature(worker, &registration.message(), signature)
        .map_err(|_| Error::malformed("RegisterWorkerRequest.signature", "does not verify"))
}

fn peer_tls_message(spki_der: &[u8]) -> Vec<u8> {
    let mut m = PEER_TLS_CONTEXT.to_vec();
    m.extend_from_slice(spki_der);
    m
}

/// Checks that `worker` bound the TLS key `spki_der` ([`Identity::sign_peer_tls`]).
pub fn verify_peer_tls(worker: WorkerId, spki_der: &[u8], signature: &[u8]) -> Result<(), Error> {
    crate::claim::verify_signature(worker, &peer_tls_message(spki_der), signature)
        .map_err(|_| Error::malformed("peer TLS certificate binding", "does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_tls_binding_verifies_only_for_its_worker_and_key() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let sig = a.sign_peer_tls(b"spki of a's tls key");
        assert!(verify_peer_tls(a.id(), b"spki of a's tls key", &sig).is_ok());
        assert!(verify_peer_tls(b.id(), b"spki of a's tls key", &sig).is_err());
        assert!(verify_peer_tls(a.id(), b"spki of another key", &sig).is_err());
        assert!(verify_peer_tls(a.id(), b"spki of a's tls key", &sig[..63]).is_err());
        // Not a registration signature either.
        let registration = Registration {
            name: "",
            account: "",
            team: "",
            peer_addr: "",
        };
        assert!(verify_registration(a.id(), &registration, &sig).is_err());
    }

    #[test]
    fn key_file_round_trips_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("fallow-id-{}", std::process::id()));
        let path = dir.join("worker.key");
        let _ = std::fs::remove_file(&path);
        let a = Identity::load_or_create(&path).expect("create");
        let b = Identity::load_or_create(&path).expect("load");
        assert_eq!(a.id(), b.id());
        std::fs::write(&path, "not a key").expect("write");
        assert!(Identity::load_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn registration_signature_binds_every_field() {
        let id = Identity::from_seed([7; 32]);
        let reg = Registration {
            name: "box",
            account: "alice",
            team: "lab",
            peer_addr: "127.0.0.1:9",
        };
        let sig = id.sign_registration(&reg);
        assert!(verify_registration(id.id(), &reg, &sig).is_ok());
        for other in [
            Registration {
                account: "mallory",
                ..reg
            },
            Registration { team: "", ..reg },
            Registration {
                name: "boxa",
                account: "lice",
                ..reg
            },
            Registration {
                peer_addr: "127.0.0.1:8",
                ..reg
            },
        ] {
            assert!(
                verify_registration(id.id(), &other, &sig).is_err(),
                "{other:?}"
            );
        }
    }
}
