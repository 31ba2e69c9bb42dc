//! Builds every guest in `tasks/` for wasm32-wasip1 and copies the modules
//! into OUT_DIR, where `src/lib.rs` embeds them.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "wasm32-wasip1";
const INSTALL_HINT: &str = "install the guest target: rustup target add wasm32-wasip1";

/// Guest packages and the binaries each one produces.
const GUESTS: &[(&str, &[&str])] = &[
    ("mandelbrot", &["mandelbrot"]),
    ("primes", &["primes"]),
    ("pi", &["pi"]),
    ("nbody", &["nbody"]),
    ("sum", &["sum"]),
    ("pi-reduce", &["pi-reduce"]),
    ("collatz", &["collatz"]),
    ("lookup", &["lookup"]),
    (
        "hostile",
        &[
            "spin",
            "membomb",
            "recurse",
            "flood",
            "openfile",
            "badimport",
            "echo",
            "exit3",
            "hoard",
            "abicall",
            "dataprobe",
        ],
    ),
];

/// Settings of the outer build that must not leak into the guest build:
/// host-specific flags would break or change the wasm output, and the outer
/// target directory is locked by the build that is running this script.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
    // `cargo clippy` sets this; linting guests again inside a build script
    // would only slow it down and churn the nested build's fingerprints.
    "RUSTC_WORKSPACE_WRAPPER",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let tasks_dir = manifest_dir
        .parent()
        .ok_or("artifacts crate has no parent directory")?;
    let workspace_dir = tasks_dir
        .parent()
        .ok_or("tasks directory has no parent directory")?;

    for (package, _) in GUESTS {
        let dir = tasks_dir.join(package);
        rerun_if_changed(&dir.join("src"));
        rerun_if_changed(&dir.join("Cargo.toml"));
    }
    rerun_if_changed(&tasks_dir.join("reduce_abi.rs"));
    rerun_if_changed(&tasks_dir.join("command.rs"));
    rerun_if_changed(&tasks_dir.join("range_input.rs"));
    // Release profile settings live in the workspace manifest.
    rerun_if_changed(&workspace_dir.join("Cargo.toml"));

    check_target_installed()?;

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    // A target directory of our own: the outer build holds the lock on the
    // workspace one for as long as this script runs.
    let target_dir = out_dir.join("guest-target");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_dir.join("Cargo.toml"))
        .args(["--target", TARGET, "--release"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in GUESTS {
        command.args(["-p", package]);
    }
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    // Debug info would multiply module sizes and the hosts never read it;
    // the name section survives, so traps still show function names.
    command
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        // SIMD128 lets LLVM vectorise guest loops as it does native ones, and it is
        // deterministic: every lane of every instruction has one defined result (NaN bits
        // aside, which `nan_canonicalization` covers for vectors too). Relaxed SIMD, which
        // is not deterministic, stays off: the sandbox refuses it. Per target, so that the
        // guests' build scripts and proc macros, built for the host, are left alone.
        .env(
            "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS",
            "-C target-feature=+simd128",
        );

    let output = command
        .output()
        .map_err(|err| format!("cannot run cargo to build the guests: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let hint = if stderr.contains("may not be installed") {
            format!("\n{INSTALL_HINT}")
        } else {
            String::new()
        };
        return Err(format!(
            "building the guests failed ({}):\n{stdout}{stderr}{hint}",
            output.status
        ));
    }

    let built = target_dir.join(TARGET).join("release");
    for (_, binaries) in GUESTS {
        for binary in *binaries {
            let file = format!("{binary}.wasm");
            fs::copy(built.join(&file), out_dir.join(&file))
                .map_err(|err| format!("cannot copy {file} into OUT_DIR: {err}"))?;
        }
    }
    Ok(())
}

/// Fails early with an actionable message instead of a wall of "can't find
/// crate for `std`" errors from the nested build.
fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|err| format!("cannot run {}: {err}", rustc.to_string_lossy()))?;
    if !output.status.success() {
        // Unknown toolchain layout: let the nested build report the problem.
        return Ok(());
    }
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let target_lib = Path::new(&sysroot)
        .join("lib")
        .join("rustlib")
        .join(TARGET)
        .join("lib");
    if target_lib.is_dir() {
        Ok(())
    } else {
        Err(INSTALL_HINT.to_owned())
    }
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("cargo did not set {name}"))
}

fn rerun_if_changed(path: &Path) {
    println!("cargo::rerun-if-changed={}", path.display());
}
