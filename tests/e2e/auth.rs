//! Submitting needs a token: minted with `fallow token create`, refused when missing,
//! unknown or revoked (revocation applies to the running coordinator at once), and a fresh
//! coordinator writes its admin token to its data dir.

use std::time::Duration;

use crate::dashboard::http_get;
use crate::harness::{Cluster, fallow, project};

#[test]
fn submitting_needs_a_valid_token_and_revocation_is_immediate() {
    let c = Cluster::start(10);
    let manifest = project(
        c.dir.path(),
        "primes-small",
        artifacts::PRIMES,
        None,
        "[inputs]\nsweep = { from = 0, to = 1_000, step = 100 }\n",
    );
    let submit = |token: Option<&str>| {
        let mut cmd = fallow();
        cmd.current_dir(c.dir.path())
            .env_remove("FALLOW_TOKEN")
            .arg("submit")
            .arg(&manifest)
            .args(["--coordinator", &c.url]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().expect("run fallow submit");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, err) = submit(None);
    assert!(!ok, "a submission without a token was accepted");
    assert!(err.contains("needs a token"), "{err}");
    let (ok, err) = submit(Some("fallow_0000"));
    assert!(!ok && err.contains("not valid"), "{err}");

    let alice = c.mint_token("alice");
    let (ok, err) = submit(Some(&alice));
    assert!(ok, "alice's fresh token: {err}");
    let revoke = fallow()
        .args(["token", "revoke", "alice", "--data"])
        .arg(c.coordinator_data())
        .output()
        .expect("revoke");
    assert!(revoke.status.success());
    let (ok, err) = submit(Some(&alice));
    assert!(
        !ok && err.contains("not valid"),
        "a revoked token still works: {err}"
    );
    let (ok, err) = submit(Some(&c.token));
    assert!(ok, "other tokens are unaffected: {err}");

    let list = fallow()
        .args(["token", "list", "--data"])
        .arg(c.coordinator_data())
        .output()
        .expect("list");
    assert_eq!(String::from_utf8_lossy(&list.stdout), "e2e\n");
    let metrics = http_get(c.addr.parse().expect("addr"), "/metrics");
    assert!(
        metrics.contains(
            r#"fallow_rejected_requests_total{method="SubmitProject",code="Unauthenticated"} 3"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_fresh_coordinator_writes_its_admin_token_for_the_local_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut coordinator = fallow()
        .current_dir(dir.path())
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(coordinator.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    let url = format!("http://{}", line.trim().trim_start_matches("listening on "));
    let admin = dir.path().join("fallow-data/admin.token");
    // Already there when the port is: `fallow submit` reads it as soon as it can connect,
    // and a script that starts a coordinator and submits at once (the README's
    // walkthrough) once found it missing.
    assert!(
        admin.exists(),
        "no admin token when the coordinator says it listens"
    );
    let manifest = project(
        dir.path(),
        "primes-small",
        artifacts::PRIMES,
        None,
        "[inputs]\nsweep = { from = 0, to = 1_000, step = 100 }\n",
    );
    // From the directory the coordinator runs in, `fallow submit` finds the admin token.
    let out = fallow()
        .current_dir(dir.path())
        .env_remove("FALLOW_TOKEN")
        .arg("submit")
        .arg(&manifest)
        .args(["--coordinator", &url])
        .output()
        .expect("submit");
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&admin)
            .expect("admin token")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the admin token is readable by its owner only"
        );
    }
}

/// `fallow token create --worker` on `c`'s data dir: the enrollment token.
fn enroll(c: &Cluster, name: &str) -> String {
    let out = fallow()
        .args(["token", "create", "--worker", "--name", name, "--data"])
        .arg(c.coordinator_data())
        .output()
        .expect("run fallow token create --worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls worker `w`'s log until it contains `text`.
fn wait_for_log(c: &Cluster, w: usize, text: &str) {
    let start = std::time::Instant::now();
    while !c.worker_log(w).contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "worker {w} never logged {text:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_coordinator_requiring_enrollment_takes_only_enrolled_workers_and_revocation_cuts_them_off() {
    let mut c = Cluster::start_with(10, &["--require-enrollment"], |_| {});
    let (lab, guest) = (enroll(&c, "lab"), enroll(&c, "guest"));
    let w_lab = c.start_worker(&["--enroll-token", &lab]);
    let w_none = c.start_worker(&[]);
    let w_guest = c.start_worker(&["--enroll-token", &guest]);
    let small = |name: &str| {
        project(
            c.dir.path(),
            name,
            artifacts::PRIMES,
            None,
            "replication = 1\nquorum = 1\nadaptive = false\n[inputs]\nsweep = { from = 0, to = 2_000_000, step = 100_000 }\n",
        )
    };
    let first = c.submit(&small("first")).expect("accepted");
    let status = c.wait_finished(first, Duration::from_secs(120));
    assert_eq!(
        (
            crate::harness::n(&status, "verified"),
            crate::harness::n(&status, "failed")
        ),
        (20, 0),
        "{status}"
    );
    // Primes below 2,000,000: 148,933.
    assert_eq!(
        crate::harness::sum_outputs(&c.results(first)),
        (148_933, 20)
    );
    wait_for_log(&c, w_none, "only takes enrolled workers");

    let list = fallow()
        .args(["token", "list", "--worker", "--data"])
        .arg(c.coordinator_data())
        .output()
        .expect("list");
    assert_eq!(String::from_utf8_lossy(&list.stdout), "lab\nguest\n");
    let revoke = fallow()
        .args(["token", "revoke", "guest", "--worker", "--data"])
        .arg(c.coordinator_data())
        .output()
        .expect("revoke");
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    // The guest's next call (a heartbeat at the latest) is refused, without a restart.
    wait_for_log(&c, w_guest, "enrollment is not valid");
    let second = c.submit(&small("second")).expect("accepted");
    let status = c.wait_finished(second, Duration::from_secs(120));
    assert_eq!(crate::harness::n(&status, "verified"), 20, "{status}");
    let metrics = http_get(c.addr.parse().expect("addr"), "/metrics");
    assert!(
        metrics.contains(r#"code="Unauthenticated""#),
        "refused worker calls are counted:\n{metrics}"
    );
    let _ = w_lab;
}
