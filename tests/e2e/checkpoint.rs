//! Checkpointing units survive their worker: kill -9 mid-unit, and Ctrl-C.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, n, project};

/// One unit of the checkpointing `collatz` guest: numbers [1, 3,000,000), a checkpoint
/// every 50,000 (59 checkpoints).
const INPUT: &str = "1 3000000 50000\n";

fn collatz_project(c: &Cluster) -> std::path::PathBuf {
    let manifest = project(
        c.dir.path(),
        "collatz",
        artifacts::COLLATZ,
        None,
        "replication = 1\nquorum = 1\nadaptive = false\n[limits]\nfuel = 10_000_000_000_000\nwall_seconds = 3600\n[inputs]\ndir = \"inputs\"\n",
    );
    let inputs = c.dir.path().join("collatz").join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    std::fs::write(inputs.join("range"), INPUT).expect("input");
    manifest
}

/// (segment, fuel) of the checkpoint in a worker's data dir, if there is one. The header
/// of `sandbox::Checkpoint::encode`: magic, u32 segment, u64 fuel.
fn checkpoint_on_disk(worker_dir: &Path) -> Option<(u32, u64)> {
    let dir = std::fs::read_dir(worker_dir.join("checkpoints")).ok()?;
    for entry in dir.flatten() {
        if entry.path().extension().is_some_and(|e| e == "ckpt") {
            let bytes = std::fs::read(entry.path()).ok()?;
            let c = sandbox::Checkpoint::decode(&bytes).ok()?;
            return Some((c.segment, c.fuel));
        }
    }
    None
}

fn wait_for_checkpoint(c: &Cluster, worker: usize, at_least: u32) -> (u32, u64) {
    let start = Instant::now();
    loop {
        if let Some((segment, fuel)) = checkpoint_on_disk(&c.worker_dir(worker))
            && segment >= at_least
        {
            return (segment, fuel);
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no checkpoint {at_least} after 180 s\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key=` in the first log line containing `message`.
fn field(log: &str, message: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The straight-through run in this process: its output and fuel.
fn straight_through() -> (Vec<u8>, u64) {
    let sb = sandbox::Sandbox::new(sandbox::SandboxConfig {
        slots: 1,
        max_memory_mb: 64,
        ..Default::default()
    })
    .expect("sandbox");
    let wasm = artifacts::COLLATZ;
    let compiled = sb
        .compile(protocol::Digest::of(wasm), wasm, false)
        .expect("compile");
    let limits = protocol::Limits {
        fuel: 10_000_000_000_000,
        wall_seconds: 3600,
        ..Default::default()
    };
    let seed = protocol::unit_seed("range", INPUT.as_bytes());
    let exec = std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || sb.run(&compiled, INPUT.as_bytes(), seed, &limits))
        .expect("thread")
        .join()
        .expect("join")
        .expect("runs");
    (exec.output, exec.fuel)
}

#[test]
fn a_worker_killed_mid_unit_resumes_from_its_checkpoint_with_the_same_verified_output() {
    let reference = std::thread::spawn(straight_through);
    // A lease long enough for the restart: the unit must come back to the same worker.
    let mut c = Cluster::start(60);
    let args = ["--checkpoint-seconds", "0"];
    let w = c.start_worker(&args);
    let id = c.submit(&collatz_project(&c)).expect("accepted");
    wait_for_checkpoint(&c, w, 3);
    c.kill_worker(w);
    let (segment, fuel_at_kill) =
        checkpoint_on_disk(&c.worker_dir(w)).expect("a checkpoint survives kill -9");
    let segment = u64::from(segment);
    let killed_log = c.worker_log(w);
    let last_logged = killed_log
        .lines()
        .filter(|l| l.contains("checkpoint written"))
        .filter_map(|l| field(l, "checkpoint written", "checkpoint"))
        .max();
    // Every checkpoint the killed worker made is on disk (the kill may fall between the
    // write and its log line): what it lost is the part of one interval after the last.
    let last_logged = last_logged.expect("checkpoints logged");
    assert!(
        segment == last_logged || segment == last_logged + 1,
        "on disk {segment}, last logged {last_logged}\n{killed_log}"
    );
    let status = c.status(id).expect("status");
    assert_eq!(
        n(&status, "verified"),
        0,
        "finished before the kill: {status}"
    );

    c.restart_worker(w, &args);
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (1, 0),
        "{status}"
    );
    let out = c.results(id);
    let output = std::fs::read(out.join("range")).expect("output");
    let expected = collatz::compute(INPUT.as_bytes()).expect("native");
    assert_eq!(
        output, expected,
        "the verified output is the straight-through answer"
    );

    let (reference_output, reference_fuel) = reference.join().expect("reference run");
    assert_eq!(reference_output, expected);
    assert_eq!(
        n(&status, "credit"),
        reference_fuel,
        "credit (the claimed fuel) equals a straight-through run's"
    );

    let log = c.worker_logs(w);
    assert_eq!(
        field(&log, "resuming unit from its checkpoint", "checkpoint"),
        Some(segment),
        "the restarted worker resumed from the last checkpoint\n{log}"
    );
    let fuel_here = field(&log, "unit ran", "fuel_here").expect("unit ran logged");
    assert_eq!(
        field(&log, "unit ran", "resumed_from"),
        Some(segment),
        "{log}"
    );
    assert_eq!(
        fuel_here,
        reference_fuel - fuel_at_kill,
        "the restarted worker ran only what came after the checkpoint"
    );
    eprintln!(
        "killed at checkpoint {segment} of 59 ({fuel_at_kill} fuel saved); the restart ran {fuel_here} of {reference_fuel} fuel"
    );
}

#[test]
fn ctrl_c_stops_a_checkpointing_unit_at_its_next_checkpoint_and_a_restart_resumes_it() {
    let mut c = Cluster::start(60);
    let args = ["--checkpoint-seconds", "0", "--drain-seconds", "20"];
    let w = c.start_worker(&args);
    let id = c.submit(&collatz_project(&c)).expect("accepted");
    wait_for_checkpoint(&c, w, 2);
    assert!(
        c.interrupt_worker(w, Duration::from_secs(30)),
        "worker did not exit cleanly on Ctrl-C\n{}",
        c.logs()
    );
    let log = c.worker_log(w);
    assert!(
        log.contains("stopped unit at its checkpoint for shutdown")
            && log.contains("kept unit with its checkpoint"),
        "{log}"
    );
    let (segment, _) = checkpoint_on_disk(&c.worker_dir(w)).expect("checkpoint kept");
    let segment = u64::from(segment);
    let status = c.status(id).expect("status");
    assert_eq!(
        (n(&status, "verified"), n(&status, "in_progress")),
        (0, 1),
        "the lease is kept for the restart: {status}"
    );

    c.restart_worker(w, &args);
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (n(&status, "verified"), n(&status, "executions")),
        (1, 1),
        "resumed on the same lease, not run again elsewhere: {status}"
    );
    let output = std::fs::read(c.results(id).join("range")).expect("output");
    assert_eq!(output, collatz::compute(INPUT.as_bytes()).expect("native"));
    let log = c.worker_logs(w);
    assert_eq!(
        field(&log, "resuming unit from its checkpoint", "checkpoint"),
        Some(segment),
        "{log}"
    );
    assert!(
        checkpoint_on_disk(&c.worker_dir(w)).is_none(),
        "the checkpoint is deleted once the unit is done"
    );
}
