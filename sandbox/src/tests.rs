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
        ..Limits::default()
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
            "hint: the only files are the project's data files",
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

/// Messages of language runtimes that do not say the sandbox is why get a hint that does.
#[test]
fn runtime_messages_about_files_and_backtraces_get_a_hint() {
    let c = "fopen: Capabilities insufficient";
    assert!(
        stderr_suffix(c).contains("hint: the only files are the project's data files"),
        "{}",
        stderr_suffix(c)
    );
    let rust = "thread 'main' panicked at src/main.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
    assert!(stderr_suffix(rust).contains("hint: a guest cannot set environment variables"));
    assert_eq!(stderr_suffix("plain trouble"), "; stderr: plain trouble");
    assert_eq!(stderr_suffix(""), "");
}

#[test]
fn the_wall_clock_stops_a_guest_with_fuel_to_spare() {
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

/// Runs `wasm` on a guest thread like [`run`], with `f` doing the call.
fn on_guest_thread<T: Send>(wasm: &[u8], f: impl FnOnce(&Sandbox, &Compiled) -> T + Send) -> T {
    let sb = sandbox_ref();
    let compiled = sb.compile(Digest::of(wasm), wasm, false).expect("compiles");
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(GUEST_THREAD_STACK)
            .spawn_scoped(s, || f(sb, &compiled))
            .expect("thread")
            .join()
            .expect("join")
    })
}

fn run_held(
    wasm: &[u8],
    input: &[u8],
    limits: Limits,
    pacer: HoldOnce,
) -> Result<Execution, Failure> {
    on_guest_thread(wasm, |sb, compiled| {
        sb.run_paced(compiled, input, [9; 32], &limits, Box::new(pacer))
    })
}

/// Runs `wasm` on a guest thread with `resume`, keeping every checkpoint and stopping at
/// checkpoint `stop_at` (0: never).
fn run_checkpointed(
    wasm: &[u8],
    input: &[u8],
    limits: Limits,
    resume: Option<Checkpoint>,
    stop_at: u32,
) -> (Result<Finished, Failure>, Vec<Checkpoint>) {
    on_guest_thread(wasm, |sb, compiled| {
        let mut seen = Vec::new();
        let outcome = sb.run_resumable(
            compiled,
            input,
            [9; 32],
            &limits,
            None,
            resume,
            Box::new(Unpaced),
            &mut |c| {
                seen.push(c.clone());
                if c.segment == stop_at {
                    Proceed::Stop
                } else {
                    Proceed::Continue
                }
            },
        );
        (outcome, seen)
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
    // Progress reports grow and never pass the final count, and mid-run they show some.
    assert!(calls.windows(2).all(|w| w[0] <= w[1]), "{calls:?}");
    assert!(calls.iter().all(|&f| f <= held.fuel));
    assert!(
        calls[1..].iter().any(|&f| f > 0 && f < held.fuel),
        "no progress reported mid-run: {calls:?}"
    );
}

#[test]
fn a_running_guest_in_loops_without_calls_shows_its_progress() {
    use wasm_encoder::ValType;
    // 2,000 outer iterations of 100,000 inner ones, and no call anywhere: with call-free
    // checks only the outer loop's store of the counter tells the pacer how far it got.
    let inner = metered::count_down(1, 100_000, Vec::new());
    let start = metered::body(&metered::count_down(0, 2_000, inner), &[(2, ValType::I32)]);
    let wasm = metered::module(&[(0, start)], 0);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let done = run_held(
        &wasm,
        b"",
        limits(),
        HoldOnce {
            at: 3,
            hold: Duration::from_millis(10),
            calls: calls.clone(),
        },
    )
    .expect("runs");
    let calls = calls.lock().expect("lock").clone();
    assert!(calls.len() >= 3, "never asked mid-run: {calls:?}");
    assert!(
        calls[1..].iter().any(|&f| f > 0 && f < done.fuel),
        "no progress reported mid-run: {calls:?} of {}",
        done.fuel
    );
}

#[test]
fn a_held_guest_does_not_run_until_the_pacer_lets_it_go() {
    // Primes up to 30,000,000 takes tens of milliseconds; held for 400 ms at its second
    // tick, the run cannot end before the hold does. (Were the guest not held, it would
    // finish while the pacer sleeps.)
    let calls = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let held = run_held(
        artifacts::PRIMES,
        b"0 30000000\n",
        limits(),
        HoldOnce {
            at: 2,
            hold: Duration::from_millis(400),
            calls: calls.clone(),
        },
    )
    .expect("held");
    let took = started.elapsed();
    assert!(
        calls.lock().expect("lock").len() >= 2,
        "the guest was never held mid-run"
    );
    assert!(
        took >= Duration::from_millis(400),
        "ran on while held: {took:?}"
    );
    assert_eq!(held.output, b"1857859\n");
}

#[test]
fn call_free_checks_count_the_same_fuel_as_slice_calls_and_stop_at_the_same_limit() {
    let slice_calls = Sandbox::new(SandboxConfig {
        slots: 2,
        max_memory_mb: 256,
        metering: Metering::RewriteWithSliceCalls,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let cases: [(&[u8], &[u8]); 3] = [
        (artifacts::PRIMES, b"0 3000000\n"),
        (artifacts::COLLATZ, b"1 20000 2000\n"),
        (&metered::counting_loop(2_000_000), b""),
    ];
    for (wasm, input) in cases {
        let a = run(sandbox_ref(), wasm, input, limits()).expect("call-free");
        let b = run(&slice_calls, wasm, input, limits()).expect("slice calls");
        assert_eq!((a.digest, a.fuel), (b.digest, b.fuel));
        // Half the fuel: both stop, out of fuel.
        let half = Limits {
            fuel: a.fuel / 2,
            ..limits()
        };
        for sb in [sandbox_ref(), &slice_calls] {
            let failure = run(sb, wasm, input, half).expect_err("half the fuel");
            assert_eq!(failure.kind, FailureKind::FuelExhausted, "{failure}");
        }
        // One short, even where only the segments after the last check pass the limit:
        // no run states more fuel than its unit may use.
        let short = Limits {
            fuel: a.fuel - 1,
            ..limits()
        };
        for sb in [sandbox_ref(), &slice_calls] {
            let failure = run(sb, wasm, input, short).expect_err("one short");
            assert_eq!(failure.kind, FailureKind::FuelExhausted, "{failure}");
        }
    }
}

/// Call-free checks move each loop's draw from the bank after its body, inside two more
/// labels (`meter`, `Rewriter::open_loop`), so every branch that crosses such a loop is
/// renumbered. A guest that branches from inner loops to outer loops' heads, out of
/// both, through `br_table`, to its function's label, and through loops with a result
/// and with a parameter computes the same checksum (it traps otherwise) with call-free
/// checks, with slice calls (the same fuel) and unmetered.
#[test]
fn branches_across_loops_with_call_free_checks_land_where_they_did() {
    use wasm_encoder::{BlockType as B, Instruction as I, ValType};
    let mut expected = 0u32;
    let mut i = 0u32;
    loop {
        let mut j = 0u32;
        loop {
            expected = expected.wrapping_mul(3).wrapping_add(i * 7).wrapping_add(j);
            j += 1;
            if j >= 6 || (i + j) % 3 == 1 {
                break;
            }
        }
        i += 1;
        if i >= 5 {
            break;
        }
    }
    expected = expected.wrapping_add(10 + 7);

    let (li, lj, sum, k) = (0, 1, 2, 3);
    let code = [
        I::Block(B::Empty), // $done
        I::Loop(B::Empty),  // $outer
        I::I32Const(0),
        I::LocalSet(lj),
        I::Block(B::Empty), // $next
        I::Loop(B::Empty),  // $inner
        I::LocalGet(sum),
        I::I32Const(3),
        I::I32Mul,
        I::LocalGet(li),
        I::I32Const(7),
        I::I32Mul,
        I::I32Add,
        I::LocalGet(lj),
        I::I32Add,
        I::LocalSet(sum),
        I::LocalGet(lj),
        I::I32Const(1),
        I::I32Add,
        I::LocalTee(lj),
        I::I32Const(6),
        I::I32GeU,
        I::BrIf(1), // $next
        I::LocalGet(li),
        I::LocalGet(lj),
        I::I32Add,
        I::I32Const(3),
        I::I32RemU,
        I::BrTable(vec![0, 1].into(), 0), // 0: $inner, 1: $next, else $inner
        I::End,                           // $inner
        I::End,                           // $next
        I::LocalGet(li),
        I::I32Const(1),
        I::I32Add,
        I::LocalTee(li),
        I::I32Const(5),
        I::I32GeU,
        I::BrIf(1), // $done
        I::Br(0),   // $outer
        I::End,     // $outer
        I::End,     // $done
        // A loop with a result: counts k to 10.
        I::Loop(B::Result(ValType::I32)),
        I::LocalGet(k),
        I::I32Const(1),
        I::I32Add,
        I::LocalTee(k),
        I::LocalGet(k),
        I::I32Const(10),
        I::I32LtU,
        I::BrIf(0),
        I::End,
        I::LocalGet(sum),
        I::I32Add,
        I::LocalSet(sum),
        // A loop with a parameter (type 2): counts its argument to 7.
        I::I32Const(0),
        I::Loop(B::FunctionType(2)),
        I::I32Const(1),
        I::I32Add,
        I::LocalTee(k),
        I::LocalGet(k),
        I::I32Const(7),
        I::I32LtU,
        I::BrIf(0),
        I::End,
        I::LocalGet(sum),
        I::I32Add,
        I::LocalTee(sum),
        I::I32Const(expected as i32),
        I::I32Ne,
        I::If(B::Empty),
        I::Unreachable,
        I::End,
        // Out of a loop to the function's own label.
        I::Loop(B::Empty),
        I::Br(1),
        I::End,
        I::Unreachable,
    ];
    let wasm = metered::module(&[(0, metered::body(&code, &[(4, ValType::I32)]))], 0);

    let with = |metering| {
        Sandbox::new(SandboxConfig {
            slots: 1,
            max_memory_mb: 32,
            metering,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    };
    let call_free = run(sandbox_ref(), &wasm, b"", limits()).expect("call-free checks");
    let slice_calls =
        run(&with(Metering::RewriteWithSliceCalls), &wasm, b"", limits()).expect("slice calls");
    run(&with(Metering::Off), &wasm, b"", limits()).expect("unmetered");
    assert_eq!(call_free.fuel, slice_calls.fuel);
    assert!(call_free.fuel > 300, "{}", call_free.fuel);
    // One short: out of fuel in the middle of the loops, both ways.
    let short = Limits {
        fuel: call_free.fuel - 1,
        ..limits()
    };
    for metering in [Metering::Rewrite, Metering::RewriteWithSliceCalls] {
        let failure = run(&with(metering), &wasm, b"", short).expect_err("one short");
        assert_eq!(failure.kind, FailureKind::FuelExhausted, "{failure}");
    }
}

#[test]
fn a_start_function_runs_first_and_is_metered_with_call_free_checks() {
    use wasm_encoder::{BlockType, Instruction as I, ValType};
    // The start function counts to 1000 and stores 1000 at address 0; `_start` traps
    // unless it finds it there.
    let start = metered::body(
        &[
            I::Loop(BlockType::Empty),
            I::LocalGet(0),
            I::I32Const(1),
            I::I32Add,
            I::LocalTee(0),
            I::I32Const(1000),
            I::I32LtU,
            I::BrIf(0),
            I::End,
            I::I32Const(0),
            I::LocalGet(0),
            I::I32Store(wasm_encoder::MemArg {
                offset: 0,
                align: 2,
                memory_index: 0,
            }),
        ],
        &[(1, ValType::I32)],
    );
    let main = metered::body(
        &[
            I::I32Const(0),
            I::I32Load(wasm_encoder::MemArg {
                offset: 0,
                align: 2,
                memory_index: 0,
            }),
            I::I32Const(1000),
            I::I32Ne,
            I::If(BlockType::Empty),
            I::Unreachable,
            I::End,
        ],
        &[],
    );
    let wasm = metered::module_with_start_section(&[(0, start), (0, main)], 1, Some(0));
    let slice_calls = Sandbox::new(SandboxConfig {
        slots: 1,
        metering: Metering::RewriteWithSliceCalls,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let a = run(sandbox_ref(), &wasm, b"", limits()).expect("call-free");
    let b = run(&slice_calls, &wasm, b"", limits()).expect("slice calls");
    assert_eq!(a.fuel, b.fuel);
    // The start function's 1000 iterations are charged: 6 each, and more around them.
    assert!(a.fuel > 6000, "{}", a.fuel);
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

#[test]
fn a_unit_resumed_from_any_checkpoint_matches_the_straight_run_in_bytes_and_fuel() {
    let input = b"1 20000 2000\n";
    let straight = run(sandbox_ref(), artifacts::COLLATZ, input, limits()).expect("runs");
    let expected = collatz_native(input);
    assert_eq!(straight.output, expected);
    assert_eq!(
        straight.checkpoints, 9,
        "one checkpoint per 2000 numbers but the last"
    );
    for stop_at in [1, 4, 9] {
        let (first, seen) = run_checkpointed(artifacts::COLLATZ, input, limits(), None, stop_at);
        let Ok(Finished::Stopped(cp)) = first else {
            panic!("not stopped at {stop_at}: {first:?}");
        };
        assert_eq!((cp.segment, seen.len() as u32), (stop_at, stop_at));
        // Through the on-disk form, as after a crash.
        let cp = Checkpoint::decode(&cp.encode()).expect("decodes");
        let (second, _) = run_checkpointed(artifacts::COLLATZ, input, limits(), Some(cp), 0);
        let Ok(Finished::Done(resumed)) = second else {
            panic!("resume from {stop_at} failed: {second:?}");
        };
        assert_eq!(resumed.output, straight.output, "resumed from {stop_at}");
        assert_eq!(
            resumed.fuel, straight.fuel,
            "claimed fuel, resumed from {stop_at}"
        );
        assert_eq!(resumed.resumed_from, stop_at);
        assert!(
            resumed.fuel_here < straight.fuel,
            "the saved work was not redone"
        );
        assert_eq!(resumed.checkpoints, 9);
    }
}

#[test]
fn modules_without_the_checkpoint_import_do_not_see_it() {
    let sb = sandbox_ref();
    let echo = sb
        .compile(Digest::of(hostile::ECHO), hostile::ECHO, false)
        .expect("compiles");
    assert!(!echo.checkpoints());
    let collatz = sb
        .compile(Digest::of(artifacts::COLLATZ), artifacts::COLLATZ, false)
        .expect("compiles");
    assert!(collatz.checkpoints());
    let plain = run(sb, hostile::ECHO, b"x", limits()).expect("runs");
    assert_eq!((plain.checkpoints, plain.resumed_from), (0, 0));
    assert_eq!(plain.fuel, plain.fuel_here);
}

#[test]
fn a_checkpoint_over_the_cap_fails_the_unit_naming_the_limit() {
    let (got, reason) = check(
        hostile::HOARD,
        Limits {
            max_checkpoint_bytes: 4096,
            ..limits()
        },
    );
    assert_eq!(got, Some(FailureKind::CheckpointTooLarge), "{reason}");
    assert!(reason.contains("max_checkpoint_bytes = 4096"), "{reason}");
    let (got, out) = check(hostile::HOARD, limits());
    assert_eq!((got, out.as_str()), (None, "restored 65536 bytes\n"));
}

#[test]
fn a_checkpoint_that_does_not_fit_the_limits_is_refused() {
    let cp = Checkpoint {
        segment: 1,
        fuel: limits().fuel + 1,
        stdout: Vec::new(),
        random: [0, 0],
        state: vec![0; 32],
    };
    let (outcome, _) = run_checkpointed(artifacts::COLLATZ, b"1 100 10", limits(), Some(cp), 0);
    assert_eq!(outcome.err().map(|f| f.kind), Some(FailureKind::BadModule));
}

fn collatz_native(input: &[u8]) -> Vec<u8> {
    // The kernel's answer for `1 20000`, computed here without the guest.
    let (mut sum, mut max, mut arg) = (0u64, 0u64, 1u64);
    let text = std::str::from_utf8(input).expect("utf8");
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("int"));
    let (a, b) = (f.next().expect("a"), f.next().expect("b"));
    for n in a..b {
        let (mut x, mut steps) = (n, 0u64);
        while x > 1 {
            x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
            steps += 1;
        }
        sum += steps;
        if steps > max {
            max = steps;
            arg = n;
        }
    }
    format!("{sum} {max} {arg}\n").into_bytes()
}

#[test]
fn imports_are_checked_before_the_module_is_compiled() {
    // A forbidden import followed by a code section that is not even valid: refused for
    // the import, which only a check before compilation (and validation) can report.
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type: () -> ()
    wasm.extend_from_slice(&[0x02, 0x0c, 0x01, 0x03]); // import section, one import
    wasm.extend_from_slice(b"env\x04evil\x00\x00"); // env::evil, a function of type 0
    wasm.extend_from_slice(&[0x0a, 0x03, 0xff, 0xff, 0xff]); // a broken code section
    match sandbox_ref().inspect(&wasm) {
        Err(Error::ForbiddenImport { module, name }) => {
            assert_eq!((module.as_str(), name.as_str()), ("env", "evil"));
        }
        other => panic!("expected the forbidden import, got {other:?}"),
    }
    // A library (no `_start`) is refused before compiling too, with the same message.
    let mut lib = b"\0asm\x01\0\0\0".to_vec();
    lib.extend_from_slice(&[0x05, 0x03, 0x01, 0x00, 0x01]); // one memory, min 1 page
    lib.extend_from_slice(&[0x07, 0x0a, 0x01, 0x06]); // export section, one export
    lib.extend_from_slice(b"memory\x02\x00"); // memory 0
    assert!(
        matches!(sandbox_ref().inspect(&lib), Err(Error::NotACommand(m)) if m.contains("_start"))
    );
}

/// One call for the `abicall` guest: an opcode and three arguments (folded into the size
/// of memory unless the opcode's top bit is set).
fn call(op: u8, a: u32, b: u32, c: u32) -> Vec<u8> {
    let mut v = vec![op];
    for x in [a, b, c] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[test]
fn host_calls_with_wild_arguments_get_errnos_or_trap_the_same_way_every_time() {
    let sb = sandbox_ref();
    let errnos = |e: &Execution| -> Vec<i32> {
        String::from_utf8_lossy(&e.output)
            .lines()
            .map(|l| l.parse().expect("an errno per line"))
            .collect()
    };
    // Calls the host answers with an errno.
    let input: Vec<u8> = [
        call(9, 0, 0, 1),     // poll_oneoff: not supported here (ENOTSUP = 58)
        call(14, 3, 0, 10),   // path_open: no such directory (EBADF = 8)
        call(2, 1024, 16, 0), // random_get into the guest's memory: fine
        call(10, 5, 0, 0),    // fd_close of a descriptor that does not exist (EBADF)
        call(18, 1000, 0, 0), // memory.grow by 232 pages: the old size in pages
    ]
    .concat();
    let a = run(sb, hostile::ABICALL, &input, limits()).expect("runs");
    let b = run(sb, hostile::ABICALL, &input, limits()).expect("runs");
    assert_eq!((&a.output, a.fuel), (&b.output, b.fuel), "deterministic");
    let got = errnos(&a);
    assert_eq!((&got[..4], got.len()), (&[58, 8, 0, 8][..], 5), "{got:?}");
    assert!(got[4] > 0, "{got:?}");
    // A checkpoint in the middle: the next segment goes on after it.
    let saved = [call(10, 5, 0, 0), call(17, 0, 0, 0), call(9, 0, 0, 1)].concat();
    let c = run(sb, hostile::ABICALL, &saved, limits()).expect("runs");
    assert_eq!((errnos(&c), c.checkpoints), (vec![58], 1));
    // Pointers past the end of memory: a trap (deterministic), the same each time.
    for bad in [
        // (The top bit of the opcode passes the pointers as they are.)
        call(0x80, 1, 0xffff_fff0, 3),     // fd_write's iovecs
        call(0x82, 0xffff_ff00, 0x800, 0), // random_get's buffer
        call(0x83, 0, 0, 0xffff_fffc),     // clock_time_get's result
        call(0x90, 0xffff_fff0, 64, 0),    // checkpoint_load (nothing saved: -1, no write)
    ] {
        let x = run(sb, hostile::ABICALL, &bad, limits());
        let y = run(sb, hostile::ABICALL, &bad, limits());
        match (&x, &y) {
            (Err(f), Err(g)) => {
                assert_eq!(f, g, "deterministic");
                assert_eq!(f.kind, FailureKind::Trap, "{f:?}");
            }
            (Ok(e), Ok(f)) => {
                assert_eq!(e.output, f.output);
                assert_eq!(errnos(e), vec![-1], "only checkpoint_load may answer");
            }
            other => panic!("runs disagree: {other:?}"),
        }
    }
    // A checkpoint larger than the project allows fails the execution, naming the cause.
    let too_big = Limits {
        max_checkpoint_bytes: 1024,
        ..limits()
    };
    let failed =
        run(sb, hostile::ABICALL, &call(17, 0, 0xfffff, 0), too_big).expect_err("too large");
    assert_eq!(failed.kind, FailureKind::CheckpointTooLarge, "{failed:?}");
}

/// A module that writes to stdout the words it finds at `ADDRESSES` in its 3 MiB memory,
/// then fills all of it with 0xAB (every page written: more than [`KEEP_RESIDENT`] holds,
/// so wasmtime's page-by-page reset cannot take them all) and leaves a marker at each
/// address: a memory slot reused by the next execution must show none of it. The
/// addresses straddle [`KEEP_RESIDENT`] (reset in place below it, handed back to the
/// kernel above it).
fn peeker() -> Vec<u8> {
    const ADDRESSES: [i32; 6] = [
        100,
        0x10_0000,
        0x18_0000,
        KEEP_RESIDENT as i32 - 8,
        KEEP_RESIDENT as i32 + 4096,
        0x2F_0000,
    ];
    fn uleb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn const_i32(v: i32, out: &mut Vec<u8>) {
        out.push(0x41);
        let mut v = i64::from(v);
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn name(s: &str, out: &mut Vec<u8>) {
        uleb(s.len() as u32, out);
        out.extend_from_slice(s.as_bytes());
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        uleb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    const STORE: [u8; 3] = [0x36, 2, 0];
    const LOAD: [u8; 3] = [0x28, 2, 0];
    let mut code = vec![0]; // no locals
    // The iovec at 0: 16 bytes from 16.
    for (at, value) in [(0, 16), (4, 4 * ADDRESSES.len() as i32)] {
        const_i32(at, &mut code);
        const_i32(value, &mut code);
        code.extend(STORE);
    }
    for (i, address) in ADDRESSES.iter().enumerate() {
        const_i32(16 + 4 * i as i32, &mut code);
        const_i32(*address, &mut code);
        code.extend(LOAD);
        code.extend(STORE);
    }
    // fd_write(1, iovs 0, 1 iovec, nwritten at 8), result dropped.
    for v in [1, 0, 1, 8] {
        const_i32(v, &mut code);
    }
    code.extend([0x10, 0, 0x1a]);
    // memory.fill(0, 0xAB, 3 MiB)
    for v in [0, 0xAB, 3 << 20] {
        const_i32(v, &mut code);
    }
    code.extend([0xfc, 11, 0]);
    for address in ADDRESSES {
        const_i32(address, &mut code);
        const_i32(0x5eed_5eed, &mut code);
        code.extend(STORE);
    }
    code.push(0x0b);

    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(
        1,
        &[2, 0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f, 0x60, 0, 0],
        &mut m,
    );
    let mut imports = vec![1];
    name("wasi_snapshot_preview1", &mut imports);
    name("fd_write", &mut imports);
    imports.extend([0, 0]);
    section(2, &imports, &mut m);
    section(3, &[1, 1], &mut m);
    section(5, &[1, 0, 48], &mut m); // 48 pages: 3 MiB
    let mut exports = vec![2];
    name("memory", &mut exports);
    exports.extend([2, 0]);
    name("_start", &mut exports);
    exports.extend([0, 1]);
    section(7, &exports, &mut m);
    let mut body = Vec::new();
    uleb(code.len() as u32, &mut body);
    body.extend(code);
    let mut codes = vec![1];
    codes.extend(body);
    section(10, &codes, &mut m);
    m
}

#[test]
fn a_reused_memory_slot_shows_nothing_of_the_previous_execution() {
    // One slot, so every execution reuses the same pooled memory.
    let sb = Sandbox::new(SandboxConfig {
        slots: 1,
        max_memory_mb: 16,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let wasm = peeker();
    for round in 0..3 {
        let out = run(&sb, &wasm, b"", limits()).expect("runs").output;
        assert_eq!(
            out,
            vec![0; 24],
            "round {round}: the memory held what an earlier execution left"
        );
    }
}

/// A module whose only content is imports of these WASI functions (type `() -> ()`; the
/// warning reads names only).
fn importing(names: &[&str]) -> Vec<u8> {
    let mut imports = vec![names.len() as u8];
    for name in names {
        let module = b"wasi_snapshot_preview1";
        imports.push(module.len() as u8);
        imports.extend_from_slice(module);
        imports.push(name.len() as u8);
        imports.extend_from_slice(name.as_bytes());
        imports.extend_from_slice(&[0x00, 0x00]); // a function of type 0
    }
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type 0: () -> ()
    wasm.push(0x02);
    wasm.push(imports.len() as u8);
    wasm.extend_from_slice(&imports);
    wasm
}

/// A clock read without random numbers is the `srand(time(NULL))` pitfall: warned about.
#[test]
fn a_module_reading_the_clock_but_no_random_numbers_is_warned_about() {
    let warned = determinism_warnings(&importing(&["fd_write", "clock_time_get"]));
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("getentropy"), "{}", warned[0]);
    for fine in [
        importing(&["fd_write", "clock_time_get", "random_get"]),
        importing(&["fd_write", "random_get"]),
        importing(&["fd_write"]),
        b"not wasm".to_vec(),
    ] {
        assert!(determinism_warnings(&fine).is_empty());
    }
    // The real guests: none of them reads the clock.
    assert!(determinism_warnings(artifacts::PRIMES).is_empty());
}

/// A fresh directory under the system's temporary directory, removed by the caller.
fn scratch(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fallow-sandbox-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn run_mounted(wasm: &[u8], input: &[u8], data: Option<&DataMount>) -> Result<Execution, Failure> {
    let sb = sandbox_ref();
    let limits = limits();
    let compiled = sb.compile(Digest::of(wasm), wasm, false).expect("compiles");
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(GUEST_THREAD_STACK)
            .spawn_scoped(s, || {
                sb.run_with_data(&compiled, input, [9; 32], &limits, data)
            })
            .expect("thread")
            .join()
            .expect("join")
    })
}

const TABLE: &[u8] = b"10\n20\n30\n40\n";

/// The data mount shows nothing of the host: the same guest over two host directories
/// holding the same files — made in another order, at other times, one with an extra
/// hard link — prints byte-identical listings and metadata (inodes 0, times frozen,
/// names in byte order); each file reads as its bytes; and writing, creating, removing,
/// renaming and reaching outside the mount are all refused.
#[test]
fn the_data_mount_is_read_only_and_the_same_from_any_host_directory() {
    let (a, b) = (scratch("mount-a"), scratch("mount-b"));
    std::fs::write(a.join("table"), TABLE).expect("write");
    std::fs::write(a.join("b.bin"), [0u8, 1, 2, 255]).expect("write");
    std::fs::write(b.join("b.bin"), [0u8, 1, 2, 255]).expect("write");
    std::fs::write(b.join("table"), TABLE).expect("write");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567);
    std::fs::File::options()
        .append(true)
        .open(b.join("table"))
        .and_then(|f| f.set_modified(old))
        .expect("mtime");
    std::fs::hard_link(
        b.join("b.bin"),
        b.join("..")
            .join(format!("fallow-sandbox-extra-link-{}", std::process::id())),
    )
    .expect("link");
    let names = vec!["table".to_string(), "b.bin".to_string()];
    let probe = |dir: &std::path::Path| {
        let mount = DataMount::new(dir, names.clone());
        let exec = run_mounted(artifacts::DATAPROBE, b"", Some(&mount)).expect("probe runs");
        String::from_utf8(exec.output).expect("text")
    };
    let (from_a, from_b) = (probe(&a), probe(&b));
    let _ = std::fs::remove_file(
        b.join("..")
            .join(format!("fallow-sandbox-extra-link-{}", std::process::id())),
    );
    assert_eq!(from_a, from_b, "the host directory shows through");
    // Entries in byte order, inode 0, one link, every time at 2000-01-01T00:00:00Z.
    let entries: Vec<&str> = from_a.lines().filter(|l| l.starts_with("entry ")).collect();
    assert!(entries[0].starts_with("entry /data/b.bin:"), "{from_a}");
    assert!(entries[1].starts_with("entry /data/table:"), "{from_a}");
    let frozen = "946684800000000000";
    assert!(
        entries[1].contains(&format!(
            "len=12 file=true dir=false modified={frozen} accessed={frozen}"
        )),
        "{from_a}"
    );
    assert!(
        from_a.contains(&format!(
            "raw dev=0 ino=0 type=4 nlink=1 size=12 atim={frozen} mtim={frozen} ctim={frozen}"
        )),
        "{from_a}"
    );
    assert!(
        from_a.contains("/data: len=0 file=false dir=true"),
        "{from_a}"
    );
    // The guest's checksum of each file is the checksum of its bytes.
    let fnv = |bytes: &[u8]| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        format!("fnv={h:016x}")
    };
    assert!(from_a.contains(&fnv(TABLE)), "{from_a}");
    assert!(from_a.contains(&fnv(&[0, 1, 2, 255])), "{from_a}");
    for op in [
        "write",
        "append",
        "remove",
        "rename",
        "create",
        "mkdir",
        "outside ..",
        "outside /etc",
        "outside /",
    ] {
        let line = from_a
            .lines()
            .find(|l| l.starts_with(&format!("{op}:")))
            .unwrap_or_else(|| panic!("no {op} line in {from_a}"));
        assert!(line.contains("refused"), "{line}");
    }
    // Nothing was changed on the host either.
    assert_eq!(std::fs::read(a.join("table")).expect("read"), TABLE);
    assert!(!a.join("new").exists() && !a.join("renamed").exists());
    let _ = std::fs::remove_dir_all(a);
    let _ = std::fs::remove_dir_all(b);
}

/// A guest reading a data file computes what the same program computes natively; without
/// the mount it fails naming /data.
#[test]
fn a_guest_reads_its_data_file_like_a_native_program() {
    let dir = scratch("lookup");
    std::fs::write(dir.join("table"), TABLE).expect("write");
    let mount = DataMount::new(&dir, vec!["table".into()]);
    let exec = run_mounted(artifacts::LOOKUP, b"0 3 3", Some(&mount)).expect("runs");
    assert_eq!(exec.output, b"90\n");
    let again = run_mounted(artifacts::LOOKUP, b"0 3 3", Some(&mount)).expect("runs");
    assert_eq!((again.output, again.fuel), (exec.output, exec.fuel));
    let failure = run_mounted(artifacts::LOOKUP, b"0", None).expect_err("no data");
    assert_eq!(failure.kind, FailureKind::ExitCode);
    assert!(failure.detail.contains("/data/table"), "{failure}");
    assert!(failure.detail.contains("hint: the only files"), "{failure}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A sandbox as a worker makes one, with its compiled modules kept in `dir`: a new one on
/// the same `dir` is a restarted worker.
fn with_disk(dir: &std::path::Path) -> Sandbox {
    let mut sb = Sandbox::new(SandboxConfig {
        slots: 1,
        max_memory_mb: 64,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    sb.set_disk_cache(dir).expect("disk cache");
    sb
}

/// The one cached entry of `dir` (the test compiles one module in one flavour).
fn entry(dir: &std::path::Path) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

#[test]
fn compiled_modules_survive_a_restart_and_only_their_writer_loads_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let wasm = hostile::ECHO;
    let check = |sb: &Sandbox| {
        let exec = run(sb, wasm, b"cached", limits()).expect("runs");
        assert_eq!(exec.output, b"cached");
    };
    // First start: compiled and written, under a key only the owner may read.
    let first = with_disk(dir.path());
    check(&first);
    assert_eq!(first.disk_cache_stats().written, 1);
    assert_eq!(first.disk_cache_stats().hits, 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::metadata(dir.path().join("compiled.key")).expect("key");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert_eq!(key.len(), 32);
    }
    let path = entry(dir.path());
    drop(first);

    // Restart: loaded, not compiled, and it runs the same.
    let restarted = with_disk(dir.path());
    check(&restarted);
    let stats = restarted.disk_cache_stats();
    assert_eq!((stats.hits, stats.rejected, stats.written), (1, 0, 0));
    drop(restarted);

    // A flipped byte of machine code: refused, deleted, compiled again, written anew.
    let mut bytes = std::fs::read(&path).expect("entry");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).expect("corrupt");
    let after_corruption = with_disk(dir.path());
    check(&after_corruption);
    let stats = after_corruption.disk_cache_stats();
    assert_eq!((stats.hits, stats.rejected, stats.written), (0, 1, 1));
    drop(after_corruption);

    // A truncated entry, and one that is not ours at all: the same.
    std::fs::write(&path, b"FLWCM").expect("truncate");
    let truncated = with_disk(dir.path());
    check(&truncated);
    assert_eq!(truncated.disk_cache_stats().rejected, 1);
    drop(truncated);

    // Another key (a different worker's cache, or a file planted by someone who cannot
    // read our key): an intact entry written under it is refused too.
    let other = tempfile::tempdir().expect("tmp");
    let foreign = with_disk(other.path());
    check(&foreign);
    std::fs::copy(entry(other.path()), &path).expect("plant");
    let planted = with_disk(dir.path());
    check(&planted);
    let stats = planted.disk_cache_stats();
    assert_eq!((stats.hits, stats.rejected, stats.written), (0, 1, 1));
    drop(planted);

    // Our own key replaced (the worker's key lost): everything cached before is compiled
    // again. A key others could read is replaced the same way.
    std::fs::write(dir.path().join("compiled.key"), [7u8; 32]).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("compiled.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
    }
    let new_key = with_disk(dir.path());
    check(&new_key);
    let stats = new_key.disk_cache_stats();
    assert_eq!((stats.hits, stats.rejected, stats.written), (0, 1, 1));
    #[cfg(unix)]
    assert_ne!(
        std::fs::read(dir.path().join("compiled.key")).expect("key"),
        [7u8; 32],
        "a key others may read is not used"
    );
}

#[test]
fn the_disk_cache_keeps_flavours_apart_and_never_skips_the_digest_check() {
    let dir = tempfile::tempdir().expect("tmp");
    let sb = with_disk(dir.path());
    let digest = Digest::of(hostile::ECHO);
    sb.compile(digest, hostile::ECHO, false).expect("plain");
    sb.compile(digest, hostile::ECHO, true).expect("canonical");
    assert_eq!(sb.disk_cache_stats().written, 2);
    drop(sb);
    let restarted = with_disk(dir.path());
    // Bytes that are not the digest's module are refused before the disk is looked at.
    assert!(matches!(
        restarted.compile(digest, artifacts::PRIMES, false),
        Err(Error::Invalid(_))
    ));
    restarted
        .compile(digest, hostile::ECHO, true)
        .expect("canonical");
    assert_eq!(restarted.disk_cache_stats().hits, 1);
}

/// A module that divides zero by zero in `f32x4` and `f64x2` lanes (operands loaded from
/// memory, so that no compiler folds them) and writes the 32 result bytes to stdout.
fn simd_zero_by_zero() -> Vec<u8> {
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        out.push(body.len() as u8); // every section here is under 128 bytes
        out.extend_from_slice(body);
    }
    fn name(s: &str, out: &mut Vec<u8>) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    const V128_LOAD: [u8; 4] = [0xfd, 0x00, 4, 0];
    const V128_STORE: [u8; 4] = [0xfd, 0x0b, 4, 0];
    const F32X4_DIV: [u8; 3] = [0xfd, 0xe7, 0x01];
    const F64X2_DIV: [u8; 3] = [0xfd, 0xf3, 0x01];
    const I32_STORE: [u8; 3] = [0x36, 2, 0];
    let mut code = vec![0]; // no locals
    // The iovec at 0: 32 bytes from 16.
    code.extend([0x41, 0, 0x41, 16]);
    code.extend(I32_STORE);
    code.extend([0x41, 4, 0x41, 32]);
    code.extend(I32_STORE);
    // Zeros at 64 (fresh memory) divided by themselves, stored at 16 and 32.
    for (at, div) in [(16u8, F32X4_DIV), (32, F64X2_DIV)] {
        code.extend([0x41, at, 0x41, 0xc0, 0x00]);
        code.extend(V128_LOAD);
        code.extend([0x41, 0xc0, 0x00]);
        code.extend(V128_LOAD);
        code.extend(div);
        code.extend(V128_STORE);
    }
    // fd_write(1, iovs 0, 1 iovec, nwritten at 8), result dropped.
    code.extend([0x41, 1, 0x41, 0, 0x41, 1, 0x41, 8, 0x10, 0, 0x1a, 0x0b]);

    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(
        1,
        &[2, 0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f, 0x60, 0, 0],
        &mut m,
    );
    let mut imports = vec![1];
    name("wasi_snapshot_preview1", &mut imports);
    name("fd_write", &mut imports);
    imports.extend([0, 0]);
    section(2, &imports, &mut m);
    section(3, &[1, 1], &mut m);
    section(5, &[1, 0, 1], &mut m); // 1 page
    let mut exports = vec![2];
    name("memory", &mut exports);
    exports.extend([2, 0]);
    name("_start", &mut exports);
    exports.extend([0, 1]);
    section(7, &exports, &mut m);
    let mut codes = vec![1, code.len() as u8];
    codes.extend(code);
    section(10, &codes, &mut m);
    m
}

/// Guests are built with SIMD128: the sandbox runs vector code, and a project that asks
/// for canonical NaN bits gets them from vector arithmetic too, not only from scalar (x86
/// computes 0/0 as a NaN with the sign bit set, Arm without it).
#[test]
fn simd_nan_results_are_canonical_when_asked() {
    let wasm = simd_zero_by_zero();
    let canonical = [
        [0x00, 0x00, 0xc0, 0x7f].repeat(4),
        [0, 0, 0, 0, 0, 0, 0xf8, 0x7f].repeat(2),
    ]
    .concat();
    let on = Limits {
        nan_canonicalization: true,
        ..limits()
    };
    let out = run(sandbox_ref(), &wasm, b"", on).expect("runs").output;
    assert_eq!(out, canonical, "{out:02x?}");
    // Without canonicalization the module runs too, and on x86 the bits are the
    // hardware's: the setting is what made them canonical.
    let out = run(sandbox_ref(), &wasm, b"", limits())
        .expect("runs")
        .output;
    assert_eq!(out.len(), 32);
    if cfg!(target_arch = "x86_64") {
        assert_ne!(out, canonical, "{out:02x?}");
    }
}

/// A WASI-less command: one memory, `_start` = function `start` of `bodies` (each a
/// function type index and its body), built with wasm-encoder.
mod metered {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction as I,
        MemorySection, MemoryType, Module, TypeSection, ValType,
    };

    /// Types: 0 = `[] -> []`, 1 = `[] -> [i32 i32]`, 2 = `[i32] -> [i32]`.
    pub(super) fn module(bodies: &[(u32, Function)], start: u32) -> Vec<u8> {
        module_with_start_section(bodies, start, None)
    }

    /// [`module`] with a start section naming `start_section`, if given.
    pub(super) fn module_with_start_section(
        bodies: &[(u32, Function)],
        start: u32,
        start_section: Option<u32>,
    ) -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        types.ty().function([], [ValType::I32, ValType::I32]);
        types.ty().function([ValType::I32], [ValType::I32]);
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        for (ty, body) in bodies {
            functions.function(*ty);
            code.function(body);
        }
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 17,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Func, start);
        exports.export("memory", ExportKind::Memory, 0);
        let mut m = Module::new();
        m.section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports);
        if let Some(function_index) = start_section {
            m.section(&wasm_encoder::StartSection { function_index });
        }
        m.section(&code);
        m.finish()
    }

    pub(super) fn body(instructions: &[I<'_>], locals: &[(u32, ValType)]) -> Function {
        let mut f = Function::new(locals.iter().copied());
        for i in instructions {
            f.instruction(i);
        }
        f.instruction(&I::End);
        f
    }

    /// A loop that runs `inner`, then counts local `local` down from `n` (at least 1):
    /// 2 fuel, then 5 per iteration plus `inner`'s by the rules of `meter`.
    pub(super) fn count_down(local: u32, n: i32, inner: Vec<I<'static>>) -> Vec<I<'static>> {
        let mut code = vec![
            I::I32Const(n),
            I::LocalSet(local),
            I::Loop(wasm_encoder::BlockType::Empty),
        ];
        code.extend(inner);
        code.extend([
            I::LocalGet(local),
            I::I32Const(1),
            I::I32Sub,
            I::LocalTee(local),
            I::BrIf(0),
            I::End,
        ]);
        code
    }

    /// `n` iterations of a counting loop: 2 + 5n fuel by the rules of `meter`.
    pub(super) fn counting_loop(n: i32) -> Vec<u8> {
        let start = body(&count_down(0, n, Vec::new()), &[(1, ValType::I32)]);
        module(&[(0, start)], 0)
    }
}

#[test]
fn fuel_follows_the_meter_rules_exactly_however_many_slices_a_run_takes() {
    use wasm_encoder::Instruction as I;
    let sb = sandbox_ref();
    // Entry segment (i32.const, local.set) = 2, then 5 per iteration.
    for n in [1, 1000, 3_000_000] {
        let e = run(sb, &metered::counting_loop(n), b"", limits()).expect("runs");
        assert_eq!(e.fuel, 2 + 5 * n as u64, "{n} iterations");
    }
    // Calls: the caller's segments (1 per call, the last one 0) and 2 per callee.
    let callee = metered::body(&[I::I32Const(1), I::Drop], &[]);
    let caller = metered::body(&[I::Call(0), I::Call(0), I::Call(0)], &[]);
    let e = run(
        sb,
        &metered::module(&[(0, callee), (0, caller)], 1),
        b"",
        limits(),
    )
    .expect("runs");
    assert_eq!(e.fuel, 1 + 2 + 1 + 2 + 1 + 2);
    // memory.fill of 1 MiB: its 4 instructions and 1 per 16 bytes.
    let fill = metered::body(
        &[
            I::I32Const(0),
            I::I32Const(7),
            I::I32Const(1 << 20),
            I::MemoryFill(0),
        ],
        &[],
    );
    let e = run(sb, &metered::module(&[(0, fill)], 0), b"", limits()).expect("runs");
    assert_eq!(e.fuel, 4 + (1 << 20) / 16);
    // A `br_if` does not end its segment (rules version 2): what follows it is charged
    // with what comes before, whether the branch is taken or not: 4, not 2.
    for taken in [1, 0] {
        let skip = metered::body(
            &[
                I::Block(wasm_encoder::BlockType::Empty),
                I::I32Const(taken),
                I::BrIf(0),
                I::I32Const(5),
                I::Drop,
                I::End,
            ],
            &[],
        );
        let e = run(sb, &metered::module(&[(0, skip)], 0), b"", limits()).expect("runs");
        assert_eq!(e.fuel, 4, "branch taken: {taken}");
    }
}

#[test]
fn a_metered_guest_stops_at_its_fuel_limit_and_branches_out_of_functions_keep_the_count() {
    use wasm_encoder::Instruction as I;
    let sb = sandbox_ref();
    let failure = run(
        sb,
        &metered::counting_loop(i32::MAX),
        b"",
        Limits {
            fuel: 10_000_000,
            ..limits()
        },
    )
    .expect_err("runs out");
    assert_eq!(failure.kind, FailureKind::FuelExhausted, "{failure}");
    assert!(
        failure.to_string().contains("used all 10000000 fuel"),
        "{failure}"
    );
    // A function returning two values by a branch to its own label and by `return`: the
    // rewrite wraps each body in a block of the function's results.
    let pair = metered::body(&[I::I32Const(1), I::I32Const(2), I::Br(0)], &[]);
    let early = metered::body(&[I::I32Const(3), I::I32Const(4), I::Return], &[]);
    let start = metered::body(
        &[I::Call(0), I::Drop, I::Drop, I::Call(1), I::Drop, I::Drop],
        &[],
    );
    let e = run(
        sb,
        &metered::module(&[(1, pair), (1, early), (0, start)], 2),
        b"",
        limits(),
    )
    .expect("runs");
    // start: call (1), drop drop call (3), drop drop (2, then end 0); pair: 3; early: 3.
    assert_eq!(e.fuel, 1 + 3 + 3 + 3 + 2);
}

#[test]
fn a_module_may_not_reach_for_the_meter_itself() {
    use wasm_encoder::{
        CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, FunctionSection,
        GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, Module, TypeSection,
        ValType,
    };
    let sb = sandbox_ref();
    // `import`: import the meter's slice call; otherwise export a global under its name.
    let build = |import: bool| {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        types.ty().function([ValType::I64], [ValType::I64]);
        let mut imports = ImportSection::new();
        imports.import(meter::MODULE, meter::SLICE, EntityType::Function(1));
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I64,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i64_const(1 << 40),
        );
        let start = u32::from(import);
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Func, start);
        exports.export("memory", ExportKind::Memory, 0);
        if !import {
            exports.export(meter::FUEL_EXPORT, ExportKind::Global, 0);
        }
        let mut code = CodeSection::new();
        code.function(&metered::body(&[], &[]));
        let mut m = Module::new();
        m.section(&types);
        if import {
            m.section(&imports);
        }
        m.section(&functions)
            .section(&memories)
            .section(&globals)
            .section(&exports)
            .section(&code);
        m.finish()
    };
    let err = sb
        .inspect(&build(true))
        .expect_err("the meter's import is not the guest's");
    assert!(matches!(err, Error::ForbiddenImport { .. }), "{err}");
    let err = sb.inspect(&build(false)).expect_err("the name is reserved");
    assert!(err.to_string().contains(meter::FUEL_EXPORT), "{err}");
}

#[test]
fn fuel_used_does_not_depend_on_the_slice_size() {
    // A guest's counter as the rewrite moves it: down by segment costs, asking for a
    // slice when below zero. Whatever the slices, `used` at the end is the sum of costs.
    let costs: Vec<i64> = (0..10_000).map(|i| (i * 7919) % 97 + 1).collect();
    let total: i64 = costs.iter().sum();
    for slice in [1u64, 13, 1 << 10, meter::SLICE_FUEL] {
        let mut m = meter::Meter::with_slice(1 << 40, slice);
        let mut counter = 0i64;
        for c in &costs {
            counter -= c;
            if counter < 0 {
                match m.slice(counter) {
                    meter::Slice::Refill(next) => counter = next,
                    meter::Slice::Exhausted => panic!("budget is ample"),
                }
            }
        }
        assert_eq!(m.used(counter), total as u64, "slice {slice}");
    }
    // Over budget: exhausted at the first check past it, whatever the slice.
    for slice in [1u64, 1000, meter::SLICE_FUEL] {
        let mut m = meter::Meter::with_slice(500, slice);
        let mut counter = 0i64;
        let mut spent = 0;
        let stopped = loop {
            counter -= 7;
            spent += 7;
            if counter < 0 {
                match m.slice(counter) {
                    meter::Slice::Refill(next) => counter = next,
                    meter::Slice::Exhausted => break spent,
                }
            }
        };
        assert_eq!(stopped, 504, "slice {slice}");
    }
}

/// The plain engine running modules as the volunteer page will: metered, then rewritten
/// by [`nan::canonicalize`].
fn rewriting_sandbox() -> &'static Sandbox {
    static SB: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SB.get_or_init(|| {
        let mut sb = Sandbox::new(SandboxConfig {
            slots: 2,
            max_memory_mb: 256,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        sb.rewrite_nans = true;
        sb
    })
}

/// A WASI command that makes NaNs every way the NaN rewrite covers, and some it leaves
/// alone, and writes every result's bits to stdout.
mod nans {
    use wasm_encoder::{
        CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
        FunctionSection, ImportSection, Instruction as I, MemArg, MemorySection, MemoryType,
        Module, TypeSection, ValType,
    };

    /// Operands: ordinary numbers, infinities, and NaNs with payloads and either sign
    /// (quiet and signalling).
    pub(super) const F32S: [u32; 11] = [
        0x0000_0000, // 0
        0x8000_0000, // -0
        0x3f80_0000, // 1
        0xbfc0_0000, // -1.5
        0x4020_0000, // 2.5
        0x7f80_0000, // inf
        0xff80_0000, // -inf
        0x7fc1_2345, // quiet NaN with a payload
        0xffa0_0001, // negative signalling NaN
        0xffc0_0000, // negative quiet NaN
        0x7f80_0001, // signalling NaN, smallest payload
    ];
    pub(super) const F64S: [u64; 11] = [
        0x0000_0000_0000_0000,
        0x8000_0000_0000_0000,
        0x3ff0_0000_0000_0000,
        0xbff8_0000_0000_0000,
        0x4004_0000_0000_0000,
        0x7ff0_0000_0000_0000,
        0xfff0_0000_0000_0000,
        0x7ffc_1234_5678_9abc, // quiet NaN, payload high enough to survive demotion
        0xfff4_0000_0000_0001,
        0xfff8_0000_0000_0000,
        0x7ff0_0000_0000_0001,
    ];
    /// Where the operands are, each array twice in a row so that a vector load at any
    /// element finds four (or two) in a row.
    const IN32: u32 = 1024;
    const IN64: u32 = 2048;
    /// Where results go.
    const OUT: u32 = 4096;

    fn m(align: u32) -> MemArg {
        MemArg {
            offset: 0,
            align,
            memory_index: 0,
        }
    }

    #[derive(Clone, Copy)]
    enum Ty {
        F32,
        F64,
        V32,
        V64,
    }

    impl Ty {
        fn size(self) -> u32 {
            match self {
                Ty::F32 => 4,
                Ty::F64 => 8,
                Ty::V32 | Ty::V64 => 16,
            }
        }
        /// Operand `i`'s address.
        fn at(self, i: usize) -> i32 {
            match self {
                Ty::F32 | Ty::V32 => (IN32 + 4 * i as u32) as i32,
                Ty::F64 | Ty::V64 => (IN64 + 8 * i as u32) as i32,
            }
        }
        fn load(self) -> I<'static> {
            match self {
                Ty::F32 => I::F32Load(m(2)),
                Ty::F64 => I::F64Load(m(3)),
                Ty::V32 | Ty::V64 => I::V128Load(m(0)),
            }
        }
        fn store(self) -> I<'static> {
            match self {
                Ty::F32 => I::F32Store(m(2)),
                Ty::F64 => I::F64Store(m(3)),
                Ty::V32 | Ty::V64 => I::V128Store(m(0)),
            }
        }
    }

    /// Unary and binary instructions, each with its operand and result types.
    fn unary() -> Vec<(I<'static>, Ty, Ty)> {
        use Ty::*;
        vec![
            (I::F32Sqrt, F32, F32),
            (I::F32Ceil, F32, F32),
            (I::F32Floor, F32, F32),
            (I::F32Trunc, F32, F32),
            (I::F32Nearest, F32, F32),
            (I::F32DemoteF64, F64, F32),
            (I::F64Sqrt, F64, F64),
            (I::F64Ceil, F64, F64),
            (I::F64Floor, F64, F64),
            (I::F64Trunc, F64, F64),
            (I::F64Nearest, F64, F64),
            (I::F64PromoteF32, F32, F64),
            (I::F32x4Sqrt, V32, V32),
            (I::F32x4Ceil, V32, V32),
            (I::F32x4Floor, V32, V32),
            (I::F32x4Trunc, V32, V32),
            (I::F32x4Nearest, V32, V32),
            (I::F32x4DemoteF64x2Zero, V64, V32),
            (I::F64x2Sqrt, V64, V64),
            (I::F64x2Ceil, V64, V64),
            (I::F64x2Floor, V64, V64),
            (I::F64x2Trunc, V64, V64),
            (I::F64x2Nearest, V64, V64),
            (I::F64x2PromoteLowF32x4, V32, V64),
            // Left alone by Cranelift and by the rewrite: sign-bit operations.
            (I::F32Neg, F32, F32),
            (I::F32Abs, F32, F32),
            (I::F64Neg, F64, F64),
            (I::F64Abs, F64, F64),
            (I::F32x4Neg, V32, V32),
            (I::F64x2Abs, V64, V64),
        ]
    }

    fn binary() -> Vec<(I<'static>, Ty)> {
        use Ty::*;
        vec![
            (I::F32Add, F32),
            (I::F32Sub, F32),
            (I::F32Mul, F32),
            (I::F32Div, F32),
            (I::F32Min, F32),
            (I::F32Max, F32),
            (I::F64Add, F64),
            (I::F64Sub, F64),
            (I::F64Mul, F64),
            (I::F64Div, F64),
            (I::F64Min, F64),
            (I::F64Max, F64),
            (I::F32x4Add, V32),
            (I::F32x4Sub, V32),
            (I::F32x4Mul, V32),
            (I::F32x4Div, V32),
            (I::F32x4Min, V32),
            (I::F32x4Max, V32),
            (I::F64x2Add, V64),
            (I::F64x2Sub, V64),
            (I::F64x2Mul, V64),
            (I::F64x2Div, V64),
            (I::F64x2Min, V64),
            (I::F64x2Max, V64),
            // Left alone by both: they return an operand's bits.
            (I::F32Copysign, F32),
            (I::F64Copysign, F64),
            (I::F32x4PMin, V32),
            (I::F64x2PMax, V64),
        ]
    }

    /// The module: every unary instruction on every operand, every binary one on every
    /// pair, each result stored in turn from `OUT`; then all of it to stdout. Also returns
    /// how many result bytes it writes.
    pub(super) fn module() -> (Vec<u8>, usize) {
        let mut body = Vec::new();
        let mut out = OUT;
        let n = F32S.len();
        let mut result = |body: &mut Vec<I<'static>>, ty: Ty| {
            body.push(ty.store());
            let at = out;
            out += ty.size();
            at as i32
        };
        for (op, from, to) in unary() {
            for i in 0..n {
                let mut ops = vec![I::I32Const(from.at(i)), from.load(), op.clone()];
                let at = result(&mut ops, to);
                body.push(I::I32Const(at));
                body.extend(ops);
            }
        }
        for (op, ty) in binary() {
            for i in 0..n {
                for j in 0..n {
                    let mut ops = vec![
                        I::I32Const(ty.at(i)),
                        ty.load(),
                        I::I32Const(ty.at(j)),
                        ty.load(),
                        op.clone(),
                    ];
                    let at = result(&mut ops, ty);
                    body.push(I::I32Const(at));
                    body.extend(ops);
                }
            }
        }
        let written = (out - OUT) as usize;
        // The iovec at 0 (OUT, written); fd_write(1, iovs 0, 1 iovec, nwritten at 8).
        body.extend([
            I::I32Const(0),
            I::I32Const(OUT as i32),
            I::I32Store(m(2)),
            I::I32Const(4),
            I::I32Const(written as i32),
            I::I32Store(m(2)),
            I::I32Const(1),
            I::I32Const(0),
            I::I32Const(1),
            I::I32Const(8),
            I::Call(0),
            I::Drop,
            I::End,
        ]);

        let mut types = TypeSection::new();
        types.ty().function([ValType::I32; 4], [ValType::I32]);
        types.ty().function([], []);
        let mut imports = ImportSection::new();
        imports.import(
            "wasi_snapshot_preview1",
            "fd_write",
            EntityType::Function(0),
        );
        let mut functions = FunctionSection::new();
        functions.function(1);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Func, 1);
        exports.export("memory", ExportKind::Memory, 0);
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        for i in &body {
            f.instruction(i);
        }
        code.function(&f);
        let twice32: Vec<u8> = F32S
            .iter()
            .chain(&F32S)
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let twice64: Vec<u8> = F64S
            .iter()
            .chain(&F64S)
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut data = DataSection::new();
        data.active(0, &ConstExpr::i32_const(IN32 as i32), twice32);
        data.active(0, &ConstExpr::i32_const(IN64 as i32), twice64);
        let mut m = Module::new();
        m.section(&types)
            .section(&imports)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code)
            .section(&data);
        (m.finish(), written)
    }
}

/// The decisive test of the NaN rewrite: a module making NaNs every way there is gives, on
/// the plain engine after the rewrite, the very bytes and fuel that the canonicalizing
/// engine (the production path of `nan_canonicalization = true`) gives without it.
#[test]
fn the_nan_rewrite_gives_the_canonical_engines_bits_and_fuel() {
    let (wasm, written) = nans::module();
    let big = Limits {
        max_output_bytes: 1 << 20,
        ..limits()
    };
    let canonical = Limits {
        nan_canonicalization: true,
        ..big
    };
    let engine = run(sandbox_ref(), &wasm, b"", canonical).expect("runs canonical");
    let rewritten = run(rewriting_sandbox(), &wasm, b"", big).expect("runs rewritten");
    assert_eq!(engine.output.len(), written);
    assert!(engine.output == rewritten.output, "outputs differ");
    assert_eq!(engine.fuel, rewritten.fuel);
    // The module does make NaNs whose bits the hardware chooses: without either, on x86
    // (0/0 has the sign bit set there), the bytes differ.
    let plain = run(sandbox_ref(), &wasm, b"", big).expect("runs plain");
    assert_eq!(plain.fuel, engine.fuel);
    if cfg!(target_arch = "x86_64") {
        assert!(
            plain.output != engine.output,
            "no engine-dependent NaN made"
        );
    }
    // And the canonical NaN is there: the first results are f32.sqrt of the operands,
    // -1.5 (index 3) gives NaN.
    assert_eq!(
        engine.output[12..16],
        nan::F32_NAN.to_le_bytes(),
        "sqrt(-1.5)"
    );
}

/// Every guest the build makes survives the NaN rewrite after metering (a valid module on
/// the sandbox's engine), and the real ones give on the plain engine, rewritten, the
/// output and fuel of the canonicalizing engine.
#[test]
fn every_guest_survives_the_nan_rewrite_and_runs_as_on_the_canonical_engine() {
    let sb = rewriting_sandbox();
    for (name, wasm) in artifacts::ALL.iter().chain([&("nbody", artifacts::NBODY)]) {
        let metered = meter::instrument(wasm).expect(name);
        let rewritten = nan::canonicalize(&metered).expect(name);
        Module::validate(&sb.plain.engine, &rewritten).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // The float kernels do have instructions to rewrite.
        if ["nbody", "mandelbrot", "pi"].contains(name) {
            assert!(rewritten.len() > metered.len(), "{name}: nothing rewritten");
        }
    }
    let canonical = Limits {
        nan_canonicalization: true,
        max_output_bytes: 1 << 20,
        ..limits()
    };
    let plain = Limits {
        nan_canonicalization: false,
        ..canonical
    };
    for (name, wasm, input) in [
        ("primes", artifacts::PRIMES, &b"0 100000\n"[..]),
        ("pi", artifacts::PI, b"0 1000\n"),
        ("nbody", artifacts::NBODY, b"1000\n"),
        (
            "mandelbrot",
            artifacts::MANDELBROT,
            b"0 0 64 48 128 96 200\n",
        ),
        ("collatz", artifacts::COLLATZ, b"1 10000 1000\n"),
        ("echo", hostile::ECHO, b"same input"),
    ] {
        let engine = run(sandbox_ref(), wasm, input, canonical).expect(name);
        let rewritten = run(sb, wasm, input, plain).expect(name);
        assert!(engine.output == rewritten.output, "{name}: outputs differ");
        assert_eq!(engine.fuel, rewritten.fuel, "{name}");
    }
}

/// Relaxed SIMD's float results are the hardware's; the NaN rewrite refuses them rather
/// than pretend (the sandbox refuses them at submit too).
#[test]
fn the_nan_rewrite_refuses_relaxed_simd() {
    use wasm_encoder::Instruction as I;
    let start = metered::body(
        &[
            I::V128Const(0),
            I::V128Const(0),
            I::V128Const(0),
            I::F32x4RelaxedMadd,
            I::Drop,
        ],
        &[],
    );
    let err = nan::canonicalize(&metered::module(&[(0, start)], 0)).expect_err("refused");
    assert!(err.to_string().contains("relaxed SIMD"), "{err}");
}

/// Random valid modules (wasm-smith, seeded, every feature the engine takes) come out of
/// the fuel and NaN rewrites valid: a hostile module reaches `meter::instrument` on every
/// worker, so a panic or an invalid rewrite there would be a denial of service.
#[test]
fn random_valid_modules_stay_valid_through_the_meter_and_nan_rewrites() {
    let features = wasmparser::WasmFeatures::default();
    let mut rewritten = 0;
    for seed in 0u64..2000 {
        let mut noise = vec![0u8; 4096 + (seed as usize % 8) * 4096];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut noise);
        let config = wasm_smith::Config {
            gc_enabled: false,
            exceptions_enabled: false,
            relaxed_simd_enabled: false,
            threads_enabled: false,
            max_funcs: 20,
            max_instructions: 300,
            max_nesting_depth: 8,
            ..wasm_smith::Config::default()
        };
        let Ok(module) = wasm_smith::Module::new(config, &mut arbitrary::Unstructured::new(&noise))
        else {
            continue;
        };
        let bytes = module.to_bytes();
        let valid = |b: &[u8]| wasmparser::Validator::new_with_features(features).validate_all(b);
        valid(&bytes).expect("wasm-smith makes valid modules");
        let metered = meter::instrument(&bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: cannot meter a valid module: {e}"));
        valid(&metered).unwrap_or_else(|e| panic!("seed {seed}: metered module invalid: {e}"));
        // Call-free checks renumber branches across loops (`open_loop`).
        let call_free = meter::instrument_as(&bytes, meter::Check::Limit)
            .unwrap_or_else(|e| panic!("seed {seed}: cannot meter with call-free checks: {e}"));
        valid(&call_free)
            .unwrap_or_else(|e| panic!("seed {seed}: module with call-free checks invalid: {e}"));
        let canonical = nan::canonicalize(&metered)
            .unwrap_or_else(|e| panic!("seed {seed}: cannot canonicalize: {e}"));
        valid(&canonical)
            .unwrap_or_else(|e| panic!("seed {seed}: canonicalized module invalid: {e}"));
        rewritten += 1;
    }
    assert!(rewritten > 1500, "only {rewritten} modules generated");
}
