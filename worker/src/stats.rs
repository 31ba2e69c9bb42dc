//! Counters of a worker's gossip and board, readable at any time without locks (tests,
//! logs, and later a metrics endpoint).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::board::Reason;

/// Live counters; share as `Arc<Stats>` and read with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    exchanges_sent: AtomicU64,
    exchange_bytes_sent: AtomicU64,
    exchanges_failed: AtomicU64,
    exchanges_served: AtomicU64,
    requests_refused: AtomicU64,
    rejections: [AtomicU64; Reason::ALL.len()],
    certificates: AtomicU64,
    partial_certificates: AtomicU64,
    disputes: AtomicU64,
    misbehaviour_reports: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Exchanges this worker sent to boards (its own board included).
    pub exchanges_sent: u64,
    /// Encoded bytes of those requests.
    pub exchange_bytes_sent: u64,
    /// Exchanges that failed (board unreachable or refusing).
    pub exchanges_failed: u64,
    /// Exchanges this worker's board answered.
    pub exchanges_served: u64,
    /// Requests its board refused whole (oversized or malformed).
    pub requests_refused: u64,
    /// Messages its board refused, by [`Reason::as_str`]; only reasons seen appear.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Complete certificates submitted.
    pub certificates: u64,
    /// Partial certificates submitted.
    pub partial_certificates: u64,
    /// Disputes reported.
    pub disputes: u64,
    /// Evidence of misbehaviour reported to the coordinator.
    pub misbehaviour_reports: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            exchanges_sent: get(&self.exchanges_sent),
            exchange_bytes_sent: get(&self.exchange_bytes_sent),
            exchanges_failed: get(&self.exchanges_failed),
            exchanges_served: get(&self.exchanges_served),
            requests_refused: get(&self.requests_refused),
            rejections: Reason::ALL
                .iter()
                .zip(&self.rejections)
                .filter_map(|(r, c)| Some((r.as_str(), get(c))).filter(|(_, n)| *n > 0))
                .collect(),
            certificates: get(&self.certificates),
            partial_certificates: get(&self.partial_certificates),
            disputes: get(&self.disputes),
            misbehaviour_reports: get(&self.misbehaviour_reports),
        }
    }

    pub(crate) fn sent(&self, bytes: usize) {
        add(&self.exchanges_sent, 1);
        add(&self.exchange_bytes_sent, bytes as u64);
    }

    pub(crate) fn failed(&self) {
        add(&self.exchanges_failed, 1);
    }

    pub(crate) fn served(&self) {
        add(&self.exchanges_served, 1);
    }

    pub(crate) fn refused(&self) {
        add(&self.requests_refused, 1);
    }

    pub(crate) fn rejected(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            add(&self.rejections[i], 1);
        }
    }

    pub(crate) fn certificate(&self, complete: bool) {
        add(
            if complete {
                &self.certificates
            } else {
                &self.partial_certificates
            },
            1,
        );
    }

    pub(crate) fn dispute(&self) {
        add(&self.disputes, 1);
    }

    pub(crate) fn misbehaviour(&self) {
        add(&self.misbehaviour_reports, 1);
    }
}

impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exchanges sent {} ({} bytes, {} failed), served {}, requests refused {}, certificates {} (+{} partial), disputes {}, misbehaviour reports {}",
            self.exchanges_sent,
            self.exchange_bytes_sent,
            self.exchanges_failed,
            self.exchanges_served,
            self.requests_refused,
            self.certificates,
            self.partial_certificates,
            self.disputes,
            self.misbehaviour_reports
        )?;
        if !self.rejections.is_empty() {
            write!(f, ", board rejections")?;
            for (reason, n) in &self.rejections {
                write!(f, " {reason}={n}")?;
            }
        }
        Ok(())
    }
}
