//! Tries to read a host file. With no preopened directories the sandbox must
//! make this fail, which the guest reports on stderr with exit code 1.

use std::io::{self, Write};
use std::process::ExitCode;

const TARGET: &str = "/etc/passwd";

fn main() -> ExitCode {
    match std::fs::read(TARGET) {
        Ok(contents) => {
            // Success here means the sandbox leaked the host filesystem, so
            // make the leak as visible as possible.
            if let Err(err) = io::stdout().lock().write_all(&contents) {
                eprintln!("openfile: read {TARGET} but cannot write stdout: {err}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("openfile: cannot read {TARGET}: {err}");
            ExitCode::FAILURE
        }
    }
}
