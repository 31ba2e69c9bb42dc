//! A unit the coordinator leased to a worker: what the worker needs to run it, check its
//! provenance and file its commitment. The coordinator builds it, the worker runs it; the
//! protobuf form lives in `proto::wire`.

use std::time::Duration;

use crate::provenance::Signer;
use crate::ticket::Ticket;
use crate::{Digest, Limits, ProjectId, UnitId};

/// A unit leased to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Project.
    pub project: ProjectId,
    /// Unit.
    pub unit: UnitId,
    /// Unit name (part of the random seed).
    pub name: String,
    /// stdin.
    pub input: Vec<u8>,
    /// Module digest.
    pub module: Digest,
    /// Sandbox limits.
    pub limits: Limits,
    /// Matching claims needed.
    pub quorum: u32,
    /// The lease the coordinator granted with it: the deadline for starting it.
    pub lease: Duration,
    /// The submitter's signature over the unit; `None` for a project from before
    /// projects were signed.
    pub signed: Option<Signed>,
    /// The coordinator's lease ticket, attached to the worker's commitment so boards file it
    /// (`None` from a coordinator that issues none, or an assignment saved before tickets:
    /// boards then refuse the commitment and the unit ends in a partial certificate).
    pub ticket: Option<Ticket>,
    /// The project's data files (mounted under `/data`), sorted by name; covered by the
    /// unit's signature.
    pub data: Vec<crate::data::DataFile>,
}

/// Who signed a unit's project, and the signature over the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// The submitter key and the project's terms digest.
    pub signer: Signer,
    /// The submitter's signature over the unit (`protocol::provenance::UnitTerms`).
    pub signature: [u8; 64],
}
