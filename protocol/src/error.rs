//! The one error type of the `protocol` crate.

use std::path::PathBuf;

/// Everything that can be wrong with data entering Fallow's domain. None of these change
/// any state: they are returned by pure checks before anything is stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a wire message is missing, of the wrong length or out of range.
    #[error("malformed message: {field}: {problem}")]
    Malformed {
        /// The message field, e.g. `Claim.digest`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An ed25519 signature does not verify against the key it claims.
    #[error("bad signature on claim by worker {worker} for unit {unit}")]
    BadSignature {
        /// Who supposedly signed.
        worker: crate::WorkerId,
        /// The unit the claim is about.
        unit: crate::UnitId,
    },
    /// A certificate does not prove a quorum; the text says which rule it breaks.
    #[error("certificate for unit {unit} rejected: {reason}")]
    Certificate {
        /// The unit the certificate is about.
        unit: crate::UnitId,
        /// The rule it breaks.
        reason: String,
    },
    /// A manifest is not valid; the text names the file, the key and the fix.
    #[error("manifest {}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The worker identity file could not be read or written.
    #[error("identity file {}: {message}", path.display())]
    Identity {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A project's signatures are missing or do not verify; the text names the unit.
    #[error("project signature: {0}")]
    ProjectSignature(String),
    /// Reducer input framing is broken.
    #[error("reducer input: {0}")]
    Reduce(String),
}

impl Error {
    /// A [`Error::Malformed`] for `field`; `proto::wire` rejects bad messages with it too.
    pub fn malformed(field: &'static str, problem: impl Into<String>) -> Self {
        Error::Malformed {
            field,
            problem: problem.into(),
        }
    }
}
