//! Nothing at rest is served unchecked (issue 18, item 7): an output changed inside
//! `fallow.db` (which SQLite's own checks cannot see) is refused and verified again, and a
//! coordinator whose store was emptied refuses to start until told to start afresh.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

#[test]
fn a_verified_output_changed_at_rest_is_refused_and_verified_again() {
    let mut c = Cluster::start(30);
    // Four workers: the two that verified a unit do not run it again.
    for _ in 0..4 {
        c.start_worker(&[]);
    }
    let manifest = project(
        c.dir.path(),
        "primes",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 200_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let before = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(sum_outputs(&c.results(id)), (17_984, 10));

    // One byte of one stored output changed, with the coordinator stopped. The last unit by
    // name: the dashboard, which also checks what it reads, stops reading this project at
    // its first output (not a picture tile), so `results` is the first to read it.
    c.kill_coordinator();
    let db = c.coordinator_data().join("fallow.db");
    let (unit, changed) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
            let pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("open fallow.db");
            let row = sqlx::query(
                "SELECT id, name, output FROM units WHERE project = $1 AND state = 1 ORDER BY name DESC LIMIT 1",
            )
            .bind(id as i64)
            .fetch_one(&pool)
            .await
            .expect("a verified unit");
            let unit: String = row.get("name");
            let mut output: Vec<u8> = row.get("output");
            output[0] = if output[0] == b'9' { b'8' } else { output[0] + 1 };
            sqlx::query("UPDATE units SET output = $1 WHERE id = $2")
                .bind(&output)
                .bind(row.get::<i64, _>("id"))
                .execute(&pool)
                .await
                .expect("change the output");
            let check: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&pool)
                .await
                .expect("integrity check");
            assert_eq!(check, "ok", "SQLite's own check does not see it");
            // Closed (and checkpointed) before the coordinator opens it again.
            pool.close().await;
            (unit, output)
        });
    c.start_coordinator();

    let out = c.dir.path().join("after-change");
    let r = c.cli(&[
        "results",
        &id.to_string(),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        !r.status.success(),
        "the changed output was served: {stderr}"
    );
    assert!(
        stderr.contains(&format!("unit {unit:?}"))
            && stderr.contains("changed on disk")
            && stderr.contains("verified again"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");

    // Verified again by workers, and the results and aggregate are right.
    let after = c.wait_until(id, Duration::from_secs(240), "verified again", |s| {
        s["finished"] == true && n(s, "executions") > n(&before, "executions")
    });
    assert_eq!(n(&after, "verified"), 10, "{after}");
    let dir = c.results(id);
    assert_eq!(sum_outputs(&dir), (17_984, 10));
    assert_ne!(
        std::fs::read(dir.join(&unit)).expect("output"),
        changed,
        "the changed bytes are gone"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("aggregate")).expect("aggregate"),
        "17984\n"
    );
    assert!(
        c.coordinator_log()
            .contains("sent back to be verified again"),
        "{}",
        c.logs()
    );
}

#[test]
fn a_coordinator_refuses_to_start_on_an_emptied_store() {
    let mut c = Cluster::start(30);
    c.kill_coordinator();
    let data = c.coordinator_data();
    std::fs::write(data.join("fallow.db"), b"").expect("empty fallow.db");

    let child = coordinator(&data, &[]);
    let (status, _, stderr) = finish(child, Duration::from_secs(60));
    assert!(!status.success(), "started on an empty store: {stderr}");
    assert!(
        stderr.contains("fallow.db") && stderr.contains("is empty (0 bytes)"),
        "names the problem: {stderr}"
    );
    assert!(
        stderr.contains("--start-afresh"),
        "names the way out: {stderr}"
    );

    // Told to start afresh: it starts, with the old files kept aside.
    let mut child = coordinator(&data, &["--start-afresh"]);
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("listening on "), "{first:?}");
    let aside = std::fs::read_dir(&data)
        .expect("data dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("fallow.db.aside-")
        });
    assert!(aside, "the emptied store is kept aside");
}

fn coordinator(data: &std::path::Path, extra: &[&str]) -> Child {
    fallow()
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coordinator")
}

/// Waits for `child` to exit (killing it after `limit`): status, stdout, stderr.
fn finish(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let started = Instant::now();
    while child.try_wait().expect("poll").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
