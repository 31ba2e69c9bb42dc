//! Crashes: the coordinator killed mid-run, a worker killed mid-unit.

use std::time::Duration;

use crate::harness::{Cluster, n, project, sum_outputs};

#[test]
fn coordinator_killed_mid_run_resumes_without_losing_or_doubling_results() {
    let mut c = Cluster::start(10);
    for _ in 0..3 {
        c.start_worker(&[]);
    }
    // 100 units: primes below two million (148,933 of them).
    let manifest = project(
        c.dir.path(),
        "primes-2m",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\n[inputs]\nsweep = { from = 0, to = 2_000_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let before = c.wait_until(id, Duration::from_secs(240), "some units verified", |s| {
        n(s, "verified") >= 15
    });
    assert!(
        n(&before, "verified") < 100,
        "the run ended before the kill; make it longer: {before}"
    );
    c.kill_coordinator();
    std::thread::sleep(Duration::from_millis(500));
    c.start_coordinator();
    let after = c.status(id).expect("status after restart");
    assert!(
        n(&after, "verified") >= n(&before, "verified"),
        "verified units lost: {before} -> {after}"
    );
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (100, 100, 0),
        "{status}"
    );
    let out = c.results(id);
    assert_eq!(sum_outputs(&out), (148_933, 100));
    assert_eq!(
        std::fs::read_to_string(out.join("aggregate")).expect("aggregate"),
        "148933\n"
    );
}

#[test]
fn a_worker_killed_mid_unit_has_its_units_reassigned_after_the_lease() {
    let mut c = Cluster::start(3);
    let doomed = c.start_worker(&[]);
    // Four units of 60 million Monte Carlo samples each: long enough to kill a worker mid-unit.
    let manifest = project(
        c.dir.path(),
        "pi",
        artifacts::PI,
        Some(artifacts::PI_REDUCE),
        "replication = 1\n[limits]\nfuel = 100_000_000_000\n[inputs]\nsweep = { from = 0, to = 240_000_000, step = 60_000_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(
        id,
        Duration::from_secs(60),
        "the first worker is running a unit",
        |s| n(s, "in_progress") >= 1,
    );
    std::thread::sleep(Duration::from_millis(300));
    c.kill_worker(doomed);
    let killed_at = c.status(id).expect("status");
    c.start_worker(&[]);
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (4, 0),
        "{status}"
    );
    assert!(
        n(&status, "executions") > n(&killed_at, "verified") + 4 - 1,
        "the killed worker's unit ran again elsewhere: {status}"
    );
    assert!(
        c.coordinator_log().contains("leases expired"),
        "the killed worker's lease expired and its unit was reassigned:\n{}",
        c.logs()
    );
    let out = c.results(id);
    let aggregate = std::fs::read_to_string(out.join("aggregate")).expect("aggregate");
    assert!(aggregate.starts_with("pi ~= 3.14"), "{aggregate}");
    assert!(aggregate.contains("of 240000000 samples"), "{aggregate}");
}

#[test]
fn ctrl_c_on_a_worker_hands_its_units_back_at_once() {
    // A long lease: if the units came back quickly, the worker handed them back.
    let mut c = Cluster::start(120);
    let w = c.start_worker(&["--drain-seconds", "1"]);
    let manifest = project(
        c.dir.path(),
        "pi-long",
        artifacts::PI,
        None,
        "replication = 2\n[limits]\nfuel = 1_000_000_000_000\n[inputs]\nsweep = { from = 0, to = 4_000_000_000, step = 1_000_000_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(
        id,
        Duration::from_secs(60),
        "the worker holds a unit",
        |s| n(s, "in_progress") >= 1,
    );
    assert!(
        c.interrupt_worker(w, Duration::from_secs(30)),
        "worker did not exit cleanly on Ctrl-C\n{}",
        c.logs()
    );
    let status = c.wait_until(
        id,
        Duration::from_secs(10),
        "units back in the queue",
        |s| n(s, "in_progress") == 0,
    );
    assert_eq!(n(&status, "verified"), 0);
    assert!(
        c.coordinator_log().contains("units handed back"),
        "{}",
        c.logs()
    );
}
