//! Never terminates and never yields: the sandbox must stop it by fuel or
//! epoch deadline.

use std::hint::black_box;

fn main() {
    let mut counter = 0u64;
    // black_box hides the counter from the optimiser, which would otherwise
    // be entitled to delete a side-effect-free loop.
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
