//! The `collatz` guest as a WASI command that checkpoints every `interval` numbers with
//! Fallow's checkpoint API (`fallow::checkpoint_save` / `checkpoint_load`). Natively there
//! is no such API, and the binary runs the range straight through.

#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "fallow")]
unsafe extern "C" {
    /// Saves `len` bytes at `ptr` and never returns: the sandbox restarts the guest, whose
    /// `checkpoint_load` then returns them.
    fn checkpoint_save(ptr: *const u8, len: usize) -> !;
    /// Copies the saved state to `ptr` if it fits in `cap` bytes; returns its length, or
    /// -1 when there is none (a fresh start).
    fn checkpoint_load(ptr: *mut u8, cap: usize) -> i32;
}

#[cfg(target_arch = "wasm32")]
fn load() -> Option<collatz::Progress> {
    let mut buf = [0u8; collatz::STATE_BYTES];
    // SAFETY: the host writes at most `cap` bytes into the buffer we own.
    let len = unsafe { checkpoint_load(buf.as_mut_ptr(), buf.len()) };
    (len == buf.len() as i32).then(|| collatz::Progress::decode(&buf))?
}

#[cfg(target_arch = "wasm32")]
fn save(p: &collatz::Progress) -> ! {
    let bytes = p.encode();
    // SAFETY: the host only reads `len` bytes from our buffer.
    unsafe { checkpoint_save(bytes.as_ptr(), bytes.len()) }
}

#[cfg(not(target_arch = "wasm32"))]
fn load() -> Option<collatz::Progress> {
    None
}

#[cfg(not(target_arch = "wasm32"))]
fn save(_: &collatz::Progress) {}

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("collatz: cannot read stdin: {err}");
        return ExitCode::from(2);
    }
    let job = match collatz::Job::parse(&input) {
        Ok(job) => job,
        Err(message) => {
            eprintln!("collatz: bad input: {message}");
            return ExitCode::from(2);
        }
    };
    let mut progress = load().unwrap_or_else(|| job.start());
    while !job.step(&mut progress) {
        save(&progress);
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_all(&progress.output())
        .and_then(|()| stdout.flush())
    {
        eprintln!("collatz: cannot write stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
