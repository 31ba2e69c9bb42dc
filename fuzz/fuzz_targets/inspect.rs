//! `sandbox::Sandbox::inspect` (the submit-time module check: wasmtime validation and
//! compilation, WASI-command shape, import allow-list) on arbitrary bytes. It must refuse
//! garbage with an error, never panic.
//!
//! Links wasmtime and Cranelift, so it builds only with `--features sandbox` and runs far
//! slower than the other targets: every accepted-enough input is compiled (FUZZING.md).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sandbox::Sandbox;

#[path = "../checks/inspect.rs"]
mod inspect;

/// One sandbox for the whole run (engines and the watchdog thread are per process in the
/// coordinator too).
static SANDBOX: LazyLock<Sandbox> = LazyLock::new(inspect::sandbox);

fuzz_target!(|data: &[u8]| {
    let _ = SANDBOX.inspect(data);
});
