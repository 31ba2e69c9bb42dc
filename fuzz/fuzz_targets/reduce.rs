//! The reducer ABI at the guest boundary: the coordinator frames every verified output with
//! `protocol::reduce::encode`, and reducer guests split it with `tasks/reduce_abi.rs` (the
//! decoder shared by `tasks/sum` and `tasks/pi-reduce`, compiled here natively).
//!
//! Arbitrary bytes through the decoder: no panic, no overflow, and a successful parse
//! accounts for every byte. Arbitrary records through the encoder: the decoder gives them
//! back exactly.

#![no_main]

#[path = "../../tasks/reduce_abi.rs"]
#[allow(dead_code)]
mod reduce_abi;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Whatever a reducer might find on stdin.
    Bytes(&'a [u8]),
    /// What the coordinator would write for these (name, output) records.
    Records(Vec<(&'a str, &'a [u8])>),
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Bytes(bytes) => match reduce_abi::parse(bytes) {
        Ok(records) => {
            let framed: usize = records
                .iter()
                .map(|r| 4 + r.name.len() + 8 + r.output.len())
                .sum();
            assert_eq!(framed, bytes.len(), "a parse must account for every byte");
            let owned: Vec<(&str, &[u8])> = records.iter().map(|r| (r.name, r.output)).collect();
            assert_eq!(protocol::reduce::encode(owned), bytes, "decode then encode is identity");
        }
        Err(e) => {
            assert!(e.offset <= bytes.len());
            let _ = e.to_string();
        }
    },
    Input::Records(records) => {
        let bytes = protocol::reduce::encode(records.iter().copied());
        let parsed = reduce_abi::parse(&bytes).expect("the encoder's output always parses");
        assert_eq!(parsed.len(), records.len());
        for (r, (name, output)) in parsed.iter().zip(&records) {
            assert_eq!((r.name, r.output), (*name, *output));
        }
    }
});
