//! `fallow worker status|suspend|resume|prefs` against running workers: a suspended worker
//! holds its unit where it is, resumes it, and the project still completes with the right
//! answer and no failure.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

fn worker_cli(args: &[&str], data: &Path) -> Output {
    fallow()
        .args(["worker"])
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run fallow worker")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status_json(data: &Path) -> Option<Value> {
    let o = worker_cli(&["status", "--json"], data);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).expect("status --json is JSON"))
}

/// Polls `fallow worker status --json` until `pred` holds.
fn wait_status(c: &Cluster, data: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status_json(data)
            && pred(&s)
        {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{what}: not reached; last status {:?}\n{}",
            status_json(data),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_suspended_and_resumed_from_the_cli_loses_nothing() {
    let mut c = Cluster::start(30);
    let data = c.dir.path().join("w0");

    // Before any worker runs: a clear error, not a hang.
    let o = worker_cli(&["status"], &data);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no worker is running with --data"),
        "{}",
        text(&o)
    );

    c.start_worker(&["--account", "alice", "--cpu-limit-percent", "90"]);
    c.start_worker(&["--account", "bob"]);
    // Units of about a second or two each, so one is caught mid-run.
    let manifest = project(
        c.dir.path(),
        "primes-long",
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\n[limits]\nfuel = 100_000_000_000\n[inputs]\nsweep = { from = 0, to = 1_200_000_000, step = 200_000_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");

    // The flag shows as such in the effective preferences.
    let o = worker_cli(&["prefs"], &data);
    assert!(o.status.success(), "{}", text(&o));
    let prefs = text(&o);
    assert!(
        prefs.lines().any(|l| l.starts_with("cpu_limit_percent")
            && l.contains("90")
            && l.ends_with("(flag)")),
        "{prefs}"
    );

    // Caught computing: a progress bar for the running unit.
    wait_status(&c, &data, "w0 computing a unit", |s| {
        s["running"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["fuel_used"].as_u64().unwrap_or(0) > 0)
    });
    let o = worker_cli(&["status"], &data);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("state: running") && shown.contains("running:"),
        "{shown}"
    );
    assert!(
        shown.lines().any(|l| l.trim_start().starts_with("unit ")
            && l.contains("] ")
            && l.contains("% ")
            && l.contains(" fuel")),
        "a progress bar: {shown}"
    );

    // Suspend: the unit is held where it is.
    let o = worker_cli(&["suspend"], &data);
    assert!(
        o.status.success() && text(&o).contains("suspended"),
        "{}",
        text(&o)
    );
    let s = wait_status(&c, &data, "held", |s| {
        s["running"]
            .as_array()
            .is_some_and(|r| r.iter().all(|u| u["held"] == Value::Bool(true)))
    });
    assert_eq!(s["state"]["state"], "suspended", "{s}");
    assert_eq!(s["state"]["reason"], "by_user", "{s}");
    let o = worker_cli(&["status"], &data);
    assert!(
        text(&o).contains("suspended by `fallow worker suspend`"),
        "{}",
        text(&o)
    );
    let frozen = |s: &Value| -> Vec<(u64, u64)> {
        s["running"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|u| (n(u, "unit"), n(u, "fuel_used")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = frozen(&s);
    std::thread::sleep(Duration::from_millis(1500));
    let after = status_json(&data).expect("status");
    assert_eq!(frozen(&after), before, "no progress while suspended");
    // Nothing new is leased while suspended, so nothing it held has finished.
    let recent = after["recent"].as_array().map_or(0, |r| r.len());
    std::thread::sleep(Duration::from_millis(500));
    let later = status_json(&data).expect("status");
    assert_eq!(later["recent"].as_array().map_or(0, |r| r.len()), recent);

    // Strangers are refused: a wrong token, then a live preference change, a bad value.
    let token_file = data.join("control.token");
    let token = std::fs::read_to_string(&token_file).expect("token");
    std::fs::write(&token_file, "0".repeat(64)).expect("write");
    let o = worker_cli(&["status"], &data);
    assert!(!o.status.success());
    assert!(text(&o).contains("refused the token"), "{}", text(&o));
    std::fs::write(&token_file, token).expect("restore");
    let o = worker_cli(&["prefs", "set", "cpu_limit_percent", "0"], &data);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("cpu_limit_percent must be between 1 and 100"),
        "{}",
        text(&o)
    );
    let o = worker_cli(&["prefs", "set", "cpu_limit_percent", "100"], &data);
    assert!(o.status.success(), "{}", text(&o));
    let s = status_json(&data).expect("status");
    assert_eq!(n(&s, "cpu_limit_percent"), 100, "applied live");
    assert!(
        std::fs::read_to_string(data.join("prefs.toml"))
            .expect("prefs.toml")
            .contains("cpu_limit_percent = 100")
    );

    // Resume: the held unit continues, and the project completes with the right answer.
    let o = worker_cli(&["resume"], &data);
    assert!(
        o.status.success() && text(&o).contains("resumed: running"),
        "{}",
        text(&o)
    );
    wait_status(&c, &data, "w0 progressed after resume", |s| {
        let now = frozen(s);
        now.is_empty()
            || now
                .iter()
                .zip(&before)
                .any(|(a, b)| a.0 != b.0 || a.1 > b.1)
    });
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (6, 6, 0),
        "{status}"
    );
    let out = c.results(id);
    // π(1.2 × 10^9) = 60,454,705.
    assert_eq!(sum_outputs(&out), (60_454_705, 6));
    // w0's own results include the unit it held: it finished ok, not failed.
    let s = status_json(&data).expect("status");
    let results: Vec<&str> = s["recent"]
        .as_array()
        .map(|r| r.iter().filter_map(|f| f["result"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !results.is_empty() && results.iter().all(|r| *r == "ok"),
        "{s}"
    );
    let held_unit = before.first().map(|b| b.0);
    if let Some(u) = held_unit {
        assert!(
            s["recent"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| n(f, "unit") == u && f["result"] == "ok")),
            "the unit held during the suspension finished ok: {s}"
        );
    }
}
