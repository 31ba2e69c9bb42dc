//! Figure: an interactive program's scheduling delay with the worker computing on every
//! core at `cpu_limit_percent = 50`, against the same program with no worker, in one run.
//!
//! The interactive program is a thread of ordinary priority that sleeps 1 ms in a loop and
//! records how much longer than 1 ms each sleep took (its *oversleep*: the time it waited
//! for a CPU after its timer fired, plus timer slack). The worker is the real thing minus
//! the network: one guest thread per core at the lowest OS priority
//! (`worker::sources::lowest_priority`, `SCHED_IDLE` on Linux), running the `primes` guest
//! back to back in the production sandbox, every execution paced through the worker's
//! `Gate` with the CPU limit in force. Phases alternate in short rounds (none, 50 %, 100 %,
//! none, …) so drift in the machine's background load falls on all of them alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::{Digest, Limits, ProjectId, UnitId};
use sandbox::{Sandbox, SandboxConfig};
use worker::gate::Gate;
use worker::policy::{Decision, State};

use crate::{Row, Size};

/// Oversleeps (µs) of the probe over `samples` 1 ms sleeps.
fn probe(samples: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        let over = start.elapsed().saturating_sub(Duration::from_millis(1));
        out.push(over.as_secs_f64() * 1e6);
    }
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn decision(running: bool, cores: usize, cpu_limit_percent: u32) -> Decision {
    Decision {
        state: if running {
            State::Running
        } else {
            State::Suspended(worker::policy::Reason::ByUser)
        },
        cores,
        cpu_limit_percent,
        memory_budget: u64::MAX,
        user_active: false,
        other_cpu_percent: 0,
        hand_back: false,
    }
}

/// The figures: median and p99 oversleep with the worker at 50 % (and, for comparison,
/// at 100 %) against no worker.
pub fn rows(size: Size) -> anyhow::Result<Vec<Row>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (rounds, per_round) = match size {
        Size::Quick => (2, 100),
        Size::Full => (10, 1_000),
    };
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: cores as u32 + 1,
        max_memory_mb: 64,
        ..SandboxConfig::default()
    })?);
    let wasm = artifacts::PRIMES;
    let compiled = sandbox.compile(Digest::of(wasm), wasm, false)?;
    let limits = Limits {
        fuel: 1 << 40,
        memory_mb: 32,
        wall_seconds: 3_600,
        ..Limits::default()
    };
    // Starts suspended: the guests wait at the gate until a phase lets them run.
    let gate = Arc::new(Gate::new(decision(false, cores, 100)));
    let stop = Arc::new(AtomicBool::new(false));
    let units = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..cores {
        let (sandbox, compiled, gate, stop, units) = (
            sandbox.clone(),
            compiled.clone(),
            gate.clone(),
            stop.clone(),
            units.clone(),
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-guest-{i}"))
                .stack_size(sandbox::GUEST_THREAD_STACK)
                .spawn(move || {
                    worker::sources::lowest_priority();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let pacer = gate.pacer(UnitId(n), ProjectId(1), "primes", &limits);
                        let out = sandbox.run_paced(
                            &compiled,
                            b"0 20000000\n",
                            [1; 32],
                            &limits,
                            Box::new(pacer),
                        );
                        if out.is_ok() {
                            units.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                })?,
        );
    }

    let phases: [(&str, Option<u32>); 3] = [("none", None), ("50", Some(50)), ("100", Some(100))];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    for _ in 0..rounds {
        for (i, (_, limit)) in phases.iter().enumerate() {
            match limit {
                None => gate.apply(decision(false, cores, 100)),
                Some(l) => gate.apply(decision(true, cores, *l)),
            }
            // Let the guests settle into the phase (a duty cycle is 100 ms).
            std::thread::sleep(Duration::from_millis(200));
            samples[i].extend(probe(per_round));
        }
    }
    stop.store(true, Ordering::Relaxed);
    gate.apply(decision(true, cores, 100));
    for t in threads {
        let _ = t.join();
    }
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    let ran = units.load(Ordering::Relaxed);
    eprintln!("  latency: guests completed {ran} primes units during the phases");
    anyhow::ensure!(
        ran > 0,
        "the guests never ran: the figure would mean nothing"
    );

    let mut rows = Vec::new();
    for (q, name) in [(0.5, "median"), (0.99, "p99")] {
        let base = quantile(&samples[0], q);
        for (i, label) in [(1, "50 %"), (2, "100 %")] {
            let with = quantile(&samples[i], q);
            let ratio = with / base.max(1e-9);
            let goal_applies = i == 1;
            rows.push(Row {
                figure: format!(
                    "interactive 1 ms sleep, {name} oversleep: worker on all {cores} cores at CPU limit {label} vs no worker"
                ),
                measured: format!("{with:.0} µs"),
                reference: format!("{base:.0} µs"),
                ratio: Some(ratio),
                goal: if goal_applies {
                    "≤ 1.10".into()
                } else {
                    "(for comparison)".into()
                },
                met: goal_applies.then_some(ratio <= 1.10),
            });
        }
    }
    Ok(rows)
}
