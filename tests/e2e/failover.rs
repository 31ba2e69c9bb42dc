//! A scheduling coordinator and an edge on one PostgreSQL ([`crate::testpg`]), workers
//! given both URLs: the edge serves at once with the deployment's certificate, the
//! scheduling one is killed -9 mid-run, the edge takes over with the same key (from the
//! database), the workers move to it, and the run completes with every unit verified and
//! credited once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, fallow, n, project, sum_outputs};
use crate::testpg::TestPg;

/// A coordinator started by hand (the cluster has one of its own), killed when dropped;
/// its stdout lines arrive on `lines`.
pub(crate) struct Standby {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Standby {
    pub(crate) fn start(dir: &Path, listen: &str, database: &str, lease_seconds: u64) -> Standby {
        Standby::named(dir, "standby", listen, database, lease_seconds)
    }

    /// A coordinator with data directory `dir/NAME`, logging to `dir/NAME.log` (appended
    /// to across restarts).
    pub(crate) fn named(
        dir: &Path,
        name: &str,
        listen: &str,
        database: &str,
        lease_seconds: u64,
    ) -> Standby {
        Standby::spawn(dir, name, listen, database, lease_seconds, &["--tls"])
    }

    /// [`Standby::named`] serving plain HTTP (on loopback).
    pub(crate) fn plain(
        dir: &Path,
        name: &str,
        listen: &str,
        database: &str,
        lease_seconds: u64,
    ) -> Standby {
        Standby::spawn(dir, name, listen, database, lease_seconds, &[])
    }

    fn spawn(
        dir: &Path,
        name: &str,
        listen: &str,
        database: &str,
        lease_seconds: u64,
        extra: &[&str],
    ) -> Standby {
        let log = dir.join(format!("{name}.log"));
        let mut child = fallow()
            .args(["coordinator", "--listen", listen, "--database", database])
            .args(extra)
            .args(["--lease-seconds", &lease_seconds.to_string(), "--data"])
            .arg(dir.join(name))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .spawn()
            .expect("start the standby");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Standby { child, lines, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log says `what`, or panics with the log after `limit`.
    pub(crate) fn wait_log(&self, what: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(
                start.elapsed() < limit,
                "the standby never said {what:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The next stdout line within `limit`.
    pub(crate) fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no stdout line from the standby ({e}): {}", self.log()))
    }
}

impl Standby {
    /// kill -9.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Reads its announcement (`listening on`, … `dashboard on`) and returns the lines.
    pub(crate) fn announced(&self) -> Vec<String> {
        let mut printed = Vec::new();
        loop {
            let line = self.line(Duration::from_secs(60));
            let done = line.starts_with("dashboard on ");
            printed.push(line);
            if done {
                return printed;
            }
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    crate::harness::free_port().port()
}

#[test]
fn the_standby_takes_over_a_killed_coordinator_and_workers_follow() {
    let pg = TestPg::start();
    let url = pg.url();
    let lease = 30;
    let mut c = Cluster::start_with(lease, &["--database", &url, "--tls"], |_| {});
    let pin = c.fingerprint.clone().expect("TLS: a fingerprint");
    let active = c.url.clone();
    // The edge's address is fixed up front: workers are given it with the other.
    let standby_addr = format!("127.0.0.1:{}", free_port());
    let standby = Standby::start(c.dir.path(), &standby_addr, &url, lease);
    standby.wait_log("edge:", Duration::from_secs(60));
    assert!(
        standby.log().contains("schedules database"),
        "the edge says who schedules the database: {}",
        standby.log()
    );
    // It serves at once, with the deployment's certificate (the same pin: it is in the
    // database), as the operator's scripts read it.
    let listening = standby.line(Duration::from_secs(60));
    assert_eq!(
        listening,
        format!("listening on {standby_addr}"),
        "{}",
        standby.log()
    );
    let mut printed = Vec::new();
    loop {
        let line = standby.line(Duration::from_secs(10));
        let done = line.starts_with("dashboard on ");
        printed.push(line);
        if done {
            break;
        }
    }
    assert!(
        printed.contains(&format!("tls fingerprint {pin}")),
        "the edge serves another certificate: {printed:?}"
    );
    // The same certificate, so the same pin: it is the deployment's, in the database.
    let hex = pin.strip_prefix("sha256:").unwrap_or(&pin);
    let second = format!("https://{standby_addr}#sha256={hex}");
    let both = format!("{active},{second}");
    for account in ["alice", "bob", "carol", "dave"] {
        c.start_worker_via(&both, &["--account", account]);
    }
    // 100 units: primes below two million (148,933 of them), two matching results each.
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
    standby.wait_log("taking over", Duration::from_secs(60));
    // The CLI takes the same list (the dead one is passed over) and the same pin.
    c.url = both.clone();
    let after = c.status(id).expect("status from the standby");
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
    // Each unit credited to the two accounts of its certificate (three if a reissued
    // replica also matched), never twice to one account.
    let accounts = c.accounts();
    let grants: u64 = accounts.iter().map(|a| a.1).sum();
    assert!(
        accounts.iter().all(|a| a.1 <= 100) && (200..=300).contains(&grants),
        "credit lost or doubled: {accounts:?}"
    );
    // Every worker moved to the standby under its own key, in words.
    for i in 0..4 {
        let log = c.worker_log(i);
        assert!(
            log.contains(&format!("moving to {second}")),
            "worker {i} did not move: {log}"
        );
    }
}
