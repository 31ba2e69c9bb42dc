//! `/metrics`: the coordinator's counters in Prometheus text format (prometheus-client).
//!
//! Counters are atomics bumped by the gRPC handlers (nothing else happens on the dispatch
//! path); gauges (units by state, workers online, viewers) are set by the broadcaster from
//! each snapshot, so a scrape never takes the scheduler's lock.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label set of one `(name, value)` pair.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Every metric the coordinator exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// Replicas leased to workers (`fallow_assignments_total`; rate() is assignments/s).
    pub assignments: Counter,
    /// Certificates by outcome: `accepted`, `recorded` (partial: votes), `duplicate` or
    /// `rejected`.
    pub certificates: Family<Labels, Counter>,
    /// Signed claims received inside certificates and disputes (the gossip that reaches
    /// the coordinator; worker-to-worker claims never pass through it).
    pub claims: Counter,
    /// Dispute reports received, and how many raised a unit's replica target.
    pub disputes: Family<Labels, Counter>,
    /// Board exchanges relayed for workers that cannot open peer TLS (`RelayExchange`),
    /// by outcome: `answered`, `refused` (by the board) or `unreachable`.
    pub relayed: Family<Labels, Counter>,
    /// Failed executions reported by workers, by reason.
    pub failures: Family<Labels, Counter>,
    /// Leases that ran out without a heartbeat.
    pub leases_expired: Counter,
    /// Worker registrations.
    pub registrations: Counter,
    /// Units by state (`verified`, `failed`, `in_progress`, `pending`).
    pub units: Family<Labels, Gauge>,
    /// Workers seen within one lease period.
    pub workers_online: Gauge,
    /// Dashboard live-update (SSE) connections open now.
    pub viewers: Gauge,
    /// Snapshots the broadcaster built.
    pub snapshots: Counter,
    /// Time the broadcaster held the state lock, in microseconds (its cost to dispatch).
    pub snapshot_lock_micros: Counter,
    /// gRPC requests answered with an error, by method and status code: malformed,
    /// oversized, unauthenticated or out-of-order messages (`count_rejections`).
    pub rejected: Family<Labels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("fallow");
        let m = Metrics {
            registry: Registry::default(),
            assignments: Counter::default(),
            certificates: Family::default(),
            claims: Counter::default(),
            disputes: Family::default(),
            relayed: Family::default(),
            failures: Family::default(),
            leases_expired: Counter::default(),
            registrations: Counter::default(),
            units: Family::default(),
            workers_online: Gauge::default(),
            viewers: Gauge::default(),
            snapshots: Counter::default(),
            snapshot_lock_micros: Counter::default(),
            rejected: Family::default(),
        };
        registry.register(
            "assignments",
            "Replicas leased to workers",
            m.assignments.clone(),
        );
        registry.register(
            "rejected_requests",
            "gRPC requests answered with an error status, by method and code",
            m.rejected.clone(),
        );
        registry.register(
            "certificates",
            "Certificates received, by result (accepted, recorded, duplicate, rejected)",
            m.certificates.clone(),
        );
        registry.register(
            "claims_received",
            "Signed claims received in certificates and disputes",
            m.claims.clone(),
        );
        registry.register(
            "disputes",
            "Dispute reports, by whether they raised the replica target",
            m.disputes.clone(),
        );
        registry.register(
            "relayed_exchanges",
            "Board exchanges relayed for browser workers (RelayExchange), by outcome",
            m.relayed.clone(),
        );
        registry.register(
            "execution_failures",
            "Failed executions reported by workers, by reason",
            m.failures.clone(),
        );
        registry.register(
            "leases_expired",
            "Leases that ran out without a heartbeat",
            m.leases_expired.clone(),
        );
        registry.register(
            "worker_registrations",
            "Worker registrations",
            m.registrations.clone(),
        );
        registry.register("units", "Units by state", m.units.clone());
        registry.register(
            "workers_online",
            "Workers seen within one lease period",
            m.workers_online.clone(),
        );
        registry.register(
            "dashboard_viewers",
            "Open dashboard live-update connections",
            m.viewers.clone(),
        );
        registry.register(
            "dashboard_snapshots",
            "Dashboard snapshots built",
            m.snapshots.clone(),
        );
        registry.register(
            "dashboard_lock_microseconds",
            "Time the dashboard held the scheduler's lock, in microseconds",
            m.snapshot_lock_micros.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would be a bug in a label.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// A label set with one label.
pub(crate) fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// Sets a gauge from a count (saturating).
pub(crate) fn set(gauge: &Gauge<i64, AtomicI64>, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}
