//! Recurses without bound: the sandbox must turn stack exhaustion into a
//! clean failure rather than a host crash.

use std::hint::black_box;

fn descend(depth: u64) -> u64 {
    // The opaque exit condition silences the unconditional-recursion lint
    // without ever becoming true at run time.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    // Using the callee's result after the call keeps this out of tail
    // position, and the black-boxed frame data keeps every frame non-empty,
    // so the optimiser can turn it neither into a loop nor into nothing. The frame is
    // small (16 bytes of the shadow stack in linear memory), so that the wasm stack, not
    // the shadow stack, runs out first.
    let frame = black_box([depth; 2]);
    let below = descend(depth + 1);
    black_box(below.wrapping_add(frame.iter().sum::<u64>()))
}

fn main() {
    println!("{}", descend(0));
}
