//! Commit–reveal over rendezvous boards between real worker processes, including one that
//! accepts no inbound connections (behind NAT).

use std::time::Duration;

use crate::harness::{Cluster, n, project, sum_outputs};

#[test]
fn a_worker_behind_nat_takes_full_part() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob", "--team", "lab"]);
    // The NAT worker picks its boards from the peers the coordinator lists: start it once
    // the others are listed, as in a fleet that is already running.
    let start = std::time::Instant::now();
    while c.coordinator_log().matches("worker registered").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first two workers never registered\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let nat = c.start_worker(&["--account", "behind-nat", "--no-inbound"]);
    let manifest = project(
        c.dir.path(),
        "primes-nat",
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\n[inputs]\nsweep = { from = 0, to = 300_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (15, 0),
        "{status}\n{}",
        c.logs()
    );
    assert_eq!(sum_outputs(&c.results(id)), (25_997, 15));
    let accounts = c.accounts();
    let behind_nat = accounts
        .iter()
        .find(|(name, _, _)| name == "behind-nat")
        .unwrap_or_else(|| panic!("no account behind-nat in {accounts:?}\n{}", c.logs()));
    assert!(
        behind_nat.1 > 0 && behind_nat.2 > 0,
        "the NAT worker's results were verified and credited: {accounts:?}\n{}",
        c.logs()
    );
    // Its shutdown summary: it exchanged with boards, and was never asked to be one.
    assert!(
        c.interrupt_worker(nat, Duration::from_secs(30)),
        "exits on Ctrl-C"
    );
    let log = c.worker_log(nat);
    assert!(
        log.contains("no inbound connections"),
        "it really ran without a peer service:\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("gossip: exchanges sent"))
        .unwrap_or_else(|| panic!("no gossip summary in\n{log}"));
    let sent: u64 = summary
        .split("exchanges sent ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable summary {summary:?}"));
    assert!(sent > 0, "{summary}");
    assert!(summary.contains("served 0,"), "{summary}");
}
