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
    let start = std::time::Instant::now();
    while !admin.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
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
