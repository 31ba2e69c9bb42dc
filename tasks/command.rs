//! The stdin → stdout shell shared by the guests whose kernel lives in their library, so
//! the same kernel runs natively (benchmarks, tests) and as a WASI command.

use std::io::{self, Read, Write};
use std::process::ExitCode;

/// Reads all of stdin, runs `compute`, writes its output. Bad input is exit code 2 with the
/// reason on stderr; a failed write is exit code 1.
pub fn run(name: &str, compute: fn(&[u8]) -> Result<Vec<u8>, String>) -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = io::stdin().read_to_end(&mut input) {
        eprintln!("{name}: cannot read stdin: {err}");
        return ExitCode::from(2);
    }
    let output = match compute(&input) {
        Ok(output) => output,
        Err(message) => {
            eprintln!("{name}: bad input: {message}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = io::stdout().lock();
    if let Err(err) = stdout.write_all(&output).and_then(|()| stdout.flush()) {
        eprintln!("{name}: cannot write stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
