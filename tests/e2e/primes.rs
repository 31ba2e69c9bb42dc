//! The primes project end to end, with and without a lying worker.

use std::time::Duration;

use crate::harness::{Cluster, n, project, sum_outputs};

#[test]
fn three_workers_count_the_primes_below_a_million() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--account", "alice", "--team", "lab"]);
    c.start_worker(&["--account", "bob", "--team", "lab"]);
    c.start_worker(&["--account", "carol"]);
    let manifest = project(
        c.dir.path(),
        "primes",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        // Fixed replication: with adaptive replication (the default) a worker that reaches
        // 10 confirmed results may run a unit alone, and the counts below assume two each.
        "replication = 2\nquorum = 2\nadaptive = false\n[inputs]\nsweep = { from = 0, to = 1_000_000, step = 50_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (20, 20, 0)
    );
    assert!(
        n(&status, "executions") >= 40,
        "every unit ran at least twice: {status}"
    );
    let out = c.results(id);
    assert_eq!(sum_outputs(&out), (78_498, 20));
    assert_eq!(
        std::fs::read_to_string(out.join("aggregate")).expect("aggregate"),
        "78498\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("failed.txt")).expect("failed.txt"),
        ""
    );
    // Credit went to the accounts, once per verified replica, and adds up.
    let accounts = c.accounts();
    let credited: u64 = accounts.iter().map(|a| a.2).sum();
    assert_eq!(credited, n(&status, "credit"), "{accounts:?}");
    let verified: u64 = accounts.iter().map(|a| a.1).sum();
    assert!(
        verified >= 40,
        "20 units, at least two accounts each: {accounts:?}"
    );
    let names: Vec<&str> = accounts.iter().map(|a| a.0.as_str()).collect();
    assert!(
        names.iter().all(|n| ["alice", "bob", "carol"].contains(n)),
        "{names:?}"
    );
}

#[test]
fn a_lying_worker_never_gets_its_output_into_the_results() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--fault", "corrupt-output"]);
    c.start_worker(&[]);
    c.start_worker(&[]);
    let manifest = project(
        c.dir.path(),
        "primes-small",
        artifacts::PRIMES,
        None,
        "replication = 2\n[inputs]\nsweep = { from = 0, to = 200_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (10, 0),
        "{status}"
    );
    let out = c.results(id);
    for entry in std::fs::read_dir(&out).expect("dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("read");
        assert!(
            !text.contains("corrupted"),
            "a corrupted output reached the results: {text:?}"
        );
    }
    assert_eq!(sum_outputs(&out), (17_984, 10));
    assert!(
        n(&status, "disputes") > 0,
        "the liar took part, so some units were disputed: {status}\n{}",
        c.logs()
    );
}
