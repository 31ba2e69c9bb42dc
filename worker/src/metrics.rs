//! `fallow worker --metrics ADDR`: the worker's counters in Prometheus text format
//! (prometheus-client), served read-only on their own small HTTP listener: executions by
//! result (trap reasons included), fuel, busy and idle time, the gossip [`Stats`] and the
//! SWIM admission check's refusals ([`Counters`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::membership::Counters;
use crate::{Error, Stats};

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
}

impl Metrics {
    /// The worker's metrics, with the gossip counters of `stats` and the membership's
    /// refusals (`drops`) read at each scrape.
    pub(crate) fn new(stats: Arc<Stats>, drops: Arc<Counters>) -> Self {
        let mut registry = Registry::with_prefix("fallow_worker");
        let m = Metrics {
            registry: Registry::default(),
            units: Family::default(),
            fuel: Counter::default(),
            busy: Counter::default(),
            idle: Counter::default(),
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
        registry.register_collector(Box::new(Gossip(stats)));
        registry.register_collector(Box::new(Membership(drops)));
        Metrics { registry, ..m }
    }

    /// One execution ended with `result` after `took`.
    pub(crate) fn ran(&self, result: &'static str, fuel: u64, took: Duration) {
        self.units.get_or_create(&vec![("result", result)]).inc();
        self.fuel.inc_by(fuel);
        self.busy.inc_by(took.as_secs_f64());
    }

    /// A slot waited `d` for work.
    pub(crate) fn idle(&self, d: Duration) {
        self.idle.inc_by(d.as_secs_f64());
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The gossip and board counters ([`Stats`]), read when scraped.
#[derive(Debug)]
struct Gossip(Arc<Stats>);

impl Collector for Gossip {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        for (name, help, value) in [
            (
                "gossip_exchanges_sent",
                "Exchanges sent to rendezvous boards",
                s.exchanges_sent,
            ),
            (
                "gossip_bytes_sent",
                "Encoded bytes of exchanges sent",
                s.exchange_bytes_sent,
            ),
            (
                "gossip_exchanges_failed",
                "Exchanges that failed",
                s.exchanges_failed,
            ),
            (
                "gossip_exchanges_served",
                "Exchanges this worker's board answered",
                s.exchanges_served,
            ),
            (
                "gossip_requests_refused",
                "Requests this worker's board refused whole",
                s.requests_refused,
            ),
            (
                "certificates",
                "Complete certificates submitted",
                s.certificates,
            ),
            (
                "partial_certificates",
                "Partial certificates submitted",
                s.partial_certificates,
            ),
            ("disputes", "Disputes reported", s.disputes),
            (
                "misbehaviour_reports",
                "Evidence of misbehaviour reported",
                s.misbehaviour_reports,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "board_rejections",
            "Messages this worker's board refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &s.rejections {
            let labels = vec![("reason", *reason)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The SWIM admission check's refusals and the live member count ([`Counters`]), read
/// when scraped.
#[derive(Debug)]
struct Membership(Arc<Counters>);

impl Collector for Membership {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "membership_drops",
            "SWIM datagrams refused before reaching the membership, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in self.0.by_reason() {
            let labels = vec![("reason", reason)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "membership_members_stripped",
            "Gossiped members dropped: without a valid credential, or over the per-source or table cap",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.members.load(Ordering::Relaxed)).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "membership_members",
            "Live SWIM members, this worker included (summed over its coordinators)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.live.load(Ordering::Relaxed) as i64).encode(metric)?;
        Ok(())
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
