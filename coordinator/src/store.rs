//! Durable state behind one trait. The embedded SQLite backend ([`sqlite::SqliteStore`]) is
//! the default; the trait speaks only domain types so a PostgreSQL backend (same sqlx API,
//! same `$N` placeholders) can slot in for multi-coordinator deployments.

pub mod sqlite;

use std::future::Future;

use protocol::certificate::Verified;
use protocol::manifest::ProjectSpec;
use protocol::{Digest, Failure, ProjectId, UnitId, WorkerId};

use crate::Error;
use crate::scheduler::{AssignmentState, Change, Project, UnitStatus};

/// A unit as loaded at start-up (no input or output bytes: those stay on disk).
#[derive(Debug, Clone)]
pub struct StoredUnit {
    /// Id.
    pub id: UnitId,
    /// Project.
    pub project: ProjectId,
    /// Status.
    pub status: UnitStatus,
    /// Replicas wanted.
    pub target: u32,
    /// Assignments so far.
    pub replicas: Vec<(WorkerId, AssignmentState, Option<Failure>)>,
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorker {
    /// Public key.
    pub id: WorkerId,
    /// Display name.
    pub name: String,
    /// Peer service address.
    pub peer_addr: String,
    /// Cores offered.
    pub cores: u32,
}

/// Everything the scheduler needs after a restart.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Projects with their counters.
    pub projects: Vec<Project>,
    /// Units with their assignments.
    pub units: Vec<StoredUnit>,
    /// Registered workers.
    pub workers: Vec<StoredWorker>,
}

/// A verified output for `fallow results`.
#[derive(Debug, Clone)]
pub struct VerifiedOutput {
    /// Unit name.
    pub name: String,
    /// Output bytes.
    pub output: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// Fuel used.
    pub fuel: u64,
    /// Who signed the certificate.
    pub signers: Vec<WorkerId>,
}

/// Durable storage. Every method is atomic: it either happens whole or not at all.
pub trait Store: Send + Sync + 'static {
    /// Stores a project, its modules and all its units in one transaction.
    fn insert_project(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        reducer: Option<Digest>,
        now: u64,
    ) -> impl Future<Output = Result<(ProjectId, Vec<UnitId>), Error>> + Send;

    /// Loads everything the scheduler needs.
    fn load(&self) -> impl Future<Output = Result<Snapshot, Error>> + Send;

    /// A unit's input and name.
    fn unit_input(
        &self,
        unit: UnitId,
    ) -> impl Future<Output = Result<(String, Vec<u8>), Error>> + Send;

    /// Module bytes by digest.
    fn module(&self, digest: Digest)
    -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// Records new leases.
    fn insert_assignments(
        &self,
        leases: &[(UnitId, WorkerId)],
        now: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Applies scheduler changes (replica states, targets, failed units) in one transaction.
    /// A raised target counts as one dispute on the unit's project.
    fn apply(&self, changes: &[Change], now: u64)
    -> impl Future<Output = Result<(), Error>> + Send;

    /// Records a verified unit with its output and credits its signers, exactly once.
    /// Returns false (and changes nothing) when the unit was already settled.
    fn record_verified(
        &self,
        unit: UnitId,
        output: &[u8],
        verified: &Verified,
        now: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Registers (or updates) a worker.
    fn upsert_worker(
        &self,
        worker: &StoredWorker,
        now: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Verified outputs of a project, sorted by unit name, `limit` at a time after `after`.
    fn verified_outputs(
        &self,
        project: ProjectId,
        after: Option<String>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<VerifiedOutput>, Error>> + Send;

    /// Failed units of a project with their reasons, sorted by name.
    fn failed_units(
        &self,
        project: ProjectId,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Error>> + Send;

    /// Stores a project's aggregate (or why the reducer failed).
    fn set_aggregate(
        &self,
        project: ProjectId,
        aggregate: Result<Vec<u8>, String>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// A project's aggregate, if stored: `Ok(bytes)` or `Err(reducer failure)`.
    fn aggregate(
        &self,
        project: ProjectId,
    ) -> impl Future<Output = Result<Option<Result<Vec<u8>, String>>, Error>> + Send;
}
