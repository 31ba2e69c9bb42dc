//! The property the `abi` fuzz target checks, shared with the replay test that runs in
//! `cargo test` (`sandbox/tests/fuzz_replay.rs`, FUZZING.md): included by `#[path]` from
//! both, so the CI smoke and the fuzzer check the same thing.
//!
//! The `abicall` guest (tasks/hostile) makes whatever host calls the input lists — every
//! WASI preview 1 function Fallow links and its checkpoint imports — with arbitrary
//! pointers, lengths and ids. The host must answer with an errno or stop the guest with a
//! failure that is its fault (a trap, fuel, memory, a checkpoint too large), never panic
//! or report a host-side failure, and two runs of the same input must agree to the byte
//! and the unit of fuel (what makes replicas comparable).

use protocol::{Digest, FailureKind, Limits};
use sandbox::{Compiled, Sandbox, SandboxConfig};

/// Small enough that a run takes about a millisecond, so the wall-clock watchdog (the one
/// non-deterministic limit) fires only when the process is starved of CPU (see [`check`]).
/// 200,000 fuel and 4 MiB (the guest starts
/// with about 1.1 MiB) still let an input run out of either, while the fuzzer runs 3–4x as
/// many inputs a second as with 2,000,000 fuel and 32 MiB: with more room it drifts to
/// inputs that grow and touch memory or draw kilobytes of random bytes, which add little.
pub const LIMITS: Limits = Limits {
    fuel: 200_000,
    memory_mb: 4,
    wall_seconds: 60,
    max_output_bytes: 4096,
    nan_canonicalization: false,
    max_checkpoint_bytes: 64 << 10,
};

/// The sandbox and the compiled `abicall` guest (made once per process).
pub fn guest() -> (Sandbox, Compiled) {
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 2,
        max_memory_mb: LIMITS.memory_mb,
        ..SandboxConfig::default()
    })
    .expect("the sandbox engine starts");
    let wasm = artifacts::hostile::ABICALL;
    let compiled = sandbox
        .compile(Digest::of(wasm), wasm, false)
        .expect("the abicall guest compiles");
    (sandbox, compiled)
}

/// Runs `data` twice and panics if the host misbehaved (see the module comment).
pub fn check(sandbox: &Sandbox, compiled: &Compiled, data: &[u8]) {
    let first = sandbox.run(compiled, data, [7; 32], &LIMITS);
    let second = sandbox.run(compiled, data, [7; 32], &LIMITS);
    // The wall clock is the one limit that is not deterministic: a run of 200,000 fuel
    // takes milliseconds, so a timeout means this process was starved of CPU (a fuzzer at
    // idle priority beside a build hit it after 60 s). Inconclusive, not a finding; a run
    // that truly hangs in a host call is caught by libFuzzer's own `-timeout`.
    let timed_out = |r: &Result<sandbox::Execution, protocol::Failure>| {
        r.as_ref().is_err_and(|f| f.kind == FailureKind::Timeout)
    };
    if timed_out(&first) || timed_out(&second) {
        return;
    }
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.output, b.output,
                "two runs of one input printed different output"
            );
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
}
