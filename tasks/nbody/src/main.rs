//! The `nbody` guest as a WASI command; the kernel is in the library.

use std::process::ExitCode;

#[path = "../../command.rs"]
mod command;

fn main() -> ExitCode {
    command::run("nbody", nbody::compute)
}
