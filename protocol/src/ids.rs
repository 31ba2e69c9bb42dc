//! Ids and digests as types, so a unit id can never be passed where a project id belongs.

use std::fmt;
use std::str::FromStr;

/// A project, numbered by the coordinator that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(pub u64);

/// A work unit, numbered by the coordinator (unique across its projects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u64);

/// A worker is its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub [u8; 32]);

/// A BLAKE3 digest (of a module, or of a unit's output).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The BLAKE3 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl WorkerId {
    /// Full lowercase hex of the public key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

fn bytes32(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], crate::Error> {
    bytes.try_into().map_err(|_| {
        crate::Error::malformed(field, format!("expected 32 bytes, got {}", bytes.len()))
    })
}

impl WorkerId {
    /// Parses a key from the wire; `field` names it in the error.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, crate::Error> {
        bytes32(field, bytes).map(WorkerId)
    }
}

impl Digest {
    /// Parses a digest from the wire; `field` names it in the error.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, crate::Error> {
        bytes32(field, bytes).map(Digest)
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ProjectId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(ProjectId)
    }
}

/// Workers and digests print as their first 12 hex digits: enough to tell them apart in logs.
impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({self})")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}
