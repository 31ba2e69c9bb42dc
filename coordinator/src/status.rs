//! The one place a project's status ([`ProjectStatus`]) is built from the scheduler's
//! state: `ListProjects` answers with it (converted by `proto::wire`), and the dashboard's
//! capture carries it beside the numbers only the dashboard shows.

pub use protocol::status::{Outcome, ProjectStatus};

use crate::fleet::Fleet;
use crate::scheduler::{Aggregate, Project};

/// `project`'s status with `in_progress` of its units running or awaiting their quorum,
/// the online `fleet`, the units `waiting` for a worker of another account (in words,
/// `fleet::waiting_sentences`), and `warnings` about the project itself
/// (`Scheduler::warnings`).
pub fn project_status(
    project: &Project,
    in_progress: u64,
    fleet: &Fleet,
    waiting: Vec<String>,
    warnings: Vec<String>,
) -> ProjectStatus {
    let p = project;
    let s = p.stats;
    let aggregate_error = match &p.aggregate {
        Aggregate::Failed(e) => e.clone(),
        Aggregate::Pending | Aggregate::Ready => String::new(),
    };
    // A cancelled project is finished without its reducer, which does not run by itself.
    let finished = p.finished()
        && (p.reducer.is_none()
            || p.aggregate != Aggregate::Pending
            || p.control == protocol::control::State::Cancelled);
    ProjectStatus {
        id: p.id,
        name: p.name.clone(),
        total: s.total,
        verified: s.verified,
        failed: s.failed,
        cancelled: s.cancelled,
        in_progress,
        pending: s
            .total
            .saturating_sub(s.verified + s.failed + s.cancelled + in_progress),
        executions: s.executions,
        disputes: s.disputes,
        replication: p.replication,
        quorum: p.quorum,
        credit: s.credit,
        solo: s.solo,
        spot_checks: s.spot_checks,
        mismatches: s.mismatches,
        reopened: s.reopened,
        finished,
        outcome: Outcome::of(
            s.total,
            (s.verified, s.failed, s.cancelled),
            finished,
            p.reducer.is_some() && matches!(p.aggregate, Aggregate::Failed(_)),
            p.control,
        ),
        state: p.control,
        has_reducer: p.reducer.is_some(),
        aggregate_ready: p.aggregate == Aggregate::Ready,
        aggregate_error,
        submitter: p.signer.map(|g| g.key.to_hex()).unwrap_or_default(),
        terms: p.signer.map(|g| g.terms),
        workers_running: fleet.running,
        workers_suspended: fleet.suspended,
        workers_idle: fleet.idle,
        fleet: fleet.sentence(),
        waiting,
        warnings,
    }
}
