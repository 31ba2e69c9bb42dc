//! Copies stdin to stdout unchanged: a well-behaved guest for sandbox tests.

use std::io;
use std::process::ExitCode;

fn main() -> ExitCode {
    match io::copy(&mut io::stdin().lock(), &mut io::stdout().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo: {err}");
            ExitCode::FAILURE
        }
    }
}
