//! Authenticated worker calls (`protocol::call`) on arbitrary input: the `fallow-call`
//! header parser, signature checks, and the coordinator's replay guard under an arbitrary
//! sequence of stamps.
//!
//! Properties beyond "does not panic":
//! - a header the parser accepts re-encodes to a header that parses to the same stamp;
//! - a stamp signed by a worker verifies for exactly that worker, method and body;
//! - the replay guard never admits one (worker, stamp) twice while the clock moves
//!   forward, and never admits a stamp more than `MAX_SKEW_US` from the clock.

#![no_main]

use std::collections::HashSet;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol::Identity;
use protocol::call::{self, CallStamp, MAX_SKEW_US, ReplayGuard, Refusal};

#[derive(Debug, Arbitrary)]
enum Step {
    /// Parse a header value.
    Header(String),
    /// Sign and verify a call by worker `signer` (of 4), checked as worker `as_worker`.
    Sign {
        signer: u8,
        as_worker: u8,
        method: String,
        body: Vec<u8>,
        other_body: Vec<u8>,
        timestamp_us: u64,
    },
    /// Offer a stamp from worker `worker` (of 4), `offset_us` from the clock.
    Admit { worker: u8, offset_us: i32 },
    /// Move the clock forward.
    Tick(u32),
}

/// Four workers (deriving a key pair costs more than the rest of an input).
static IDS: std::sync::LazyLock<Vec<Identity>> =
    std::sync::LazyLock::new(|| (0..4u8).map(|i| Identity::from_seed([i + 1; 32])).collect());

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let ids = &*IDS;
    let mut guard = ReplayGuard::default();
    let mut admitted = HashSet::new();
    let mut now: u64 = 1_800_000_000_000_000;
    // `arbitrary` keeps producing (zeroed) values from exhausted data: stop when it is used up.
    // Signing dominates the cost: at most two signed calls per input, so most of the time
    // goes to the parser and the guard.
    let mut signatures = 0;
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        match step {
            Step::Header(value) => {
                if let Ok(stamp) = CallStamp::parse(&value) {
                    assert_eq!(CallStamp::parse(&stamp.encode()).ok(), Some(stamp));
                }
            }
            Step::Sign {
                signer,
                as_worker,
                method,
                body,
                other_body,
                timestamp_us,
            } => {
                signatures += 1;
                if signatures > 2 {
                    continue;
                }
                let (s, w) = (&ids[signer as usize % 4], &ids[as_worker as usize % 4]);
                let stamp = s.sign_call(&method, timestamp_us, &body);
                let parsed = CallStamp::parse(&stamp.encode()).expect("own header parses");
                let ok = call::verify(w.id(), &method, &parsed, &body).is_ok();
                assert_eq!(ok, s.id() == w.id(), "verifies exactly for its signer");
                if other_body != body {
                    assert!(call::verify(s.id(), &method, &parsed, &other_body).is_err());
                }
            }
            Step::Admit { worker, offset_us } => {
                let id = ids[worker as usize % 4].id();
                let stamp = now.saturating_add_signed(i64::from(offset_us) * 64);
                match guard.admit(id, stamp, now) {
                    Ok(()) => {
                        assert!(stamp.abs_diff(now) <= MAX_SKEW_US, "admitted a skewed stamp");
                        assert!(admitted.insert((id, stamp)), "admitted a stamp twice");
                    }
                    Err(Refusal::Skew { .. }) => assert!(stamp.abs_diff(now) > MAX_SKEW_US),
                    Err(_) => {}
                }
            }
            Step::Tick(us) => {
                now += u64::from(us);
                if us % 7 == 0 {
                    guard.forget_quiet(now);
                }
            }
        }
    }
    assert!(guard.len() <= 4);
});
