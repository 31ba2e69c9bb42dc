//! Allocates and touches memory without bound: the sandbox must cap linear
//! memory growth.

use std::hint::black_box;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        // Writing every page makes the memory resident on hosts that would
        // otherwise back fresh zeroed pages lazily.
        for (i, byte) in chunk.iter_mut().step_by(PAGE).enumerate() {
            *byte = i as u8 | 1;
        }
        hoard.push(black_box(chunk));
    }
}
