//! Durable state behind one trait, with two back-ends that share one schema history
//! ([`schema`]) and one test suite (`store::tests`): the embedded SQLite store
//! ([`sqlite::SqliteStore`], `DATA/fallow.db`), the default, and PostgreSQL
//! ([`postgres::PostgresStore`], `fallow coordinator --database postgres://…`). The trait
//! speaks only domain types.

pub mod postgres;
pub mod schema;
pub mod sqlite;
#[cfg(test)]
mod testpg;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;

use protocol::certificate::Verified;
use protocol::manifest::ProjectSpec;
use protocol::{Claim, Digest, Failure, ProjectId, UnitId, WorkerId};

use crate::Error;
use crate::scheduler::{AssignmentState, Change, Project, Standing, Trust, UnitStatus};

/// A unit as loaded at start-up (no input or output bytes: those stay in the database).
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
    /// Matching claims from distinct accounts needed.
    pub required: u32,
    /// Assignments so far.
    pub replicas: Vec<(WorkerId, AssignmentState, Option<Failure>)>,
    /// Claims received for a pending unit.
    pub votes: Vec<Claim>,
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
    /// Volunteer account.
    pub account: String,
    /// Team ("" for none).
    pub team: String,
    /// OS and architecture.
    pub platform: String,
    /// Network prefix for replica placement (None on loopback).
    pub subnet: Option<String>,
}

/// Who gets credit for a verified unit: the signer and the account and team it worked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTo {
    /// The signer.
    pub worker: WorkerId,
    /// Its account.
    pub account: String,
    /// Its team.
    pub team: String,
}

/// An account on the leaderboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountTotal {
    /// Account name.
    pub name: String,
    /// Its team (the latest one a worker registered with).
    pub team: String,
    /// Credit (fuel of verified units).
    pub credit: u64,
    /// Verified results credited.
    pub verified: u64,
    /// Workers registered under it.
    pub workers: u32,
}

/// A team on the leaderboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamTotal {
    /// Team name.
    pub name: String,
    /// Credit of its accounts.
    pub credit: u64,
    /// Accounts credited under it.
    pub accounts: u32,
}

/// Everything the scheduler needs after a restart but the units (which
/// [`Store::load_units`] streams).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Projects, with the counters that are not counted from their units.
    pub projects: Vec<Project>,
    /// Registered workers.
    pub workers: Vec<StoredWorker>,
    /// Trust per (worker, project), with the unchecked solo results.
    pub trust: Vec<(WorkerId, ProjectId, Trust)>,
    /// Standing per worker.
    pub standing: Vec<(WorkerId, Standing)>,
    /// (unit, worker) pairs whose claims no longer count.
    pub disqualified: Vec<(UnitId, WorkerId)>,
}

/// Per-project counters gathered while units are loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadedCounts {
    /// Units.
    pub total: u64,
    /// Verified units.
    pub verified: u64,
    /// Failed units.
    pub failed: u64,
    /// Units cancelled with their project.
    pub cancelled: u64,
    /// Executions (replicas not handed back).
    pub executions: u64,
}

/// A unit's row as a back-end decoded it, before its replicas and votes are merged in
/// ([`merge_units`]).
#[derive(Debug, Clone)]
pub(crate) struct UnitRow {
    /// Id.
    pub id: u64,
    /// Project.
    pub project: ProjectId,
    /// Status.
    pub status: UnitStatus,
    /// Replicas wanted.
    pub target: u32,
    /// Matching claims needed; 0 in rows written before schema 2 (then the project's
    /// quorum).
    pub required: u32,
}

/// A replica as loaded: the worker, its assignment's state and any failure it reported.
pub(crate) type Replica = (WorkerId, AssignmentState, Option<Failure>);

/// A reported failure from its stored kind and reason (an unknown kind is none).
pub(crate) fn failure_of(kind: Option<String>, reason: Option<String>) -> Option<Failure> {
    kind.as_deref()
        .and_then(protocol::FailureKind::parse)
        .map(|k| Failure::new(k, reason.unwrap_or_default()))
}

/// A worker key read back from the store; a malformed one is corruption.
pub(crate) fn worker_id(bytes: &[u8]) -> Result<WorkerId, Error> {
    WorkerId::from_slice("stored worker id", bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A project's stored control state; a code this version does not know is corruption.
pub(crate) fn control_of(code: i64) -> Result<protocol::control::State, Error> {
    protocol::control::State::from_code(code)
        .ok_or_else(|| Error::Corrupt(format!("project control state {code}")))
}

/// A digest read back from the store; a malformed one is corruption.
pub(crate) fn digest(bytes: &[u8]) -> Result<Digest, Error> {
    Digest::from_slice("stored digest", bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A verified unit's stored output checked against the digest it was verified with, over
/// the bytes as they are now (a database's own checks see pages, never a changed byte
/// inside a value): the output, its digest and the fuel column, or `None` when any is
/// missing or they do not match, which both back-ends report as corrupt.
pub(crate) fn intact_output(
    output: Option<Vec<u8>>,
    digest: Option<Vec<u8>>,
    fuel: Option<i64>,
) -> Option<(Vec<u8>, Digest, i64)> {
    let digest = Digest::from_slice("stored digest", &digest?).ok()?;
    let output = output?;
    (Digest::of(&output) == digest).then_some((output, digest, fuel?))
}

/// A stored vote's salt and signature, refused as corrupt when not 32 and 64 bytes.
pub(crate) fn vote_seal(salt: Vec<u8>, signature: Vec<u8>) -> Result<([u8; 32], [u8; 64]), Error> {
    Ok((
        salt.try_into()
            .map_err(|_| Error::Corrupt("vote salt is not 32 bytes".into()))?,
        signature
            .try_into()
            .map_err(|_| Error::Corrupt("vote signature is not 64 bytes".into()))?,
    ))
}

/// What both back-ends' `load_units` do with their three streams, each in unit order
/// (units; assignments; votes): merged, so nothing but the current unit is in memory,
/// each unit handed to `on_unit` with its replicas and votes, and counted per project.
/// `quorum` fills `required` for rows written before schema 2.
pub(crate) async fn merge_units<U, A, V, F>(
    quorum: &HashMap<ProjectId, u32>,
    mut units: U,
    mut assignments: A,
    mut votes: V,
    mut on_unit: F,
) -> Result<HashMap<ProjectId, LoadedCounts>, Error>
where
    U: tokio_stream::Stream<Item = Result<UnitRow, Error>> + Unpin,
    A: tokio_stream::Stream<Item = Result<(u64, Replica), Error>> + Unpin,
    V: tokio_stream::Stream<Item = Result<Claim, Error>> + Unpin,
    F: FnMut(StoredUnit),
{
    use tokio_stream::StreamExt;
    let mut assignment = assignments.next().await.transpose()?;
    let mut vote = votes.next().await.transpose()?;
    let mut counts: HashMap<ProjectId, LoadedCounts> = HashMap::new();
    while let Some(row) = units.next().await {
        let row = row?;
        let id = row.id;
        let mut replicas = Vec::new();
        while let Some((unit, _)) = &assignment
            && *unit <= id
        {
            if let Some((unit, r)) = assignment.take()
                && unit == id
            {
                replicas.push(r);
            }
            assignment = assignments.next().await.transpose()?;
        }
        let mut unit_votes = Vec::new();
        while let Some(c) = &vote
            && c.unit.0 <= id
        {
            if let Some(c) = vote.take()
                && c.unit.0 == id
            {
                unit_votes.push(c);
            }
            vote = votes.next().await.transpose()?;
        }
        let c = counts.entry(row.project).or_default();
        c.total += 1;
        c.executions += replicas
            .iter()
            .filter(|r| r.1 != AssignmentState::Returned)
            .count() as u64;
        match row.status {
            UnitStatus::Verified => c.verified += 1,
            UnitStatus::Failed(_) => c.failed += 1,
            UnitStatus::Cancelled => c.cancelled += 1,
            UnitStatus::Pending => {}
        }
        let required = match row.required {
            0 => quorum.get(&row.project).copied().unwrap_or(1), // written before schema 2
            n => n,
        };
        on_unit(StoredUnit {
            id: UnitId(id),
            project: row.project,
            status: row.status,
            target: row.target,
            required,
            replicas,
            votes: unit_votes,
        });
    }
    Ok(counts)
}

/// One durable change, for [`Store::write`]. The writes of many requests are applied
/// together, in order, in one transaction.
#[derive(Debug, Clone)]
pub enum Write {
    /// New leases.
    Assignments(Vec<(UnitId, WorkerId)>),
    /// Scheduler changes (as [`Store::apply`]).
    Changes(Vec<Change>),
    /// A verified unit with its output and credit (as [`Store::record_verified`]).
    Verified {
        /// The unit.
        unit: UnitId,
        /// Its output.
        output: Vec<u8>,
        /// The certificate's verdict.
        verified: Verified,
        /// Who is credited.
        credit: Vec<CreditTo>,
    },
    /// A registration (as [`Store::upsert_worker`]).
    Worker(StoredWorker),
}

/// Most unit ids one [`Store::verified_outputs_of`] call looks up (one statement's
/// parameters stay far below SQLite's limit of 32,766).
pub const MAX_OUTPUTS_OF: usize = 256;

/// A verified output for `fallow results`, whose bytes matched their digest when read.
#[derive(Debug, Clone)]
pub struct VerifiedOutput {
    /// The unit.
    pub unit: UnitId,
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
    /// When the coordinator recorded it (Unix milliseconds).
    pub verified_ms: u64,
}

/// A verified unit whose stored output no longer matches the digest it was verified with
/// (changed on disk, or unreadable): never served; the caller sends the unit back for
/// verification ([`crate::scheduler::Scheduler::reverify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptOutput {
    /// The unit.
    pub unit: UnitId,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for CorruptOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unit {:?} (id {})", self.name, self.unit)
    }
}

/// One verified unit's stored output as read: intact, or refused by the digest check.
#[derive(Debug, Clone)]
pub enum StoredOutput {
    /// The bytes match their digest.
    Intact(VerifiedOutput),
    /// They do not: not to be served.
    Corrupt(CorruptOutput),
}

impl StoredOutput {
    /// The unit's name (the order outputs are listed in).
    pub fn name(&self) -> &str {
        match self {
            StoredOutput::Intact(v) => &v.name,
            StoredOutput::Corrupt(c) => &c.name,
        }
    }
}

/// What a worker gets of a leased unit from the store.
#[derive(Debug, Clone)]
pub struct LeasedInput {
    /// The unit.
    pub unit: UnitId,
    /// Its name.
    pub name: String,
    /// Its stdin.
    pub input: Vec<u8>,
    /// The submitter's signature over it (`None` in a project from before signing).
    pub signature: Option<[u8; 64]>,
}

/// Durable storage. Every method is atomic: it either happens whole or not at all.
pub trait Store: Send + Sync + 'static {
    /// Whether the store's rows live on the data directory's disk (the embedded SQLite
    /// store), so that its free space says whether a project fits. A database server's
    /// disk is not this machine's: its operator watches it.
    fn on_data_dir_disk(&self) -> bool {
        true
    }

    /// Stores a project, its modules and all its units in one transaction.
    fn insert_project(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        reducer: Option<Digest>,
        now: u64,
    ) -> impl Future<Output = Result<(ProjectId, Vec<UnitId>), Error>> + Send;

    /// Adds signed units to an existing project (`fallow extend`) in one transaction, each
    /// wanting `target` replicas and `required` matching claims, and drops the project's
    /// aggregate (it is computed again once they settle). A name the project already has
    /// is refused ([`Error::DuplicateUnit`], naming it) and nothing is added. Returns the
    /// new units' ids in the order given.
    fn insert_units(
        &self,
        project: ProjectId,
        units: &[(String, Vec<u8>)],
        signatures: &[[u8; 64]],
        target: u32,
        required: u32,
    ) -> impl Future<Output = Result<Vec<UnitId>, Error>> + Send;

    /// Loads everything the scheduler needs but the units.
    fn load(&self) -> impl Future<Output = Result<Snapshot, Error>> + Send;

    /// Streams every unit, in id order, to `on_unit` (none are held in memory at once) and
    /// returns the counters per project.
    fn load_units<F: FnMut(StoredUnit) + Send>(
        &self,
        on_unit: F,
    ) -> impl Future<Output = Result<HashMap<ProjectId, LoadedCounts>, Error>> + Send;

    /// A unit's input and name.
    fn unit_input(
        &self,
        unit: UnitId,
    ) -> impl Future<Output = Result<(String, Vec<u8>), Error>> + Send;

    /// The names, inputs and signatures of several units in one query, in no particular
    /// order.
    fn unit_inputs(
        &self,
        units: &[UnitId],
    ) -> impl Future<Output = Result<Vec<LeasedInput>, Error>> + Send;

    /// Applies `writes` (each with its `now`) in order in one transaction: all or none.
    fn write(&self, writes: &[(Write, u64)]) -> impl Future<Output = Result<(), Error>> + Send;

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

    /// Records a verified unit with its output and credits its signers' accounts, exactly
    /// once. Returns false (and changes nothing) when the unit was already settled.
    fn record_verified(
        &self,
        unit: UnitId,
        output: &[u8],
        verified: &Verified,
        credit: &[CreditTo],
        now: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Accounts and teams by credit, highest first.
    fn leaderboard(
        &self,
    ) -> impl Future<Output = Result<(Vec<AccountTotal>, Vec<TeamTotal>), Error>> + Send;

    /// Registers (or updates) a worker.
    fn upsert_worker(
        &self,
        worker: &StoredWorker,
        now: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Verified outputs of a project, sorted by unit name, `limit` at a time after `after`.
    /// Every output is checked against the digest it was verified with as it is read: one
    /// that does not match comes back as [`StoredOutput::Corrupt`], never as bytes.
    fn verified_outputs(
        &self,
        project: ProjectId,
        after: Option<String>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredOutput>, Error>> + Send;

    /// The verified outputs of those of `units` that belong to `project` and are verified
    /// in the store, sorted by unit name (at most [`MAX_OUTPUTS_OF`] ids a call; the rest
    /// are ignored). Checked as they are read, like [`Store::verified_outputs`]. A unit the
    /// scheduler has verified but the writer has not yet committed is simply absent.
    fn verified_outputs_of(
        &self,
        project: ProjectId,
        units: &[UnitId],
    ) -> impl Future<Output = Result<Vec<StoredOutput>, Error>> + Send;

    /// Every worker that ever held a lease on `unit` or was credited for it.
    fn unit_workers(
        &self,
        unit: UnitId,
    ) -> impl Future<Output = Result<Vec<WorkerId>, Error>> + Send;

    /// Whether `project`'s units are exactly `units` (names and inputs, in order).
    fn same_units(
        &self,
        project: ProjectId,
        units: &[(String, Vec<u8>)],
    ) -> impl Future<Output = Result<bool, Error>> + Send;

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

    /// The sizes of the data files among `digests` held whole (uploaded and verified).
    fn data_held(
        &self,
        digests: &[Digest],
    ) -> impl Future<Output = Result<HashMap<Digest, u64>, Error>> + Send;

    /// Stores chunk `index` (of [`protocol::data::CHUNK_BYTES`], the last may be shorter)
    /// of the unfinished upload `upload`, a key of the uploader's own: no reader sees it
    /// until [`Store::finish_data`].
    fn put_data_chunk(
        &self,
        upload: [u8; 32],
        index: u64,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Makes the chunks of `upload` the data file `digest` of `size` bytes, in one
    /// transaction; when the file is already held (another upload finished first) they are
    /// dropped instead. The caller has checked the bytes hash to `digest`. Returns whether
    /// the file was already held.
    fn finish_data(
        &self,
        upload: [u8; 32],
        digest: Digest,
        size: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Drops the chunks of an upload that failed.
    fn discard_data(&self, upload: [u8; 32]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Chunk `index` of a held data file (`None` past its end or for a file not held).
    fn data_chunk(
        &self,
        digest: Digest,
        index: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;
}
