//! The live dashboard, its JSON API and `/metrics`: read-only HTTP pages served on the
//! coordinator's own port beside gRPC (HTTP/1.1 for browsers, HTTP/2 for gRPC, one
//! listener).
//!
//! # Staying off the hot path
//! The gRPC handlers only call the cheap hooks on [`Dashboard`] (atomic counters, a short
//! std mutex for rare events such as failures). One broadcaster task (`broadcast`) copies a
//! [`snapshot::Capture`] out of the state at most every 250 ms when something changed (less
//! often when a capture is slow, so it never holds the lock more than 2 % of the time),
//! derives everything else outside the lock, and publishes one immutable
//! [`snapshot::Published`] through a `watch` channel. Every page, API call and server-sent
//! event stream reads that; no viewer ever touches the scheduler or the store.
//!
//! # Layout
//! - `snapshot`: what is captured and what is published.
//! - `broadcast`: the broadcaster task (history, ETA, pictures, failures).
//! - `routes`: the axum router (GET only).
//! - `render`: server-side HTML and SVG.
//! - `volunteer`: the volunteer page (`/volunteer`) and its modules, cross-origin isolated.
//! - `metrics`: Prometheus counters and gauges.
//! - [`mosaic`]: Mandelbrot tiles painted into a picture.

mod broadcast;
pub(crate) mod metrics;
pub mod mosaic;
mod render;
mod routes;
pub(crate) mod snapshot;
mod volunteer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::{ProjectId, UnitId, WorkerId};
use tokio::sync::watch;

pub(crate) use broadcast::{Source, run as broadcaster};
pub(crate) use routes::{count_rejections, router};

use crate::store::StoredWorker;
use metrics::{Metrics, label};
use snapshot::Published;

/// Failed executions kept for the project pages.
const FAILURES_KEPT: usize = 200;

/// The dashboard's shared state: hooks for the service, the latest snapshot for viewers.
pub(crate) struct Dashboard {
    pub(crate) metrics: Metrics,
    /// Bumped by every hook; the broadcaster rebuilds when it moved.
    generation: AtomicU64,
    directory: std::sync::Mutex<HashMap<WorkerId, WorkerInfo>>,
    failures: std::sync::Mutex<VecDeque<ExecutionFailure>>,
    published: watch::Receiver<Arc<Published>>,
}

/// What the dashboard knows about a worker beyond the scheduler's state.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub name: String,
    pub cores: u32,
    pub account: String,
    pub team: String,
    pub platform: String,
}

impl From<&StoredWorker> for WorkerInfo {
    fn from(w: &StoredWorker) -> Self {
        WorkerInfo {
            name: w.name.clone(),
            cores: w.cores,
            account: w.account.clone(),
            team: w.team.clone(),
            platform: w.platform.clone(),
        }
    }
}

/// A failed execution reported by a worker.
#[derive(Debug, Clone)]
pub(crate) struct ExecutionFailure {
    pub at_ms: u64,
    pub project: ProjectId,
    pub unit: UnitId,
    pub worker: WorkerId,
    pub reason: String,
}

/// What became of a submitted certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateOutcome {
    /// Recorded: the unit is verified.
    Accepted,
    /// Valid, but the unit was already verified.
    Duplicate,
    /// A partial certificate: its claims were recorded as votes, the unit is not verified
    /// yet.
    Recorded,
    /// Refused (bad signature, lease, digest...).
    Rejected,
}

impl Dashboard {
    /// A dashboard knowing `workers` (from the store), and the sender its broadcaster
    /// publishes through.
    pub(crate) fn new(workers: &[StoredWorker]) -> (Arc<Dashboard>, watch::Sender<Arc<Published>>) {
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        let directory = workers
            .iter()
            .map(|w| (w.id, WorkerInfo::from(w)))
            .collect();
        let dashboard = Dashboard {
            metrics: Metrics::new(),
            generation: AtomicU64::new(1),
            directory: std::sync::Mutex::new(directory),
            failures: std::sync::Mutex::new(VecDeque::new()),
            published: rx,
        };
        (Arc::new(dashboard), tx)
    }

    /// The latest snapshot.
    pub(crate) fn latest(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// A receiver of every future snapshot (for a live stream).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.clone()
    }

    /// Something visible changed.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A worker registered (or registered again with new details).
    pub(crate) fn worker_registered(&self, w: &StoredWorker) {
        self.metrics.registrations.inc();
        lock(&self.directory).insert(w.id, WorkerInfo::from(w));
        self.changed();
    }

    /// `n` replicas were leased.
    pub(crate) fn assigned(&self, n: usize) {
        if n > 0 {
            self.metrics.assignments.inc_by(n as u64);
            self.changed();
        }
    }

    /// A certificate of `claims` claims arrived and was judged.
    pub(crate) fn certificate(&self, claims: usize, outcome: CertificateOutcome) {
        self.metrics.claims.inc_by(claims as u64);
        let result = match outcome {
            CertificateOutcome::Accepted => "accepted",
            CertificateOutcome::Duplicate => "duplicate",
            CertificateOutcome::Recorded => "recorded",
            CertificateOutcome::Rejected => "rejected",
        };
        self.metrics
            .certificates
            .get_or_create(&label("result", result))
            .inc();
        self.changed();
    }

    /// A dispute of `claims` claims was reported; `raised` if it raised the replica target.
    pub(crate) fn dispute(&self, claims: usize, raised: bool) {
        self.metrics.claims.inc_by(claims as u64);
        self.metrics
            .disputes
            .get_or_create(&label("raised", if raised { "yes" } else { "no" }))
            .inc();
        self.changed();
    }

    /// A board exchange relayed for a worker (`RelayExchange`): `answered`, `refused` by
    /// the board, or `unreachable`.
    pub(crate) fn relayed(&self, outcome: &'static str) {
        self.metrics
            .relayed
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// A worker reported a failed execution.
    pub(crate) fn execution_failed(&self, failure: ExecutionFailure, kind: &'static str) {
        self.metrics
            .failures
            .get_or_create(&label("reason", kind))
            .inc();
        let mut failures = lock(&self.failures);
        if failures.len() == FAILURES_KEPT {
            failures.pop_back();
        }
        failures.push_front(failure);
        drop(failures);
        self.changed();
    }

    /// Leases expired.
    pub(crate) fn leases_expired(&self, n: usize) {
        self.metrics.leases_expired.inc_by(n as u64);
        self.changed();
    }

    fn directory(&self) -> HashMap<WorkerId, WorkerInfo> {
        lock(&self.directory).clone()
    }

    fn failures(&self) -> Vec<ExecutionFailure> {
        lock(&self.failures).iter().cloned().collect()
    }
}

/// Locks a std mutex; a panic elsewhere while it was held leaves plain data behind, which
/// stays usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
