//! The CLI and the dashboard tell the truth (issue 18, item 5): a failed reducer makes
//! `results` fail with the reason said once, a project whose units all failed is "failed"
//! and not "done", a repeated submission is named, `results` keeps two projects apart, and
//! `status --wait` without a terminal prints a line per change.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dashboard::http_get;
use crate::harness::{Cluster, fallow, n, project};

#[test]
fn the_cli_and_the_dashboard_tell_the_truth() {
    let mut c = Cluster::start(30);
    // Four units whose reducer exits with code 3, and four units that all fail.
    let reduced = project(
        c.dir.path(),
        "reduced",
        artifacts::PRIMES,
        Some(artifacts::hostile::EXIT3),
        "replication = 2\n[inputs]\nsweep = { from = 0, to = 100_000, step = 25_000 }\n",
    );
    let doomed = project(
        c.dir.path(),
        "doomed",
        artifacts::hostile::EXIT3,
        None,
        "replication = 2\n[inputs]\nsweep = { from = 0, to = 4, step = 1 }\n",
    );
    let a = c.submit(&reduced).expect("accepted");

    // `status --wait` into a pipe, started before any worker: a line per change.
    let mut waiter = fallow()
        .args(["status", &a.to_string(), "--wait", "--coordinator", &c.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start status --wait");

    // The same project again: accepted as another one, with a warning naming the first;
    // with --once, nothing is created and the first one's id is printed.
    let submit = |extra: &[&str]| {
        let out = fallow()
            .arg("submit")
            .arg(&reduced)
            .args(["--coordinator", &c.url, "--token", &c.token])
            .args(extra)
            .output()
            .expect("run fallow submit");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let id: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no id printed; {stderr}"));
        (id, stderr)
    };
    let (again, stderr) = submit(&[]);
    assert_ne!(again, a, "a second project is made");
    assert!(
        stderr.contains("warning:") && stderr.contains(&format!("submitted as project {a};")),
        "{stderr}"
    );
    let (once, stderr) = submit(&["--once"]);
    assert_eq!(once, a, "--once answers with the earliest copy: {stderr}");
    assert!(stderr.contains("nothing submitted"), "{stderr}");

    let b = c.submit(&doomed).expect("accepted");
    c.start_worker(&[]);
    c.start_worker(&[]);

    let started = Instant::now();
    let waited = loop {
        if let Some(status) = waiter.try_wait().expect("poll status --wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = waiter.kill();
            panic!("status --wait did not end\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut printed = String::new();
    waiter
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut printed)
        .expect("read status --wait");
    assert!(waited.success(), "{printed}");
    let progress: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with(&format!("project {a} reduced: ")))
        .collect();
    assert!(
        progress.len() >= 2 && progress[0].contains("0/4 verified"),
        "a line per change while it ran: {printed}"
    );

    // The reducer failed: status says so once, and results fails saying so once.
    let text = String::from_utf8_lossy(&c.cli(&["status", &a.to_string()]).stdout).into_owned();
    assert_eq!(text.matches("reducer failed:").count(), 1, "{text}");
    assert!(!text.contains("reducer failed: reducer failed"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("reduced"))
        .unwrap_or_default();
    assert!(row.trim_end().ends_with("failed"), "{text}");
    let out_dir = c.dir.path().join("out");
    let out = out_dir.to_str().expect("utf-8");
    let r = c.cli(&["results", &a.to_string(), "--out", out]);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        !r.status.success(),
        "results exited 0 though the reducer failed: {stderr}"
    );
    assert!(
        stderr.contains("reducer failed:") && stderr.contains("no aggregate"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("reducer failed").count(), 1, "{stderr}");
    assert!(
        out_dir.join("failed.txt").exists(),
        "the outputs are written all the same"
    );
    assert!(!out_dir.join("aggregate").exists());

    // Every unit of the other project failed: "failed", in status and on the dashboard.
    let status = c.wait_finished(b, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (0, 4),
        "{status}"
    );
    assert_eq!(status["outcome"], "failed", "{status}");
    let text = String::from_utf8_lossy(&c.cli(&["status", &b.to_string()]).stdout).into_owned();
    assert!(text.contains("every unit failed"), "{text}");
    let addr: SocketAddr = c.addr.parse().expect("coordinator address");
    let started = Instant::now();
    loop {
        let projects: Value = serde_json::from_str(&http_get(addr, "/api/projects")).expect("JSON");
        let outcome = |id: u64| {
            projects
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["id"] == id))
                .map(|p| p["outcome"].clone())
        };
        if outcome(b) == Some("failed".into()) && outcome(a) == Some("failed".into()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dashboard does not say failed: {projects}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let overview = http_get(addr, "/");
    let row = overview
        .split("<tr data-project=")
        .find(|r| r.starts_with(&format!("\"{b}\"")))
        .unwrap_or_else(|| panic!("no row for project {b}: {overview}"));
    assert!(
        row.contains("<td class=\"num\">failed</td>") && !row.contains(">done<"),
        "{row}"
    );

    // Project b's results do not go where project a's are, unless forced.
    let r = c.cli(&["results", &b.to_string(), "--out", out]);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(!r.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("holds the results of project {a} \"reduced\""))
            && stderr.contains("--force"),
        "{stderr}"
    );
    let r = c.cli(&["results", &b.to_string(), "--out", out, "--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// A bad flag is named with its value and the rule, before anything is opened: not
/// blamed on the data directory (issue 19).
#[test]
fn a_bad_coordinator_flag_is_named_not_blamed_on_the_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    for (flag, expected) in [
        (
            ["--lease-seconds", "0"],
            "fallow coordinator: --lease-seconds 0: must be at least 1",
        ),
        (
            ["--idle-timeout-seconds", "0"],
            "fallow coordinator: --idle-timeout-seconds 0: must be at least 1",
        ),
    ] {
        let out = fallow()
            .args(["coordinator", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(flag)
            .stdin(Stdio::null())
            .output()
            .expect("run fallow coordinator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {flag:?}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("data directory"), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "announced an address"
        );
        assert!(!data.exists(), "made the data directory");
    }
}

/// Units that all give the same output are said in words (status JSON and text): the sign
/// of random numbers seeded from the frozen clock, which quorums cannot see.
#[test]
fn units_that_all_give_the_same_output_are_warned_about() {
    let mut c = Cluster::start(30);
    c.start_worker(&[]);
    c.start_worker(&[]);
    let manifest = project(
        c.dir.path(),
        "same",
        artifacts::hostile::ECHO,
        None,
        "replication = 2\nadaptive = false\n[inputs]\ndir = \"inputs\"\n",
    );
    let inputs = manifest.with_file_name("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    for unit in 0..6 {
        std::fs::write(inputs.join(format!("u{unit}")), "seeded from the clock\n").expect("input");
    }
    let id = c.submit(&manifest).expect("accepted");
    let s = c.wait_finished(id, Duration::from_secs(120));
    let warnings = s["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{s}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.contains("same output") && w.contains("getentropy")),
        "{s}"
    );
    let text = c.cli(&["status", &id.to_string()]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("warning: all 6 units verified so far have the same output"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // And the dashboard, once its snapshot has caught up (it is published every second).
    let addr: SocketAddr = c.addr.parse().expect("coordinator address");
    let started = Instant::now();
    loop {
        let projects: Value = serde_json::from_str(&http_get(addr, "/api/projects")).expect("JSON");
        let warned = projects
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == id))
            .and_then(|p| p["warnings"].as_array().map(Vec::len));
        if warned == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dashboard does not warn: {projects}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let page = http_get(addr, &format!("/projects/{id}"));
    assert!(
        page.contains("Check the project") && page.contains("same output"),
        "{page}"
    );
}
