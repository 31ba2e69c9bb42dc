//! Saves a 64 KiB checkpoint with `fallow::checkpoint_save`: over a project's
//! `[limits].max_checkpoint_bytes` the sandbox must fail the unit with
//! `checkpoint_too_large`. Under the cap, it prints how many bytes it got back.
//!
//! Natively there is no checkpoint API, so the binary only says so.

#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "fallow")]
unsafe extern "C" {
    fn checkpoint_save(ptr: *const u8, len: usize) -> !;
    fn checkpoint_load(ptr: *mut u8, cap: usize) -> i32;
}

#[cfg(target_arch = "wasm32")]
fn main() {
    let mut state = vec![7u8; 64 << 10];
    // SAFETY: the host writes at most `cap` bytes into our buffer.
    let got = unsafe { checkpoint_load(state.as_mut_ptr(), state.len()) };
    if got < 0 {
        // SAFETY: the host only reads `len` bytes from our buffer.
        unsafe { checkpoint_save(state.as_ptr(), state.len()) }
    }
    println!("restored {got} bytes");
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    println!("hoard: the fallow checkpoint API exists only in the wasm build");
}
