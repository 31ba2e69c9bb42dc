//! The one view of a project's status: what `ListProjects` answers, `fallow status`
//! prints (as JSON too) and the dashboard shows. The coordinator builds it in one place
//! (`coordinator::status`); `proto::wire` converts it to and from the wire.

use crate::ProjectId;
use crate::control::State;

/// A project's progress and the fleet working on it.
///
/// Field order is the order of `fallow status --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectStatus {
    /// Project id.
    #[serde(serialize_with = "project_id")]
    pub id: ProjectId,
    /// Name.
    pub name: String,
    /// Units.
    pub total: u64,
    /// Verified units.
    pub verified: u64,
    /// Failed units.
    pub failed: u64,
    /// Units ended by `fallow cancel` before they settled.
    pub cancelled: u64,
    /// Units running or awaiting their quorum.
    pub in_progress: u64,
    /// Units not yet started.
    pub pending: u64,
    /// Executions handed out so far (all replicas).
    pub executions: u64,
    /// Disagreements reported by workers.
    pub disputes: u64,
    /// Executions per unit wanted.
    pub replication: u32,
    /// Matching results needed.
    pub quorum: u32,
    /// Fuel credited to volunteers.
    pub credit: u64,
    /// Units run alone by trusted workers (adaptive replication).
    pub solo: u64,
    /// Trusted workers' units secretly replicated as a spot check.
    pub spot_checks: u64,
    /// Votes that disagreed with the verified result, and proven changed answers.
    pub mismatches: u64,
    /// Verified units re-opened because their solo worker was caught later.
    pub reopened: u64,
    /// Every unit settled (and the aggregate computed, if there is a reducer).
    pub finished: bool,
    /// `running`, `reducing`, `done`, `partial` (some units failed) or `failed` (every
    /// unit failed, or the reducer did): finished is not the same as done.
    pub outcome: Outcome,
    /// `active`, `paused` (no new leases until `fallow resume`) or `cancelled` (final).
    pub state: State,
    /// Whether the project has a reducer.
    pub has_reducer: bool,
    /// The aggregate is ready.
    pub aggregate_ready: bool,
    /// Why the reducer failed, if it did.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub aggregate_error: String,
    /// The submitter key that signed the project, hex ("" for a project from before
    /// projects were signed).
    pub submitter: String,
    /// The digest of the project's terms that every unit signature covers (hex in JSON):
    /// `fallow extend` signs new units under it. `None` for a project from before projects
    /// were signed.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "terms_hex")]
    pub terms: Option<crate::Digest>,
    /// Online workers computing (the whole fleet, not this project).
    pub workers_running: u32,
    /// Online workers suspended by their owner's settings.
    pub workers_suspended: u32,
    /// Online workers with nothing to do.
    pub workers_idle: u32,
    /// The fleet in words: "2 running, 1 suspended: other programs use 47 % of the CPUs".
    pub fleet: String,
    /// Units that need a worker of another account, in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// What may be wrong with the project itself, in words (for example every unit giving
    /// the same output, the sign of a seed taken from the frozen clock). Left out of JSON
    /// when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Serializes the terms digest as hex.
fn terms_hex<S: serde::Serializer>(terms: &Option<crate::Digest>, s: S) -> Result<S::Ok, S::Error> {
    match terms {
        Some(d) => s.serialize_str(&d.to_hex()),
        None => s.serialize_none(),
    }
}

/// Serializes a project id as its number, as `fallow status --json` always has.
fn project_id<S: serde::Serializer>(id: &ProjectId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(id.0)
}

/// How a project stands, in the words `fallow status` and the dashboard use: a project
/// whose units all failed is finished, but it is not "done".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Units are still to settle.
    #[default]
    Running,
    /// Every unit settled; the reducer has yet to run.
    Reducing,
    /// Finished: every unit verified, and the aggregate computed if there is a reducer.
    Done,
    /// Finished with some units verified and some failed (and the aggregate, if any,
    /// computed over the verified ones).
    Partial,
    /// Finished with nothing to show: every unit failed, or the reducer failed.
    Failed,
    /// Paused by its submitter with units still to settle (`fallow resume`).
    Paused,
    /// Cancelled by its submitter: final; verified results stay downloadable.
    Cancelled,
}

impl Outcome {
    /// The outcome of a project with these numbers: `finished` means every unit settled
    /// and the reducer, if any, ran; `reducer_failed` that it failed; `state` is the
    /// submitter's control (a cancelled project is `cancelled` whatever its numbers, a
    /// paused one `paused` while units are still to settle).
    pub fn of(
        total: u64,
        (verified, failed, cancelled): (u64, u64, u64),
        finished: bool,
        reducer_failed: bool,
        state: State,
    ) -> Self {
        let settled = verified + failed + cancelled >= total;
        if state == State::Cancelled {
            return Outcome::Cancelled;
        }
        match (settled, finished) {
            (false, _) if state == State::Paused => Outcome::Paused,
            (false, _) => Outcome::Running,
            (true, false) => Outcome::Reducing,
            (true, true) if reducer_failed || (verified == 0 && failed > 0) => Outcome::Failed,
            (true, true) if failed > 0 => Outcome::Partial,
            (true, true) => Outcome::Done,
        }
    }

    /// One word: `running`, `reducing`, `done`, `partial`, `failed`, `paused`,
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Reducing => "reducing",
            Outcome::Done => "done",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Paused => "paused",
            Outcome::Cancelled => "cancelled",
        }
    }
}
