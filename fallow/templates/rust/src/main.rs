//! {{name}}: a Fallow project module. Each work unit runs this program once, with the
//! unit's input on stdin; what it prints on stdout is the unit's result, compared byte for
//! byte between the workers that ran it.
//!
//! The rules (the sandbox enforces them):
//! - read the input from stdin, write the result to stdout, exit 0 on success; anything on
//!   stderr is kept (the end of it) as the reason when the unit fails;
//! - no files, no network, no environment variables, no threads;
//! - the clock is frozen: never seed anything from the time;
//! - randomness (`getrandom`, `rand`'s `OsRng`, WASI `random_get`) is the same stream on every
//!   worker, seeded from the unit's name and input: use it freely.
//!
//! This example sweeps the logistic map x ← r·x·(1−x): the input is one line `r_from r_to
//! steps`, the output one line per r with the attractor's mean after a burn-in.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let fields: Vec<&str> = input.split_whitespace().collect();
    let parsed = match fields.as_slice() {
        [from, to, steps] => from
            .parse::<f64>()
            .ok()
            .zip(to.parse::<f64>().ok())
            .zip(steps.parse::<u32>().ok()),
        _ => None,
    };
    let Some(((from, to), steps)) = parsed else {
        eprintln!("expected `R_FROM R_TO STEPS` on stdin, got {input:?}");
        return ExitCode::FAILURE;
    };
    let mut out = String::new();
    for i in 0..steps.max(1) {
        let r = from + (to - from) * f64::from(i) / f64::from(steps.max(1));
        let mut x = 0.5;
        for _ in 0..100_000 {
            x = r * x * (1.0 - x);
        }
        let mut sum = 0.0;
        for _ in 0..100_000 {
            x = r * x * (1.0 - x);
            sum += x;
        }
        // Fixed formatting: the text, not the float, is what workers compare.
        out.push_str(&format!("{r:.6} {:.9}\n", sum / 100_000.0));
    }
    if let Err(e) = std::io::stdout().write_all(out.as_bytes()) {
        eprintln!("cannot write stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
