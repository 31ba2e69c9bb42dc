//! Why an execution ended without a usable output.

use std::fmt;

/// The distinct ways a unit's execution can fail. Each maps to one readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest used all its fuel (e.g. an infinite loop). Deterministic.
    FuelExhausted,
    /// The wall-clock watchdog fired. Not deterministic.
    Timeout,
    /// The guest tried to grow memory past `memory_mb`.
    MemoryExhausted,
    /// The guest overflowed the wasm stack (e.g. unbounded recursion).
    StackOverflow,
    /// The guest wrote more than `max_output_bytes` to stdout.
    OutputTooLarge,
    /// Any other trap (unreachable, division by zero, out-of-bounds access...).
    Trap,
    /// The guest exited with a non-zero code.
    ExitCode,
    /// The module could not be compiled or instantiated on this worker.
    BadModule,
    /// The guest saved a checkpoint bigger than `max_checkpoint_bytes`. Deterministic.
    CheckpointTooLarge,
    /// The unit's submitter signature did not verify on the worker, which refused to run
    /// it: the coordinator handed out a module, limits or input the submitter did not sign.
    BadSignature,
}

impl FailureKind {
    /// Stable snake_case name used in logs, `failed.txt` and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::FuelExhausted => "fuel_exhausted",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryExhausted => "memory_exhausted",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::Trap => "trap",
            FailureKind::ExitCode => "exit_code",
            FailureKind::BadModule => "bad_module",
            FailureKind::CheckpointTooLarge => "checkpoint_too_large",
            FailureKind::BadSignature => "bad_signature",
        }
    }

    /// Inverse of [`FailureKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            FailureKind::FuelExhausted,
            FailureKind::Timeout,
            FailureKind::MemoryExhausted,
            FailureKind::StackOverflow,
            FailureKind::OutputTooLarge,
            FailureKind::Trap,
            FailureKind::ExitCode,
            FailureKind::BadModule,
            FailureKind::CheckpointTooLarge,
            FailureKind::BadSignature,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether two honest workers always fail the same way on the same input. Timeouts,
    /// memory and stack exhaustion depend on the machine, so they fail an execution without
    /// being evidence about the unit ("not a vote").
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            FailureKind::FuelExhausted
                | FailureKind::OutputTooLarge
                | FailureKind::Trap
                | FailureKind::ExitCode
                | FailureKind::CheckpointTooLarge
        )
    }
}

/// A failed execution: the kind plus detail (trap message, exit code, stderr tail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Human-readable detail, at most [`MAX_DETAIL`] bytes.
    pub detail: String,
}

/// Longest failure detail kept (the stderr tail is cut to fit).
pub const MAX_DETAIL: usize = 2048;

impl Failure {
    /// A failure with `detail` cut to [`MAX_DETAIL`] bytes on a character boundary.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Failure { kind, detail }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}: {}", self.kind.as_str(), self.detail)
        }
    }
}
