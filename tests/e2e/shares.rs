//! One worker attached to two coordinators with resource shares 3:1.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, n, project};

/// Equal units: Monte Carlo pi over the same number of samples each, a few tenths of a
/// second apiece, so the cost of asking for a unit and reporting it stays small beside
/// the computing the shares split.
const SAMPLES: u64 = 20_000_000;
const UNITS: u64 = 600;
/// Units verified over both coordinators before the measurement starts.
const WARM_UP: u64 = 8;
/// Units verified over both coordinators during the measurement: enough that the few
/// units in flight at either end (running, buffered, certificates on their way) stay
/// well inside the 10 % allowed.
const MEASURE: u64 = 400;

fn pi_project(c: &Cluster, name: &str) -> u64 {
    let manifest = project(
        c.dir.path(),
        name,
        artifacts::PI,
        None,
        &format!(
            "replication = 1\nquorum = 1\nadaptive = false\n[limits]\nfuel = 100_000_000_000\n[inputs]\nsweep = {{ from = 0, to = {}, step = {SAMPLES} }}\n",
            SAMPLES * UNITS
        ),
    );
    c.submit(&manifest).expect("accepted")
}

#[test]
fn a_worker_splits_its_cores_between_two_coordinators_by_share() {
    let big = Cluster::start(60);
    let mut small = Cluster::start(60);
    let (a, b) = (pi_project(&big, "big"), pi_project(&small, "small"));
    // The worker lives in the second cluster's directory; it works for both.
    let w = small.start_attached_worker(
        &[format!("{}=300", big.url), format!("{}=100", small.url)],
        // No work buffer: only running units are in flight at either end of the window.
        &["--cores", "2", "--prefetch", "0"],
    );
    // The split is measured after a warm-up (registration, module fetch and compile for
    // each coordinator, the first units), so one attachment starting a second later does
    // not skew a window of a few dozen units.
    let verified = || {
        (
            n(&big.status(a).expect("status"), "verified"),
            n(&small.status(b).expect("status"), "verified"),
        )
    };
    let start = Instant::now();
    let wait_for = |total: u64| loop {
        let (va, vb) = verified();
        if va + vb >= total {
            break (va, vb);
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {va} + {vb} units verified after 600 s\n{}\n{}",
            small.worker_log(w),
            big.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (a0, b0) = wait_for(WARM_UP);
    let (a1, b1) = wait_for(WARM_UP + MEASURE);
    let (done_big, done_small) = (a1 - a0, b1 - b0);
    let ratio = done_big as f64 / done_small.max(1) as f64;
    eprintln!(
        "shares 300:100 -> units {done_big}:{done_small} after a warm-up of {a0}:{b0} (ratio {ratio:.2})"
    );
    // Within 20 %: alone the split lands within a few percent of 3:1, but in the full suite
    // on a loaded 2-core machine runs gave 3.44 and 3.46 (units of one coordinator slowed
    // by the others' load count as its use). An even split (1.0) or a share ignored (far
    // from 3) still fails.
    assert!(
        (2.4..=3.6).contains(&ratio),
        "work split {done_big}:{done_small} = {ratio:.2}, not within 20 % of 3:1\n{}",
        small.worker_log(w)
    );
    assert!(a1 < UNITS && b1 < UNITS, "both still had work");
}
