//! What viewers see: [`Capture`] is copied out of the coordinator's state under its lock
//! (one pass over the units, nothing else); [`Published`] is everything derived from it
//! outside the lock — JSON already serialized, charts already drawn — shared by every
//! viewer through one `watch` channel.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use protocol::{ProjectId, WorkerId};
use serde::Serialize;

use crate::fleet::Fleet;
use crate::scheduler::{Aggregate, Outcome, Scheduler, UnitState};
use crate::status::{ProjectStatus, project_status};

/// Projects with at most this many units get a per-unit state map.
pub(crate) const UNIT_MAP_LIMIT: u64 = 4096;

/// The coordinator's state as copied under its lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    /// When (Unix ms).
    pub at: u64,
    /// Every project.
    pub projects: Vec<ProjectCapture>,
    /// Every known worker with when it was last heard from (Unix ms).
    pub workers: Vec<(WorkerId, u64)>,
    /// Lease length: a worker silent for longer is offline.
    pub lease_ms: u64,
    /// Workers throttled to one unit a day for repeated wrong or failed results.
    pub flagged: Vec<WorkerId>,
    /// What each worker's last heartbeat said it is doing.
    pub reported: HashMap<WorkerId, crate::fleet::Reported>,
}

/// One project's numbers.
#[derive(Debug, Clone)]
pub(crate) struct ProjectCapture {
    /// What `fallow status` shows too, built by [`crate::status::project_status`]
    /// (`waiting` is filled in by the capture's caller).
    pub status: ProjectStatus,
    pub max_replicas: u32,
    /// Executions beyond `replication` on any unit (after disputes, failures, expiries).
    pub extra_replicas: u64,
    pub aggregate: &'static str,
    /// One state letter per unit in unit order (`v`erified, `f`ailed, `r`unning,
    /// `p`ending), for projects of at most [`UNIT_MAP_LIMIT`] units.
    pub units: Option<String>,
}

/// What one pass over the units counts for a project.
#[derive(Default)]
struct UnitCounts {
    in_progress: u64,
    extra_replicas: u64,
    /// (unit id, state letter), for projects of at most [`UNIT_MAP_LIMIT`] units.
    letters: Vec<(u64, u8)>,
}

impl Capture {
    /// Copies what the dashboard shows; O(projects + units + workers). `fleet` is the
    /// online fleet, as `fallow status` reports it.
    pub(crate) fn take(
        sched: &Scheduler,
        fleet: &Fleet,
        workers: impl Iterator<Item = (WorkerId, u64)>,
        lease_ms: u64,
        now: u64,
    ) -> Capture {
        // (replication, total) of each project, for the pass over the units.
        let shape: HashMap<ProjectId, (u32, u64)> = sched
            .projects()
            .map(|p| (p.id, (p.replication, p.stats.total)))
            .collect();
        let mut counts: HashMap<ProjectId, UnitCounts> = HashMap::new();
        for u in sched.unit_views() {
            let Some(&(replication, total)) = shape.get(&u.project) else {
                continue;
            };
            let c = counts.entry(u.project).or_default();
            if u.state == UnitState::Running {
                c.in_progress += 1;
            }
            c.extra_replicas += u64::from(u.executions.saturating_sub(replication));
            if total <= UNIT_MAP_LIMIT {
                let letter = match u.state {
                    UnitState::Verified => b'v',
                    UnitState::Failed => b'f',
                    // Drawn like a pending unit: it never ran to the end.
                    UnitState::Cancelled => b'c',
                    UnitState::Running => b'r',
                    UnitState::Pending => b'p',
                };
                c.letters.push((u.id.0, letter));
            }
        }
        let mut projects: Vec<ProjectCapture> = sched
            .projects()
            .map(|p| {
                let mut c = counts.remove(&p.id).unwrap_or_default();
                c.letters.sort_unstable();
                ProjectCapture {
                    status: project_status(
                        p,
                        c.in_progress,
                        fleet,
                        Vec::new(),
                        sched.warnings(p.id),
                    ),
                    max_replicas: p.max_replicas,
                    extra_replicas: c.extra_replicas,
                    aggregate: match (&p.aggregate, p.reducer.is_some()) {
                        (_, false) => "none",
                        (Aggregate::Pending, true) => "pending",
                        (Aggregate::Ready, true) => "ready",
                        (Aggregate::Failed(_), true) => "failed",
                    },
                    units: (!c.letters.is_empty())
                        .then(|| c.letters.into_iter().map(|(_, l)| char::from(l)).collect()),
                }
            })
            .collect();
        projects.sort_unstable_by_key(|p| p.status.id);
        Capture {
            at: now,
            projects,
            workers: workers.collect(),
            flagged: sched.flagged(),
            lease_ms,
            reported: HashMap::new(),
        }
    }
}

/// Everything the dashboard serves, rebuilt by the broadcaster after changes.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub overview: Overview,
    /// `overview` as JSON.
    pub overview_json: Bytes,
    /// The live stream's event: `overview` without history and charts, framed once for
    /// every viewer (see [`frame`]).
    pub overview_event: Bytes,
    /// A `charts` event followed by `overview_event`, for viewers whose charts are older
    /// than `charts_version`.
    pub charts_and_overview_event: Bytes,
    /// Changes whenever the charts are redrawn (a history sample every 2 s).
    pub charts_version: u64,
    pub projects: BTreeMap<u64, ProjectPage>,
    pub workers: Workers,
    pub workers_json: Bytes,
    pub leaderboard: Leaderboard,
    pub leaderboard_json: Bytes,
}

/// One project's page.
#[derive(Debug, Default)]
pub(crate) struct ProjectPage {
    pub detail: ProjectDetail,
    /// `detail` as JSON.
    pub json: Bytes,
    /// `detail` as a framed `project` event.
    pub event: Bytes,
    /// The results as a picture, when they are Mandelbrot tiles.
    pub mosaic_png: Option<Bytes>,
    /// The picture before `mosaic_png` and its version: a viewer whose last event named
    /// that version gets the picture that matches its numbers, not a newer one.
    pub mosaic_previous: Option<(u64, Bytes)>,
}

/// One server-sent event, framed: serialized JSON has no raw newlines, so it is one
/// `data:` line.
pub(crate) fn frame(event: &str, id: u64, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + event.len() + 40);
    out.extend_from_slice(format!("event: {event}\nid: {id}\ndata: ").as_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What the live stream sends of the overview: everything but the history and the charts
/// (those change every 2 s and travel in their own event).
#[derive(Debug, Serialize)]
pub(crate) struct LiveOverview<'a> {
    pub generated_ms: u64,
    pub totals: &'a Totals,
    pub projects: &'a [ProjectSummary],
}

/// The front page (`GET /api/overview`).
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Overview {
    /// When the snapshot was taken (Unix ms).
    pub generated_ms: u64,
    pub totals: Totals,
    pub projects: Vec<ProjectSummary>,
    /// One sample every few seconds, oldest first.
    pub history: Vec<Sample>,
    /// The history drawn as SVG on the server (the page inserts it as is).
    pub charts: Charts,
}

/// Sums over all projects and workers.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Totals {
    pub projects: u64,
    pub units: u64,
    pub verified: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub pending: u64,
    /// Fuel credited to the signers of verified units.
    pub credit: u64,
    pub workers_online: u64,
    pub workers_known: u64,
    /// Online workers computing, suspended, and with nothing to do.
    pub workers_running: u64,
    pub workers_suspended: u64,
    pub workers_idle: u64,
    /// The fleet in words: "2 running, 1 suspended: other programs use 47 % of the CPUs".
    pub fleet: String,
    /// Units settled per minute over the last minute.
    pub units_per_minute: f64,
}

/// One project on the front page (`GET /api/projects`).
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ProjectSummary {
    pub id: u64,
    pub name: String,
    pub total: u64,
    pub verified: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub pending: u64,
    /// Executions handed out (replicas, disputes included).
    pub executions: u64,
    /// Disagreeing results that raised a unit's replica target.
    pub disputes: u64,
    /// Executions beyond `replication` (disputes, failures, expired leases).
    pub extra_replicas: u64,
    pub credit: u64,
    pub replication: u32,
    pub quorum: u32,
    pub max_replicas: u32,
    pub finished: bool,
    /// `running`, `reducing`, `done`, `partial` (some units failed), `failed` (every
    /// unit, or the reducer), `paused` or `cancelled`: finished is not the same as done.
    pub outcome: Outcome,
    /// The submitter's control: `active`, `paused` or `cancelled` (`fallow pause` …).
    pub state: protocol::control::State,
    /// Units ended by a cancel before they settled.
    pub cancelled: u64,
    /// `none`, `pending`, `ready` or `failed`.
    pub aggregate: &'static str,
    /// Verified and failed units per minute over the last minute.
    pub units_per_minute: f64,
    /// Seconds to finish at the recent rate; absent when finished, not moving, or no
    /// worker is computing (the ETA is then unknown).
    pub eta_seconds: Option<u64>,
    /// Units that need a worker of another account ("unit 7 needs a worker of another
    /// account: all 3 online accounts have run it"); empty when none.
    pub waiting: Vec<String>,
    /// What may be wrong with the project itself (every unit giving the same output);
    /// empty when nothing.
    pub warnings: Vec<String>,
    /// Percent settled (verified + failed), 0-100.
    pub percent: f64,
}

/// One project's page (`GET /api/projects/{id}`).
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ProjectDetail {
    pub generated_ms: u64,
    pub project: ProjectSummary,
    /// One letter per unit (`v`, `f`, `r` running, `p` pending) in unit order, for
    /// projects of at most 4096 units.
    pub unit_states: Option<String>,
    /// `unit_states` drawn as SVG.
    pub unit_map_svg: Option<String>,
    /// Failed executions, newest first (the unit may still verify on other workers).
    pub recent_failures: Vec<FailureRow>,
    /// Units that failed for good, by name (at most 100).
    pub failed_units: Vec<FailedUnit>,
    /// The results as a picture, when they are images.
    pub mosaic: Option<MosaicInfo>,
}

/// One failed execution.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailureRow {
    pub at_ms: u64,
    pub unit: String,
    pub worker: String,
    pub reason: String,
}

/// One unit that failed for good.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailedUnit {
    pub unit: String,
    pub reason: String,
}

/// The picture of a project's results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MosaicInfo {
    /// Tiles painted (verified units).
    pub tiles: u64,
    /// Picture size.
    pub width: u32,
    pub height: u32,
    /// Changes whenever the picture does (use it to refetch).
    pub version: u64,
    /// Where the PNG is.
    pub url: String,
}

/// A point of the history.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Sample {
    pub at_ms: u64,
    /// Verified + failed units, all projects.
    pub settled: u64,
    /// Units settled per minute since the previous sample.
    pub units_per_minute: f64,
    pub workers_online: u64,
}

/// Server-drawn charts.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Charts {
    pub throughput_svg: String,
    pub workers_svg: String,
}

/// `GET /api/workers`.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Workers {
    pub generated_ms: u64,
    pub online: u64,
    /// Online workers computing, suspended, and with nothing to do.
    pub running: u64,
    pub suspended: u64,
    pub idle: u64,
    /// The fleet in words: "2 running, 1 suspended: other programs use 47 % of the CPUs".
    pub fleet: String,
    /// Workers flagged (throttled) for repeated wrong or failed results.
    pub flagged: u64,
    pub workers: Vec<WorkerRow>,
    /// Workers grouped by platform.
    pub platforms: Vec<PlatformRow>,
}

/// One worker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerRow {
    /// Public key, hex.
    pub id: String,
    pub name: String,
    /// The volunteer account it earns credit for, and its team ("" for none).
    pub account: String,
    pub team: String,
    pub cores: u32,
    /// What the worker says it runs on: `linux-x86_64`, or `browser-FAMILY` for a browser
    /// tab (the volunteer page), e.g. `browser-chromium`.
    pub platform: String,
    /// The browser family of a browser worker (`chromium`, `firefox`, ...), from its
    /// `browser-FAMILY` platform; absent (null) for a native worker.
    pub browser: Option<String>,
    pub online: bool,
    /// Last heard from (Unix ms); absent when not since the coordinator started.
    pub last_seen_ms: Option<u64>,
    /// `running`, `suspended`, `idle` or `offline`.
    pub state: &'static str,
    /// Why it is suspended, in words (e.g. "other programs use 47 % of the CPUs"); empty
    /// unless suspended.
    pub state_reason: String,
    /// Throttled to one unit a day after repeated wrong or failed results (BOINC's
    /// punitive mode), so volunteers and operators can see who is being held back.
    pub flagged: bool,
}

/// The browser family of a worker whose platform is `browser-FAMILY` (what the volunteer
/// page registers with); `None` for anything else. Like the platform itself, what the
/// worker says: informational, never trusted for scheduling.
pub(crate) fn browser_family(platform: &str) -> Option<String> {
    platform
        .strip_prefix("browser-")
        .filter(|family| !family.is_empty())
        .map(str::to_string)
}

/// Workers of one platform.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PlatformRow {
    pub platform: String,
    pub workers: u64,
    pub online: u64,
    pub cores: u64,
}

/// `GET /api/leaderboard`: every account and team by credit, highest first.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Leaderboard {
    /// When the credit was read from the store (Unix ms).
    pub generated_ms: u64,
    pub accounts: Vec<AccountRow>,
    pub teams: Vec<TeamRow>,
}

/// An account on the leaderboard.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AccountRow {
    pub rank: u64,
    pub name: String,
    /// Its team ("" for none).
    pub team: String,
    /// Fuel of the verified units it signed.
    pub credit: u64,
    /// Verified results credited.
    pub verified: u64,
    /// Workers registered under it.
    pub workers: u32,
}

/// A team on the leaderboard.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TeamRow {
    pub rank: u64,
    pub name: String,
    pub credit: u64,
    /// Accounts credited under it.
    pub accounts: u32,
}

#[cfg(test)]
mod tests {
    use super::browser_family;

    #[test]
    fn a_browser_platform_names_its_family() {
        assert_eq!(
            browser_family("browser-chromium").as_deref(),
            Some("chromium")
        );
        assert_eq!(browser_family("browser-"), None);
        assert_eq!(browser_family("linux-x86_64"), None);
        assert_eq!(browser_family(""), None);
    }
}
