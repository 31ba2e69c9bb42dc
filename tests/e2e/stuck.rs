//! Issue 18, "never stuck, never silent": a worker's own trouble (a module-cache race, a
//! local I/O error, a cache it cannot write) never fails a good unit; a unit that needs a
//! worker of another account says so; a suspended worker is visible and hands its units
//! back after its grace, so the fleet finishes without it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dashboard::http_get;
use crate::harness::{Cluster, PRIMES_BELOW_TWO_BILLION, fallow, n, project, sum_outputs};

/// Polls `what` until it returns `Some`, or panics with the logs after `limit` (generous:
/// the machine may be loaded; nothing here asserts how long anything takes).
fn poll<T>(c: &Cluster, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not reached in {limit:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every worker log and the coordinator's, for searching.
fn all_logs(c: &Cluster, workers: usize) -> String {
    let mut all = c.coordinator_log();
    for i in 0..workers {
        all.push_str(&c.worker_logs(i));
    }
    all
}

fn addr(c: &Cluster) -> SocketAddr {
    c.addr.parse().expect("coordinator address")
}

/// Primes in `[0, to)` over `units` equal units, `replication` executions of which
/// `quorum` must agree.
fn primes(c: &Cluster, name: &str, to: u64, units: u64, replication: u32, quorum: u32) -> u64 {
    primes_with(c, name, artifacts::PRIMES, to, units, replication, quorum)
}

fn primes_with(
    c: &Cluster,
    name: &str,
    wasm: &[u8],
    to: u64,
    units: u64,
    replication: u32,
    quorum: u32,
) -> u64 {
    let manifest = project(
        c.dir.path(),
        name,
        wasm,
        None,
        &format!(
            "replication = {replication}\nquorum = {quorum}\nadaptive = false\n\
             [inputs]\nsweep = {{ from = 0, to = {to}, step = {} }}\n",
            to / units
        ),
    );
    c.submit(&manifest).expect("accepted")
}

/// `wasm` with a custom section of `pad` bytes appended (ignored by the engine): a module
/// the size of a real one, whose download and write take long enough for concurrent
/// fetches to overlap.
fn padded(wasm: &[u8], pad: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(1 + name.len() + pad, &mut out);
    leb(name.len(), &mut out);
    out.extend_from_slice(name);
    out.resize(out.len() + pad, 0x5a);
    out
}

/// Before: two cores (or a core and its prefetch) fetching one module at once wrote the
/// same `<digest>.tmp`; the second rename failed and the unit was reported `bad_module`,
/// using up that account's turn: with two workers and replication 2 the unit then waited
/// for ever. Now each module is fetched once per worker however many cores ask.
#[test]
fn workers_with_all_their_cores_share_one_module_across_three_projects() {
    let mut c = Cluster::start(30);
    // Submitted at once, before any worker: every core of both workers asks for work at
    // the same moment and gets units of the same module, large enough (16 MiB) for concurrent downloads and writes to overlap.
    let module = padded(artifacts::PRIMES, 16 << 20);
    let ids: Vec<u64> = ["left", "middle", "right"]
        .iter()
        .map(|name| primes_with(&c, name, &module, 600_000, 6, 2, 2))
        .collect();
    // `--attach` without `--cores`: the default (all cores) and the default prefetch.
    for _ in 0..2 {
        c.start_attached_worker(&[c.url.clone()], &[]);
    }
    for &id in &ids {
        let s = c.wait_finished(id, Duration::from_secs(300));
        assert_eq!(
            (n(&s, "verified"), n(&s, "failed")),
            (6, 0),
            "project {id}: {s}"
        );
        assert_eq!(sum_outputs(&c.results(id)), (49_098, 6), "project {id}");
    }
    let logs = all_logs(&c, 2);
    for bad in ["bad_module", "BadModule", "No such file or directory"] {
        assert!(!logs.contains(bad), "{bad} in the logs:\n{logs}");
    }
}

/// Replication equal to the fleet size: every account must run every unit. One worker's
/// first unit hits an injected local I/O error (it hands the unit back and stays eligible)
/// and another cannot write its module cache (it compiles from memory). Before a third
/// account is online, status and the log say which units need one.
#[test]
fn a_fleet_as_small_as_the_replication_completes_after_worker_side_failures() {
    let mut c = Cluster::start(30);
    let id = primes(&c, "small-fleet", 300_000, 3, 3, 3);
    c.start_worker(&["--fault", "local-failure-once"]);
    // A file where the module cache directory should be: no cache can be written there.
    let w1 = c.dir.path().join("w1");
    std::fs::create_dir_all(&w1).expect("w1 data dir");
    std::fs::write(w1.join("modules"), b"not a directory").expect("blocker");
    c.start_worker(&[]);

    // Two accounts for a unit that needs three: said in words, not silence. Polled until
    // both are online: the second to register may come a moment after the first unit ran,
    // and until then the status rightly says "the only online account has run it".
    c.wait_until(
        id,
        Duration::from_secs(240),
        "units waiting on a third account",
        |s| {
            s["waiting"].as_array().is_some_and(|w| {
                w.iter().any(|said| {
                    said.as_str().is_some_and(|said| {
                        said.contains(
                            "needs a worker of another account: all 2 online accounts have run it",
                        )
                    })
                })
            })
        },
    );
    // The text says the same. Polled: on a loaded machine a late heartbeat can leave no
    // account online for a moment, and then nothing waits on "another account".
    poll(
        &c,
        Duration::from_secs(60),
        "the waiting unit in text",
        || {
            let out = c.cli(&["status", &id.to_string()]);
            String::from_utf8_lossy(&out.stdout)
                .contains("needs a worker of another account")
                .then_some(())
        },
    );
    poll(
        &c,
        Duration::from_secs(60),
        "the waiting unit logged",
        || {
            c.coordinator_log()
                .contains("needs a worker of another account")
                .then_some(())
        },
    );

    c.start_worker(&[]);
    let s = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!((n(&s, "verified"), n(&s, "failed")), (3, 0), "{s}");
    assert!(s["waiting"].as_array().is_none_or(|w| w.is_empty()), "{s}");
    assert_eq!(sum_outputs(&c.results(id)), (25_997, 3));
    assert!(
        c.worker_logs(0).contains("handing the unit back"),
        "{}",
        c.worker_logs(0)
    );
    assert!(
        c.worker_logs(1).contains("compiling it from memory"),
        "{}",
        c.worker_logs(1)
    );
    let logs = all_logs(&c, 3);
    assert!(!logs.contains("bad_module"), "{logs}");
}

/// Before: a suspended worker's heartbeats renewed its leases for ever, and nothing said
/// it was suspended. Now `/api/workers` and status say it, and after its grace it hands
/// back what it holds without a result or checkpoint; another worker verifies those.
#[test]
fn a_suspended_worker_is_shown_and_hands_its_units_back_after_the_grace() {
    let mut c = Cluster::start(30);
    // Units of a second or so each: the worker is still busy when it is suspended.
    let id = primes(&c, "suspended", 2_000_000_000, 20, 1, 1);
    let a = c.start_worker(&["--suspend-hand-back-seconds", "3"]);
    c.wait_until(id, Duration::from_secs(240), "a first unit", |s| {
        n(s, "verified") >= 1
    });
    let data = c.worker_dir(a);
    suspend(&data);

    let row = poll(&c, Duration::from_secs(60), "shown suspended", || {
        let workers: Value =
            serde_json::from_str(&http_get(addr(&c), "/api/workers")).expect("JSON");
        workers["workers"]
            .as_array()?
            .iter()
            .find(|w| w["state"] == "suspended")
            .cloned()
    });
    assert!(
        row["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("fallow worker suspend")),
        "{row}"
    );
    poll(&c, Duration::from_secs(60), "units handed back", || {
        c.worker_logs(a)
            .contains("handed the units without a result or checkpoint back")
            .then_some(())
    });
    // Nothing is held any more, and status says why nothing moves.
    let s = c.wait_until(id, Duration::from_secs(60), "nothing held", |s| {
        n(s, "in_progress") == 0 && n(s, "workers_suspended") == 1
    });
    assert_eq!(n(&s, "workers_running"), 0, "{s}");
    assert!(
        s["fleet"]
            .as_str()
            .is_some_and(|f| f.starts_with("1 suspended: ")),
        "{s}"
    );

    // Another worker finishes the project while the first stays suspended.
    c.start_worker(&[]);
    let s = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!((n(&s, "verified"), n(&s, "failed")), (20, 0), "{s}");
    assert_eq!(sum_outputs(&c.results(id)), (PRIMES_BELOW_TWO_BILLION, 20));
    assert!(
        c.status(id)
            .is_some_and(|s| n(&s, "workers_suspended") == 1)
    );
}

fn suspend(data: &Path) {
    let o = fallow()
        .args(["worker", "suspend", "--data"])
        .arg(data)
        .output()
        .expect("run fallow worker suspend");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
