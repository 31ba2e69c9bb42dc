//! The broadcaster: the one task that looks at the coordinator's state for the dashboard.
//! It captures a snapshot when something changed (at most every 250 ms, and less often if
//! captures get slow), derives history, rates, pictures and failure lists outside the lock,
//! and publishes the result for every viewer at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use protocol::{ProjectId, UnitId, WorkerId};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::mosaic::{self, Canvas};
use super::snapshot::{
    AccountRow, Capture, Charts, FailedUnit, FailureRow, Leaderboard, LiveOverview, MosaicInfo,
    Overview, PlatformRow, ProjectCapture, ProjectDetail, ProjectPage, ProjectSummary, Published,
    Sample, TeamRow, Totals, WorkerRow, Workers, frame,
};
use super::{Dashboard, metrics, render};
use crate::store::{CorruptOutput, Store, StoredOutput};

/// Shortest time between two captures.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Each open live stream adds this to the interval (every event is a write per viewer),
/// up to `MAX_INTERVAL`: 1,000 viewers get a snapshot every 500 ms.
const PER_VIEWER: Duration = Duration::from_micros(250);
const MAX_INTERVAL: Duration = Duration::from_millis(500);
/// Most points drawn per chart.
const CHART_POINTS: usize = 300;
/// A capture may hold the state lock at most 1/LOCK_SHARE of the time.
const LOCK_SHARE: u32 = 50;
/// Capture at least this often even when nothing was reported (workers go offline, rates
/// decay).
const IDLE_REFRESH: Duration = Duration::from_secs(2);
/// History: one sample every 2 s, 900 kept (30 minutes).
const HISTORY_EVERY_MS: u64 = 2_000;
const HISTORY_KEPT: usize = 900;
/// Rates and ETAs are measured over the last minute.
const RATE_WINDOW_MS: u64 = 60_000;
/// A rate needs at least this much history.
const RATE_MIN_SPAN_MS: u64 = 3_000;
/// Pictures are re-rendered at most this often.
const MOSAIC_EVERY: Duration = Duration::from_millis(500);
/// Projects with more units are never drawn as a picture.
const MOSAIC_UNIT_LIMIT: u64 = 10_000;
/// Units that failed for good listed on a project page.
const FAILED_UNITS_SHOWN: usize = 100;
/// Failed executions listed on a project page.
const FAILURES_SHOWN: usize = 20;
/// The leaderboard is an aggregate over every credit row: re-read at most this often, and
/// only when credit moved (or every `LEADERBOARD_IDLE` for new accounts).
const LEADERBOARD_EVERY: Duration = Duration::from_secs(2);
const LEADERBOARD_IDLE: Duration = Duration::from_secs(30);
/// ... and never more often than every this many times its last read took, so however
/// many accounts there are, the leaderboard costs at most ~5 % of one core.
const LEADERBOARD_SHARE: u32 = 20;

/// What the broadcaster needs from the coordinator: implemented by the service.
pub(crate) trait Source: Clone + Send + Sync + 'static {
    /// The store (read-only use: unit names, failed units, verified tiles).
    type Store: Store;
    /// Copies a [`Capture`] under the state lock; `held` is how long the lock was held.
    fn capture(&self) -> impl Future<Output = (Capture, Duration)> + Send;
    /// The store.
    fn store(&self) -> &Self::Store;
    /// Sends units whose stored outputs failed their digest check back for verification
    /// (the one thing the dashboard asks of the state: it never shows such an output).
    fn reverify(&self, corrupt: Vec<CorruptOutput>) -> impl Future<Output = ()> + Send;
}

/// Runs until `cancel`; dropping `tx` at the end closes every live stream, which lets the
/// server's graceful shutdown finish.
pub(crate) async fn run<S: Source>(
    source: S,
    dashboard: Arc<Dashboard>,
    tx: watch::Sender<Arc<Published>>,
    cancel: CancellationToken,
) {
    let mut state = Broadcaster::default();
    let mut tick = tokio::time::interval(MIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    let mut last: Option<Instant> = None;
    let mut not_before = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let generation = dashboard.generation();
        let due =
            generation != seen || state.deferred || last.is_none_or(|t| now - t >= IDLE_REFRESH);
        if !due || now < not_before {
            continue;
        }
        seen = generation;
        last = Some(now);
        let (capture, held) = source.capture().await;
        let viewers = u32::try_from(dashboard.metrics.viewers.get()).unwrap_or(0);
        let interval = (MIN_INTERVAL + PER_VIEWER * viewers).min(MAX_INTERVAL);
        not_before = now + (held * LOCK_SHARE).max(interval);
        dashboard.metrics.snapshots.inc();
        dashboard
            .metrics
            .snapshot_lock_micros
            .inc_by(held.as_micros() as u64);
        let published = tokio::select! {
            _ = cancel.cancelled() => return,
            p = state.build(&source, &dashboard, capture) => p,
        };
        tx.send_replace(Arc::new(published));
    }
}

#[derive(Default)]
struct Broadcaster {
    version: u64,
    history: VecDeque<Sample>,
    charts: Charts,
    rates: HashMap<ProjectId, VecDeque<(u64, u64)>>,
    mosaics: HashMap<ProjectId, MosaicState>,
    failed_units: HashMap<ProjectId, (u64, Vec<FailedUnit>)>,
    unit_names: HashMap<UnitId, String>,
    leaderboard: Leaderboard,
    leaderboard_credit: Option<u64>,
    leaderboard_read: Option<Instant>,
    /// How long the last leaderboard read took.
    leaderboard_took: Duration,
    charts_version: u64,
    /// A picture was left stale by its rate limit: build again soon even if nothing new
    /// is reported.
    deferred: bool,
}

#[derive(Default)]
struct MosaicState {
    not_image: bool,
    canvas: Option<Canvas>,
    verified_seen: u64,
    rendered: Option<Instant>,
    version: u64,
    png: Option<Bytes>,
    previous: Option<(u64, Bytes)>,
}

impl Broadcaster {
    async fn build<S: Source>(
        &mut self,
        source: &S,
        dashboard: &Dashboard,
        capture: Capture,
    ) -> Published {
        self.version += 1;
        self.deferred = false;
        let at = capture.at;
        let directory = dashboard.directory();
        let workers = workers(&capture, &directory);
        let online = workers.online;

        let mut totals = Totals {
            projects: capture.projects.len() as u64,
            workers_online: online,
            workers_known: workers.workers.len() as u64,
            workers_running: workers.running,
            workers_suspended: workers.suspended,
            workers_idle: workers.idle,
            fleet: workers.fleet.clone(),
            ..Default::default()
        };
        let computing = workers.running > 0;
        let mut summaries = Vec::new();
        for p in &capture.projects {
            let summary = self.summary(p, at, computing);
            totals.units += p.status.total;
            totals.verified += p.status.verified;
            totals.failed += p.status.failed;
            totals.in_progress += summary.in_progress;
            totals.pending += summary.pending;
            totals.credit = totals.credit.saturating_add(p.status.credit);
            totals.units_per_minute += summary.units_per_minute;
            summaries.push(summary);
        }
        self.rates
            .retain(|id, _| capture.projects.iter().any(|p| p.status.id == *id));
        self.sample(
            at,
            totals.verified + totals.failed,
            totals.units_per_minute,
            online,
        );
        set_gauges(dashboard, &totals);

        let failures = dashboard.failures();
        let mut projects = std::collections::BTreeMap::new();
        for (p, summary) in capture.projects.iter().zip(&summaries) {
            let recent = self
                .failure_rows(source, &directory, &failures, p.status.id)
                .await;
            let failed_units = self.failed_units(source, p).await;
            let (mosaic, mosaic_png, mosaic_previous) = self.mosaic(source, p).await;
            let detail = ProjectDetail {
                generated_ms: at,
                project: summary.clone(),
                unit_map_svg: p.units.as_deref().map(render::unit_map),
                unit_states: p.units.clone(),
                recent_failures: recent,
                failed_units,
                mosaic,
            };
            let body = json(&detail);
            projects.insert(
                p.status.id.0,
                ProjectPage {
                    event: frame("project", self.version, &body),
                    json: body,
                    detail,
                    mosaic_png,
                    mosaic_previous,
                },
            );
        }
        if self.unit_names.len() > 10_000 {
            self.unit_names.clear();
        }

        let overview = Overview {
            generated_ms: at,
            totals,
            projects: summaries,
            history: self.history.iter().copied().collect(),
            charts: self.charts.clone(),
        };
        let leaderboard = self.leaderboard(source, overview.totals.credit, at).await;
        let overview_event = frame(
            "overview",
            self.version,
            &json(&LiveOverview {
                generated_ms: at,
                totals: &overview.totals,
                projects: &overview.projects,
            }),
        );
        let charts_event = frame("charts", self.version, &json(&overview.charts));
        let charts_and_overview_event =
            Bytes::from([charts_event.as_ref(), overview_event.as_ref()].concat());
        Published {
            overview_json: json(&overview),
            overview_event,
            charts_and_overview_event,
            charts_version: self.charts_version,
            overview,
            projects,
            workers_json: json(&workers),
            workers,
            leaderboard_json: json(&leaderboard),
            leaderboard,
        }
    }

    /// Accounts and teams by credit, re-read from the store when credit moved.
    async fn leaderboard<S: Source>(&mut self, source: &S, credit: u64, at: u64) -> Leaderboard {
        let due = match self.leaderboard_read {
            None => true,
            Some(t) => {
                let spacing = LEADERBOARD_EVERY.max(self.leaderboard_took * LEADERBOARD_SHARE);
                (self.leaderboard_credit != Some(credit) && t.elapsed() >= spacing)
                    || t.elapsed() >= LEADERBOARD_IDLE.max(spacing)
            }
        };
        if due {
            let started = Instant::now();
            self.leaderboard_read = Some(started);
            let read = source.store().leaderboard().await;
            self.leaderboard_took = started.elapsed();
            match read {
                Ok((accounts, teams)) => {
                    self.leaderboard_credit = Some(credit);
                    self.leaderboard = Leaderboard {
                        generated_ms: at,
                        accounts: accounts
                            .into_iter()
                            .zip(1..)
                            .map(|(a, rank)| AccountRow {
                                rank,
                                name: a.name,
                                team: a.team,
                                credit: a.credit,
                                verified: a.verified,
                                workers: a.workers,
                            })
                            .collect(),
                        teams: teams
                            .into_iter()
                            .zip(1..)
                            .map(|(t, rank)| TeamRow {
                                rank,
                                name: t.name,
                                credit: t.credit,
                                accounts: t.accounts,
                            })
                            .collect(),
                    };
                }
                Err(e) => tracing::warn!("dashboard: cannot read the leaderboard: {e}"),
            }
        }
        self.leaderboard.clone()
    }

    /// A project's numbers with its recent rate and ETA (unknown while no worker is
    /// `computing`: a recent rate says nothing about a fleet that stopped).
    fn summary(&mut self, p: &ProjectCapture, at: u64, computing: bool) -> ProjectSummary {
        let settled = p.status.verified + p.status.failed;
        let window = self.rates.entry(p.status.id).or_default();
        window.push_back((at, settled));
        while window.len() > 2
            && window
                .front()
                .is_some_and(|&(t, _)| at - t > RATE_WINDOW_MS)
        {
            window.pop_front();
        }
        let per_ms = match window.front() {
            Some(&(t, s)) if at.saturating_sub(t) >= RATE_MIN_SPAN_MS => {
                settled.saturating_sub(s) as f64 / (at - t) as f64
            }
            _ => 0.0,
        };
        let remaining = p.status.total.saturating_sub(settled);
        let eta_seconds = (remaining > 0 && per_ms > 0.0 && computing)
            .then(|| (remaining as f64 / per_ms / 1000.0).ceil() as u64);
        ProjectSummary {
            id: p.status.id.0,
            name: p.status.name.clone(),
            total: p.status.total,
            verified: p.status.verified,
            failed: p.status.failed,
            in_progress: p.status.in_progress,
            pending: p.status.pending,
            executions: p.status.executions,
            disputes: p.status.disputes,
            extra_replicas: p.extra_replicas,
            credit: p.status.credit,
            replication: p.status.replication,
            quorum: p.status.quorum,
            max_replicas: p.max_replicas,
            finished: p.status.finished,
            outcome: p.status.outcome,
            state: p.status.state,
            cancelled: p.status.cancelled,
            aggregate: p.aggregate,
            units_per_minute: per_ms * 60_000.0,
            eta_seconds,
            waiting: p.status.waiting.clone(),
            warnings: p.status.warnings.clone(),
            percent: if p.status.total == 0 {
                100.0
            } else {
                100.0 * settled as f64 / p.status.total as f64
            },
        }
    }

    /// Adds a history sample every [`HISTORY_EVERY_MS`] and redraws the charts.
    fn sample(&mut self, at: u64, settled: u64, per_minute: f64, online: u64) {
        if self
            .history
            .back()
            .is_some_and(|s| at.saturating_sub(s.at_ms) < HISTORY_EVERY_MS)
        {
            return;
        }
        if self.history.len() == HISTORY_KEPT {
            self.history.pop_front();
        }
        // Each point is the rate since the previous one, so the chart shows bursts and
        // stalls that the one-minute average in the numbers smooths away.
        let per_minute = match self.history.back() {
            Some(prev) if at > prev.at_ms => {
                settled.saturating_sub(prev.settled) as f64 * 60_000.0 / (at - prev.at_ms) as f64
            }
            _ => per_minute,
        };
        self.history.push_back(Sample {
            at_ms: at,
            settled,
            units_per_minute: per_minute,
            workers_online: online,
        });
        self.charts_version += 1;
        let every = self.history.len().div_ceil(CHART_POINTS).max(1);
        let points = |f: fn(&Sample) -> f64| -> Vec<(u64, f64)> {
            let mut p: Vec<(u64, f64)> = self
                .history
                .iter()
                .step_by(every)
                .map(|s| (s.at_ms, f(s)))
                .collect();
            if let Some(last) = self.history.back()
                && p.last().is_none_or(|&(t, _)| t != last.at_ms)
            {
                p.push((last.at_ms, f(last)));
            }
            p
        };
        self.charts = Charts {
            throughput_svg: render::line_chart(
                "Throughput",
                "units/min",
                &points(|s| s.units_per_minute),
            ),
            workers_svg: render::line_chart(
                "Workers online",
                "workers",
                &points(|s| s.workers_online as f64),
            ),
        };
    }

    async fn failure_rows<S: Source>(
        &mut self,
        source: &S,
        directory: &HashMap<WorkerId, super::WorkerInfo>,
        failures: &[super::ExecutionFailure],
        project: ProjectId,
    ) -> Vec<FailureRow> {
        let mut rows = Vec::new();
        for f in failures
            .iter()
            .filter(|f| f.project == project)
            .take(FAILURES_SHOWN)
        {
            let unit = match self.unit_names.get(&f.unit) {
                Some(name) => name.clone(),
                None => {
                    let name = match source.store().unit_input(f.unit).await {
                        Ok((name, _)) => name,
                        Err(_) => format!("#{}", f.unit.0),
                    };
                    self.unit_names.insert(f.unit, name.clone());
                    name
                }
            };
            rows.push(FailureRow {
                at_ms: f.at_ms,
                unit,
                worker: worker_name(directory, f.worker),
                reason: f.reason.clone(),
            });
        }
        rows
    }

    /// Units that failed for good, re-read from the store when their number changed.
    async fn failed_units<S: Source>(&mut self, source: &S, p: &ProjectCapture) -> Vec<FailedUnit> {
        if let Some((count, rows)) = self.failed_units.get(&p.status.id)
            && *count == p.status.failed
        {
            return rows.clone();
        }
        let rows: Vec<FailedUnit> = if p.status.failed == 0 {
            Vec::new()
        } else {
            match source.store().failed_units(p.status.id).await {
                Ok(all) => all
                    .into_iter()
                    .take(FAILED_UNITS_SHOWN)
                    .map(|(unit, reason)| FailedUnit { unit, reason })
                    .collect(),
                Err(e) => {
                    tracing::warn!(project = %p.status.id, "dashboard: cannot read failed units: {e}");
                    return Vec::new();
                }
            }
        };
        self.failed_units
            .insert(p.status.id, (p.status.failed, rows.clone()));
        rows
    }

    /// The project's picture, repainted from the store when units verified since the last
    /// paint (at most every [`MOSAIC_EVERY`]).
    async fn mosaic<S: Source>(
        &mut self,
        source: &S,
        p: &ProjectCapture,
    ) -> (Option<MosaicInfo>, Option<Bytes>, Option<(u64, Bytes)>) {
        let m = self.mosaics.entry(p.status.id).or_default();
        let behind = p.status.total <= MOSAIC_UNIT_LIMIT
            && !m.not_image
            && p.status.verified > m.verified_seen;
        let allowed = m.rendered.is_none_or(|t| t.elapsed() >= MOSAIC_EVERY);
        self.deferred |= behind && !allowed;
        if behind && allowed {
            m.rendered = Some(Instant::now());
            let (painted, read, corrupt) = paint(source.store(), p.status.id, m).await;
            if !corrupt.is_empty() {
                source.reverify(corrupt).await;
            }
            // Only what the store returned counts as seen: a unit the scheduler already
            // counts as verified may not be readable yet, and is painted on the next pass.
            m.verified_seen = read;
            self.deferred |= !m.not_image && p.status.verified > read;
            if painted && let Some(canvas) = m.canvas.clone() {
                match tokio::task::spawn_blocking(move || canvas.png()).await {
                    Ok(Ok(png)) => {
                        m.previous = m.png.take().map(|old| (m.version, old));
                        m.png = Some(Bytes::from(png));
                        m.version += 1;
                    }
                    Ok(Err(e)) => tracing::warn!("dashboard: {e}"),
                    Err(e) => tracing::warn!("dashboard: PNG encoder panicked: {e}"),
                }
            }
        }
        let info = m
            .canvas
            .as_ref()
            .filter(|_| m.png.is_some())
            .map(|c| MosaicInfo {
                tiles: c.tiles(),
                width: c.width,
                height: c.height,
                version: m.version,
                url: format!("/api/projects/{}/mosaic.png?v={}", p.status.id.0, m.version),
            });
        (info, m.png.clone(), m.previous.clone())
    }
}

/// Paints every verified tile not painted yet; returns whether anything was painted, how
/// many verified outputs the store returned, and the outputs that failed their digest
/// check (not painted). The first output that is not a tile marks the project as not a
/// picture.
async fn paint<St: Store>(
    store: &St,
    project: ProjectId,
    m: &mut MosaicState,
) -> (bool, u64, Vec<CorruptOutput>) {
    let mut painted = false;
    let mut read = 0u64;
    let mut corrupt = Vec::new();
    let mut after = None;
    loop {
        let page = match store.verified_outputs(project, after.clone(), 64).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(%project, "dashboard: cannot read outputs: {e}");
                return (painted, read, corrupt);
            }
        };
        let Some(last) = page.last() else {
            return (painted, read, corrupt);
        };
        after = Some(last.name().to_string());
        read += page.len() as u64;
        for v in page {
            let v = match v {
                StoredOutput::Intact(v) => v,
                StoredOutput::Corrupt(c) => {
                    corrupt.push(c);
                    continue;
                }
            };
            let tile = match mosaic::parse_tile(&v.output) {
                Ok(t) => t,
                Err(_) if m.canvas.is_none() => {
                    m.not_image = true;
                    return (false, read, corrupt);
                }
                Err(e) => {
                    tracing::debug!(%project, unit = %v.name, "not drawn: {e}");
                    continue;
                }
            };
            let canvas = m
                .canvas
                .get_or_insert_with(|| Canvas::new(tile.width, tile.height));
            match canvas.paint(&tile) {
                Ok(p) => painted |= p,
                Err(e) => tracing::debug!(%project, unit = %v.name, "not drawn: {e}"),
            }
        }
    }
}

fn workers(capture: &Capture, directory: &HashMap<WorkerId, super::WorkerInfo>) -> Workers {
    let seen: HashMap<WorkerId, u64> = capture.workers.iter().copied().collect();
    let flagged: std::collections::HashSet<WorkerId> = capture.flagged.iter().copied().collect();
    let unknown = crate::fleet::Reported::default();
    let mut states = Vec::with_capacity(directory.len());
    let mut rows: Vec<WorkerRow> = directory
        .iter()
        .map(|(id, info)| {
            let last_seen = seen.get(id).copied();
            let reported = capture.reported.get(id).unwrap_or(&unknown);
            let state = match last_seen {
                Some(t) => reported.at(t, capture.at, capture.lease_ms),
                None => crate::fleet::RunState::Offline,
            };
            states.push((state, reported));
            WorkerRow {
                id: id.to_string(),
                name: info.name.clone(),
                account: info.account.clone(),
                team: info.team.clone(),
                cores: info.cores,
                platform: if info.platform.is_empty() {
                    "unknown".into()
                } else {
                    info.platform.clone()
                },
                browser: super::snapshot::browser_family(&info.platform),
                online: last_seen.is_some_and(|t| capture.at.saturating_sub(t) <= capture.lease_ms),
                last_seen_ms: last_seen,
                state: state.as_str(),
                state_reason: if state == crate::fleet::RunState::Suspended {
                    reported.reason.clone()
                } else {
                    String::new()
                },
                flagged: flagged.contains(id),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
    let mut platforms: Vec<PlatformRow> = Vec::new();
    for w in &rows {
        let i = match platforms.iter().position(|p| p.platform == w.platform) {
            Some(i) => i,
            None => {
                platforms.push(PlatformRow {
                    platform: w.platform.clone(),
                    workers: 0,
                    online: 0,
                    cores: 0,
                });
                platforms.len() - 1
            }
        };
        platforms[i].workers += 1;
        platforms[i].online += u64::from(w.online);
        platforms[i].cores += u64::from(w.cores);
    }
    platforms.sort_by(|a, b| b.workers.cmp(&a.workers).then(a.platform.cmp(&b.platform)));
    let fleet = crate::fleet::Fleet::count(states.into_iter());
    Workers {
        generated_ms: capture.at,
        online: rows.iter().filter(|w| w.online).count() as u64,
        running: fleet.running.into(),
        suspended: fleet.suspended.into(),
        idle: fleet.idle.into(),
        fleet: fleet.sentence(),
        flagged: rows.iter().filter(|w| w.flagged).count() as u64,
        workers: rows,
        platforms,
    }
}

fn worker_name(directory: &HashMap<WorkerId, super::WorkerInfo>, id: WorkerId) -> String {
    directory
        .get(&id)
        .map(|w| w.name.clone())
        .unwrap_or_else(|| id.to_string().chars().take(12).collect())
}

fn set_gauges(dashboard: &Dashboard, totals: &Totals) {
    let m = &dashboard.metrics;
    for (state, n) in [
        ("verified", totals.verified),
        ("failed", totals.failed),
        ("in_progress", totals.in_progress),
        ("pending", totals.pending),
    ] {
        metrics::set(&m.units.get_or_create(&metrics::label("state", state)), n);
    }
    metrics::set(&m.workers_online, totals.workers_online);
}

/// Serializes once for every viewer. Our types always serialize; an error would be a bug,
/// so it is logged and an empty object served.
fn json(value: &impl Serialize) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(v) => Bytes::from(v),
        Err(e) => {
            tracing::error!("dashboard: cannot serialize: {e}");
            Bytes::from_static(b"{}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Outcome;

    fn project(verified: u64) -> ProjectCapture {
        ProjectCapture {
            status: crate::status::ProjectStatus {
                id: ProjectId(1),
                name: "p".into(),
                total: 100,
                verified,
                failed: 0,
                cancelled: 0,
                in_progress: 5,
                pending: 100 - verified - 5,
                executions: 0,
                disputes: 0,
                replication: 2,
                quorum: 2,
                credit: 0,
                solo: 0,
                spot_checks: 0,
                mismatches: 0,
                reopened: 0,
                finished: false,
                outcome: Outcome::Running,
                state: Default::default(),
                has_reducer: false,
                aggregate_ready: false,
                aggregate_error: String::new(),
                submitter: String::new(),
                terms: None,
                workers_running: 0,
                workers_suspended: 0,
                workers_idle: 0,
                fleet: String::new(),
                waiting: Vec::new(),
                warnings: Vec::new(),
            },
            max_replicas: 5,
            extra_replicas: 0,
            aggregate: "none",
            units: None,
        }
    }

    #[test]
    fn rate_and_eta_come_from_the_last_minute() {
        let mut b = Broadcaster::default();
        let first = b.summary(&project(0), 1_000, true);
        assert_eq!((first.units_per_minute, first.eta_seconds), (0.0, None));
        let s = b.summary(&project(10), 11_000, true);
        assert!((s.units_per_minute - 60.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.eta_seconds, Some(90));
        // The same rate with no worker computing (all suspended): unknown, not "0 s".
        let mut still = Broadcaster::default();
        still.summary(&project(0), 1_000, false);
        assert_eq!(still.summary(&project(10), 11_000, false).eta_seconds, None);
        assert_eq!((s.pending, s.percent), (85, 10.0));
        // A minute later the old sample has left the window: the rate is the recent one.
        b.summary(&project(10), 70_000, true);
        let s = b.summary(&project(10), 80_000, true);
        assert_eq!(s.units_per_minute, 0.0, "{s:?}");
        assert_eq!(s.eta_seconds, None);
    }

    #[test]
    fn history_points_are_rates_between_samples() {
        let mut b = Broadcaster::default();
        b.sample(0, 0, 0.0, 1);
        b.sample(1_000, 5, 0.0, 1); // too soon: skipped
        b.sample(2_000, 10, 0.0, 2);
        let h: Vec<Sample> = b.history.iter().copied().collect();
        assert_eq!(h.len(), 2);
        assert!((h[1].units_per_minute - 300.0).abs() < 1e-9, "{h:?}");
        assert_eq!(h[1].workers_online, 2);
        assert!(b.charts.throughput_svg.contains("class=\"line\""));
    }

    /// A tile whose stored bytes no longer match their digest is not drawn: it is handed
    /// back to be verified again.
    #[tokio::test]
    async fn a_tile_that_fails_its_digest_check_is_not_painted() {
        use crate::store::sqlite::SqliteStore;
        use protocol::certificate::Verified;
        use protocol::{Digest, Identity};
        fn tile(x: u32) -> Vec<u8> {
            let mut t =
                format!("P6\n# fallow-tile x={x} y=0 width=4 height=2\n2 2\n255\n").into_bytes();
            t.extend(std::iter::repeat_n(200, 12));
            t
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let spec = protocol::manifest::ProjectSpec {
            name: "m".into(),
            module: b"\0asm\x01\0\0\0".to_vec(),
            reducer: None,
            replication: 1,
            quorum: 1,
            max_replicas: 2,
            adaptive: false,
            error_bound: 0.02,
            limits: protocol::Limits::default(),
            units: vec![("a".into(), b"0".to_vec()), ("b".into(), b"2".to_vec())],
            manifest: String::new(),
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        };
        let (project, units) = store
            .insert_project(&spec, Digest::of(b"m"), None, 1)
            .await
            .expect("insert");
        let w = Identity::from_seed([1; 32]).id();
        for (unit, output, digest) in [
            (units[0], tile(0), Digest::of(&tile(0))),
            // Stored with a digest its bytes do not have: as if changed on disk.
            (units[1], tile(2), Digest::of(b"what was verified")),
        ] {
            let verified = Verified {
                digest,
                fuel: 1,
                signers: vec![w],
            };
            store
                .record_verified(unit, &output, &verified, &[], 2)
                .await
                .expect("record");
        }
        let mut m = MosaicState::default();
        let (painted, read, corrupt) = paint(&store, project, &mut m).await;
        assert!(painted);
        assert_eq!(read, 2);
        assert_eq!(
            corrupt,
            [CorruptOutput {
                unit: units[1],
                name: "b".into()
            }]
        );
        assert_eq!(
            m.canvas.as_ref().map(Canvas::tiles),
            Some(1),
            "only the intact tile"
        );
    }
}
