//! One worker attached to two coordinators with resource shares 3:1.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, n, project};

/// Equal units: Monte Carlo pi over the same number of samples each.
const SAMPLES: u64 = 2_000_000;
const UNITS: u64 = 400;
/// Units verified over both coordinators before the split is measured.
const MEASURE_AT: u64 = 240;

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
        &["--cores", "2"],
    );
    let start = Instant::now();
    let (done_big, done_small) = loop {
        let (sa, sb) = (
            big.status(a).expect("status"),
            small.status(b).expect("status"),
        );
        let (va, vb) = (n(&sa, "verified"), n(&sb, "verified"));
        if va + vb >= MEASURE_AT {
            break (va, vb);
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {va} + {vb} units verified after 600 s\n{}\n{}",
            small.worker_log(w),
            big.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ratio = done_big as f64 / done_small.max(1) as f64;
    eprintln!("shares 300:100 -> units {done_big}:{done_small} (ratio {ratio:.2})");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "work split {done_big}:{done_small} = {ratio:.2}, not within 10 % of 3:1\n{}",
        small.worker_log(w)
    );
    assert!(
        done_big < UNITS && done_small < UNITS,
        "both still had work"
    );
}
