//! A coordinator on PostgreSQL (`--database`): a throwaway cluster ([`crate::testpg`]),
//! real workers and a real project, the coordinator killed mid-run and restarted.

use std::time::Duration;

use crate::harness::{Cluster, n, project, sum_outputs};
use crate::testpg::TestPg;

#[test]
fn a_coordinator_on_postgres_is_killed_mid_run_and_loses_nothing_verified() {
    let pg = TestPg::start();
    let url = pg.url();
    let mut c = Cluster::start_with(10, &["--database", &url], |_| {});
    c.start_worker(&["--account", "alice", "--team", "lab"]);
    c.start_worker(&["--account", "bob", "--team", "lab"]);
    c.start_worker(&["--account", "carol"]);
    // 100 units: primes below two million (148,933 of them). Fixed replication: two
    // matching results per unit.
    let manifest = project(
        c.dir.path(),
        "primes-2m",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 2_000_000, step = 20_000 }\n",
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
    // Each unit credited to the two accounts of its certificate, once.
    let accounts = c.accounts();
    let grants: u64 = accounts.iter().map(|a| a.1).sum();
    assert!(
        accounts.iter().all(|a| a.1 <= 100) && (200..=300).contains(&grants),
        "credit lost or doubled: {accounts:?}"
    );
    // The store is in PostgreSQL: nothing of it in the data directory.
    assert!(
        !c.coordinator_data().join("fallow.db").exists(),
        "a SQLite store was made beside --database"
    );

    // Stopped and started again on the same database: the same finished project, the
    // same results, the same credit.
    c.kill_coordinator();
    c.start_coordinator();
    let again = c.status(id).expect("status after the second restart");
    assert_eq!(
        (
            n(&again, "verified"),
            n(&again, "credit"),
            again["finished"].clone()
        ),
        (100, n(&status, "credit"), serde_json::Value::Bool(true)),
        "{again}"
    );
    assert_eq!(sum_outputs(&c.results(id)), (148_933, 100));
    assert_eq!(c.accounts(), accounts);
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = crate::harness::fallow()
        .args(["coordinator", "--listen", "127.0.0.1:0", "--database"])
        .arg("mysql://root:secret@127.0.0.1/fallow")
        .arg("--data")
        .arg(dir.path())
        .output()
        .expect("run fallow coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--database mysql://root@127.0.0.1/fallow: must be a postgres://"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}
