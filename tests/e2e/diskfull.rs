//! The coordinator's disk fills up mid-run: its data dir is a small tmpfs the test mounts
//! (root only) and then fills. While it is full the coordinator keeps answering, refuses
//! what it cannot store with a clear error, and loses nothing it had accepted; once space
//! returns the run completes with every result right and no credit granted twice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Cluster, assert_settled_once, n, primes_below_two_billion, project};

#[test]
fn a_full_disk_loses_nothing_and_the_run_completes_when_space_returns() {
    if !is_root() {
        // Mounting a tmpfs needs root (CI runs as root); say so rather than fail elsewhere.
        eprintln!("SKIPPED: mounting a tmpfs for the coordinator's data dir needs root");
        return;
    }
    let mut mount = None;
    let mut c = Cluster::start_prepared(10, |data| {
        mount = Some(Tmpfs::mount(data, "32m"));
    });
    let mount = mount.expect("mounted");
    for _ in 0..3 {
        c.start_worker(&[]);
    }
    let manifest = primes_below_two_billion(c.dir.path(), "primes-full", 200, false);
    let id = c.submit(&manifest).expect("accepted");
    let before = c.wait_until(id, Duration::from_secs(120), "some units verified", |s| {
        n(s, "verified") >= 10
    });

    let filler = mount.fill();
    // While full: the coordinator keeps answering; a status is either durable counts that
    // never go back, or a refusal that says the disk is full.
    let mut last = n(&before, "verified");
    let mut refused = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let out = c.cli(&["status", &id.to_string(), "--json"]);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let s: serde_json::Value =
                serde_json::from_str(text.lines().next().unwrap_or_default()).expect("json");
            let verified = n(&s, "verified");
            assert!(verified >= last, "verified went back {last} -> {verified}");
            last = verified;
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("disk is full"),
                "a status refused for another reason: {stderr}\n{}",
                c.coordinator_log()
            );
            refused += 1;
        }
    }
    assert!(
        last < 200,
        "the run finished before the disk filled; make it longer"
    );
    // A new project cannot be stored: refused with an error that says why.
    let second = project(
        c.dir.path(),
        "refused",
        artifacts::PRIMES,
        None,
        "[inputs]\nsweep = { from = 0, to = 1_000, step = 100 }\n",
    );
    let refusal = c
        .submit(&second)
        .expect_err("a project submitted to a full disk must be refused");
    assert!(
        refusal.contains("disk is full") || refusal.contains("too full"),
        "the refusal should say the disk is full: {refusal}"
    );
    let log = c.coordinator_log();
    assert!(
        log.contains("disk is full"),
        "the coordinator should log the full disk\n{log}"
    );

    std::fs::remove_file(&filler).expect("free the space");
    let status = c.wait_finished(id, Duration::from_secs(300));
    eprintln!(
        "disk full: {refused} of 10 status calls refused, verified held at {last}; the run completed after space returned"
    );
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (200, 200, 0),
        "{status}"
    );
    // Everything was stored, not just held in memory: a restart shows the same.
    c.kill_coordinator();
    c.start_coordinator();
    assert_settled_once(&c, id, 200);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs mounted for the test; lazily unmounted when dropped (the coordinator may still
/// have files open then).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} as root",
            at.display()
        );
        Tmpfs {
            at: at.to_path_buf(),
        }
    }

    /// Fills the filesystem to the last byte; returns the filler file.
    fn fill(&self) -> PathBuf {
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Smaller writes take the last partial chunk.
        for size in [4096usize, 512, 1] {
            while f.write(&chunk[..size]).is_ok_and(|n| n > 0) {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
