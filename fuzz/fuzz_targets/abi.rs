//! The guest ABI at run time: the `abicall` guest (tasks/hostile) makes whatever host calls
//! the input lists — every WASI preview 1 function Fallow links and its checkpoint imports —
//! with arbitrary pointers, lengths and ids. The host must answer with an errno or stop
//! the guest with a failure that is its fault (a trap, fuel, memory, a checkpoint too
//! large), never panic or report a host-side failure, and two runs of the same input must
//! agree to the byte and the unit of fuel (what makes replicas comparable).
//!
//! Links wasmtime: opt-in with `--features sandbox`, like `inspect`.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use protocol::{Digest, FailureKind, Limits};
use sandbox::{Compiled, Sandbox, SandboxConfig};

static GUEST: LazyLock<(Sandbox, Compiled)> = LazyLock::new(|| {
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 2,
        max_memory_mb: 32,
        ..SandboxConfig::default()
    })
    .expect("the sandbox engine starts");
    let wasm = artifacts::hostile::ABICALL;
    let compiled = sandbox
        .compile(Digest::of(wasm), wasm, false)
        .expect("the abicall guest compiles");
    (sandbox, compiled)
});

/// Small enough that a run takes well under a millisecond, so the wall-clock watchdog
/// (the one non-deterministic limit) never fires.
const LIMITS: Limits = Limits {
    fuel: 2_000_000,
    memory_mb: 32,
    wall_seconds: 60,
    max_output_bytes: 4096,
    nan_canonicalization: false,
    max_checkpoint_bytes: 64 << 10,
};

fuzz_target!(|data: &[u8]| {
    let (sandbox, compiled) = &*GUEST;
    let first = sandbox.run(compiled, data, [7; 32], &LIMITS);
    let second = sandbox.run(compiled, data, [7; 32], &LIMITS);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.output, b.output, "two runs of one input printed different output");
            assert_eq!(a.fuel, b.fuel, "two runs of one input used different fuel");
            assert!(a.output.len() as u64 <= LIMITS.max_output_bytes);
            assert!(a.fuel <= LIMITS.fuel);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "two runs of one input failed differently");
            assert!(
                matches!(
                    a.kind,
                    FailureKind::Trap
                        | FailureKind::ExitCode
                        | FailureKind::FuelExhausted
                        | FailureKind::MemoryExhausted
                        | FailureKind::OutputTooLarge
                        | FailureKind::CheckpointTooLarge
                        | FailureKind::StackOverflow
                ),
                "a guest's host calls ended as {:?}: {}",
                a.kind,
                a.detail
            );
        }
        _ => panic!("two runs of one input disagree: {first:?} vs {second:?}"),
    }
});
