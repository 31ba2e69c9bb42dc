//! `fallow results --follow`: each output arrives as its unit verifies, and the stream ends
//! by itself once the project is finished, with the failed units and the aggregate.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, fallow, n, project};

/// Waits for `child` to exit by itself, or panics (killing it) after `limit`.
fn exit_within(child: &mut Child, limit: Duration, c: &Cluster) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the follower did not end in {limit:?} after the project finished\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn results_follow_writes_each_unit_as_it_verifies_and_ends_with_the_aggregate() {
    let mut c = Cluster::start(30);
    // A quick unit and one that takes seconds more: the quick one verifies (and must be
    // written) while the slow one still runs.
    let manifest = project(
        c.dir.path(),
        "follow",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 1\nquorum = 1\nadaptive = false\n[limits]\nfuel = 200_000_000_000\nwall_seconds = 900\n[inputs]\ndir = \"inputs\"\n",
    );
    let inputs = manifest.with_file_name("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    std::fs::write(inputs.join("quick"), "0 1000\n").expect("input");
    std::fs::write(inputs.join("slow"), "0 1000000000\n").expect("input");
    let id = c.submit(&manifest).expect("accepted").to_string();

    // Two followers before any worker exists: JSON lines on stdout, and files in a
    // directory.
    let follower = |args: &[&str]| {
        fallow()
            .args(["results", &id, "--follow"])
            .args(args)
            .env("FALLOW_COORDINATOR", &c.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fallow results --follow")
    };
    let mut lines_follower = follower(&["--format", "jsonl"]);
    let dir = c.dir.path().join("followed");
    let mut dir_follower = follower(&["--out", dir.to_str().expect("utf-8")]);
    let (tx, lines) = mpsc::channel();
    let stdout = lines_follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value: serde_json::Value =
                serde_json::from_str(&line).expect("a JSON object per line");
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(lines.try_recv().is_err(), "a line before any unit verified");
    assert!(
        lines_follower.try_wait().expect("try_wait").is_none(),
        "the follower ended before the project did"
    );

    c.start_worker(&["--cores", "2"]);
    let first = lines
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| panic!("no line in 180 s\n{}", c.logs()));
    let at_first = c.status(id.parse().expect("id")).expect("status");
    assert_eq!(first["unit"], "quick", "{first}");
    assert_eq!(first["output"], "168\n", "{first}");
    assert_eq!(
        n(&at_first, "verified"),
        1,
        "the quick unit arrived while the slow one still ran: {at_first}"
    );
    assert!(
        !dir.join("slow").exists(),
        "the slow unit's file before it verified"
    );
    let second = lines
        .recv_timeout(Duration::from_secs(600))
        .unwrap_or_else(|_| panic!("no second line in 600 s\n{}", c.logs()));
    assert_eq!(
        (&second["unit"], &second["output"]),
        (&"slow".into(), &"50847534\n".into()),
        "{second}"
    );
    let (t1, t2) = (
        first["verified_ms"].as_u64().expect("verified_ms"),
        second["verified_ms"].as_u64().expect("verified_ms"),
    );
    assert!(t1 > 0 && t1 <= t2, "verified at {t1} then {t2}");

    // The project is finished: both followers end by themselves.
    let status = exit_within(&mut lines_follower, Duration::from_secs(60), &c);
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        &mut lines_follower.stderr.take().expect("stderr"),
        &mut stderr,
    )
    .expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("wrote 2 verified outputs and 0 failed units"),
        "{stderr}"
    );
    assert!(lines.try_recv().is_err(), "nothing after the two units");
    let status = exit_within(&mut dir_follower, Duration::from_secs(60), &c);
    assert!(status.success(), "the directory follower failed");
    // What it wrote is what `fallow results` writes once the project is finished.
    let whole = c.results(id.parse().expect("id"));
    for file in ["quick", "slow", "aggregate", "failed.txt"] {
        assert_eq!(
            std::fs::read(dir.join(file)).expect("followed file"),
            std::fs::read(whole.join(file)).expect("results file"),
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("aggregate")).expect("aggregate"),
        "50847702\n"
    );
}
