//! `sandbox::Sandbox::inspect` (the submit-time module check: wasmtime validation and
//! compilation, WASI-command shape, import allow-list) on arbitrary bytes. It must refuse
//! garbage with an error, never panic.
//!
//! Links wasmtime and Cranelift, so it builds only with `--features sandbox` and runs far
//! slower than the other targets: every accepted-enough input is compiled (FUZZING.md).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sandbox::{Sandbox, SandboxConfig};

/// One sandbox for the whole run (engines and the watchdog thread are per process in the
/// coordinator too). One small slot: inspect never instantiates.
static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| {
    Sandbox::new(SandboxConfig {
        slots: 1,
        max_memory_mb: 64,
        module_cache: 1,
        ..SandboxConfig::default()
    })
    .expect("the sandbox engine starts")
});

fuzz_target!(|data: &[u8]| {
    let _ = SANDBOX.inspect(data);
});
