//! Browser volunteers in mixed quorums: the real `/volunteer` page, in headless Chromium,
//! donating beside native workers. Every project here has replication 2 over exactly one
//! native account and one browser account, so a unit verifies only when a browser claim
//! and a native claim agree byte for byte and on fuel (two distinct accounts are required):
//! an integer project (primes), a float-heavy one with canonical NaNs (n-body), and a
//! checkpointing one (collatz). A tab told to corrupt its output is caught.
//!
//! Needs Chromium (`FALLOW_CHROMIUM`, else Debian's); `scripts/test` installs it.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, n, project, sum_outputs};

/// Primes below 60,000,000 (`sum` of [`primes`]'s outputs).
const PRIMES_BELOW_60M: u64 = 3_562_115;

/// A headless Chromium tab on one URL, in a process group of its own with a throwaway
/// profile; killed with all its helpers when dropped.
struct Tab {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Tab {
    fn open(url: &str) -> Tab {
        use std::os::unix::process::CommandExt;
        let chromium = crate::volunteer::chromium();
        assert!(
            chromium.exists(),
            "{} not found: run the tests with `scripts/test`, which installs Debian's chromium, \
             or set FALLOW_CHROMIUM",
            chromium.display()
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                // A background tab's timers are not throttled in headless mode; a kiosk
                // machine's visible tab is not either.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium starts");
        Tab {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        // The whole group (Chromium's helpers too): `--` so that the negative id is read
        // as a process group, never as an option. The id is Chromium's own, never 0 or 1.
        let group = self.child.id();
        if group > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The volunteer page of `c`, started without a click for `account` with one core.
fn page(c: &Cluster, account: &str, extra: &str) -> String {
    format!(
        "http://{}/volunteer?start=1&cores=1&share=100&account={account}{extra}",
        c.addr
    )
}

/// Primes below 60,000,000 in 6 units, replication 2 (quorum 2), with the `sum` reducer.
fn primes(c: &Cluster) -> PathBuf {
    project(
        c.dir.path(),
        "primes-mixed",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 60_000_000, step = 10_000_000 }\n",
    )
}

/// The n-body simulation for 4 step counts, with canonical NaNs (the browser runs the
/// coordinator's NaN-canonicalizing rewrite, native workers wasmtime's canonicalization).
fn nbody(c: &Cluster) -> PathBuf {
    let manifest = project(
        c.dir.path(),
        "nbody-mixed",
        artifacts::NBODY,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[limits]\nnan_canonicalization = true\n\
         [inputs]\ndir = \"inputs\"\n",
    );
    let inputs = c.dir.path().join("nbody-mixed").join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    for steps in [1_000, 20_000, 50_000, 100_000] {
        std::fs::write(inputs.join(format!("steps-{steps}")), format!("{steps}\n")).expect("input");
    }
    manifest
}

/// Two units of the checkpointing `collatz` guest, a checkpoint every 20,000 numbers.
fn collatz(c: &Cluster) -> PathBuf {
    let manifest = project(
        c.dir.path(),
        "collatz-mixed",
        artifacts::COLLATZ,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[limits]\nfuel = 10_000_000_000_000\n\
         [inputs]\ndir = \"inputs\"\n",
    );
    let inputs = c.dir.path().join("collatz-mixed").join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    std::fs::write(inputs.join("low"), "1 200000 20000\n").expect("input");
    std::fs::write(inputs.join("high"), "200000 400000 20000\n").expect("input");
    manifest
}

/// The leaderboard row of `account`, if listed.
fn account(c: &Cluster, name: &str) -> Option<Value> {
    let addr = c.addr.parse().expect("addr");
    let board: Value = serde_json::from_str(&crate::dashboard::http_get(addr, "/api/leaderboard"))
        .expect("leaderboard JSON");
    board["accounts"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

/// The leaderboard rows of `names` once every one shows `verified` results (the dashboard
/// refreshes its credit every few seconds); panics with what it shows after a minute.
fn accounts_verified(c: &Cluster, names: &[&str], verified: u64) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let rows: Vec<Option<Value>> = names.iter().map(|a| account(c, a)).collect();
        if rows.iter().all(|r| {
            r.as_ref()
                .is_some_and(|r| r["verified"].as_u64() == Some(verified))
        }) {
            return rows.into_iter().flatten().collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "accounts {names:?} do not show {verified} verified results: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The browser workers `/api/workers` lists online.
fn browsers(c: &Cluster) -> Vec<Value> {
    let addr = c.addr.parse().expect("addr");
    let workers: Value = serde_json::from_str(&crate::dashboard::http_get(addr, "/api/workers"))
        .expect("workers JSON");
    workers["workers"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|w| !w["browser"].is_null() && w["online"] == true)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Every unit verified, none failed.
fn assert_all_verified(status: &Value, units: u64) {
    assert_eq!(
        (
            n(status, "total"),
            n(status, "verified"),
            n(status, "failed")
        ),
        (units, units, 0),
        "{status}"
    );
}

/// One native worker (default settings) and one volunteer page in Chromium verify an
/// integer, a float-heavy and a checkpointing project together: with replication 2 and
/// only these two accounts, every verified unit holds a browser claim and a native claim
/// that agree on the output bytes and the fuel.
#[test]
fn a_volunteer_page_and_a_native_worker_verify_projects_together() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--account", "native"]);
    let ids: Vec<(u64, u64)> = [(primes(&c), 6), (nbody(&c), 4), (collatz(&c), 2)]
        .into_iter()
        .map(|(m, units)| (c.submit(&m).expect("accepted"), units))
        .collect();
    let _tab = Tab::open(&page(&c, "webvol", "&team=lab"));
    for &(id, units) in &ids {
        let status = c.wait_finished(id, Duration::from_secs(600));
        assert_all_verified(&status, units);
        assert_eq!(n(&status, "mismatches"), 0, "{status}");
    }
    let (sum, files) = sum_outputs(&c.results(ids[0].0));
    assert_eq!((sum, files), (PRIMES_BELOW_60M, 6));
    // The tab committed and revealed through the native worker's board, relayed by the
    // coordinator, and stayed within what a board admits (10 exchanges a second per key):
    // none of its exchanges was refused.
    let metrics = crate::dashboard::http_get(c.addr.parse().expect("addr"), "/metrics");
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let answered = counter("fallow_relayed_exchanges_total{outcome=\"answered\"}");
    let refused = counter("fallow_relayed_exchanges_total{outcome=\"refused\"}");
    assert!(
        answered >= 1 && refused == 0,
        "{answered} relayed exchanges answered, {refused} refused:\n{metrics}"
    );
    // Both accounts signed all 12 units; the browser is listed as one.
    let rows = accounts_verified(&c, &["webvol", "native"], 12);
    let (web, native) = (&rows[0], &rows[1]);
    assert_eq!(
        n(web, "credit"),
        n(native, "credit"),
        "the same fuel: {web} {native}"
    );
    assert_eq!(web["team"], "lab", "{web}");
    let tabs = browsers(&c);
    assert!(
        tabs.iter()
            .any(|w| w["account"] == "webvol" && w["browser"] == "chromium"),
        "{tabs:?}"
    );
}

/// A tab that corrupts every output (`?fault=corrupt-output`) disagrees with the native
/// worker on each unit it runs; the coordinator asks a third account, and the project's
/// answer is the honest one, with no credit for the corrupt tab.
#[test]
fn a_volunteer_page_that_corrupts_its_output_is_caught() {
    let mut c = Cluster::start(30);
    c.start_worker(&["--account", "honest-a"]);
    let id = c.submit(&primes(&c)).expect("accepted");
    let _tab = Tab::open(&page(&c, "liar", "&fault=corrupt-output"));
    // The corrupt claims meet the native ones: disagreement, and more replicas wanted.
    c.wait_until(
        id,
        Duration::from_secs(300),
        "a corrupt browser claim",
        |s| n(s, "mismatches") > 0 || n(s, "disputes") > 0,
    );
    c.start_worker(&["--account", "honest-b"]);
    let status = c.wait_finished(id, Duration::from_secs(600));
    assert_all_verified(&status, 6);
    let (sum, files) = sum_outputs(&c.results(id));
    assert_eq!((sum, files), (PRIMES_BELOW_60M, 6), "{status}");
    let liar = account(&c, "liar");
    assert!(
        liar.as_ref()
            .is_none_or(|l| n(l, "verified") == 0 && n(l, "credit") == 0),
        "the corrupt tab earned credit: {liar:?}"
    );
}
