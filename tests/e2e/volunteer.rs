//! The browser volunteer's guest runtime (`coordinator/assets/volunteer/guest.js`) gives
//! the native sandbox's bytes and fuel: V8, under node and in headless Chromium's module
//! Web Workers, runs the task, hostile and ABI-probing units through the same metered
//! modules a worker compiles (`sandbox::meter`), and every outcome is compared with what
//! this build's `fallow run` gives for the same unit, taken afresh here.
//!
//! Needs node (Debian's `nodejs`; `FALLOW_NODE` names another) and Chromium (as the
//! dashboard test: `FALLOW_CHROMIUM`, else Debian's); `scripts/test` installs both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn node() -> PathBuf {
    std::env::var_os("FALLOW_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

fn chromium() -> PathBuf {
    std::env::var_os("FALLOW_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The repository root (this crate is `fallow/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fallow/ has a parent")
        .to_path_buf()
}

#[test]
fn the_browser_guest_runtime_gives_the_native_bytes_and_fuel_in_node_and_chromium() {
    let version = Command::new(node()).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{} does not run ({version:?}): this test needs node; run the tests with \
         scripts/test (which installs Debian's nodejs) or set FALLOW_NODE",
        node().display()
    );
    assert!(
        chromium().exists(),
        "{} is missing: this test needs Chromium; run the tests with scripts/test or set \
         FALLOW_CHROMIUM",
        chromium().display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (built, metered) = (dir.path().join("built"), dir.path().join("metered"));
    for d in [&built, &metered] {
        std::fs::create_dir(d).expect("dir");
    }
    // The modules as built (named as the build writes them) and as a worker meters them.
    let mut modules: Vec<(&str, &[u8])> = artifacts::ALL.to_vec();
    modules.push(("nbody", artifacts::NBODY));
    for (name, bytes) in modules {
        let file = format!("{}.wasm", name.rsplit('/').next().unwrap_or(name));
        std::fs::write(built.join(&file), bytes).expect("write module");
        let rewritten = sandbox::meter::instrument(bytes).expect("every guest can be metered");
        std::fs::write(metered.join(&file), rewritten).expect("write metered module");
    }
    let volunteer = root().join("coordinator/assets/volunteer");
    let env = |c: &mut Command| {
        c.current_dir(root())
            .env("FALLOW_ARTIFACTS", &built)
            .env("FALLOW_METERED", &metered)
            .env("FALLOW_EXPECTED", dir.path().join("expected.json"))
            .env("CHROMIUM", chromium());
    };

    // What the native sandbox gives for every unit of the suite, from this build.
    let mut native = Command::new(node());
    env(&mut native);
    let made = native
        .arg(volunteer.join("tools/make-expected.mjs"))
        .arg(env!("CARGO_BIN_EXE_fallow"))
        .env("FALLOW_EXPECTED_OUT", dir.path().join("expected.json"))
        .output()
        .expect("node runs");
    assert!(
        made.status.success(),
        "the native outcomes could not be taken: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The committed fixture (what the suite checks when run by hand) is this build's too.
    let fresh = std::fs::read_to_string(dir.path().join("expected.json")).expect("written");
    let committed = std::fs::read_to_string(volunteer.join("test/fixtures/expected.json"))
        .expect("committed fixture");
    assert!(
        fresh == committed,
        "coordinator/assets/volunteer/test/fixtures/expected.json is not what this build's \
         sandbox gives any more: rerun `node coordinator/assets/volunteer/tools/make-expected.mjs`"
    );

    let mut suite = Command::new(node());
    env(&mut suite);
    let ran = suite
        .arg("--test")
        .arg(volunteer.join("test"))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&ran.stdout);
    let tail: String = report
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        ran.status.success(),
        "guest.js differs from the native sandbox:\n{report}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    // Nothing skipped: each file skips only when node finds no modules or no Chromium.
    for line in ["# fail 0", "# skipped 0", "# todo 0", "# cancelled 0"] {
        assert!(report.contains(line), "expected `{line}`:\n{tail}");
    }
    let passed = report
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 500, "only {passed} checks ran:\n{tail}");
}
