//! The README's walkthrough "Your own project, from nothing to verified results", run as
//! written: the commands of its shell block, in order, by `bash` in a fresh directory with
//! the `fallow` under test first on the PATH. Only the environment adapts it to a shared
//! test machine, as a user could: a free port instead of 7070 (`FALLOW_LISTEN`,
//! `FALLOW_COORDINATOR`), workers that do not suspend while other tests load the CPU
//! (`FALLOW_DEDICATED`), peers on loopback (`FALLOW_PEER_LISTEN`), and a home of its own
//! for the submitter key.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::fallow;

/// The heading of the walkthrough in README.md.
const HEADING: &str = "## Your own project, from nothing to verified results";

/// The first ```sh block after [`HEADING`].
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = &readme[readme
        .find(HEADING)
        .unwrap_or_else(|| panic!("README.md has no {HEADING:?}"))..];
    let start = section
        .find("```sh\n")
        .expect("a ```sh block in the walkthrough")
        + 6;
    let end = section[start..].find("```").expect("the block's end") + start;
    section[start..end].to_string()
}

/// Reads a file the script wrote, or "".
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let script = walkthrough();
    for step in [
        "fallow new",
        "fallow run",
        "fallow submit",
        "fallow results",
    ] {
        assert!(script.contains(step), "the walkthrough lost `{step}`");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = Path::new(env!("CARGO_BIN_EXE_fallow"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("bash")
        .arg("-c")
        // Stop at the first command that fails, as a reader would.
        .arg(format!("set -eu\n{script}"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join(".config"))
        .env_remove("FALLOW_SUBMITTER_KEY")
        .env_remove("FALLOW_TOKEN")
        .env("FALLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("FALLOW_COORDINATOR", format!("http://127.0.0.1:{port}"))
        .env("FALLOW_PEER_LISTEN", "127.0.0.1:0")
        .env("FALLOW_DEDICATED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        // Its own process group: the coordinator and workers it leaves running in the
        // background are stopped with it.
        .process_group(0)
        .spawn()
        .expect("bash");
    let group = format!("-{}", child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(600) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let said = format!(
        "script:\n{script}\nstdout:\n{}\nstderr:\n{}",
        read(&stdout),
        read(&stderr)
    );
    let status = status.unwrap_or_else(|| panic!("the walkthrough did not end in 600 s\n{said}"));
    assert!(status.success(), "the walkthrough failed: {status}\n{said}");

    // Every example input verified, with the bytes `fallow run` gives for it here.
    let project = dir.path().join("pisim");
    let inputs: Vec<_> = std::fs::read_dir(project.join("inputs"))
        .expect("inputs")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(!inputs.is_empty());
    for unit in inputs {
        let run = fallow()
            .arg("run")
            .arg(project.join("pisim.wasm"))
            .arg("--input")
            .arg(project.join("inputs").join(&unit))
            .arg("--name")
            .arg(&unit)
            .arg("--manifest")
            .arg(project.join("fallow.toml"))
            .output()
            .expect("fallow run");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            std::fs::read(project.join("results").join(&unit)).unwrap_or_default(),
            run.stdout,
            "unit {unit:?}: the verified output is what `fallow run` gives\n{said}"
        );
    }
}
