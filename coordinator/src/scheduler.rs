//! The scheduler: which unit goes to which worker, leases, extra replicas after disputes,
//! and when a unit fails. A sans-IO state machine: it takes events with `now` (unix
//! milliseconds) and returns what changed; the async shell in `service` persists every
//! change through the `Store` and answers the RPCs. It does no I/O and reads no clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};

use protocol::certificate::{self, Certificate, UnitFacts, Verified};
use protocol::{Claim, Digest, Failure, Limits, ProjectId, UnitId, WorkerId};

use crate::Error;

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
}

impl AssignmentState {
    /// Stable number for the store.
    pub fn code(self) -> i64 {
        match self {
            AssignmentState::Active => 0,
            AssignmentState::Failed => 1,
            AssignmentState::Expired => 2,
            AssignmentState::Returned => 3,
        }
    }

    /// Inverse of [`AssignmentState::code`]; unknown codes read as expired.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => AssignmentState::Active,
            1 => AssignmentState::Failed,
            3 => AssignmentState::Returned,
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
}

#[derive(Debug, Clone)]
struct Unit {
    project: ProjectId,
    status: UnitStatus,
    target: u32,
    replicas: Vec<Replica>,
}

impl Unit {
    fn live(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.state == AssignmentState::Active)
            .count() as u32
    }
    fn executions(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.state != AssignmentState::Returned)
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
}

/// The scheduler's whole state.
#[derive(Debug, Default)]
pub struct Scheduler {
    projects: BTreeMap<ProjectId, Project>,
    units: HashMap<UnitId, Unit>,
    queue: VecDeque<UnitId>,
    leases: BinaryHeap<Reverse<(u64, UnitId)>>,
    lease_ms: u64,
}

impl Scheduler {
    /// An empty scheduler whose leases last `lease_ms`.
    pub fn new(lease_ms: u64) -> Self {
        Scheduler {
            lease_ms,
            ..Default::default()
        }
    }

    /// Lease length in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Adds a project (new, or loaded from the store). Units come through [`Scheduler::add_unit`].
    pub fn add_project(&mut self, project: Project) {
        self.projects.insert(project.id, project);
    }

    /// Adds a unit; `replicas` are its assignments so far (from the store). Active leases
    /// loaded after a restart get a fresh `lease_ms` from `now`, so live workers have time to
    /// send a heartbeat before anything is reassigned.
    pub fn add_unit(
        &mut self,
        id: UnitId,
        project: ProjectId,
        status: UnitStatus,
        target: u32,
        replicas: Vec<(WorkerId, AssignmentState, Option<Failure>)>,
        now: u64,
    ) {
        let until = now + self.lease_ms;
        let unit = Unit {
            project,
            status,
            target,
            replicas: replicas
                .into_iter()
                .map(|(worker, state, failure)| Replica {
                    worker,
                    state,
                    lease_until: until,
                    failure,
                })
                .collect(),
        };
        if unit.live() > 0 {
            self.leases.push(Reverse((until, id)));
        }
        if unit.wants_replica() {
            self.queue.push_back(id);
        }
        self.units.insert(id, unit);
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
            .values()
            .filter(|u| u.project == id && u.status == UnitStatus::Pending && u.live() > 0)
            .count() as u64
    }

    /// The project a unit belongs to.
    pub fn unit_project(&self, id: UnitId) -> Option<ProjectId> {
        self.units.get(&id).map(|u| u.project)
    }

    /// Every unit as an observer sees it (the dashboard's snapshot), in no particular order.
    pub fn unit_views(&self) -> impl Iterator<Item = UnitView> + '_ {
        self.units.iter().map(|(&id, u)| UnitView {
            id,
            project: u.project,
            state: match u.status {
                UnitStatus::Verified => UnitState::Verified,
                UnitStatus::Failed(_) => UnitState::Failed,
                UnitStatus::Pending if u.live() > 0 => UnitState::Running,
                UnitStatus::Pending => UnitState::Pending,
            },
            executions: u.executions(),
        })
    }

    /// Leases up to `max` units to `worker`, never two replicas of one unit to the same
    /// worker. Replicas of one unit go out together so its quorum forms quickly.
    pub fn assign(&mut self, worker: WorkerId, max: usize, now: u64) -> Vec<Lease> {
        let mut leases = Vec::new();
        let mut kept = VecDeque::new();
        let mut scanned = 0;
        while leases.len() < max && scanned < SCAN_LIMIT {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            scanned += 1;
            let Some(unit) = self.units.get_mut(&id) else {
                continue;
            };
            if !unit.wants_replica() {
                continue; // settled or fully replicated: drop from the queue
            }
            if unit.has(worker) {
                kept.push_back(id);
                continue;
            }
            let until = now + self.lease_ms;
            unit.replicas.push(Replica {
                worker,
                state: AssignmentState::Active,
                lease_until: until,
                failure: None,
            });
            if unit.wants_replica() {
                // Its next replica must go to another worker: keep it at the front.
                kept.push_back(id);
            }
            self.leases.push(Reverse((until, id)));
            if let Some(p) = self.projects.get_mut(&unit.project) {
                p.stats.executions += 1;
            }
            leases.push(Lease {
                unit: id,
                project: unit.project,
                until,
            });
        }
        // Units this worker could not take keep their place at the front.
        while let Some(id) = kept.pop_back() {
            self.queue.push_front(id);
        }
        leases
    }

    /// Renews the leases `worker` still holds and returns the held units that are settled
    /// for it (verified, failed, or no longer leased to it), which it should drop.
    pub fn heartbeat(&mut self, worker: WorkerId, held: &[UnitId], now: u64) -> Vec<UnitId> {
        let until = now + self.lease_ms;
        let mut settled = Vec::new();
        for &id in held {
            let active = self.units.get_mut(&id).and_then(|u| {
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
            let Some(unit) = self.units.get_mut(&id) else {
                continue;
            };
            if unit.status != UnitStatus::Pending {
                continue;
            }
            for r in unit.replicas.iter_mut() {
                if r.state == AssignmentState::Active && r.lease_until <= now {
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
                .get(&id)
                .and_then(|u| self.projects.get_mut(&u.project))
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
            let unit = &self.units[&id];
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

    /// Checks a certificate against what the scheduler knows. `Ok(None)` when the unit was
    /// already verified (a duplicate submission, harmless). Does not change state: the shell
    /// persists the result first, then calls [`Scheduler::mark_verified`].
    pub fn check_certificate(
        &self,
        cert: &Certificate,
        output: &[u8],
    ) -> Result<Option<Verified>, Error> {
        let unit = self
            .units
            .get(&cert.unit)
            .ok_or(Error::UnknownUnit(cert.unit))?;
        match &unit.status {
            UnitStatus::Verified => return Ok(None),
            UnitStatus::Failed(reason) => {
                return Err(Error::AlreadyFailed {
                    unit: cert.unit,
                    reason: reason.clone(),
                });
            }
            UnitStatus::Pending => {}
        }
        let project = self
            .projects
            .get(&unit.project)
            .ok_or(Error::UnknownUnit(cert.unit))?;
        let assigned: HashSet<WorkerId> = unit.replicas.iter().map(|r| r.worker).collect();
        let facts = UnitFacts {
            project: project.id,
            unit: cert.unit,
            quorum: project.quorum,
            max_output_bytes: project.limits.max_output_bytes,
            assigned: &assigned,
        };
        Ok(Some(certificate::check(cert, &facts, output)?))
    }

    /// Records a verified unit (after the store has it durably).
    pub fn mark_verified(&mut self, id: UnitId, verified: &Verified) {
        let Some(unit) = self.units.get_mut(&id) else {
            return;
        };
        if unit.status != UnitStatus::Pending {
            return;
        }
        unit.status = UnitStatus::Verified;
        if let Some(p) = self.projects.get_mut(&unit.project) {
            p.stats.verified += 1;
            p.stats.credit += verified.fuel * verified.signers.len() as u64;
        }
    }

    /// Disagreeing claims: raise the unit's replica target so that the largest agreeing
    /// group can still reach quorum, within `max_replicas`; fail the unit past that.
    pub fn dispute(&mut self, id: UnitId, claims: &[Claim]) -> Result<Vec<Change>, Error> {
        let unit = self.units.get(&id).ok_or(Error::UnknownUnit(id))?;
        if unit.status != UnitStatus::Pending {
            return Ok(Vec::new());
        }
        let project = self
            .projects
            .get(&unit.project)
            .ok_or(Error::UnknownUnit(id))?;
        let mut by_worker: HashMap<WorkerId, (Digest, u64)> = HashMap::new();
        for c in claims.iter().take(certificate::MAX_CLAIMS) {
            if c.unit != id || c.project != project.id || !unit.has(c.worker) {
                return Err(Error::BadDispute(format!(
                    "claim by {} is not about a replica of unit {id}",
                    c.worker
                )));
            }
            c.verify()?;
            by_worker.insert(c.worker, (c.digest, c.fuel));
        }
        let mut groups: HashMap<(Digest, u64), u32> = HashMap::new();
        for v in by_worker.values() {
            *groups.entry(*v).or_default() += 1;
        }
        if groups.len() < 2 {
            return Err(Error::BadDispute(
                "the claims agree; nothing to dispute".into(),
            ));
        }
        let best = groups.values().copied().max().unwrap_or(0);
        let needed = by_worker.len() as u32 + project.quorum.saturating_sub(best);
        let (max_replicas, project_id) = (project.max_replicas, project.id);
        let mut changes = Vec::new();
        let unit = self.units.get_mut(&id).ok_or(Error::UnknownUnit(id))?;
        // Every worker in a disagreement may report it: only the report that raises the
        // target counts as a dispute.
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
                "no quorum: {} workers returned {} different results (max_replicas = {max_replicas})",
                by_worker.len(),
                groups.len()
            );
            self.fail_unit(id, reason, &mut changes);
        } else if unit.wants_replica() {
            self.queue.push_back(id);
        }
        Ok(changes)
    }

    fn active_replica(&mut self, worker: WorkerId, id: UnitId) -> Option<&mut Replica> {
        let unit = self.units.get_mut(&id)?;
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
        let Some(unit) = self.units.get(&id) else {
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
        let Some(unit) = self.units.get_mut(&id) else {
            return;
        };
        if unit.status != UnitStatus::Pending {
            return;
        }
        unit.status = UnitStatus::Failed(reason.clone());
        if let Some(p) = self.projects.get_mut(&unit.project) {
            p.stats.failed += 1;
        }
        changes.push(Change::UnitFailed { unit: id, reason });
    }
}

#[cfg(test)]
mod tests;
