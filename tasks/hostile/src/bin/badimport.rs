//! Imports a host function outside WASI (`env::launch_missiles`): the sandbox
//! must refuse to instantiate the module instead of providing a stub.
//!
//! Natively there is no such import, so the binary only says so.

#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn launch_missiles(count: i32) -> i32;
}

#[cfg(target_arch = "wasm32")]
fn main() {
    // SAFETY: none can be promised; calling an unvetted host import is
    // exactly the behaviour this guest exists to exhibit.
    let launched = unsafe { launch_missiles(3) };
    println!("launched {launched} missiles");
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    println!("badimport: the env::launch_missiles import exists only in the wasm build");
}
