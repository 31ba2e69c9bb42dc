//! The sandbox the `inspect` fuzz target checks modules with, shared with the replay test
//! that runs in `cargo test` (`sandbox/tests/fuzz_replay.rs`) by `#[path]`, so both check
//! with the same settings. The property itself is only "no panic": `inspect` must refuse
//! garbage with an error.

use sandbox::{Sandbox, SandboxConfig};

/// One small slot (inspect never instantiates), as the coordinator's submit check uses
/// one engine per process.
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        slots: 1,
        max_memory_mb: 64,
        module_cache: 1,
        ..SandboxConfig::default()
    })
    .expect("the sandbox engine starts")
}
