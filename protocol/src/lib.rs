//! Fallow's domain: what a project, a work unit, a worker, a signed claim and a quorum
//! certificate are, and the rules that decide when a unit is verified.
//!
//! Everything here is pure (no clock, no sockets); the only file access is
//! `manifest::load`, `identity::load_or_create` and `dirlock::lock_exclusive` (the data
//! directory's lock, which coordinator and worker share and which may wait a moment). The coordinator and the worker
//! drive these types from their async shells; the simulations drive them directly.
//! Nothing here knows protobuf: `proto::wire` converts between these types and the
//! generated messages, so this crate (and `sandbox`) builds without tonic and prost.
//!
//! # Layout
//! - [`ids`]: `ProjectId`, `UnitId`, `WorkerId`, `Digest` — ids and digests are types.
//! - [`identity`]: a worker's ed25519 key pair, kept in its data dir.
//! - [`dirlock`]: the exclusive lock on a coordinator's or worker's data directory.
//! - [`call`]: authenticated worker calls: signed, stamped, never replayed.
//! - [`control`]: project control by its submitter (cancel, pause, resume, retry, extend,
//!   reduce) and the project state it leaves.
//! - [`assignment`]: a unit leased to a worker, as the coordinator sends it.
//! - [`claim`]: commit–reveal claims: a signed seal first, then "unit U produced output
//!   with digest D using F fuel" opening it.
//! - [`evidence`]: proof that a worker changed its answer, which a board reports.
//! - [`certificate`]: `quorum` matching claims from distinct workers, checked against the
//!   output bytes; the coordinator accepts results only through [`certificate::check`].
//! - [`quorum`]: the sans-IO commit–reveal tally a worker keeps per unit it holds.
//! - [`board`]: the sans-IO board a rendezvous peer keeps: commitments, reveals, and the
//!   counted reasons it refuses messages for.
//! - [`ticket`]: lease tickets, the coordinator's voucher that a worker holds a unit,
//!   without which boards file no commitment.
//! - [`rendezvous`]: which peers a unit's claims go to (highest-random-weight hashing).
//! - [`rng`]: splitmix64, the one small seedable generator (spot checks, peer samples,
//!   simulations).
//! - [`manifest`]: the project manifest (TOML) and its validation.
//! - [`data`]: project data files (`[data]`, mounted under `/data`): names, limits and the
//!   list digest unit signatures cover.
//! - [`provenance`]: signed projects: the submitter's key signs every unit with the
//!   project's module, limits and terms; workers check before running.
//! - [`limits`]: per-project sandbox limits with their defaults and bounds.
//! - [`failure`]: why a unit ended without output.
//! - [`reduce`]: the reducer input framing.
//! - [`status`]: `ProjectStatus`, the one view of a project's progress, and its `Outcome`.
//! - [`membership`]: who may be a SWIM member: peer proofs, coordinator credentials,
//!   signed datagrams.
//! - [`tls`]: certificate fingerprints and the coordinator URLs that pin them.

#![forbid(unsafe_code)]

pub mod assignment;
pub mod board;
pub mod call;
pub mod certificate;
pub mod claim;
pub mod control;
pub mod data;
pub mod dirlock;
pub mod error;
pub mod evidence;
pub mod failure;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod manifest;
pub mod membership;
pub mod provenance;
pub mod quorum;
pub mod reduce;
pub mod rendezvous;
pub mod rng;
pub mod status;
pub mod ticket;
pub mod tls;

pub use certificate::Certificate;
pub use claim::Claim;
pub use error::Error;
pub use failure::{Failure, FailureKind};
pub use identity::{Identity, Registration};
pub use ids::{Digest, ProjectId, UnitId, WorkerId};
pub use limits::Limits;
pub use provenance::SubmitterKey;

/// The WASI random seed of a work unit: every replica of the unit gets the same stream, so
/// a guest that uses randomness is still bit-exact across workers. Derived from the unit's
/// name and input only, so the same project submitted anywhere gives the same results.
pub fn unit_seed(unit_name: &str, input: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("fallow unit random seed v1");
    h.update(&(unit_name.len() as u64).to_le_bytes());
    h.update(unit_name.as_bytes());
    h.update(input);
    *h.finalize().as_bytes()
}
