//! gRPC over TLS with a pinned certificate: a `--tls` coordinator on loopback (off
//! loopback TLS is the default; 127.0.0.0/8 is loopback, so the test forces it), workers
//! and the CLI that pin its fingerprint, refuse a wrong one, and trust on first use.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

#[test]
fn pinned_workers_and_cli_finish_a_project_over_tls() {
    let mut c = Cluster::start_with(30, &["--tls"], |_| {});
    let fingerprint = c
        .fingerprint
        .clone()
        .expect("a --tls coordinator prints its fingerprint");
    let pin = fingerprint.strip_prefix("sha256:").expect("sha256: prefix");
    assert_eq!(c.url, format!("https://{}#sha256={pin}", c.addr));
    // The certificate was made in the data dir, its key readable by the owner only.
    let tls = c.coordinator_data().join("tls");
    assert!(tls.join("cert.pem").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tls.join("key.pem"))
            .expect("key.pem")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob"]);
    let manifest = project(
        c.dir.path(),
        "primes",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\n[inputs]\nsweep = { from = 0, to = 200_000, step = 50_000 }\n",
    );
    // `fallow submit --coordinator https://…#sha256=…`.
    let id = c.submit(&manifest).expect("submitted over pinned TLS");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (4, 0),
        "{status}"
    );
    let out = c.results(id);
    assert_eq!(sum_outputs(&out), (17_984, 4));
    assert_eq!(
        std::fs::read_to_string(out.join("aggregate")).expect("aggregate"),
        "17984\n"
    );
    // Plain HTTP to the TLS port gets nothing.
    let plain = fallow()
        .args(["status", "--coordinator", &format!("http://{}", c.addr)])
        .output()
        .expect("run fallow status");
    assert!(!plain.status.success());
}

#[test]
fn wrong_pins_are_refused_and_first_use_pins_survive_restarts() {
    let mut c = Cluster::start_with(30, &["--tls"], |_| {});
    let real = c.fingerprint.clone().expect("fingerprint");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let wrong_url = format!("https://{}#{}", c.addr, wrong.replace(':', "="));
    let mismatch = format!("certificate {real} does not match the pinned {wrong}");

    // The CLI with a wrong pin: refused, naming both fingerprints; nothing submitted.
    let manifest = project(
        c.dir.path(),
        "primes",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 1\nquorum = 1\n[inputs]\nsweep = { from = 0, to = 100, step = 100 }\n",
    );
    for args in [
        vec!["status", "--coordinator", &wrong_url],
        vec![
            "submit",
            manifest.to_str().expect("utf-8 path"),
            "--coordinator",
            &wrong_url,
            "--token",
            &c.token,
        ],
    ] {
        let out = fallow().args(&args).output().expect("run fallow");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(&mismatch), "{args:?}: {stderr}");
    }
    assert_eq!(
        String::from_utf8_lossy(&c.cli(&["status", "--json"]).stdout).trim(),
        "",
        "no project reached the coordinator"
    );

    // A worker with a wrong pin never registers.
    let liar_pin = c.start_worker_via(&wrong_url, &[]);
    wait_for_log(&c, liar_pin, &mismatch);
    assert!(!c.worker_log(liar_pin).contains("registered"));
    c.kill_worker(liar_pin);

    // No pin: trusted on first use, loudly, and remembered in the data dir.
    let unpinned = format!("https://{}", c.addr);
    let tofu = c.start_worker_via(&unpinned, &[]);
    wait_for_log(&c, tofu, "registered");
    let log = c.worker_log(tofu);
    assert!(
        log.contains("TRUSTING COORDINATOR") && log.contains(&real),
        "{log}"
    );
    let known = c.worker_dir(tofu).join("known_coordinators");
    assert_eq!(
        std::fs::read_to_string(&known).expect("known_coordinators"),
        format!("{} {real}\n", c.addr)
    );

    // The coordinator comes back on the same port with a new certificate (a new key in its
    // data dir): the worker, restarted on its data dir with the unpinned URL, refuses it.
    c.kill_coordinator();
    c.kill_worker(tofu);
    std::fs::remove_dir_all(c.coordinator_data().join("tls")).expect("remove tls dir");
    c.start_coordinator();
    let new = c.fingerprint.clone().expect("fingerprint");
    assert_ne!(new, real, "a new certificate");
    start_worker_again(&mut c, tofu, &unpinned);
    let changed = format!("certificate {new} does not match the pinned {real}");
    wait_for_log_after_restart(&c, tofu, &changed);
    let restarted = restart_log(&c, tofu);
    assert!(
        restarted.contains(&known.display().to_string()) && !restarted.contains("registered"),
        "{restarted}"
    );

    // With the new pin in the URL it connects again.
    let url = c.url.clone();
    let pinned = c.start_worker_via(&url, &[]);
    wait_for_log(&c, pinned, "registered");
}

/// Restarts worker `i` on its data dir with `url` (the harness restarts with `c.url`).
fn start_worker_again(c: &mut Cluster, i: usize, url: &str) {
    let pinned = std::mem::replace(&mut c.url, url.to_string());
    c.restart_worker(i, &[]);
    c.url = pinned;
}

fn restart_log(c: &Cluster, i: usize) -> String {
    let all = c.worker_logs(i);
    let first = c.worker_log(i);
    all[first.len()..].to_string()
}

fn wait_for_log(c: &Cluster, i: usize, needle: &str) {
    wait(c, needle, || c.worker_log(i).contains(needle));
}

fn wait_for_log_after_restart(c: &Cluster, i: usize, needle: &str) {
    wait(c, needle, || restart_log(c, i).contains(needle));
}

fn wait(c: &Cluster, what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited for {what:?}:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
