//! The guest ABI at run time: the `abicall` guest makes the host calls the input lists,
//! with arbitrary pointers, lengths and ids; the property is in `fuzz/checks/abi.rs`
//! (shared with the replay test that `cargo test` runs).
//!
//! Links wasmtime: opt-in with `--features sandbox`, like `inspect`.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sandbox::{Compiled, Sandbox};

#[path = "../checks/abi.rs"]
mod abi;

static GUEST: LazyLock<(Sandbox, Compiled)> = LazyLock::new(abi::guest);

fuzz_target!(|data: &[u8]| {
    let (sandbox, compiled) = &*GUEST;
    abi::check(sandbox, compiled, data);
});
