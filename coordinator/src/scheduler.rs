//! The scheduler: which unit goes to which worker, leases, the claims (votes) each unit has
//! collected, adaptive replication with per-worker trust, extra replicas after disputes,
//! and when a unit fails. A sans-IO state machine: it takes events with `now` (unix
//! milliseconds) and returns what changed; the async shell in `service` persists every
//! change through the `Store` and answers the RPCs. It does no I/O, reads no clock, and
//! draws its random spot checks from a seeded generator, so simulations replay exactly.
//!
//! # Adaptive replication
//! A worker earns trust per project: after [`TRUST_AFTER`] consecutive results confirmed by
//! another account, and as long as it has no offence there, a unit it is the first to take runs
//! solo unless a random spot check, drawn with [`spot_check_probability`], secretly keeps
//! the unit's normal replication; the worker gets the same assignment either way and
//! commits before it can learn which. A solo result is accepted and remembered as
//! unchecked; any mismatch (or proven equivocation) drops the worker's trust to zero and
//! re-opens every unchecked result it had in that project for re-verification by others.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use protocol::certificate::{self, Certificate, UnitFacts, Verified};
use protocol::{Claim, Digest, Failure, Limits, ProjectId, UnitId, WorkerId};

use crate::Error;

mod units;
use units::{Slot, UnitTable};

/// Consecutive confirmed results before a worker is trusted in a project (BOINC's figure).
pub const TRUST_AFTER: u32 = 10;
/// Trusted workers are spot-checked at least this often.
pub const SPOT_CHECK_FLOOR: f64 = 0.05;
/// Errors in a row (mismatches, proven equivocation, failures others did not have) after
/// which a worker is throttled to one unit per [`THROTTLE_PERIOD_MS`] and flagged.
pub const THROTTLE_AFTER: u32 = 3;
/// A throttled worker's one unit per this period (BOINC's punitive mode: a day).
pub const THROTTLE_PERIOD_MS: u64 = 24 * 60 * 60 * 1000;
/// Unchecked solo results remembered per (worker, project) for re-verification; older
/// ones are final.
pub const UNCHECKED_WINDOW: usize = 1024;
/// Default project error bound (see [`spot_check_probability`]).
pub const DEFAULT_ERROR_BOUND: f64 = 0.02;

/// Probability that a unit first taken by a worker with `consecutive` confirmed results is
/// secretly replicated anyway. 1 below the trust threshold. Above it, chosen so that for a
/// host whose results are wrong independently with any fixed rate `r`, the chance of
/// reaching this streak and then producing a wrong result that is not checked,
/// `r (1 - r)^n (1 - p)`, stays below `error_bound`: the worst case over `r` is
/// `m_n = (1/(n+1)) (n/(n+1))^n`, so `p = 1 - error_bound / m_n`, never below
/// [`SPOT_CHECK_FLOOR`]. Re-verification after a caught mismatch lowers the real rate
/// further.
pub fn spot_check_probability(consecutive: u32, threshold: u32, error_bound: f64) -> f64 {
    if consecutive < threshold {
        return 1.0;
    }
    let n = f64::from(consecutive);
    let worst = (1.0 / (n + 1.0)) * (n / (n + 1.0)).powf(n);
    (1.0 - error_bound / worst).clamp(SPOT_CHECK_FLOOR, 1.0)
}

/// How far into the pending queue one work request looks for a unit this worker may take.
const SCAN_LIMIT: usize = 4096;

/// A project as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Project {
    /// Id.
    pub id: ProjectId,
    /// Name.
    pub name: String,
    /// Executions per unit wanted up front.
    pub replication: u32,
    /// Matching claims needed.
    pub quorum: u32,
    /// Most executions per unit.
    pub max_replicas: u32,
    /// Sandbox limits.
    pub limits: Limits,
    /// BLAKE3 of the module.
    pub module: Digest,
    /// BLAKE3 of the reducer, if any.
    pub reducer: Option<Digest>,
    /// Progress counters.
    pub stats: ProjectStats,
    /// Where the reducer's aggregate stands (always `Pending` without a reducer).
    pub aggregate: Aggregate,
    /// Adaptive replication on (trusted workers may run units alone).
    pub adaptive: bool,
    /// Target error bound of adaptive replication (see [`spot_check_probability`]).
    pub error_bound: f64,
    /// The submitter who signed every unit, and the project's terms digest; `None` for a
    /// project submitted before projects were signed (schema 3 and older).
    pub signer: Option<protocol::provenance::Signer>,
}

/// A project's aggregate, as far as the scheduler needs to know (the bytes stay in the
/// store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// Not computed yet.
    Pending,
    /// Stored.
    Ready,
    /// The reducer failed; the reason is stored.
    Failed(String),
}

/// Counters shown by `fallow status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectStats {
    /// Units in the project.
    pub total: u64,
    /// Units verified.
    pub verified: u64,
    /// Units failed.
    pub failed: u64,
    /// Executions handed out (all replicas, disputes included).
    pub executions: u64,
    /// Disputes that raised a unit's replica target (disagreeing claims).
    pub disputes: u64,
    /// Fuel credited to signers of verified units.
    pub credit: u64,
    /// Units run by a trusted worker alone.
    pub solo: u64,
    /// Units of trusted workers secretly replicated as a spot check.
    pub spot_checks: u64,
    /// Votes that disagreed with the verified result, and proven equivocations.
    pub mismatches: u64,
    /// Verified units re-opened because their solo worker was caught lying later.
    pub reopened: u64,
}

impl Project {
    /// Whether every unit is verified or failed.
    pub fn finished(&self) -> bool {
        self.stats.verified + self.stats.failed >= self.stats.total
    }
}

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitStatus {
    /// Still being computed.
    Pending,
    /// Verified by a certificate.
    Verified,
    /// Failed with a reason.
    Failed(String),
}

/// What happened to one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentState {
    /// Leased: running, or holding its result while the quorum forms.
    Active,
    /// Ended with a failure report.
    Failed,
    /// The lease ran out (worker vanished).
    Expired,
    /// Handed back by the worker (graceful shutdown); does not count as an execution.
    Returned,
    /// Its unit was re-opened after it had been verified: done, but no longer counted.
    Superseded,
}

impl AssignmentState {
    /// Stable number for the store.
    pub fn code(self) -> i64 {
        match self {
            AssignmentState::Active => 0,
            AssignmentState::Failed => 1,
            AssignmentState::Expired => 2,
            AssignmentState::Returned => 3,
            AssignmentState::Superseded => 4,
        }
    }

    /// Inverse of [`AssignmentState::code`]; unknown codes read as expired.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => AssignmentState::Active,
            1 => AssignmentState::Failed,
            3 => AssignmentState::Returned,
            4 => AssignmentState::Superseded,
            _ => AssignmentState::Expired,
        }
    }
}

#[derive(Debug, Clone)]
struct Replica {
    worker: WorkerId,
    state: AssignmentState,
    lease_until: u64,
    failure: Option<Failure>,
    account: Arc<str>,
    subnet: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Unit {
    project: ProjectId,
    status: UnitStatus,
    target: u32,
    /// Matching claims from distinct accounts needed (1 for a trusted solo unit).
    required: u32,
    replicas: Vec<Replica>,
    /// Revealed claims received so far, one per worker (dropped once verified).
    votes: BTreeMap<WorkerId, Claim>,
}

impl Unit {
    fn live(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.state == AssignmentState::Active)
            .count() as u32
    }
    /// Executions that count against `max_replicas` (superseded ones do not: re-opening a
    /// unit must not make it fail for lack of replicas).
    fn executions(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| {
                !matches!(
                    r.state,
                    AssignmentState::Returned | AssignmentState::Superseded
                )
            })
            .count() as u32
    }
    fn has(&self, worker: WorkerId) -> bool {
        self.replicas.iter().any(|r| r.worker == worker)
    }
    fn wants_replica(&self) -> bool {
        self.status == UnitStatus::Pending && self.live() < self.target
    }
}

/// One unit as [`Scheduler::unit_views`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitView {
    /// The unit.
    pub id: UnitId,
    /// Its project.
    pub project: ProjectId,
    /// Where it stands.
    pub state: UnitState,
    /// Executions used so far (returned replicas excluded).
    pub executions: u32,
}

/// Where a unit stands, for observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Waiting for a worker.
    Pending,
    /// Leased to at least one worker (running, or waiting for its quorum).
    Running,
    /// Verified by a certificate.
    Verified,
    /// Failed for good.
    Failed,
}

/// A unit leased to a worker by [`Scheduler::assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The unit.
    pub unit: UnitId,
    /// Its project.
    pub project: ProjectId,
    /// When the lease runs out unless renewed.
    pub until: u64,
}

/// A state change the shell must persist (returned by the mutating methods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A replica changed state (the assignment row).
    Replica {
        /// The unit.
        unit: UnitId,
        /// The worker.
        worker: WorkerId,
        /// New state.
        state: AssignmentState,
        /// Why it failed, for `Failed`.
        failure: Option<Failure>,
    },
    /// The unit now wants `target` replicas.
    Target {
        /// The unit.
        unit: UnitId,
        /// New target.
        target: u32,
    },
    /// The unit failed for good.
    UnitFailed {
        /// The unit.
        unit: UnitId,
        /// Why.
        reason: String,
    },
    /// Adaptive replication decided how a fresh unit runs (not a dispute).
    Plan {
        /// The unit.
        unit: UnitId,
        /// Replicas wanted.
        target: u32,
        /// Matching claims needed.
        required: u32,
    },
    /// A valid revealed claim for a pending unit, kept toward its quorum.
    Vote {
        /// The claim.
        claim: Claim,
    },
    /// A worker's trust in a project.
    Trust {
        /// The worker.
        worker: WorkerId,
        /// The project.
        project: ProjectId,
        /// Consecutive confirmed results.
        consecutive: u32,
        /// Offences so far (mismatches, equivocation).
        offences: u32,
    },
    /// A solo result of `worker` that no other account has checked.
    Unchecked {
        /// The worker.
        worker: WorkerId,
        /// The project.
        project: ProjectId,
        /// The unit.
        unit: UnitId,
    },
    /// Forget the unchecked results of `worker` in `project` (re-opened or final).
    UncheckedCleared {
        /// The worker.
        worker: WorkerId,
        /// The project.
        project: ProjectId,
    },
    /// A verified unit goes back to pending: its solo worker was caught lying elsewhere.
    /// Its output and `revoke`'s credit for it are withdrawn; its replicas are superseded.
    Reopen {
        /// The unit.
        unit: UnitId,
        /// The worker whose result is no longer trusted.
        revoke: WorkerId,
        /// Matching claims needed now.
        required: u32,
    },
    /// `worker`'s claims for `unit` no longer count (it changed its answer there).
    Disqualified {
        /// The unit.
        unit: UnitId,
        /// The worker.
        worker: WorkerId,
    },
    /// A worker's standing across projects.
    Standing {
        /// The worker.
        worker: WorkerId,
        /// Errors in a row.
        errors_in_row: u32,
        /// Throttled to one unit per day (and flagged).
        throttled: bool,
    },
}

/// Who a worker is, as far as replica placement cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Volunteer account (never two replicas of a unit to one account).
    pub account: String,
    /// Team ("" for none).
    pub team: String,
    /// Network prefix (/24 for IPv4, /48 for IPv6) unless the worker is on loopback.
    pub subnet: Option<String>,
}

/// A worker's trust in one project (persisted through [`Change::Trust`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Consecutive results confirmed by another account.
    pub consecutive: u32,
    /// Offences so far.
    pub offences: u32,
    /// Solo results no other account has checked, oldest first.
    pub unchecked: VecDeque<UnitId>,
}

/// A worker's standing across projects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Errors in a row.
    pub errors_in_row: u32,
    /// Throttled and flagged.
    pub throttled: bool,
    /// When it was last given a unit (for the throttle).
    pub last_unit_at: u64,
}

/// What [`Scheduler::assign`] did.
#[derive(Debug, Default)]
pub struct Assigned {
    /// New leases.
    pub leases: Vec<Lease>,
    /// Adaptive-replication plans to persist with them.
    pub changes: Vec<Change>,
}

/// The outcome of a certificate or dispute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The unit is verified by these claims (persist, then [`Scheduler::mark_verified`]).
    Verified(Verified),
    /// The claims are kept; the unit needs more.
    Recorded,
    /// The unit was already verified; nothing changed.
    AlreadyVerified,
}

/// A certificate whose claims' signatures all verified: the expensive part of a
/// submission, which needs no scheduler state and so can run before the state is locked.
#[derive(Debug, Clone)]
pub struct SignedCertificate(Certificate);

impl SignedCertificate {
    /// Verifies every claim's signature (at most [`certificate::MAX_CLAIMS`] are looked at:
    /// a larger certificate is refused by the scheduler before anything is kept).
    pub fn check(cert: Certificate) -> Result<Self, Error> {
        if cert.claims.len() <= certificate::MAX_CLAIMS {
            for claim in &cert.claims {
                claim.verify()?;
            }
        }
        Ok(SignedCertificate(cert))
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.0
    }
}

/// What [`Scheduler::submit`] decided, with the changes to persist first.
#[derive(Debug)]
pub struct Submitted {
    /// The verdict.
    pub verdict: Verdict,
    /// Votes, raised targets, offences.
    pub changes: Vec<Change>,
}

/// The scheduler's whole state.
#[derive(Debug, Default)]
pub struct Scheduler {
    projects: BTreeMap<ProjectId, Project>,
    units: UnitTable,
    /// Verified units restored in someone's unchecked window: kept whole at start-up.
    pinned: HashSet<UnitId>,
    queue: VecDeque<UnitId>,
    leases: BinaryHeap<Reverse<(u64, UnitId)>>,
    lease_ms: u64,
    workers: HashMap<WorkerId, (Arc<str>, Option<Arc<str>>)>,
    trust: HashMap<(WorkerId, ProjectId), Trust>,
    standing: HashMap<WorkerId, Standing>,
    rng: u64,
    distinct_subnets: bool,
    /// (unit, worker) pairs whose votes no longer count: the worker was caught changing
    /// its answer for that unit.
    disqualified: HashSet<(UnitId, WorkerId)>,
}

/// The full state of unit `id`, expanding a compact slot (a free function, so callers can
/// borrow the scheduler's other fields alongside).
fn full<'a>(
    units: &'a mut UnitTable,
    projects: &BTreeMap<ProjectId, Project>,
    id: UnitId,
) -> Option<&'a mut Unit> {
    let slot = units.get_mut(id)?;
    let expanded = match slot {
        Slot::Full(_) => None,
        Slot::Fresh(p) | Slot::Verified(p) => {
            let (replication, quorum) = projects
                .get(p)
                .map_or((1, 1), |p| (p.replication, p.quorum.max(1)));
            Some(Unit {
                project: *p,
                status: if matches!(slot, Slot::Fresh(_)) {
                    UnitStatus::Pending
                } else {
                    UnitStatus::Verified
                },
                target: replication,
                required: quorum,
                replicas: Vec::new(),
                votes: BTreeMap::new(),
            })
        }
    };
    if let Some(unit) = expanded {
        *slot = Slot::Full(Box::new(unit));
    }
    match slot {
        Slot::Full(u) => Some(u),
        Slot::Fresh(_) | Slot::Verified(_) => None,
    }
}

impl Scheduler {
    /// An empty scheduler whose leases last `lease_ms`; `seed` seeds the spot checks
    /// (the service seeds it from the OS so workers cannot predict them).
    pub fn new(lease_ms: u64, seed: u64) -> Self {
        Scheduler {
            lease_ms,
            rng: seed,
            distinct_subnets: true,
            ..Default::default()
        }
    }

    /// Whether two replicas of a unit may go to workers in the same /24 or /48 (loopback
    /// workers are always exempt). Default: they may not.
    pub fn set_distinct_subnets(&mut self, on: bool) {
        self.distinct_subnets = on;
    }

    /// Lease length in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Records who a worker is (at registration, and for every worker at start-up).
    pub fn register(&mut self, worker: WorkerId, info: &WorkerInfo) {
        self.workers.insert(
            worker,
            (
                Arc::from(info.account.as_str()),
                info.subnet.as_deref().map(Arc::from),
            ),
        );
    }

    /// The account a worker registered with.
    pub fn account_of(&self, worker: WorkerId) -> Option<&str> {
        self.workers.get(&worker).map(|(a, _)| &**a)
    }

    /// Restores a worker's trust in a project (start-up).
    pub fn restore_trust(&mut self, worker: WorkerId, project: ProjectId, trust: Trust) {
        self.pinned.extend(trust.unchecked.iter().copied());
        self.trust.insert((worker, project), trust);
    }

    /// Restores a worker's standing (start-up).
    pub fn restore_standing(&mut self, worker: WorkerId, standing: Standing) {
        self.standing.insert(worker, standing);
    }

    /// A worker's trust in a project.
    pub fn trust(&self, worker: WorkerId, project: ProjectId) -> Option<&Trust> {
        self.trust.get(&(worker, project))
    }

    /// A worker's standing.
    pub fn standing(&self, worker: WorkerId) -> Standing {
        self.standing.get(&worker).copied().unwrap_or_default()
    }

    /// Workers throttled for repeated errors (flagged on the dashboard).
    pub fn flagged(&self) -> Vec<WorkerId> {
        let mut out: Vec<WorkerId> = self
            .standing
            .iter()
            .filter(|(_, s)| s.throttled)
            .map(|(w, _)| *w)
            .collect();
        out.sort();
        out
    }

    /// Adds a project (new, or loaded from the store). Units come through [`Scheduler::add_unit`].
    pub fn add_project(&mut self, project: Project) {
        self.projects.insert(project.id, project);
    }

    /// Adds a unit; `replicas` are its assignments so far and `votes` its claims (from the
    /// store). Active leases loaded after a restart get a fresh `lease_ms` from `now`, so
    /// live workers have time to send a heartbeat before anything is reassigned. Add its
    /// project first: an untouched or settled unit is then kept in a compact slot.
    #[allow(clippy::too_many_arguments)]
    pub fn add_unit(
        &mut self,
        id: UnitId,
        project: ProjectId,
        status: UnitStatus,
        target: u32,
        required: u32,
        replicas: Vec<(WorkerId, AssignmentState, Option<Failure>)>,
        votes: Vec<Claim>,
        now: u64,
    ) {
        if replicas.is_empty() && votes.is_empty() {
            let defaults = self
                .projects
                .get(&project)
                .map(|p| (p.replication, p.quorum.max(1)));
            match status {
                UnitStatus::Pending if defaults == Some((target, required.max(1))) => {
                    self.units.insert(id, Slot::Fresh(project));
                    self.queue.push_back(id);
                    return;
                }
                UnitStatus::Verified if !self.pinned.contains(&id) => {
                    self.units.insert(id, Slot::Verified(project));
                    return;
                }
                _ => {}
            }
        }
        let until = now + self.lease_ms;
        let replicas = replicas
            .into_iter()
            .map(|(worker, state, failure)| {
                let (account, subnet) = self.identity_of(worker);
                Replica {
                    worker,
                    state,
                    lease_until: until,
                    failure,
                    account,
                    subnet,
                }
            })
            .collect();
        let unit = Unit {
            project,
            status,
            target,
            required: required.max(1),
            replicas,
            votes: votes.into_iter().map(|c| (c.worker, c)).collect(),
        };
        if unit.live() > 0 {
            self.leases.push(Reverse((until, id)));
        }
        if unit.wants_replica() {
            self.queue.push_back(id);
        }
        self.units.insert(id, Slot::Full(Box::new(unit)));
    }

    /// Adds counters of units loaded from the store (start-up, after [`Scheduler::add_unit`]).
    pub fn restore_counts(
        &mut self,
        id: ProjectId,
        total: u64,
        verified: u64,
        failed: u64,
        executions: u64,
    ) {
        if let Some(p) = self.projects.get_mut(&id) {
            p.stats.total += total;
            p.stats.verified += verified;
            p.stats.failed += failed;
            p.stats.executions += executions;
        }
    }

    /// All projects.
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// One project.
    pub fn project(&self, id: ProjectId) -> Option<&Project> {
        self.projects.get(&id)
    }

    /// Records that a project's aggregate (or the reducer's failure) is stored.
    pub fn set_aggregate(&mut self, id: ProjectId, aggregate: Aggregate) {
        if let Some(p) = self.projects.get_mut(&id) {
            p.aggregate = aggregate;
        }
    }

    /// Units currently leased (running or awaiting quorum) in a project.
    pub fn in_progress(&self, id: ProjectId) -> u64 {
        self.units
            .iter()
            .filter(|(_, s)| match s {
                Slot::Full(u) => u.project == id && u.status == UnitStatus::Pending && u.live() > 0,
                Slot::Fresh(_) | Slot::Verified(_) => false,
            })
            .count() as u64
    }

    /// The project a unit belongs to.
    pub fn unit_project(&self, id: UnitId) -> Option<ProjectId> {
        self.units.get(id).map(Slot::project)
    }

    /// Every unit as an observer sees it (the dashboard's snapshot), in no particular order.
    pub fn unit_views(&self) -> impl Iterator<Item = UnitView> + '_ {
        self.units.iter().map(|(id, s)| match s {
            Slot::Fresh(project) => UnitView {
                id,
                project: *project,
                state: UnitState::Pending,
                executions: 0,
            },
            Slot::Verified(project) => UnitView {
                id,
                project: *project,
                state: UnitState::Verified,
                executions: 0,
            },
            Slot::Full(u) => UnitView {
                id,
                project: u.project,
                state: match u.status {
                    UnitStatus::Verified => UnitState::Verified,
                    UnitStatus::Failed(_) => UnitState::Failed,
                    UnitStatus::Pending if u.live() > 0 => UnitState::Running,
                    UnitStatus::Pending => UnitState::Pending,
                },
                executions: u.executions(),
            },
        })
    }

    /// A unit's status.
    pub fn unit_status(&self, id: UnitId) -> Option<&UnitStatus> {
        static PENDING: UnitStatus = UnitStatus::Pending;
        static VERIFIED: UnitStatus = UnitStatus::Verified;
        self.units.get(id).map(|s| match s {
            Slot::Fresh(_) => &PENDING,
            Slot::Verified(_) => &VERIFIED,
            Slot::Full(u) => &u.status,
        })
    }

    /// Keeps a verified unit in a compact slot once nothing can re-open it.
    fn compact_verified(&mut self, id: UnitId) {
        if let Some(slot) = self.units.get_mut(id)
            && let Slot::Full(u) = slot
            && u.status == UnitStatus::Verified
        {
            *slot = Slot::Verified(u.project);
        }
    }

    fn identity_of(&self, worker: WorkerId) -> (Arc<str>, Option<Arc<str>>) {
        match self.workers.get(&worker) {
            Some((a, s)) => (a.clone(), s.clone()),
            // Unknown (e.g. loaded from an old store): its own key is its account.
            None => (Arc::from(worker.to_string().as_str()), None),
        }
    }

    fn next_random(&mut self) -> f64 {
        // splitmix64: tiny, seedable, good enough to pick spot checks.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Leases up to `max` units to `worker`, never two replicas of one unit to the same
    /// worker, account or (unless on loopback) network prefix. Replicas of one unit go out
    /// together so its quorum forms quickly. A throttled worker gets one unit per day.
    pub fn assign(&mut self, worker: WorkerId, max: usize, now: u64) -> Assigned {
        self.assign_from(worker, max, now, &|_| true)
    }

    /// [`Scheduler::assign`], only from projects `accept` agrees to (a worker that runs
    /// only projects signed by keys it trusts); other units stay queued for other workers.
    pub fn assign_from(
        &mut self,
        worker: WorkerId,
        max: usize,
        now: u64,
        accept: &dyn Fn(&Project) -> bool,
    ) -> Assigned {
        let mut out = Assigned::default();
        let standing = self.standing(worker);
        let max = if standing.throttled {
            if now.saturating_sub(standing.last_unit_at) < THROTTLE_PERIOD_MS {
                return out;
            }
            1
        } else {
            max
        };
        let (account, subnet) = self.identity_of(worker);
        let subnet = subnet.filter(|_| self.distinct_subnets);
        let mut kept = VecDeque::new();
        let mut scanned = 0;
        while out.leases.len() < max && scanned < SCAN_LIMIT {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            scanned += 1;
            if matches!(self.units.get(id), None | Some(Slot::Verified(_))) {
                continue; // settled: drop from the queue
            }
            let Some(unit) = full(&mut self.units, &self.projects, id) else {
                continue;
            };
            if !unit.wants_replica() {
                continue; // settled or fully replicated: drop from the queue
            }
            // A replica handed back unrun does not count: its worker (or another of its
            // account or network) may take the unit again, or a small fleet whose workers
            // handed a unit back could never give it its replicas.
            let clash = unit.replicas.iter().any(|r| {
                r.state != AssignmentState::Returned
                    && (r.worker == worker
                        || r.account == account
                        || (subnet.is_some() && r.subnet.is_some() && r.subnet == subnet))
            }) || !self.projects.get(&unit.project).is_some_and(accept);
            if clash {
                kept.push_back(id);
                continue;
            }
            let fresh = unit.replicas.is_empty() && unit.votes.is_empty();
            let project = unit.project;
            let plan = if fresh {
                self.plan(worker, project)
            } else {
                None
            };
            let until = now + self.lease_ms;
            let Some(unit) = full(&mut self.units, &self.projects, id) else {
                continue;
            };
            if let Some((target, required)) = plan {
                unit.target = target;
                unit.required = required;
                out.changes.push(Change::Plan {
                    unit: id,
                    target,
                    required,
                });
            }
            match unit.replicas.iter_mut().find(|r| r.worker == worker) {
                // Its own handed-back replica comes back to life (one row per unit and
                // worker, in memory as in the store).
                Some(r) => {
                    r.state = AssignmentState::Active;
                    r.lease_until = until;
                    r.failure = None;
                    r.account = account.clone();
                    r.subnet = subnet.clone();
                }
                None => unit.replicas.push(Replica {
                    worker,
                    state: AssignmentState::Active,
                    lease_until: until,
                    failure: None,
                    account: account.clone(),
                    subnet: subnet.clone(),
                }),
            }
            if unit.wants_replica() {
                // Its next replica must go to another worker: keep it at the front.
                kept.push_back(id);
            }
            self.leases.push(Reverse((until, id)));
            if let Some(p) = self.projects.get_mut(&project) {
                p.stats.executions += 1;
            }
            out.leases.push(Lease {
                unit: id,
                project,
                until,
            });
        }
        // Units this worker could not take keep their place at the front.
        while let Some(id) = kept.pop_back() {
            self.queue.push_front(id);
        }
        if !out.leases.is_empty() {
            self.standing.entry(worker).or_default().last_unit_at = now;
        }
        out
    }

    /// For a fresh unit whose first replica goes to `worker`: run it solo, or secretly
    /// spot-check it with the project's normal replication. `None` keeps the defaults.
    fn plan(&mut self, worker: WorkerId, project: ProjectId) -> Option<(u32, u32)> {
        let p = self.projects.get(&project)?;
        if !p.adaptive || p.quorum < 2 {
            return None;
        }
        let (replication, quorum, bound) = (p.replication, p.quorum, p.error_bound);
        let trust = self.trust.get(&(worker, project))?;
        // A worker with a proven offence in this project never runs alone in it again.
        if trust.offences > 0 {
            return None;
        }
        let threshold = TRUST_AFTER;
        let check = spot_check_probability(trust.consecutive, threshold, bound);
        if check >= 1.0 {
            return None;
        }
        let solo = self.next_random() >= check;
        let p = self.projects.get_mut(&project)?;
        if solo {
            p.stats.solo += 1;
            Some((1, 1))
        } else {
            p.stats.spot_checks += 1;
            Some((replication, quorum))
        }
    }

    /// Renews the leases `worker` still holds and returns the held units that are settled
    /// for it (verified, failed, or no longer leased to it), which it should drop.
    pub fn heartbeat(&mut self, worker: WorkerId, held: &[UnitId], now: u64) -> Vec<UnitId> {
        let until = now + self.lease_ms;
        let mut settled = Vec::new();
        for &id in held {
            // A compact unit is untouched or settled: held by no one.
            let active = match self.units.get_mut(id) {
                Some(Slot::Full(u)) => Some(u),
                _ => None,
            }
            .and_then(|u| {
                if u.status != UnitStatus::Pending {
                    return None;
                }
                u.replicas
                    .iter_mut()
                    .find(|r| r.worker == worker && r.state == AssignmentState::Active)
            });
            match active {
                Some(r) => {
                    r.lease_until = until;
                    self.leases.push(Reverse((until, id)));
                }
                None => settled.push(id),
            }
        }
        settled
    }

    /// Expires every lease that ran out before `now`; the units go back to the queue.
    pub fn expire(&mut self, now: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(Reverse((until, id))) = self.leases.peek().copied() {
            if until > now {
                break;
            }
            self.leases.pop();
            let Some(unit) = full(&mut self.units, &self.projects, id) else {
                continue;
            };
            if unit.status != UnitStatus::Pending {
                continue;
            }
            for r in unit.replicas.iter_mut() {
                // A replica whose claim is already in is done: its lease does not matter.
                if r.state == AssignmentState::Active
                    && r.lease_until <= now
                    && !unit.votes.contains_key(&r.worker)
                {
                    r.state = AssignmentState::Expired;
                    changes.push(Change::Replica {
                        unit: id,
                        worker: r.worker,
                        state: AssignmentState::Expired,
                        failure: None,
                    });
                }
            }
            self.after_loss(id, &mut changes);
        }
        changes
    }

    /// A worker hands a unit back without running it to the end.
    pub fn give_back(&mut self, worker: WorkerId, id: UnitId) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(Slot::Full(unit)) = self.units.get(id) else {
            return changes; // untouched or settled: nobody holds it
        };
        if unit.votes.contains_key(&worker) {
            return changes; // its claim is in: nothing to hand back
        }
        if let Some(r) = self.active_replica(worker, id) {
            r.state = AssignmentState::Returned;
            changes.push(Change::Replica {
                unit: id,
                worker,
                state: AssignmentState::Returned,
                failure: None,
            });
            if let Some(p) = self
                .units
                .get(id)
                .and_then(|u| self.projects.get_mut(&u.project()))
            {
                p.stats.executions = p.stats.executions.saturating_sub(1);
            }
            self.after_loss(id, &mut changes);
        }
        changes
    }

    /// A worker reports that its execution of `id` failed. The unit fails once `quorum`
    /// distinct workers report the same kind of failure, or when it has used
    /// `max_replicas` executions; otherwise another replica is issued.
    pub fn report_failure(
        &mut self,
        worker: WorkerId,
        id: UnitId,
        failure: Failure,
    ) -> Result<Vec<Change>, Error> {
        let Some(r) = self.active_replica(worker, id) else {
            return Err(Error::NotLeased { unit: id });
        };
        r.state = AssignmentState::Failed;
        r.failure = Some(failure.clone());
        let mut changes = vec![Change::Replica {
            unit: id,
            worker,
            state: AssignmentState::Failed,
            failure: Some(failure.clone()),
        }];
        let (quorum, same) = {
            let Some(unit) = full(&mut self.units, &self.projects, id) else {
                return Ok(changes);
            };
            let quorum = self.projects.get(&unit.project).map_or(1, |p| p.quorum);
            let same = unit
                .replicas
                .iter()
                .filter(|r| r.failure.as_ref().is_some_and(|f| f.kind == failure.kind))
                .count() as u32;
            (quorum, same)
        };
        if same >= quorum {
            let reason = if quorum > 1 {
                format!("{failure} (on {same} workers)")
            } else {
                failure.to_string()
            };
            self.fail_unit(id, reason, &mut changes);
        } else {
            self.after_loss(id, &mut changes);
        }
        Ok(changes)
    }

    /// Takes a certificate (complete or partial) or a dispute (`output` = `None`): every
    /// claim is checked (signature over its commitment, unit, project, a lease on the unit)
    /// and kept as a vote; the unit is verified once `required` distinct accounts agree on
    /// a digest and fuel and `output` hashes to it, through [`certificate::check`].
    /// Disagreeing votes raise the replica target like a dispute. Does not mark the unit
    /// verified: the shell persists the result first, then calls
    /// [`Scheduler::mark_verified`].
    pub fn submit(
        &mut self,
        cert: &Certificate,
        output: Option<&[u8]>,
    ) -> Result<Submitted, Error> {
        self.submit_with(cert, output, true)
    }

    /// [`Scheduler::submit`] for a certificate whose signatures were checked beforehand by
    /// [`SignedCertificate::check`] (the coordinator does that outside its state lock).
    pub fn submit_checked(
        &mut self,
        checked: &SignedCertificate,
        output: Option<&[u8]>,
    ) -> Result<Submitted, Error> {
        self.submit_with(&checked.0, output, false)
    }

    fn submit_with(
        &mut self,
        cert: &Certificate,
        output: Option<&[u8]>,
        verify_signatures: bool,
    ) -> Result<Submitted, Error> {
        let id = cert.unit;
        if let Some(Slot::Verified(project)) = self.units.get(id) {
            // A late certificate for a settled unit changes nothing, but it must still be a
            // real one: at most MAX_CLAIMS claims, all for this unit, correctly signed
            // (settled units no longer keep their replica holders).
            let project = *project;
            if cert.claims.len() > certificate::MAX_CLAIMS {
                return Err(Error::Protocol(protocol::Error::Certificate {
                    unit: id,
                    reason: format!(
                        "{} claims (at most {})",
                        cert.claims.len(),
                        certificate::MAX_CLAIMS
                    ),
                }));
            }
            for claim in &cert.claims {
                if claim.unit != id || claim.project != project {
                    return Err(Error::Protocol(protocol::Error::Certificate {
                        unit: id,
                        reason: format!(
                            "a claim by {} is for project {} unit {}",
                            claim.worker, claim.project, claim.unit
                        ),
                    }));
                }
                if verify_signatures {
                    claim.verify()?;
                }
            }
            return Ok(Submitted {
                verdict: Verdict::AlreadyVerified,
                changes: Vec::new(),
            });
        }
        let unit = full(&mut self.units, &self.projects, id).ok_or(Error::UnknownUnit(id))?;
        // A late certificate for a verified unit changes nothing, but its claims are still
        // checked: "already verified" is an answer only honest replica holders get.
        let already = unit.status == UnitStatus::Verified;
        match &unit.status {
            UnitStatus::Verified => {}
            UnitStatus::Failed(reason) => {
                return Err(Error::AlreadyFailed {
                    unit: id,
                    reason: reason.clone(),
                });
            }
            UnitStatus::Pending => {}
        }
        let project = self
            .projects
            .get(&unit.project)
            .ok_or(Error::UnknownUnit(id))?;
        let reject =
            |reason: String| Error::Protocol(protocol::Error::Certificate { unit: id, reason });
        if cert.claims.len() > certificate::MAX_CLAIMS {
            return Err(reject(format!(
                "{} claims (at most {})",
                cert.claims.len(),
                certificate::MAX_CLAIMS
            )));
        }
        let mut fresh = Vec::new();
        let mut equivocators = Vec::new();
        for claim in &cert.claims {
            if claim.unit != id || claim.project != project.id {
                return Err(reject(format!(
                    "a claim by {} is for project {} unit {}",
                    claim.worker, claim.project, claim.unit
                )));
            }
            if !unit.has(claim.worker) {
                return Err(reject(format!(
                    "{} never held a lease on this unit",
                    claim.worker
                )));
            }
            if verify_signatures {
                claim.verify()?;
            }
            if already {
                continue;
            }
            if self.disqualified.contains(&(id, claim.worker)) {
                continue; // caught changing its answer here: its claims no longer count
            }
            match unit.votes.get(&claim.worker) {
                Some(v) if v == claim => {}
                // Two different valid claims by one worker: it changed its answer.
                Some(_) => equivocators.push(claim.worker),
                None => {
                    if !fresh.iter().any(|c: &Claim| c.worker == claim.worker) {
                        fresh.push(claim.clone());
                    }
                }
            }
        }
        if already {
            return Ok(Submitted {
                verdict: Verdict::AlreadyVerified,
                changes: Vec::new(),
            });
        }
        let mut changes = Vec::new();
        let project_id = project.id;
        for worker in equivocators {
            self.disqualify(id, worker, project_id, &mut changes);
        }
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return Err(Error::UnknownUnit(id));
        };
        for claim in fresh {
            unit.votes.insert(claim.worker, claim.clone());
            changes.push(Change::Vote { claim });
        }
        let verdict = self.evaluate(id, output, &mut changes)?;
        Ok(Submitted { verdict, changes })
    }

    fn evaluate(
        &mut self,
        id: UnitId,
        output: Option<&[u8]>,
        changes: &mut Vec<Change>,
    ) -> Result<Verdict, Error> {
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return Err(Error::UnknownUnit(id));
        };
        if unit.status != UnitStatus::Pending {
            return Ok(Verdict::Recorded);
        }
        let Some(project) = self.projects.get(&unit.project) else {
            return Err(Error::UnknownUnit(id));
        };
        let accounts: HashMap<WorkerId, &Arc<str>> = unit
            .replicas
            .iter()
            .map(|r| (r.worker, &r.account))
            .collect();
        // (digest, fuel) -> the agreeing claims and the distinct accounts behind them.
        type Group<'a> = (Vec<&'a Claim>, HashSet<&'a Arc<str>>);
        let mut groups: BTreeMap<(Digest, u64), Group<'_>> = BTreeMap::new();
        for c in unit.votes.values() {
            let g = groups.entry((c.digest, c.fuel)).or_default();
            g.0.push(c);
            if let Some(a) = accounts.get(&c.worker) {
                g.1.insert(*a);
            }
        }
        if let Some(out) = output {
            let digest = Digest::of(out);
            for ((d, _), (claims, accts)) in &groups {
                if *d != digest || (accts.len() as u32) < unit.required {
                    continue;
                }
                let assigned: HashSet<WorkerId> = unit.replicas.iter().map(|r| r.worker).collect();
                let facts = UnitFacts {
                    project: project.id,
                    unit: id,
                    quorum: unit.required,
                    max_output_bytes: project.limits.max_output_bytes,
                    assigned: &assigned,
                };
                let cert = Certificate {
                    unit: id,
                    claims: claims.iter().map(|c| (*c).clone()).collect(),
                };
                // Every vote's signature was checked when it was accepted.
                return Ok(Verdict::Verified(certificate::check_verified_claims(
                    &cert, &facts, out,
                )?));
            }
        }
        if groups.len() < 2 {
            return Ok(Verdict::Recorded);
        }
        // Disagreement: the largest agreeing group must still be able to reach the
        // project's quorum (a solo unit loses its solo status).
        let quorum = project.quorum.max(unit.required);
        let best = groups.values().map(|g| g.1.len() as u32).max().unwrap_or(0);
        let voters = unit.votes.len() as u32;
        let needed = voters + quorum.saturating_sub(best);
        let (max_replicas, project_id, groups_n) = (project.max_replicas, project.id, groups.len());
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return Err(Error::UnknownUnit(id));
        };
        if quorum > unit.required {
            unit.required = quorum;
            changes.push(Change::Plan {
                unit: id,
                target: unit.target,
                required: quorum,
            });
        }
        // Every worker in a disagreement may report it: only what raises the target counts
        // as a dispute.
        if needed > unit.target {
            unit.target = needed.min(max_replicas);
            changes.push(Change::Target {
                unit: id,
                target: unit.target,
            });
            if let Some(p) = self.projects.get_mut(&project_id) {
                p.stats.disputes += 1;
            }
        }
        if needed > max_replicas {
            let reason = format!(
                "no quorum: {voters} workers returned {groups_n} different results (max_replicas = {max_replicas})"
            );
            self.fail_unit(id, reason, changes);
        } else if full(&mut self.units, &self.projects, id).is_some_and(|u| u.wants_replica()) {
            self.queue.push_back(id);
        }
        Ok(Verdict::Recorded)
    }

    /// Records a verified unit (after the store has it durably) and settles the trust of
    /// everyone who voted on it: agreeing voters confirmed by another account gain trust; a
    /// solo result is remembered as unchecked; disagreeing voters and replicas that failed
    /// where others succeeded lose it. Returns the changes to persist.
    pub fn mark_verified(&mut self, id: UnitId, verified: &Verified) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return changes;
        };
        if unit.status != UnitStatus::Pending {
            return changes;
        }
        unit.status = UnitStatus::Verified;
        let project = unit.project;
        let votes = std::mem::take(&mut unit.votes);
        let failed: Vec<WorkerId> = unit
            .replicas
            .iter()
            .filter(|r| r.state == AssignmentState::Failed)
            .map(|r| r.worker)
            .collect();
        let checked = verified.signers.len() > 1;
        let mut aged = Vec::new();
        if let Some(p) = self.projects.get_mut(&project) {
            p.stats.verified += 1;
            p.stats.credit += verified.fuel * verified.signers.len() as u64;
        }
        for (worker, claim) in votes {
            if claim.digest == verified.digest && claim.fuel == verified.fuel {
                if checked {
                    self.confirmed(worker, project, &mut changes);
                } else {
                    let t = self.trust.entry((worker, project)).or_default();
                    t.unchecked.push_back(id);
                    if t.unchecked.len() > UNCHECKED_WINDOW {
                        // Old enough to be final: nothing re-opens it any more.
                        aged.extend(t.unchecked.pop_front());
                    }
                    changes.push(Change::Unchecked {
                        worker,
                        project,
                        unit: id,
                    });
                }
            } else {
                self.offence(worker, project, &mut changes);
            }
        }
        for worker in failed {
            self.error(worker, project, &mut changes);
        }
        if checked {
            self.compact_verified(id);
        }
        for unit in aged {
            self.compact_verified(unit);
        }
        changes
    }

    /// Signed proof that `worker` changed its answer for `unit` (seen on a board). Counted
    /// once per (unit, worker), however many boards and holders report it.
    pub fn misbehaviour(&mut self, worker: WorkerId, unit: UnitId) -> Result<Vec<Change>, Error> {
        let project = self
            .units
            .get(unit)
            .map(Slot::project)
            .ok_or(Error::UnknownUnit(unit))?;
        let mut changes = Vec::new();
        self.disqualify(unit, worker, project, &mut changes);
        Ok(changes)
    }

    /// Restores a disqualified (unit, worker) pair (start-up).
    pub fn restore_disqualified(&mut self, unit: UnitId, worker: WorkerId) {
        self.disqualified.insert((unit, worker));
    }

    /// `worker` changed its answer for `unit`: an offence (once), and none of its claims
    /// for the unit count any more, including one already held.
    fn disqualify(
        &mut self,
        unit: UnitId,
        worker: WorkerId,
        project: ProjectId,
        changes: &mut Vec<Change>,
    ) {
        if !self.disqualified.insert((unit, worker)) {
            return;
        }
        let mut lost = false;
        if let Some(u) = full(&mut self.units, &self.projects, unit)
            && u.status == UnitStatus::Pending
        {
            u.votes.remove(&worker);
            // Its replica no longer counts toward the target: the unit needs another.
            if let Some(r) = u
                .replicas
                .iter_mut()
                .find(|r| r.worker == worker && r.state == AssignmentState::Active)
            {
                r.state = AssignmentState::Expired;
                changes.push(Change::Replica {
                    unit,
                    worker,
                    state: AssignmentState::Expired,
                    failure: None,
                });
                lost = true;
            }
        }
        changes.push(Change::Disqualified { unit, worker });
        self.offence(worker, project, changes);
        if lost {
            self.after_loss(unit, changes);
        }
    }

    fn confirmed(&mut self, worker: WorkerId, project: ProjectId, changes: &mut Vec<Change>) {
        let t = self.trust.entry((worker, project)).or_default();
        t.consecutive = t.consecutive.saturating_add(1);
        changes.push(Change::Trust {
            worker,
            project,
            consecutive: t.consecutive,
            offences: t.offences,
        });
        let s = self.standing.entry(worker).or_default();
        if s.errors_in_row > 0 || s.throttled {
            s.errors_in_row = 0;
            s.throttled = false;
            changes.push(Change::Standing {
                worker,
                errors_in_row: 0,
                throttled: false,
            });
        }
    }

    /// A failure where others succeeded: trust resets, no re-verification (nothing was
    /// claimed).
    fn error(&mut self, worker: WorkerId, project: ProjectId, changes: &mut Vec<Change>) {
        let t = self.trust.entry((worker, project)).or_default();
        t.consecutive = 0;
        changes.push(Change::Trust {
            worker,
            project,
            consecutive: 0,
            offences: t.offences,
        });
        self.strike(worker, changes);
    }

    /// A wrong or changed answer: trust drops to zero and every unchecked solo result of
    /// the worker in the project is re-opened.
    fn offence(&mut self, worker: WorkerId, project: ProjectId, changes: &mut Vec<Change>) {
        let t = self.trust.entry((worker, project)).or_default();
        t.consecutive = 0;
        t.offences = t.offences.saturating_add(1);
        let unchecked = std::mem::take(&mut t.unchecked);
        changes.push(Change::Trust {
            worker,
            project,
            consecutive: 0,
            offences: t.offences,
        });
        if let Some(p) = self.projects.get_mut(&project) {
            p.stats.mismatches += 1;
        }
        if !unchecked.is_empty() {
            changes.push(Change::UncheckedCleared { worker, project });
        }
        for unit in unchecked {
            self.reopen(unit, worker, changes);
        }
        self.strike(worker, changes);
    }

    fn strike(&mut self, worker: WorkerId, changes: &mut Vec<Change>) {
        let s = self.standing.entry(worker).or_default();
        s.errors_in_row = s.errors_in_row.saturating_add(1);
        s.throttled = s.errors_in_row >= THROTTLE_AFTER;
        changes.push(Change::Standing {
            worker,
            errors_in_row: s.errors_in_row,
            throttled: s.throttled,
        });
    }

    fn reopen(&mut self, id: UnitId, revoke: WorkerId, changes: &mut Vec<Change>) {
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return;
        };
        if unit.status != UnitStatus::Verified {
            return;
        }
        let Some(project) = self.projects.get_mut(&unit.project) else {
            return;
        };
        let required = project.quorum.max(1);
        unit.status = UnitStatus::Pending;
        unit.required = required;
        for r in unit.replicas.iter_mut() {
            if matches!(r.state, AssignmentState::Active) {
                r.state = AssignmentState::Superseded;
            }
        }
        // Superseded replicas stay in the list so the liar never gets the unit again.
        unit.target = required
            + unit
                .replicas
                .iter()
                .filter(|r| r.state == AssignmentState::Active)
                .count() as u32;
        unit.votes.clear();
        project.stats.verified = project.stats.verified.saturating_sub(1);
        project.stats.reopened += 1;
        project.aggregate = Aggregate::Pending;
        changes.push(Change::Reopen {
            unit: id,
            revoke,
            required,
        });
        self.queue.push_back(id);
    }

    fn active_replica(&mut self, worker: WorkerId, id: UnitId) -> Option<&mut Replica> {
        let unit = full(&mut self.units, &self.projects, id)?;
        if unit.status != UnitStatus::Pending {
            return None;
        }
        unit.replicas
            .iter_mut()
            .find(|r| r.worker == worker && r.state == AssignmentState::Active)
    }

    /// After a replica stopped counting: fail the unit if it used all its executions,
    /// otherwise queue it for another replica.
    fn after_loss(&mut self, id: UnitId, changes: &mut Vec<Change>) {
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return;
        };
        if unit.status != UnitStatus::Pending {
            return;
        }
        let max = self
            .projects
            .get(&unit.project)
            .map_or(1, |p| p.max_replicas);
        if unit.executions() >= max && unit.live() == 0 {
            let mut reasons: Vec<String> = unit
                .replicas
                .iter()
                .filter_map(|r| match r.state {
                    AssignmentState::Failed => r.failure.as_ref().map(|f| f.to_string()),
                    AssignmentState::Expired => Some("lease expired".into()),
                    _ => None,
                })
                .collect();
            reasons.dedup();
            let reason = format!(
                "gave up after {} executions (max_replicas): {}",
                unit.executions(),
                reasons.join("; ")
            );
            self.fail_unit(id, reason, changes);
        } else if unit.wants_replica() {
            self.queue.push_back(id);
        }
    }

    fn fail_unit(&mut self, id: UnitId, reason: String, changes: &mut Vec<Change>) {
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return;
        };
        if unit.status != UnitStatus::Pending {
            return;
        }
        unit.status = UnitStatus::Failed(reason.clone());
        unit.votes.clear();
        if let Some(p) = self.projects.get_mut(&unit.project) {
            p.stats.failed += 1;
        }
        changes.push(Change::UnitFailed { unit: id, reason });
    }
}

#[cfg(test)]
mod tests;
