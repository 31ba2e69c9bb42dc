//! Authenticated worker calls: a public key alone authorizes nothing.
//!
//! Every coordinator call a worker makes that changes state or reveals what the worker
//! holds (`RegisterWorker`, `Heartbeat`, `RequestWork`, `ReportFailure`,
//! `SubmitCertificate`, `SubmitCertificates`, `ReportDispute`, `ReturnUnits`,
//! `ReportMisbehaviour`) carries a
//! [`CallStamp`] in its `fallow-call` request header: a timestamp and the worker's ed25519
//! signature over
//!
//! ```text
//! "fallow/call/v1\0" ‖ len(method) ‖ method ‖ timestamp_us ‖ BLAKE3(encoded request body)
//! ```
//!
//! The worker key it is checked against is the one the request body names (its
//! `public_key`, `submitter_key` or `reporter_key`), so a request naming a victim's key
//! must be signed by the victim. The signature binds the method (a heartbeat cannot be
//! replayed as a failure report) and every byte of the body. Replays are refused by
//! [`ReplayGuard`]: a stamp must lie within [`MAX_SKEW_US`] of the coordinator's clock and
//! be new for its worker (each worker's stamps strictly increase: [`Stamper`]).
//!
//! Workers keep their stamps on the coordinator's clock: every `RegisterWorker` and
//! `Heartbeat` answer carries the coordinator's time, and a refusal for a stamp out of
//! range carries it too (header [`NOW_HEADER`]), so a volunteer whose clock is wrong still
//! gets in. A coordinator restart forgets the per-worker history; what an eavesdropper on
//! a plaintext (loopback) connection could replay then is bounded by [`MAX_SKEW_US`].
//! Off loopback the coordinator API is TLS, so nobody sees a stamp to replay.
//!
//! Sans-IO: time is an argument everywhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::{Error, Identity, WorkerId};

/// Domain separation for call signatures.
const CALL_CONTEXT: &[u8] = b"fallow/call/v1\0";

/// The request header that carries a [`CallStamp`].
pub const CALL_HEADER: &str = "fallow-call";

/// The response header with the coordinator's clock (Unix milliseconds), sent with a
/// refusal for a stamp out of range so the worker can correct its clock and retry.
pub const NOW_HEADER: &str = "fallow-now";

/// How far a stamp may be from the coordinator's clock: one minute either way. Workers
/// stamp on the coordinator's clock (learnt at registration and with every heartbeat), so
/// honest stamps are off by a round trip, not by the volunteer's clock error.
pub const MAX_SKEW_US: u64 = 60_000_000;

/// How far below a worker's newest stamp a stamp may still arrive (concurrent calls on
/// one connection may overtake each other): five seconds. Older ones are refused as
/// replays, so the guard remembers at most five seconds of each worker's calls.
pub const REORDER_US: u64 = 5_000_000;

/// Most workers [`ReplayGuard`] tracks at once (about 100 bytes each plus their recent
/// stamps); past it the workers quiet longest are forgotten first.
pub const MAX_TRACKED_WORKERS: usize = 200_000;

/// Most stamps remembered per worker within [`REORDER_US`]; a worker sending more than
/// this many calls in five seconds has the rest refused until its window moves on.
pub const MAX_STAMPS_PER_WORKER: usize = 4_096;

/// A call's timestamp (microseconds on the coordinator's clock) and its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStamp {
    /// Unix microseconds on the coordinator's clock, strictly increasing per worker.
    pub timestamp_us: u64,
    /// ed25519 signature over [`message`].
    pub signature: [u8; 64],
}

impl CallStamp {
    /// The header value: `TIMESTAMP.SIGNATURE_HEX`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.timestamp_us, hex::encode(self.signature))
    }

    /// Parses a header value made by [`CallStamp::encode`].
    pub fn parse(value: &str) -> Result<CallStamp, Error> {
        let bad = |problem: &str| Error::malformed("fallow-call header", problem.to_string());
        let (ts, sig) = value
            .split_once('.')
            .ok_or_else(|| bad("expected TIMESTAMP.SIGNATURE"))?;
        let timestamp_us = ts
            .parse::<u64>()
            .map_err(|_| bad("the timestamp is not a whole number of microseconds"))?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(sig, &mut signature)
            .map_err(|_| bad("the signature is not 64 bytes of hex"))?;
        Ok(CallStamp {
            timestamp_us,
            signature,
        })
    }
}

/// What a call's signature covers.
fn message(method: &str, timestamp_us: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CALL_CONTEXT.len() + 8 + method.len() + 8 + 32);
    m.extend_from_slice(CALL_CONTEXT);
    m.extend_from_slice(&(method.len() as u64).to_le_bytes());
    m.extend_from_slice(method.as_bytes());
    m.extend_from_slice(&timestamp_us.to_le_bytes());
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

impl Identity {
    /// Signs a call to `method` (e.g. `Heartbeat`) whose encoded request body is `body`.
    pub fn sign_call(&self, method: &str, timestamp_us: u64, body: &[u8]) -> CallStamp {
        CallStamp {
            timestamp_us,
            signature: self.sign_raw(&message(method, timestamp_us, body)),
        }
    }
}

/// Checks that `stamp` is `worker`'s signature over a call to `method` with `body`. The
/// expensive half of authentication (an ed25519 verification); no state is touched.
pub fn verify(worker: WorkerId, method: &str, stamp: &CallStamp, body: &[u8]) -> Result<(), Error> {
    crate::claim::verify_signature(
        worker,
        &message(method, stamp.timestamp_us, body),
        &stamp.signature,
    )
    .map_err(|_| {
        Error::malformed(
            "fallow-call header",
            format!("the signature is not worker {worker}'s over this {method} call"),
        )
    })
}

/// Why [`ReplayGuard::admit`] refused a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Further than [`MAX_SKEW_US`] from the coordinator's clock (`now_us`).
    Skew {
        /// The stamp.
        stamp_us: u64,
        /// The coordinator's clock.
        now_us: u64,
    },
    /// Seen before, or older than the worker's window: a replay.
    Replayed,
    /// The worker sent more than [`MAX_STAMPS_PER_WORKER`] calls within [`REORDER_US`].
    TooMany,
    /// [`MAX_TRACKED_WORKERS`] other workers called within the last minute.
    Full,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Skew { stamp_us, now_us } => write!(
                f,
                "the call is stamped {:+.1} s from the coordinator's clock (at most {} s either way); the coordinator's time is in the {NOW_HEADER} header",
                (*stamp_us as f64 - *now_us as f64) / 1e6,
                MAX_SKEW_US / 1_000_000
            ),
            Refusal::Replayed => write!(
                f,
                "the call's stamp was used before or is older than this worker's recent calls: a replay"
            ),
            Refusal::TooMany => write!(
                f,
                "more than {MAX_STAMPS_PER_WORKER} calls within {} s",
                REORDER_US / 1_000_000
            ),
            Refusal::Full => write!(
                f,
                "{MAX_TRACKED_WORKERS} other workers called within the last minute; retry later"
            ),
        }
    }
}

/// The stamps a coordinator has accepted lately, per worker: refuses a stamp out of range
/// of its clock, or one already used. Memory is bounded: each worker keeps only the stamps
/// within [`REORDER_US`] of its newest, and at most [`MAX_TRACKED_WORKERS`] workers are
/// tracked (callers admit only registered workers, so fresh keys cannot fill it).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    workers: HashMap<WorkerId, Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    newest: u64,
    seen: BTreeSet<u64>,
}

impl ReplayGuard {
    /// Admits `stamp_us` from `worker` at coordinator time `now_us`, or says why not. Call
    /// only after [`verify`] succeeded: only then is the stamp the worker's own.
    pub fn admit(&mut self, worker: WorkerId, stamp_us: u64, now_us: u64) -> Result<(), Refusal> {
        if stamp_us.abs_diff(now_us) > MAX_SKEW_US {
            return Err(Refusal::Skew { stamp_us, now_us });
        }
        if !self.workers.contains_key(&worker) && self.workers.len() >= MAX_TRACKED_WORKERS {
            self.forget_quiet(now_us);
            if self.workers.len() >= MAX_TRACKED_WORKERS {
                return Err(Refusal::Full);
            }
        }
        let recent = self.workers.entry(worker).or_default();
        if stamp_us + REORDER_US <= recent.newest || recent.seen.contains(&stamp_us) {
            return Err(Refusal::Replayed);
        }
        if stamp_us > recent.newest {
            recent.newest = stamp_us;
            let floor = stamp_us.saturating_sub(REORDER_US);
            recent.seen = recent.seen.split_off(&floor);
        }
        if recent.seen.len() >= MAX_STAMPS_PER_WORKER {
            return Err(Refusal::TooMany);
        }
        recent.seen.insert(stamp_us);
        Ok(())
    }

    /// How many workers are tracked.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no worker is tracked.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Forgets workers whose newest stamp is out of the clock range: a stamp of theirs
    /// from before that would be refused as skewed anyway, so nothing replayable is lost.
    pub fn forget_quiet(&mut self, now_us: u64) {
        self.workers
            .retain(|_, r| r.newest.saturating_add(MAX_SKEW_US) >= now_us);
    }
}

/// A worker's source of stamps on the coordinator's clock: the local clock plus the
/// offset last learnt from the coordinator, never repeating or going back.
#[derive(Debug, Default)]
pub struct Stamper {
    offset_us: AtomicI64,
    last_us: AtomicU64,
}

impl Stamper {
    /// Learns the coordinator's clock: `coordinator_ms` read at local time `local_us`.
    pub fn learn(&self, coordinator_ms: u64, local_us: u64) {
        let offset = (coordinator_ms as i128 * 1000 - local_us as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        self.offset_us.store(offset, Ordering::Relaxed);
    }

    /// The coordinator's clock (µs) at local time `local_us`, as far as we know it.
    pub fn now_us(&self, local_us: u64) -> u64 {
        local_us.saturating_add_signed(self.offset_us.load(Ordering::Relaxed))
    }

    /// The next stamp at local time `local_us`: strictly above every earlier one.
    pub fn next(&self, local_us: u64) -> u64 {
        let now = local_us.saturating_add_signed(self.offset_us.load(Ordering::Relaxed));
        let mut last = self.last_us.load(Ordering::Relaxed);
        loop {
            let stamp = now.max(last + 1);
            match self
                .last_us
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return stamp,
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000_000;

    #[test]
    fn a_stamp_binds_worker_method_time_and_body() {
        let id = Identity::from_seed([3; 32]);
        let other = Identity::from_seed([4; 32]);
        let stamp = id.sign_call("Heartbeat", NOW, b"body");
        assert!(verify(id.id(), "Heartbeat", &stamp, b"body").is_ok());
        assert!(verify(other.id(), "Heartbeat", &stamp, b"body").is_err());
        assert!(verify(id.id(), "ReportFailure", &stamp, b"body").is_err());
        assert!(verify(id.id(), "Heartbeat", &stamp, b"bodY").is_err());
        let moved = CallStamp {
            timestamp_us: NOW + 1,
            ..stamp
        };
        assert!(verify(id.id(), "Heartbeat", &moved, b"body").is_err());
        assert_eq!(CallStamp::parse(&stamp.encode()).ok(), Some(stamp));
    }

    #[test]
    fn malformed_headers_are_named() {
        for bad in ["", "12", "x.00", "12.zz", "12.00ff", "-1.00"] {
            let e = CallStamp::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("fallow-call header"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_guard_refuses_replays_old_stamps_and_skew() {
        let w = Identity::from_seed([5; 32]).id();
        let v = Identity::from_seed([6; 32]).id();
        let mut g = ReplayGuard::default();
        assert_eq!(g.admit(w, NOW, NOW), Ok(()));
        assert_eq!(g.admit(w, NOW, NOW), Err(Refusal::Replayed));
        // Another worker's stamps are its own.
        assert_eq!(g.admit(v, NOW, NOW), Ok(()));
        // Overtaken calls within the reorder window pass once.
        assert_eq!(g.admit(w, NOW + 2_000_000, NOW), Ok(()));
        assert_eq!(g.admit(w, NOW + 1_000, NOW), Ok(()));
        assert_eq!(g.admit(w, NOW + 1_000, NOW), Err(Refusal::Replayed));
        // Older than the window: refused even if never seen.
        assert_eq!(
            g.admit(w, NOW + 2_000_000 - REORDER_US, NOW),
            Err(Refusal::Replayed)
        );
        assert!(matches!(
            g.admit(w, NOW + MAX_SKEW_US + 1, NOW),
            Err(Refusal::Skew { .. })
        ));
        assert!(matches!(
            g.admit(v, NOW - MAX_SKEW_US - 1, NOW),
            Err(Refusal::Skew { .. })
        ));
        // The window keeps only recent stamps.
        for i in 0..10_000 {
            let _ = g.admit(w, NOW + 10_000_000 + i * 1_000, NOW + 10_000_000);
        }
        assert!(g.workers[&w].seen.len() <= MAX_STAMPS_PER_WORKER);
        g.forget_quiet(NOW + 10 * MAX_SKEW_US);
        assert!(g.is_empty());
    }

    #[test]
    fn stamps_follow_the_coordinators_clock_and_never_repeat() {
        let s = Stamper::default();
        // The local clock is an hour behind the coordinator's.
        let local = NOW - 3_600_000_000;
        s.learn(NOW / 1000, local);
        let a = s.next(local);
        assert_eq!(a, NOW);
        let b = s.next(local);
        assert!(b > a);
        // The local clock steps back: stamps still increase.
        assert!(s.next(local - 1_000_000) > b);
    }
}
