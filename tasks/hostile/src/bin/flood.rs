//! Writes to stdout forever: the sandbox must cap captured output.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let block = [b'A'; 64 * 1024];
    let mut stdout = io::stdout().lock();
    loop {
        // Once the host refuses more output there is nothing left to flood,
        // and quitting beats spinning on a dead stream.
        if let Err(err) = stdout.write_all(&block) {
            eprintln!("flood: stdout refused: {err}");
            return ExitCode::FAILURE;
        }
    }
}
