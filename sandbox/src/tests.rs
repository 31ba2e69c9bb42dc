//! Every hostile guest ends with its own readable reason; honest guests are bit-exact.

use super::*;
use artifacts::hostile;

fn limits() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        memory_mb: 32,
        wall_seconds: 20,
        max_output_bytes: 4096,
        nan_canonicalization: false,
    }
}

fn run(sb: &Sandbox, wasm: &[u8], input: &[u8], limits: Limits) -> Result<Execution, Failure> {
    let compiled = sb
        .compile(Digest::of(wasm), wasm, limits.nan_canonicalization)
        .expect("compiles");
    // Guests run on a thread with a big native stack, as in the worker.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(GUEST_THREAD_STACK)
            .spawn_scoped(s, || sb.run(&compiled, input, [9; 32], &limits))
            .expect("thread")
            .join()
            .expect("join")
    })
}

// One shared sandbox per test binary keeps engine start-up out of every case.
fn sandbox_ref() -> &'static Sandbox {
    static SB: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SB.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            slots: 4,
            max_memory_mb: 256,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

/// Runs `wasm` and returns the failure kind, or `None` on success.
fn check(wasm: &[u8], limits: Limits) -> (Option<FailureKind>, String) {
    match run(sandbox_ref(), wasm, b"hello", limits) {
        Ok(e) => (None, String::from_utf8_lossy(&e.output).into_owned()),
        Err(f) => (Some(f.kind), f.to_string()),
    }
}

#[test]
fn hostile_guests_each_fail_with_their_own_reason() {
    let cases: [(&str, &[u8], FailureKind, &str); 6] = [
        (
            "infinite loop",
            hostile::SPIN,
            FailureKind::FuelExhausted,
            "fuel",
        ),
        (
            "memory bomb",
            hostile::MEMBOMB,
            FailureKind::MemoryExhausted,
            "memory_mb = 32",
        ),
        (
            "unbounded recursion",
            hostile::RECURSE,
            FailureKind::StackOverflow,
            "stack overflow",
        ),
        (
            "stdout flood",
            hostile::FLOOD,
            FailureKind::OutputTooLarge,
            "max_output_bytes",
        ),
        (
            "opens a file",
            hostile::OPENFILE,
            FailureKind::ExitCode,
            "exit code 1",
        ),
        (
            "exit 3",
            hostile::EXIT3,
            FailureKind::ExitCode,
            "bad things",
        ),
    ];
    for (name, wasm, kind, text) in cases {
        let (got, reason) = check(wasm, limits());
        assert_eq!(got, Some(kind), "{name}: {reason}");
        assert!(reason.contains(text), "{name}: {reason:?} lacks {text:?}");
    }
}

#[test]
fn the_wall_clock_watchdog_stops_a_guest_with_fuel_to_spare() {
    let (got, reason) = check(
        hostile::SPIN,
        Limits {
            fuel: 1 << 50,
            wall_seconds: 1,
            ..limits()
        },
    );
    assert_eq!(got, Some(FailureKind::Timeout), "{reason}");
}

#[test]
fn an_honest_guest_is_bit_exact_and_reports_identical_fuel() {
    let sb = sandbox_ref();
    let a = run(sb, hostile::ECHO, b"same input", limits()).expect("runs");
    let b = run(sb, hostile::ECHO, b"same input", limits()).expect("runs");
    assert_eq!(a.output, b"same input");
    assert_eq!((a.digest, a.fuel), (b.digest, b.fuel));
    assert!(a.fuel > 0);
}

#[test]
fn real_kernels_produce_known_answers() {
    let sb = sandbox_ref();
    let primes = run(sb, artifacts::PRIMES, b"0 100000\n", limits()).expect("primes");
    assert_eq!(primes.output, b"9592\n");
    let pi = run(sb, artifacts::PI, b"0 1000\n", limits()).expect("pi");
    assert!(String::from_utf8_lossy(&pi.output).ends_with(" 1000\n"));
}

#[test]
fn modules_outside_the_abi_are_refused_naming_the_problem() {
    let sb = sandbox_ref();
    let err = sb
        .inspect(hostile::BADIMPORT)
        .expect_err("bad import accepted")
        .to_string();
    assert!(err.contains("launch_missiles"), "{err}");
    let err = sb
        .inspect(b"#!/bin/sh\necho not wasm\n")
        .expect_err("text accepted")
        .to_string();
    assert!(err.contains("not a WebAssembly module"), "{err}");
    assert!(sb.inspect(&[0, b'a', b's', b'm', 0x0d, 0, 1, 0]).is_err());
    for (name, wasm) in artifacts::ALL {
        if !name.ends_with("badimport") {
            sb.inspect(wasm)
                .unwrap_or_else(|e| panic!("{name} refused: {e}"));
        }
    }
}

#[test]
fn a_module_whose_bytes_do_not_match_the_digest_is_refused() {
    let sb = sandbox_ref();
    assert!(
        sb.compile(Digest::of(b"other"), hostile::ECHO, false)
            .is_err()
    );
}

/// Holds the guest once, for `hold`, at its `at`-th tick; records the fuel it saw.
struct HoldOnce {
    at: usize,
    hold: Duration,
    calls: Arc<Mutex<Vec<u64>>>,
}

impl Pacer for HoldOnce {
    fn pace(&mut self, fuel_used: u64) {
        let mut calls = self.calls.lock().expect("lock");
        calls.push(fuel_used);
        if calls.len() == self.at {
            drop(calls);
            std::thread::sleep(self.hold);
        }
    }
}

fn run_held(
    wasm: &[u8],
    input: &[u8],
    limits: Limits,
    pacer: HoldOnce,
) -> Result<Execution, Failure> {
    let sb = sandbox_ref();
    let compiled = sb.compile(Digest::of(wasm), wasm, false).expect("compiles");
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(GUEST_THREAD_STACK)
            .spawn_scoped(s, || {
                sb.run_paced(&compiled, input, [9; 32], &limits, Box::new(pacer))
            })
            .expect("thread")
            .join()
            .expect("join")
    })
}

#[test]
fn a_guest_held_mid_run_gives_the_same_output_and_fuel_as_one_run_straight_through() {
    let input = b"0 30000000\n";
    let straight = run(sandbox_ref(), artifacts::PRIMES, input, limits()).expect("straight");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let held = run_held(
        artifacts::PRIMES,
        input,
        limits(),
        HoldOnce {
            at: 3, // the first call is before the start
            hold: Duration::from_millis(300),
            calls: calls.clone(),
        },
    )
    .expect("held");
    let calls = calls.lock().expect("lock").clone();
    assert!(
        calls.len() >= 3,
        "the guest was never held ({} ticks)",
        calls.len()
    );
    assert_eq!(held.output, straight.output);
    assert_eq!((held.digest, held.fuel), (straight.digest, straight.fuel));
    // Progress reports grow and never pass the final count.
    assert!(calls.windows(2).all(|w| w[0] <= w[1]), "{calls:?}");
    assert!(calls.iter().all(|&f| f <= held.fuel));
}

#[test]
fn time_held_by_the_pacer_does_not_count_against_wall_seconds() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    // Held for 1.5 s with wall_seconds = 1: only the guest's own running time counts.
    let held = run_held(
        artifacts::PRIMES,
        b"0 20000000\n",
        Limits {
            wall_seconds: 1,
            ..limits()
        },
        HoldOnce {
            at: 2,
            hold: Duration::from_millis(1500),
            calls: calls.clone(),
        },
    );
    assert!(
        calls.lock().expect("lock").len() >= 2,
        "the guest was never held mid-run"
    );
    let out = held.expect("a held guest must not time out");
    assert_eq!(out.output, b"1270607\n");
}
