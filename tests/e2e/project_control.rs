//! `fallow pause|resume|cancel|retry|extend|reduce` against a real coordinator and worker:
//! each action does what it says, survives a coordinator restart, and is refused to any
//! key but the project's submitter. (`control.rs` is the worker's own control.)

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

/// Primes below 2000, the answer of [`primes`]'s first 10 units plus its extension.
const PRIMES_BELOW_2000: u64 = 303;
/// Primes below 1000: the first 10 units alone.
const PRIMES_BELOW_1000: u64 = 168;

const LIMIT: Duration = Duration::from_secs(120);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `fallow ARGS` against the cluster; its output, which must be a success.
fn ok(c: &Cluster, args: &[&str]) -> String {
    let o = c.cli(args);
    assert!(
        o.status.success(),
        "fallow {args:?} failed: {}\n{}",
        text(&o),
        c.logs()
    );
    text(&o)
}

/// `fallow ARGS`, which must fail; its output.
fn refused(c: &Cluster, args: &[&str]) -> String {
    let o = c.cli(args);
    assert!(
        !o.status.success(),
        "fallow {args:?} succeeded: {}",
        text(&o)
    );
    text(&o)
}

/// A primes project over `from..to` in units of 100, with the `sum` reducer.
fn primes(root: &Path, name: &str, from: u64, to: u64) -> PathBuf {
    project(
        root,
        name,
        artifacts::PRIMES,
        Some(artifacts::SUM),
        &format!(
            "replication = 1\nquorum = 1\n\
             [inputs]\nsweep = {{ from = {from}, to = {to}, step = 100 }}\n"
        ),
    )
}

/// The aggregate `fallow results` writes, as a number.
fn aggregate(c: &Cluster, project: u64) -> u64 {
    let dir = c.results(project);
    let text = std::fs::read_to_string(dir.join("aggregate")).expect("aggregate file");
    text.trim().parse().expect("the sum is a number")
}

fn stranger_key(c: &Cluster) -> String {
    let key = c.dir.path().join("stranger.key");
    let o = fallow()
        .args(["key", "--key"])
        .arg(&key)
        .output()
        .expect("fallow key");
    assert!(o.status.success(), "{}", text(&o));
    key.to_str().expect("utf-8").to_string()
}

/// Pause stops leasing (also across a restart), resume completes the project, extend
/// adds units that verify and reach the aggregate, reduce runs the reducer again, and a
/// key other than the submitter's is refused for every action.
#[test]
fn pause_resume_extend_and_reduce_by_the_submitter_only() {
    let mut c = Cluster::start(5);
    let root = c.dir.path().to_path_buf();
    let id = c.submit(&primes(&root, "ctl", 0, 1000)).expect("submit");
    let p = id.to_string();
    let said = ok(&c, &["pause", &p]);
    assert!(
        said.contains(&format!(
            "project {id} paused: 10 units pending will not be leased until `fallow resume {id}`"
        )),
        "{said}"
    );
    // Any other key is refused, for every action, naming the project's submitter key.
    let stranger = stranger_key(&c);
    let submitter = c.status(id).expect("status")["submitter"]
        .as_str()
        .expect("signed")
        .to_string();
    for action in ["pause", "resume", "cancel", "retry", "reduce"] {
        let e = refused(&c, &[action, &p, "--key", &stranger]);
        assert!(
            e.contains(&submitter) && e.contains("only that key may control it"),
            "{action}: {e}"
        );
    }
    let more = primes(&root, "more", 1000, 2000);
    let e = refused(
        &c,
        &[
            "extend",
            &p,
            more.to_str().expect("utf-8"),
            "--key",
            &stranger,
        ],
    );
    assert!(e.contains("only that key may control it"), "{e}");

    // Paused, with a worker asking: nothing is leased, also after a restart.
    c.start_worker(&[]);
    std::thread::sleep(Duration::from_secs(3));
    c.kill_coordinator();
    c.start_coordinator();
    std::thread::sleep(Duration::from_secs(3));
    let s = c.status(id).expect("status");
    assert_eq!(
        (s["state"].as_str(), s["outcome"].as_str()),
        (Some("paused"), Some("paused")),
        "{s}"
    );
    assert_eq!(
        (n(&s, "executions"), n(&s, "verified")),
        (0, 0),
        "paused: {s}"
    );
    let shown = ok(&c, &["status", &p]);
    assert!(shown.contains("paused: 10 units pending"), "{shown}");

    let said = ok(&c, &["resume", &p]);
    assert!(said.contains(&format!("project {id} resumed")), "{said}");
    let s = c.wait_finished(id, LIMIT);
    assert_eq!(s["outcome"], "done", "{s}");
    assert_eq!(aggregate(&c, id), PRIMES_BELOW_1000);

    // Extend: 10 more units, verified, and in the aggregate. A taken name is refused.
    let said = ok(&c, &["extend", &p, more.to_str().expect("utf-8")]);
    assert!(
        said.contains(&format!("project {id} extended: 10 units added")),
        "{said}"
    );
    let e = refused(&c, &["extend", &p, more.to_str().expect("utf-8")]);
    assert!(e.contains("already has a unit named"), "{e}");
    let s = c.wait_until(id, LIMIT, "the extension verified and reduced", |s| {
        s["finished"] == true && n(s, "total") == 20
    });
    assert_eq!(
        (n(&s, "verified"), s["outcome"].as_str()),
        (20, Some("done")),
        "{s}"
    );
    let (sum, files) = sum_outputs(&c.results(id));
    assert_eq!((sum, files), (PRIMES_BELOW_2000, 20));
    assert_eq!(aggregate(&c, id), PRIMES_BELOW_2000);

    // Reduce: the reducer runs once more.
    let runs = |c: &Cluster| c.coordinator_log().matches("aggregate stored").count();
    let before = runs(&c);
    let said = ok(&c, &["reduce", &p]);
    assert!(said.contains("reducer started again"), "{said}");
    let start = std::time::Instant::now();
    while runs(&c) == before {
        assert!(
            start.elapsed() < LIMIT,
            "the reducer did not run again\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_until(id, LIMIT, "aggregate ready again", |s| {
        s["aggregate_ready"] == true
    });
    assert_eq!(aggregate(&c, id), PRIMES_BELOW_2000);
}

/// Retry runs failed units again (a unit that fails deterministically: its executions
/// grow), and cancel ends a project for good: unsettled units cancelled, verified ones
/// kept, across a restart, every other action refused.
#[test]
fn retry_reruns_failed_units_and_cancel_is_final() {
    let mut c = Cluster::start(5);
    let root = c.dir.path().to_path_buf();
    // Unit "bad" has no range: the module exits with code 2, on every worker, every time.
    let dir = root.join("retry");
    std::fs::create_dir_all(dir.join("inputs")).expect("dir");
    std::fs::write(dir.join("inputs/good"), "0 1000\n").expect("input");
    std::fs::write(dir.join("inputs/bad"), "no range\n").expect("input");
    std::fs::write(dir.join("module.wasm"), artifacts::PRIMES).expect("module");
    std::fs::write(
        dir.join("project.toml"),
        "name = \"retry\"\nwasm = \"module.wasm\"\nreplication = 1\nquorum = 1\nmax_replicas = 1\n\
         [inputs]\ndir = \"inputs\"\n",
    )
    .expect("manifest");
    let id = c.submit(&dir.join("project.toml")).expect("submit");
    let p = id.to_string();
    c.start_worker(&[]);
    let s = c.wait_finished(id, LIMIT);
    assert_eq!((n(&s, "verified"), n(&s, "failed")), (1, 1), "{s}");
    let executions = n(&s, "executions");
    let said = ok(&c, &["retry", &p]);
    assert!(
        said.contains(&format!("project {id}: 1 unit that failed will run again")),
        "{said}"
    );
    let s = c.wait_until(id, LIMIT, "the retried unit failed again", |s| {
        s["finished"] == true && n(s, "executions") > executions
    });
    assert_eq!((n(&s, "verified"), n(&s, "failed")), (1, 1), "{s}");

    // Cancel a project while paused (so units are still pending): they end cancelled.
    let big = primes(&root, "big", 0, 5000);
    let big_id = c.submit(&big).expect("submit");
    let b = big_id.to_string();
    ok(&c, &["pause", &b]);
    std::thread::sleep(Duration::from_secs(1));
    let said = ok(&c, &["cancel", &b]);
    assert!(
        said.contains(&format!("project {big_id} cancelled")),
        "{said}"
    );
    let check = |c: &Cluster| {
        let s = c.status(big_id).expect("status");
        assert_eq!(
            (s["state"].as_str(), s["outcome"].as_str()),
            (Some("cancelled"), Some("cancelled")),
            "{s}"
        );
        assert!(n(&s, "cancelled") >= 1, "{s}");
        assert_eq!(n(&s, "verified") + n(&s, "cancelled"), 50, "{s}");
        assert_eq!(s["finished"], true, "{s}");
        s
    };
    let s = check(&c);
    // Verified results stay downloadable.
    let (_, files) = sum_outputs(&c.results(big_id));
    assert_eq!(files as u64, n(&s, "verified"));
    c.kill_coordinator();
    c.start_coordinator();
    let after = check(&c);
    assert_eq!(after["cancelled"], s["cancelled"]);
    for action in ["pause", "resume", "retry", "cancel"] {
        let e = refused(&c, &[action, &b]);
        assert!(e.contains("cancelled, which is final"), "{action}: {e}");
    }
    let e = refused(&c, &["extend", &b, big.to_str().expect("utf-8")]);
    assert!(e.contains("cancelled, which is final"), "{e}");
    // The other project is untouched by the restart.
    let s = c.status(id).expect("status");
    assert_eq!(
        (n(&s, "verified"), n(&s, "failed"), s["state"].as_str()),
        (1, 1, Some("active"))
    );
}
