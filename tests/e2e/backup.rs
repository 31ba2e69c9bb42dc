//! `fallow coordinator backup`: an online copy of the embedded store, restored in place of
//! a lost one, serves the same finished project.

use std::time::Duration;

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

#[test]
fn a_backup_taken_while_serving_restores_a_finished_project() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob"]);
    let manifest = project(
        c.dir.path(),
        "primes",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 1_000_000, step = 100_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(n(&status, "verified"), 10, "{status}");
    let accounts = c.accounts();

    // Taken while the coordinator runs.
    let copy = c.dir.path().join("fallow-backup.db");
    let out = fallow()
        .args(["coordinator", "backup", "--data"])
        .arg(c.coordinator_data())
        .arg("--out")
        .arg(&copy)
        .output()
        .expect("run fallow coordinator backup");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up "));

    // The store is lost; the backup is put in its place.
    c.kill_coordinator();
    let data = c.coordinator_data();
    for name in ["fallow.db", "fallow.db-wal", "fallow.db-shm"] {
        let _ = std::fs::remove_file(data.join(name));
    }
    std::fs::copy(&copy, data.join("fallow.db")).expect("restore");
    c.start_coordinator();
    let restored = c.status(id).expect("status after restore");
    assert_eq!(
        (
            n(&restored, "verified"),
            n(&restored, "credit"),
            restored["finished"].clone()
        ),
        (10, n(&status, "credit"), serde_json::Value::Bool(true)),
        "{restored}"
    );
    let results = c.results(id);
    assert_eq!(sum_outputs(&results), (78_498, 10));
    assert_eq!(
        std::fs::read_to_string(results.join("aggregate")).expect("aggregate"),
        "78498\n"
    );
    assert_eq!(c.accounts(), accounts);
}
