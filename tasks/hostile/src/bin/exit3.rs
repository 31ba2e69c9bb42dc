//! Fails on purpose with a distinctive exit code and stderr, so sandbox tests
//! can check both are reported faithfully.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("bad things");
    ExitCode::from(3)
}
