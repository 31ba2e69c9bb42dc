//! `fallow worker --metrics ADDR`: the worker's counters in Prometheus text format
//! (prometheus-client), served read-only on their own small HTTP listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Error;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the worker exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// Executions by result: `ok` or the failure reason (`trap`, `fuel_exhausted`, ...).
    units: Family<Labels, Counter>,
    /// Fuel used by successful executions.
    fuel: Counter,
    /// Seconds slots spent running guest code.
    busy: Counter<f64, AtomicU64>,
    /// Seconds slots spent asking for work and waiting because there was none.
    idle: Counter<f64, AtomicU64>,
    /// Claims pushed to peers (one per peer per publication).
    claims_sent: Counter,
    /// Claims received from peers (pushed to us or returned by a pull).
    claims_received: Counter,
    /// Certificates submitted to the coordinator, by whether it recorded them.
    certificates: Family<Labels, Counter>,
    /// Units held now (running or waiting for their quorum).
    held: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("fallow_worker");
        let m = Metrics {
            registry: Registry::default(),
            units: Family::default(),
            fuel: Counter::default(),
            busy: Counter::default(),
            idle: Counter::default(),
            claims_sent: Counter::default(),
            claims_received: Counter::default(),
            certificates: Family::default(),
            held: Gauge::default(),
        };
        registry.register(
            "units",
            "Executions by result (ok or the failure reason)",
            m.units.clone(),
        );
        registry.register("fuel", "Fuel used by successful executions", m.fuel.clone());
        registry.register(
            "busy_seconds",
            "Seconds slots spent running guest code",
            m.busy.clone(),
        );
        registry.register(
            "idle_seconds",
            "Seconds slots spent waiting for work",
            m.idle.clone(),
        );
        registry.register(
            "claims_sent",
            "Claims pushed to peers",
            m.claims_sent.clone(),
        );
        registry.register(
            "claims_received",
            "Claims received from peers",
            m.claims_received.clone(),
        );
        registry.register(
            "certificates",
            "Certificates submitted, by whether the coordinator recorded them",
            m.certificates.clone(),
        );
        registry.register(
            "units_held",
            "Units held now (running or awaiting quorum)",
            m.held.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn ran(&self, result: &'static str, fuel: u64, took: Duration) {
        self.units.get_or_create(&vec![("result", result)]).inc();
        self.fuel.inc_by(fuel);
        self.busy.inc_by(took.as_secs_f64());
    }

    pub(crate) fn idle(&self, d: Duration) {
        self.idle.inc_by(d.as_secs_f64());
    }

    pub(crate) fn claims_sent(&self, n: usize) {
        self.claims_sent.inc_by(n as u64);
    }

    pub(crate) fn claims_received(&self, n: usize) {
        self.claims_received.inc_by(n as u64);
    }

    pub(crate) fn certificate(&self, accepted: bool) {
        let label = if accepted { "accepted" } else { "duplicate" };
        self.certificates
            .get_or_create(&vec![("accepted", label)])
            .inc();
    }

    pub(crate) fn held(&self, n: usize) {
        self.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// Binds `addr` (so a bad address fails at start) and returns the server to spawn; it
/// serves `GET /metrics` until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("--metrics {addr}: {e}")))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let server = async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("metrics server stopped: {e}");
        }
    };
    Ok((local, server))
}
