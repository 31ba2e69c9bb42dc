//! `fallow new` makes projects that build, run locally and verify on a cluster as they
//! stand: the path a new scientist takes, for each template.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Cluster, fallow, n};

/// Runs a template's `build.sh`; a missing toolchain fails naming what to install.
fn build(dir: &Path, needs: &str) {
    let out = Command::new("sh")
        .arg(dir.join("build.sh"))
        .output()
        .unwrap_or_else(|e| panic!("run build.sh: {e}"));
    assert!(
        out.status.success(),
        "{} failed (it needs {needs}; scripts/test installs it):\n{}\n{}",
        dir.join("build.sh").display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn new_build_run_submit(lang: &str, needs: &str) {
    let mut c = Cluster::start(30);
    let name = format!("my-{lang}");
    let dir = c.dir.path().join(&name);
    let made = fallow()
        .args(["new", dir.to_str().expect("utf-8"), "--lang", lang])
        .output()
        .expect("fallow new");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    build(&dir, needs);
    let module = dir.join(format!("{name}.wasm"));
    assert!(module.is_file(), "build.sh made {}", module.display());

    // Each example input runs here, in the sandbox.
    let mut local = Vec::new();
    let mut inputs: Vec<_> = std::fs::read_dir(dir.join("inputs"))
        .expect("inputs")
        .flatten()
        .map(|e| e.path())
        .collect();
    inputs.sort();
    for input in &inputs {
        let run = fallow()
            .arg("run")
            .arg(&module)
            .arg("--input")
            .arg(input)
            .arg("--manifest")
            .arg(dir.join("fallow.toml"))
            .output()
            .expect("fallow run");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{}: {stderr}", input.display());
        assert!(!run.stdout.is_empty(), "{}: no output", input.display());
        local.push((input.file_name().expect("name").to_owned(), run.stdout));
    }
    if lang == "c" {
        // Units `a` and `b` have the same input but not the same name: getentropy() gives
        // each its own stream, so their estimates differ (a time-seeded rand() would not).
        assert_ne!(
            local[0].1, local[1].1,
            "units a and b drew the same numbers"
        );
        time_seeded_rand_is_warned_about(&dir);
    }

    // Submitted as it stands, to two workers of different accounts (replication 2).
    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob"]);
    let id = c.submit(&dir.join("fallow.toml")).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (inputs.len() as u64, 0),
        "{status}"
    );
    let out = c.results(id);
    for (unit, bytes) in local {
        assert_eq!(
            std::fs::read(out.join(&unit)).expect("verified output"),
            bytes,
            "{unit:?}: fallow run and the workers agree"
        );
    }
}

#[test]
fn the_rust_template_builds_runs_and_verifies_as_it_stands() {
    new_build_run_submit("rust", "the wasm32-wasip1 target");
}

#[test]
fn the_c_template_builds_runs_and_verifies_as_it_stands() {
    new_build_run_submit(
        "c",
        "Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32",
    );
}

/// The determinism pitfall of C: `srand(time(NULL))` seeds every unit alike, because the
/// clock is frozen. `fallow run` warns, naming the fix.
fn time_seeded_rand_is_warned_about(dir: &Path) {
    let source = dir.join("timeseeded.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <stdlib.h>\n#include <time.h>\n\
         int main(void) { srand(time(NULL)); printf(\"%d\\n\", rand()); return 0; }\n",
    )
    .expect("write source");
    let module = dir.join("timeseeded.wasm");
    let built = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-o"])
        .arg(&module)
        .arg(&source)
        .output()
        .expect("clang");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut outputs = Vec::new();
    for name in ["a", "b"] {
        let run = fallow()
            .arg("run")
            .arg(&module)
            .args(["--name", name, "--input", "/dev/null"])
            .output()
            .expect("fallow run");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(
            stderr.contains("warning") && stderr.contains("getentropy()"),
            "{stderr}"
        );
        outputs.push(run.stdout);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "a frozen clock seeds every unit alike"
    );
}
