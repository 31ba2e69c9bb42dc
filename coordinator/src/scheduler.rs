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
//!
//! # Placement
//! Colluding accounts that hold every replica reaching a unit's quorum get their agreed
//! wrong answer accepted, so who gets a unit's next replica must not follow *when* they
//! ask. Handing it to whoever asked next (first in, first out) let two accounts asking
//! back-to-back hold both replicas of every unit the first of them opened. Instead:
//!
//! - Fresh units (no replica yet) wait in a FIFO queue: who takes a first replica does not
//!   matter. A unit that has had a replica and wants another (its first replica is out, a
//!   dispute or a lost lease wants one more, it was re-opened) waits in the **open pool**
//!   (no longer at the back of the queue, behind every fresh unit).
//! - Each lease is drawn with the scheduler's OS-seeded generator: uniformly one of
//!   `max(P, s)` slots, `P` being the pool's size and the **spread** `s` the number of
//!   *other* workers that asked for work in the last lease period (at least 1). A slot
//!   below `P` is that open unit, any other the next fresh unit; with no fresh unit left,
//!   one of the `P`. A unit the worker may not take (the clash rule: never two replicas of
//!   a unit to one worker, account or network; a reservation, below) is drawn again, up to
//!   `DRAW_ATTEMPTS` times. So a lease costs O(1) whatever the pool's size.
//! - So a unit's next replica goes to one of about the next `s` requests, each as likely
//!   as the others, and about `s / 2` units are open at a time. The `k` requests that an
//!   adversary sends right after it took a unit's first replica get its second with
//!   probability about `k / s`: with `s` the number of other workers, that is its share of
//!   the fleet, the chance it has anyway. The price: a unit's replicas start about one
//!   request of each other worker apart (TRUST.md measures time to verify).
//!
//! The bound: an adversary whose accounts are a fraction `f` of the workers asking for
//! work, and that ask no faster than the others, holds all `q` replicas of a unit with
//! probability about `f^q`; timing its requests (all of them right after its first replica)
//! at most doubles each later factor, `≤ f·(2f)^(q−1)`. For `q = 2` that is `f²` (`2f²`
//! timed), plus the disputes it wins (`≈ 2f²(1−f)`, doubled if timed): `≈ 3f²` of the
//! units, `6f²` at worst (TRUST.md measures it, before and after the trust rule below
//! starts). A colluding pair among `W` workers asking back-to-back holds both replicas of
//! about `3/W²` of the units (`2/W²` by share alone; first in, first out gave it every unit
//! the first of them opened). What it does not bound: accounts that take more work than the
//! others (they do not compute, so they can ask faster) raise `f` to their share of the
//! leases, up to the per-worker rate limits; and when no fresh unit is left (the end of a
//! project), a unit that lost its live replicas (lease expired, handed back, failed) or was
//! re-opened goes to one of the next `P` requests for the `P` units still open, so `k`
//! colluders asking back-to-back get its next replica with probability about `k / P`.
//!
//! # Trust shapes placement
//! A worker is **established** in a project once it has [`ESTABLISHED_AFTER`] consecutive
//! results there confirmed by another account (its `Trust`; an offence or a failure where
//! others succeeded resets it). While the rule applies, a unit's next replica is
//! **reserved** for an established worker whenever a worker that is not established could
//! complete a quorum with no established worker in it: the votes for one result with no
//! established voter, plus the running replicas of workers that are not established (they
//! may agree with anything), plus one more, reach the unit's `required`. With quorum 2 that
//! is every unit whose first replica went to a new worker, and every dispute a new worker
//! could settle with another. So brand-new accounts, however many, cannot decide a unit
//! among themselves: to lie they need established accounts, each of which costs
//! [`ESTABLISHED_AFTER`] honest results confirmed by others and loses the status on its
//! first offence.
//!
//! The rule applies in a project while at least half of the workers that asked for work
//! lately (this lease period or the last) are established there: only then can they take
//! a replica of every unit the others open (below half, they cannot, and new workers would
//! sit idle). So a new deployment, a new project, or a fleet of mostly new volunteers works
//! as before, and the rule starts once half the fleet has its record; an adversary can
//! switch it off only by bringing as many new accounts as the fleet has established ones,
//! where the share bound above (`f ≥ 1/2`) already says little. A reservation lapses if no
//! established worker takes the replica within one lease period (their accounts or
//! networks clash with the unit's, they do not accept the project, or too few ask); then
//! anyone may, as before.
//!
//! Why at placement rather than after the votes (let a quorum of new workers agree, then
//! ask one more replica of an established worker): workers certify with exactly `quorum`
//! agreeing claims (`protocol::quorum`), so a third agreeing claim need never reach the
//! coordinator and such a unit could wait for ever; and every such unit would cost an
//! execution more. Reserving costs no execution, only a wait for an established asker, and
//! nothing is persisted: a reservation is derived from the votes, the replicas and the
//! trust table whenever a request looks at the unit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use protocol::certificate::{self, Certificate, UnitFacts, Verified};
use protocol::control::{Action, Done, State};
use protocol::rng::SplitMix64;
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

/// How far into the fresh queue, and into the open pool, one work request looks for units
/// this worker may take.
const SCAN_LIMIT: usize = 4096;

/// Random draws from the open pool one lease may make before it settles for a fresh unit
/// (or, with none left, looks through the pool): draws that hit units the worker may not
/// take are drawn again.
const DRAW_ATTEMPTS: usize = 16;

/// Unfinished leases a worker may hold before it has a record (BOINC's limit on jobs in
/// progress): see [`Scheduler::unfinished`]. Each of its results confirmed by another
/// account raises the limit by one, up to [`UNFINISHED_MAX`]; an error halves the record,
/// an offence clears it. So how many units an account can take at once, and how often it
/// can hand units back to draw again, follows its record, not how fast it asks: the random
/// draw of the open pool (`# Placement`) then bounds colluders by their share of the
/// fleet's unfinished work. An honest worker holds its running units plus a buffer of 2
/// (`--prefetch`): a one- or two-core worker is within the limit from the start, a bigger
/// one reaches its cores as its first results are confirmed.
pub const UNFINISHED_BASE: usize = 4;
/// Most unfinished leases any worker may hold.
pub const UNFINISHED_MAX: usize = 4096;

/// Consecutive results confirmed by another account after which a worker is established in
/// a project: while the trust rule applies there, a replica that could complete a quorum of
/// workers none of them established is reserved for an established one (see the module
/// doc, `# Trust shapes placement`). The same record [`TRUST_AFTER`] asks of a worker
/// before it runs units alone.
pub const ESTABLISHED_AFTER: u32 = TRUST_AFTER;

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
    /// The project's data files, sorted by name (sent with every assignment).
    pub data: std::sync::Arc<[protocol::data::DataFile]>,
    /// The submitter's control: active, paused (no new leases) or cancelled (final). See
    /// [`Scheduler::pause`] and the other control methods.
    pub control: State,
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

/// How a project stands (moved to `protocol::status`, beside the status view that
/// reports it).
pub use protocol::status::Outcome;

/// Counters shown by `fallow status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectStats {
    /// Units in the project.
    pub total: u64,
    /// Units verified.
    pub verified: u64,
    /// Units failed.
    pub failed: u64,
    /// Units ended by a cancel before they settled.
    pub cancelled: u64,
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
    /// Whether every unit is settled: verified, failed or cancelled.
    pub fn finished(&self) -> bool {
        self.stats.verified + self.stats.failed + self.stats.cancelled >= self.stats.total
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
    /// Ended unsettled by its project's cancel.
    Cancelled,
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
    /// Ended (failed or expired) before its unit was sent back by `fallow retry`: an
    /// execution that happened, but no longer counted against `max_replicas`, and its
    /// worker may take the unit again.
    Retried,
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
            AssignmentState::Retried => 5,
        }
    }

    /// Inverse of [`AssignmentState::code`]; unknown codes read as expired.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => AssignmentState::Active,
            1 => AssignmentState::Failed,
            3 => AssignmentState::Returned,
            4 => AssignmentState::Superseded,
            5 => AssignmentState::Retried,
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
    /// Listed in the scheduler's open pool.
    pooled: bool,
    /// Until when its next replica is reserved for an established worker: set when a
    /// request first finds it reserved, cleared when an established worker takes a replica;
    /// once passed, anyone may take its replicas until then. In memory only.
    hold_until: Option<u64>,
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
                    AssignmentState::Returned
                        | AssignmentState::Superseded
                        | AssignmentState::Retried
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
    /// Cancelled with its project.
    Cancelled,
}

/// A unit that wants another replica which no online worker may take: every online
/// account already has a replica of it that counts (run, running, failed or expired; a
/// replica handed back does not count). With the fleet as it is it waits for ever, so
/// [`Scheduler::waiting`] lists it for status, the dashboard and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The unit.
    pub unit: UnitId,
    /// Its project.
    pub project: ProjectId,
    /// Online accounts, all of which have run it.
    pub accounts: usize,
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
    /// A verified unit goes back to pending because its stored output no longer matches
    /// its digest (changed on disk): the output is withdrawn, its replicas superseded (so
    /// other workers verify it again; a worker that ran it before would commit twice on
    /// the same boards), and the signers keep their credit.
    Reverify {
        /// The unit.
        unit: UnitId,
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
    /// The submitter paused, resumed or cancelled the project.
    Control {
        /// The project.
        project: ProjectId,
        /// Its state now.
        state: State,
    },
    /// Every unit of the project still pending ends as cancelled (its votes dropped).
    CancelUnits {
        /// The project.
        project: ProjectId,
    },
    /// A failed unit goes back to pending (`fallow retry`): its reason is cleared, its
    /// failed and expired replicas become [`AssignmentState::Retried`] without their
    /// failures.
    Retried {
        /// The unit.
        unit: UnitId,
        /// Replicas wanted.
        target: u32,
        /// Matching claims needed.
        required: u32,
    },
    /// The project's aggregate (or reducer failure) is dropped: it is computed again.
    AggregateReset {
        /// The project.
        project: ProjectId,
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
    /// The worker was at its limit of unfinished leases ([`UNFINISHED_BASE`] plus its
    /// record), given here: it got no unit of a voting project for that reason.
    pub capped: Option<usize>,
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
    /// Fresh units, first in first out.
    queue: VecDeque<UnitId>,
    /// Units that have had a replica and want another, in no order (see `# Placement`);
    /// entries of units that no longer want one are dropped when a request meets them.
    open: Vec<UnitId>,
    /// Who asked for work lately: the spread of the open-pool draw, and whether the trust
    /// rule applies.
    askers: Askers,
    leases: BinaryHeap<Reverse<(u64, UnitId)>>,
    lease_ms: u64,
    workers: HashMap<WorkerId, (Arc<str>, Option<Arc<str>>)>,
    trust: HashMap<(WorkerId, ProjectId), Trust>,
    standing: HashMap<WorkerId, Standing>,
    /// Picks spot checks and pool slots.
    rng: SplitMix64,
    distinct_subnets: bool,
    /// (unit, worker) pairs whose votes no longer count: the worker was caught changing
    /// its answer for that unit.
    disqualified: HashSet<(UnitId, WorkerId)>,
    /// Units each worker was leased lately, pruned to the unfinished ones on its next
    /// request ([`Scheduler::unfinished`]).
    leased: HashMap<WorkerId, Vec<UnitId>>,
    /// Results of each worker confirmed by another account (all projects): raises its
    /// limit of unfinished leases ([`UNFINISHED_BASE`]). Restored from trust at start-up.
    record: HashMap<WorkerId, u32>,
    /// The limit of unfinished leases is off (benchmarks that lease without answering).
    unlimited: bool,
    /// Per project, whether the units verified since start-up all share one output.
    same_output: HashMap<ProjectId, SameOutput>,
}

/// Verified units of one project seen by this scheduler and whether their outputs all
/// share the first one's digest: the determinism pitfall (a generator seeded from the
/// frozen clock) gives every unit the same answer, which verification alone cannot see.
#[derive(Debug, Clone, Copy)]
struct SameOutput {
    /// The digest of the first unit verified.
    first: Digest,
    /// Units verified with that digest.
    count: u64,
    /// A unit verified with another digest: nothing to warn about.
    differs: bool,
}

/// Verified units that must all share one output (and be distinct units of a project of at
/// least as many) before [`Scheduler::warnings`] says so.
pub const SAME_OUTPUT_WARNING_AFTER: u64 = 5;

/// Distinct workers that asked for work in the current lease period and how many did in
/// the one before (counts that never need a scan), in all and per project among those
/// established there.
#[derive(Debug, Default)]
struct Askers {
    since: u64,
    all: Recent,
    established: HashMap<ProjectId, Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    current: HashSet<WorkerId>,
    previous: usize,
}

impl Recent {
    fn roll(&mut self, recent: bool) {
        self.previous = if recent { self.current.len() } else { 0 };
        self.current.clear();
    }

    fn count(&self) -> usize {
        self.current.len().max(self.previous)
    }
}

impl Askers {
    /// `worker` asked at `now`, established in `projects`.
    fn saw(
        &mut self,
        worker: WorkerId,
        now: u64,
        period: u64,
        projects: impl Iterator<Item = ProjectId>,
    ) {
        let period = period.max(1);
        if now >= self.since.saturating_add(period) {
            let recent = now < self.since.saturating_add(period.saturating_mul(2));
            self.all.roll(recent);
            self.established.retain(|_, r| {
                r.roll(recent);
                r.previous > 0
            });
            self.since = now;
        }
        self.all.current.insert(worker);
        for p in projects {
            self.established
                .entry(p)
                .or_default()
                .current
                .insert(worker);
        }
    }

    /// Workers that asked lately.
    fn count(&self) -> usize {
        self.all.count()
    }

    /// Whether the trust rule applies in `project`: at least half the workers that asked
    /// lately are established there, so they can take the replicas it reserves.
    fn rule_active(&self, project: ProjectId) -> bool {
        let established = self.established.get(&project).map_or(0, Recent::count);
        established > 0 && 2 * established >= self.count()
    }
}

/// The worker a request is for, as placement sees it.
struct Asker<'a> {
    worker: WorkerId,
    account: &'a Arc<str>,
    /// Its network, when replicas must come from different networks.
    subnet: Option<&'a Arc<str>>,
    accept: &'a dyn Fn(&Project) -> bool,
}

/// Whether a worker may take an open unit.
enum Open {
    Yes,
    No,
    /// The unit wants no replica any more.
    Gone,
}

/// Where one request's walk through the fresh queue stands.
#[derive(Debug, Default)]
struct FreshScan {
    /// Queue entries looked at.
    looked: usize,
    /// No fresh unit left for this request.
    exhausted: bool,
    /// Units of projects the worker does not accept, to put back in order.
    kept: Vec<UnitId>,
}

fn established(
    trust: &HashMap<(WorkerId, ProjectId), Trust>,
    worker: WorkerId,
    project: ProjectId,
) -> bool {
    trust
        .get(&(worker, project))
        .is_some_and(|t| t.consecutive >= ESTABLISHED_AFTER)
}

/// Whether one more replica from a worker that is not established could complete a quorum
/// of `unit` in which no worker is established: the votes of some result with no
/// established voter, plus every running replica of a worker that is not established
/// (it may agree with anything), plus that one, reach `required`.
fn needs_established(unit: &Unit, trust: &HashMap<(WorkerId, ProjectId), Trust>) -> bool {
    let is_established = |w: WorkerId| established(trust, w, unit.project);
    let running = unit
        .replicas
        .iter()
        .filter(|r| {
            r.state == AssignmentState::Active
                && !unit.votes.contains_key(&r.worker)
                && !is_established(r.worker)
        })
        .count() as u32;
    let mut best = 0;
    if !unit.votes.is_empty() {
        // Per result: voters, and whether one of them is established.
        let mut groups: BTreeMap<(Digest, u64), (u32, bool)> = BTreeMap::new();
        for c in unit.votes.values() {
            let g = groups.entry((c.digest, c.fuel)).or_default();
            g.0 += 1;
            g.1 |= is_established(c.worker);
        }
        best = groups
            .values()
            .filter(|g| !g.1)
            .map(|g| g.0)
            .max()
            .unwrap_or(0);
    }
    best + running + 1 >= unit.required
}

/// Whether `unit` may not go to a worker of `account` (and `subnet`, when networks must
/// differ): a replica of one of them is already there. A replica handed back unrun does
/// not count: its worker (or another of its account or network) may take the unit again,
/// or a small fleet whose workers handed a unit back could never give it its replicas.
fn clash(unit: &Unit, worker: WorkerId, account: &Arc<str>, subnet: Option<&Arc<str>>) -> bool {
    unit.replicas.iter().any(|r| {
        counts_for_clash(r.state)
            && (r.worker == worker
                || r.account == *account
                || (subnet.is_some() && r.subnet.as_ref() == subnet))
    })
}

/// Whether a replica in `state` keeps its worker, account and network from another replica
/// of the unit: all do but one handed back unrun, and one from before a `fallow retry`
/// (the retry clears the unit's history, so a small fleet can run it again).
fn counts_for_clash(state: AssignmentState) -> bool {
    !matches!(state, AssignmentState::Returned | AssignmentState::Retried)
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
                pooled: false,
                hold_until: None,
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
            rng: SplitMix64::new(seed),
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
        let record = self.record.entry(worker).or_default();
        *record = record.saturating_add(trust.consecutive);
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
        // A paused project's units wait outside the queue and the pool until `resume`.
        let leasable = self
            .projects
            .get(&project)
            .is_none_or(|p| p.control == State::Active);
        if replicas.is_empty() && votes.is_empty() {
            let defaults = self
                .projects
                .get(&project)
                .map(|p| (p.replication, p.quorum.max(1)));
            match status {
                UnitStatus::Pending if defaults == Some((target, required.max(1))) => {
                    self.units.insert(id, Slot::Fresh(project));
                    if leasable {
                        self.queue.push_back(id);
                    }
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
        let mut unit = Unit {
            project,
            status,
            target,
            required: required.max(1),
            replicas,
            votes: votes.into_iter().map(|c| (c.worker, c)).collect(),
            pooled: false,
            hold_until: None,
        };
        if unit.live() > 0 {
            self.leases.push(Reverse((until, id)));
        }
        if unit.wants_replica() && leasable {
            if unit.replicas.is_empty() && unit.votes.is_empty() {
                self.queue.push_back(id);
            } else {
                unit.pooled = true;
                self.open.push(id);
            }
        }
        self.units.insert(id, Slot::Full(Box::new(unit)));
    }

    /// Adds counters of units loaded from the store (start-up, after [`Scheduler::add_unit`]).
    pub fn restore_counts(&mut self, id: ProjectId, counts: crate::store::LoadedCounts) {
        if let Some(p) = self.projects.get_mut(&id) {
            p.stats.total += counts.total;
            p.stats.verified += counts.verified;
            p.stats.failed += counts.failed;
            p.stats.cancelled += counts.cancelled;
            p.stats.executions += counts.executions;
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

    /// Units that want a replica none of the `online` accounts may take (see [`Waiting`]),
    /// by unit id; at most [`SCAN_LIMIT`] open units are looked at. Networks are not
    /// considered: a unit that waits only for a worker on another network is not listed.
    pub fn waiting(&self, online: &HashSet<&str>) -> Vec<Waiting> {
        if online.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<Waiting> = self
            .open
            .iter()
            .take(SCAN_LIMIT)
            .filter_map(|&id| match self.units.get(id) {
                // A unit with fewer replicas than there are online accounts cannot have
                // had one from each: the common case, decided without a scan.
                Some(Slot::Full(u))
                    if u.wants_replica()
                        && u.replicas.len() >= online.len()
                        && online.iter().all(|account| {
                            u.replicas
                                .iter()
                                .any(|r| counts_for_clash(r.state) && &*r.account == *account)
                        }) =>
                {
                    Some(Waiting {
                        unit: id,
                        project: u.project,
                        accounts: online.len(),
                    })
                }
                _ => None,
            })
            .collect();
        out.sort_by_key(|w| w.unit);
        out.dedup();
        out
    }

    /// What may be wrong with a project itself, in words: today, that every unit verified
    /// since start-up (at least [`SAME_OUTPUT_WARNING_AFTER`]) gave the same output.
    pub fn warnings(&self, project: ProjectId) -> Vec<String> {
        let Some(t) = self.same_output.get(&project) else {
            return Vec::new();
        };
        if t.differs || t.count < SAME_OUTPUT_WARNING_AFTER {
            return Vec::new();
        }
        vec![format!(
            "all {} units verified so far have the same output (digest {}): if units should \
             differ, check how the module seeds its random numbers: the clock is frozen, so \
             a seed from the time is the same in every unit (seed from getentropy() or \
             getrandom instead; docs/guides.md)",
            t.count, t.first
        )]
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
                    UnitStatus::Cancelled => UnitState::Cancelled,
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
        self.rng.unit()
    }

    /// Uniformly one of `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_random() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Lists a unit that wants another replica in the open pool (once).
    fn pool(&mut self, id: UnitId) {
        if let Some(Slot::Full(u)) = self.units.get_mut(id)
            && !u.pooled
        {
            u.pooled = true;
            self.open.push(id);
        }
    }

    /// Leases up to `max` units to `worker`, never two replicas of one unit to the same
    /// worker, account or (unless on loopback) network prefix. Each unit is drawn at random
    /// between the open units it may take and the next fresh one (see the module doc,
    /// `# Placement`), so when it asks does not decide which units it shares with whom. A
    /// throttled worker gets one unit per day. Leases come sorted by unit id.
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
        // Units of paused and cancelled projects are never leased.
        let accept = &|p: &Project| p.control == State::Active && accept(p);
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
        // Units of projects whose replicas vote together (quorum 2 or more) count against
        // the worker's limit of unfinished leases; at the limit it may still take units of
        // quorum-1 projects, where no placement decides anything.
        let mut room = if self.unlimited {
            usize::MAX
        } else {
            let limit = UNFINISHED_BASE
                .saturating_add(self.record.get(&worker).copied().unwrap_or(0) as usize)
                .min(UNFINISHED_MAX);
            let room = limit.saturating_sub(self.unfinished(worker, now));
            if room == 0 {
                out.capped = Some(limit);
            }
            room
        };
        let single = |p: &Project| p.quorum < 2 && accept(p);
        // A worker at its limit still counts as asking: it is part of the fleet the open
        // pool's draw spreads replicas over.
        let trust = &self.trust;
        let established_in = self
            .projects
            .values()
            .filter(|p| !p.finished() && established(trust, worker, p.id) && accept(p))
            .map(|p| p.id);
        self.askers.saw(worker, now, self.lease_ms, established_in);
        if room == 0 && !self.projects.values().any(|p| !p.finished() && single(p)) {
            return out;
        }
        let spread = self.askers.count().saturating_sub(1).max(1);
        let (account, subnet) = self.identity_of(worker);
        let subnet = subnet.filter(|_| self.distinct_subnets);
        let mut fresh = FreshScan::default();
        while out.leases.len() < max {
            let accept_now: &dyn Fn(&Project) -> bool = if room == 0 { &single } else { accept };
            let who = Asker {
                worker,
                account: &account,
                subnet: subnet.as_ref(),
                accept: accept_now,
            };
            let id = match self.draw(&who, spread, fresh.exhausted, now) {
                Some(id) => id,
                None if fresh.exhausted => break,
                None => match self.next_fresh(accept_now, &mut fresh) {
                    Some(id) => id,
                    None => continue, // none left: the next draw is from the pool only
                },
            };
            let leased = out.leases.len();
            self.lease(id, worker, &account, &subnet, now, &mut out);
            let voting = out.leases[leased..]
                .iter()
                .filter(|l| self.projects.get(&l.project).is_some_and(|p| p.quorum >= 2))
                .count();
            room = room.saturating_sub(voting);
        }
        // Fresh units this worker may not take keep their place at the front.
        while let Some(id) = fresh.kept.pop() {
            self.queue.push_front(id);
        }
        out.leases.sort_by_key(|l| l.unit);
        if !out.leases.is_empty() {
            self.standing.entry(worker).or_default().last_unit_at = now;
            if !self.unlimited {
                self.leased
                    .entry(worker)
                    .or_default()
                    .extend(out.leases.iter().map(|l| l.unit));
            }
        }
        out
    }

    /// How many of `worker`'s leases of units of projects with quorum 2 or more are
    /// unfinished at `now`: its replica is running and
    /// its vote not in, or it handed the unit back less than a lease ago (so handing units
    /// back to draw again costs the same as holding them). Prunes the worker's list to
    /// those, so a request costs O(its limit), and forgets a worker with none.
    fn unfinished(&mut self, worker: WorkerId, now: u64) -> usize {
        let Some(list) = self.leased.get_mut(&worker) else {
            return 0;
        };
        let (units, projects) = (&self.units, &self.projects);
        list.sort_unstable();
        list.dedup();
        list.retain(|&id| {
            let Some(Slot::Full(unit)) = units.get(id) else {
                return false; // settled and compacted
            };
            unit.status == UnitStatus::Pending
                && projects.get(&unit.project).is_some_and(|p| p.quorum >= 2)
                && !unit.votes.contains_key(&worker)
                && unit.replicas.iter().any(|r| {
                    r.worker == worker
                        && match r.state {
                            AssignmentState::Active => true,
                            AssignmentState::Returned => r.lease_until > now,
                            _ => false,
                        }
                })
        });
        let n = list.len();
        if n == 0 {
            self.leased.remove(&worker);
        }
        n
    }

    /// Turns the limit of unfinished leases per worker ([`UNFINISHED_BASE`]) off: for
    /// load generators that lease many units per simulated worker and answer later.
    pub fn set_unlimited(&mut self, on: bool) {
        self.unlimited = on;
    }

    /// One draw for a lease (module doc, `# Placement`): uniformly one of `max(pool, spread)`
    /// slots, a slot past the pool meaning "a fresh unit" (`None`); with no fresh unit left,
    /// one of the pool's units. A slot holding a unit `who` may not take is drawn again, up to
    /// [`DRAW_ATTEMPTS`] times; then, with fresh units left, a fresh one, else a look through
    /// the first [`SCAN_LIMIT`] pool entries for any unit it may take. O(1) per lease
    /// unless most of the pool is closed to `who`.
    fn draw(&mut self, who: &Asker<'_>, spread: usize, no_fresh: bool, now: u64) -> Option<UnitId> {
        for _ in 0..DRAW_ATTEMPTS {
            let len = self.open.len();
            let slots = if no_fresh { len } else { len.max(spread) };
            if slots == 0 {
                return None;
            }
            let i = self.below(slots);
            if i >= len {
                return None;
            }
            match self.open_for(i, who, now) {
                Open::Yes => return Some(self.open[i]),
                Open::No => {}
                Open::Gone => {
                    self.open.swap_remove(i);
                }
            }
        }
        if !no_fresh {
            return None;
        }
        let mut candidates = Vec::new();
        let mut i = 0;
        while i < self.open.len() && i < SCAN_LIMIT {
            match self.open_for(i, who, now) {
                Open::Yes => candidates.push(self.open[i]),
                Open::No => {}
                Open::Gone => {
                    self.open.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        if candidates.is_empty() {
            return None;
        }
        let pick = self.below(candidates.len());
        Some(candidates[pick])
    }

    /// Whether `who` may take the unit at `open[i]`; [`Open::Gone`] if it wants no replica
    /// any more (its pool entry is to be dropped).
    fn open_for(&mut self, i: usize, who: &Asker<'_>, now: u64) -> Open {
        let Some(Slot::Full(unit)) = self.units.get_mut(self.open[i]) else {
            return Open::Gone; // settled and compacted
        };
        if !unit.wants_replica() {
            unit.pooled = false;
            return Open::Gone;
        }
        let Some(project) = self.projects.get(&unit.project) else {
            return Open::No;
        };
        if project.control != State::Active {
            // Paused or cancelled: out of the pool; `resume` pools it again.
            unit.pooled = false;
            return Open::Gone;
        }
        if clash(unit, who.worker, who.account, who.subnet) || !(who.accept)(project) {
            return Open::No;
        }
        if self.askers.rule_active(project.id)
            && !established(&self.trust, who.worker, project.id)
            && needs_established(unit, &self.trust)
            && now < *unit.hold_until.get_or_insert(now + self.lease_ms)
        {
            return Open::No; // reserved for an established worker
        }
        Open::Yes
    }

    /// The next fresh unit from the queue whose project `accept`s, if any within the scan
    /// limit; units of other projects are set aside in `scan.kept`.
    fn next_fresh(
        &mut self,
        accept: &dyn Fn(&Project) -> bool,
        scan: &mut FreshScan,
    ) -> Option<UnitId> {
        while !scan.exhausted && scan.looked < SCAN_LIMIT {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            scan.looked += 1;
            let project = match self.units.get(id) {
                None | Some(Slot::Verified(_)) => continue, // settled: drop from the queue
                Some(slot) => slot.project(),
            };
            if self
                .projects
                .get(&project)
                .is_some_and(|p| p.control != State::Active)
            {
                continue; // paused or cancelled: dropped; `resume` queues it again
            }
            if !self.projects.get(&project).is_some_and(accept) {
                scan.kept.push(id);
                continue;
            }
            let Some(unit) = full(&mut self.units, &self.projects, id) else {
                continue;
            };
            if !unit.wants_replica() {
                continue; // settled: drop from the queue
            }
            if !unit.replicas.is_empty() || !unit.votes.is_empty() {
                self.pool(id); // not fresh after all: drawn like every open unit
                continue;
            }
            return Some(id);
        }
        scan.exhausted = true;
        None
    }

    /// Leases unit `id` (which it may take) to `worker`.
    fn lease(
        &mut self,
        id: UnitId,
        worker: WorkerId,
        account: &Arc<str>,
        subnet: &Option<Arc<str>>,
        now: u64,
        out: &mut Assigned,
    ) {
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return;
        };
        let fresh = unit.replicas.is_empty() && unit.votes.is_empty();
        let project = unit.project;
        let plan = if fresh {
            self.plan(worker, project)
        } else {
            None
        };
        let until = now + self.lease_ms;
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return;
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
        if established(&self.trust, worker, project) {
            unit.hold_until = None; // a reservation served: the next one waits anew
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
            self.pool(id); // its next replica goes to a later request, drawn at random
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

    /// Expires every lease that ran out before `now`; the units go back to the open pool.
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
            UnitStatus::Cancelled => return Err(Error::UnitCancelled { unit: id }),
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
            // Fuel is the credit unit and matching replicas must state the same, so two
            // colluders could otherwise agree on any fuel for a correct output: a unit
            // never burns more than `[limits].fuel`, checkpointed segments included.
            if claim.fuel > project.limits.fuel {
                return Err(reject(format!(
                    "the claim by {} states {} fuel, more than project {}'s limit of {} a unit",
                    claim.worker, claim.fuel, project.id, project.limits.fuel
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
            self.pool(id);
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
        let tally = self.same_output.entry(project).or_insert(SameOutput {
            first: verified.digest,
            count: 0,
            differs: false,
        });
        if verified.digest == tally.first {
            tally.count += 1;
        } else {
            tally.differs = true;
        }
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
            let granted = verified.fuel.saturating_mul(verified.signers.len() as u64);
            p.stats.credit = p.stats.credit.saturating_add(granted);
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
        let record = self.record.entry(worker).or_default();
        *record = record.saturating_add(1);
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
        if let Some(record) = self.record.get_mut(&worker) {
            *record /= 2;
        }
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
        self.record.remove(&worker);
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
        self.pool(id);
    }

    /// Sends a verified unit whose stored output failed its digest check back for
    /// verification: pending again, needing the project's quorum from workers other than
    /// `ran` (everyone who held it before, from the store: a compact verified unit no
    /// longer lists its replicas). Its project's aggregate is computed again once it is
    /// verified. Nothing happens to a unit that is not verified (already sent back).
    pub fn reverify(&mut self, id: UnitId, ran: &[WorkerId], now: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut known: Vec<(WorkerId, Arc<str>, Option<Arc<str>>)> = ran
            .iter()
            .map(|w| {
                let (account, subnet) = self.identity_of(*w);
                (*w, account, subnet)
            })
            .collect();
        let Some(unit) = full(&mut self.units, &self.projects, id) else {
            return changes;
        };
        if unit.status != UnitStatus::Verified {
            return changes;
        }
        let Some(project) = self.projects.get_mut(&unit.project) else {
            return changes;
        };
        let required = project.quorum.max(1);
        unit.status = UnitStatus::Pending;
        unit.required = required;
        for r in unit.replicas.iter_mut() {
            if matches!(r.state, AssignmentState::Active) {
                r.state = AssignmentState::Superseded;
            }
        }
        known.retain(|(w, _, _)| !unit.has(*w));
        for (worker, account, subnet) in known {
            unit.replicas.push(Replica {
                worker,
                state: AssignmentState::Superseded,
                lease_until: now,
                failure: None,
                account,
                subnet,
            });
        }
        unit.target = required;
        unit.votes.clear();
        project.stats.verified = project.stats.verified.saturating_sub(1);
        project.aggregate = Aggregate::Pending;
        changes.push(Change::Reverify { unit: id, required });
        self.pool(id);
        changes
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
    /// otherwise put it in the open pool for another replica.
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
            self.pool(id);
        }
    }

    /// The project `id` for a control `action`, refused when it is unknown or cancelled
    /// (cancel is final; asking to cancel again is refused too, so a script learns it).
    fn controllable(&mut self, id: ProjectId, action: Action) -> Result<&mut Project, Error> {
        let p = self
            .projects
            .get_mut(&id)
            .ok_or(Error::UnknownProject(id))?;
        if p.control == State::Cancelled {
            return Err(Error::ControlRefused {
                action: action.as_str(),
                project: id,
                reason: "it was cancelled, which is final; its verified results stay \
                         downloadable with `fallow results`"
                    .into(),
            });
        }
        Ok(p)
    }

    /// The units of `project`, sorted by id (an O(units) walk: control calls are rare).
    fn units_of(&self, project: ProjectId) -> Vec<UnitId> {
        let mut ids: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, s)| s.project() == project)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// What a control call on project `id` leaves, `units` being how many it changed: the
    /// project's state and its units pending and leased now.
    pub fn done(&self, id: ProjectId, units: u64) -> Done {
        let in_progress = self.in_progress(id);
        let (state, pending) = self.projects.get(&id).map_or((State::Active, 0), |p| {
            let s = p.stats;
            let settled = s.verified + s.failed + s.cancelled + in_progress;
            (p.control, s.total.saturating_sub(settled))
        });
        Done {
            state,
            units,
            pending,
            in_progress,
        }
    }

    /// Pauses a project: none of its units is leased until [`Scheduler::resume`]; leases
    /// already out run on and their results verify as usual. Pausing a paused project
    /// changes nothing. Refused for a cancelled project.
    pub fn pause(&mut self, id: ProjectId) -> Result<(Done, Vec<Change>), Error> {
        let p = self.controllable(id, Action::Pause)?;
        if p.control == State::Paused {
            return Ok((self.done(id, 0), Vec::new()));
        }
        p.control = State::Paused;
        // Out of the fresh queue now (the open pool drops its units when a draw meets them),
        // so a big paused project costs other projects' requests nothing.
        let units = &self.units;
        self.queue
            .retain(|u| units.get(*u).is_some_and(|s| s.project() != id));
        Ok((
            self.done(id, 0),
            vec![Change::Control {
                project: id,
                state: State::Paused,
            }],
        ))
    }

    /// Resumes a paused project: its units that want a replica are queued (fresh ones) or
    /// pooled again. Resuming an active project changes nothing; refused when cancelled.
    pub fn resume(&mut self, id: ProjectId) -> Result<(Done, Vec<Change>), Error> {
        let p = self.controllable(id, Action::Resume)?;
        if p.control == State::Active {
            return Ok((self.done(id, 0), Vec::new()));
        }
        p.control = State::Active;
        for unit in self.units_of(id) {
            self.requeue(unit);
        }
        Ok((
            self.done(id, 0),
            vec![Change::Control {
                project: id,
                state: State::Active,
            }],
        ))
    }

    /// Puts a unit that wants a replica where requests find it: the fresh queue when it
    /// has never had one, the open pool otherwise.
    fn requeue(&mut self, id: UnitId) {
        match self.units.get(id) {
            Some(Slot::Fresh(_)) => self.queue.push_back(id),
            Some(Slot::Full(u)) if u.wants_replica() => {
                if u.replicas.is_empty() && u.votes.is_empty() {
                    self.queue.push_back(id);
                } else {
                    self.pool(id);
                }
            }
            _ => {}
        }
    }

    /// Cancels a project, for good: every unit not yet settled ends as
    /// [`UnitStatus::Cancelled`] (workers holding one learn it from their next heartbeat's
    /// settled list and drop it; a late result for it is refused), no unit is leased any
    /// more, verified results stay, and the reducer does not run by itself.
    pub fn cancel(&mut self, id: ProjectId) -> Result<(Done, Vec<Change>), Error> {
        self.controllable(id, Action::Cancel)?;
        let in_progress = self.in_progress(id);
        let mut cancelled = 0u64;
        for unit in self.units_of(id) {
            if matches!(self.units.get(unit), Some(Slot::Verified(_))) {
                continue; // settled: left compact
            }
            if let Some(u) = full(&mut self.units, &self.projects, unit)
                && u.status == UnitStatus::Pending
            {
                u.status = UnitStatus::Cancelled;
                u.votes.clear();
                u.hold_until = None;
                cancelled += 1;
            }
        }
        let units = &self.units;
        self.queue
            .retain(|u| units.get(*u).is_some_and(|s| s.project() != id));
        if let Some(p) = self.projects.get_mut(&id) {
            p.control = State::Cancelled;
            p.stats.cancelled += cancelled;
        }
        let mut done = self.done(id, cancelled);
        done.in_progress = in_progress;
        Ok((
            done,
            vec![
                Change::Control {
                    project: id,
                    state: State::Cancelled,
                },
                Change::CancelUnits { project: id },
            ],
        ))
    }

    /// Sends every failed unit of a project back to pending with its failure history
    /// cleared: the reason goes, its failed and expired replicas no longer count against
    /// `max_replicas` nor keep their workers from running it again
    /// ([`AssignmentState::Retried`]), and it wants the project's replication anew. The
    /// project is unfinished again; an aggregate it had is dropped and computed again once
    /// everything settles. Refused when nothing failed, or the project was cancelled.
    pub fn retry(&mut self, id: ProjectId) -> Result<(Done, Vec<Change>), Error> {
        let p = self.controllable(id, Action::Retry)?;
        if p.stats.failed == 0 {
            return Err(Error::ControlRefused {
                action: Action::Retry.as_str(),
                project: id,
                reason: "none of its units failed: there is nothing to retry".into(),
            });
        }
        let (target, required) = (p.replication, p.quorum.max(1));
        let mut changes = Vec::new();
        if p.aggregate != Aggregate::Pending {
            p.aggregate = Aggregate::Pending;
            changes.push(Change::AggregateReset { project: id });
        }
        let mut retried = 0u64;
        for unit in self.units_of(id) {
            let Some(Slot::Full(u)) = self.units.get_mut(unit) else {
                continue; // compact slots are never failed
            };
            if !matches!(u.status, UnitStatus::Failed(_)) {
                continue;
            }
            u.status = UnitStatus::Pending;
            u.votes.clear();
            u.hold_until = None;
            u.target = target;
            u.required = required;
            for r in u.replicas.iter_mut() {
                if matches!(r.state, AssignmentState::Failed | AssignmentState::Expired) {
                    r.state = AssignmentState::Retried;
                    r.failure = None;
                }
            }
            retried += 1;
            changes.push(Change::Retried {
                unit,
                target,
                required,
            });
            if self
                .projects
                .get(&id)
                .is_some_and(|p| p.control == State::Active)
            {
                self.requeue(unit);
            }
        }
        if let Some(p) = self.projects.get_mut(&id) {
            p.stats.failed = p.stats.failed.saturating_sub(retried);
        }
        Ok((self.done(id, retried), changes))
    }

    /// Checks that units may be added to a project (it exists and was not cancelled).
    pub fn check_extend(&mut self, id: ProjectId) -> Result<(), Error> {
        self.controllable(id, Action::Resume)
            .map_err(|e| match e {
                Error::ControlRefused {
                    project, reason, ..
                } => Error::ControlRefused {
                    action: "extend",
                    project,
                    reason,
                },
                e => e,
            })
            .map(|_| ())
    }

    /// Adds units the store has just stored to a project ([`Scheduler::check_extend`]
    /// first): pending with the project's replication, queued unless it is paused. The
    /// project is unfinished again; its aggregate (dropped by the store in the same
    /// transaction) is computed again once every unit settles.
    pub fn extend(&mut self, id: ProjectId, units: &[UnitId], now: u64) -> Done {
        let Some(p) = self.projects.get_mut(&id) else {
            return Done::default();
        };
        p.stats.total += units.len() as u64;
        p.aggregate = Aggregate::Pending;
        let (replication, quorum) = (p.replication, p.quorum);
        for &unit in units {
            self.add_unit(
                unit,
                id,
                UnitStatus::Pending,
                replication,
                quorum,
                Vec::new(),
                Vec::new(),
                now,
            );
        }
        self.done(id, units.len() as u64)
    }

    /// Prepares running a project's reducer again: refused when it has none or units are
    /// still to settle (it then runs by itself once they are), or nothing verified. Drops
    /// the aggregate; returns the reducer and the project's limits to run it with.
    pub fn rereduce(&mut self, id: ProjectId) -> Result<(Digest, Limits, Vec<Change>), Error> {
        let p = self
            .projects
            .get_mut(&id)
            .ok_or(Error::UnknownProject(id))?;
        let refuse = |reason: String| Error::ControlRefused {
            action: Action::Reduce.as_str(),
            project: id,
            reason,
        };
        let Some(reducer) = p.reducer else {
            return Err(refuse(
                "it has no reducer (a [reduce] section in its manifest)".into(),
            ));
        };
        if !p.finished() {
            let s = p.stats;
            let open = s.total.saturating_sub(s.verified + s.failed + s.cancelled);
            return Err(refuse(format!(
                "{open} of its {} units are not settled yet; the reducer runs by itself once \
                 they are (`fallow status {id} --wait`)",
                s.total
            )));
        }
        if p.stats.verified == 0 {
            return Err(refuse(
                "none of its units verified: nothing to reduce".into(),
            ));
        }
        let mut changes = Vec::new();
        if p.aggregate != Aggregate::Pending {
            p.aggregate = Aggregate::Pending;
            changes.push(Change::AggregateReset { project: id });
        }
        Ok((reducer, p.limits, changes))
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
