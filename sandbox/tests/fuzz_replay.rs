//! The CI smoke of the two fuzz targets that link wasmtime (`inspect`, `abi`; FUZZING.md).
//!
//! Building them with libFuzzer's instrumentation takes longer than the whole CI budget,
//! so instead of a short libFuzzer run they are replayed here, in the ordinary test build:
//! the committed seeds plus a few hundred inputs derived from them by a seeded generator
//! (the same every run), checked with the very property the fuzz target checks
//! (`fuzz/checks/abi.rs` and `inspect.rs` are shared by `#[path]`). The long runs are `cargo fuzz`'s job.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks/abi.rs"]
mod abi;
#[path = "../../fuzz/checks/inspect.rs"]
mod inspect;

/// xorshift64*: inputs that are the same on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The committed `seed-*` files of a target's corpus.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// One to four libFuzzer-like mutations: flip, overwrite, insert, delete or splice bytes.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below(16.min(v.len() - i));
                v.drain(i..i + n);
            }
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below(64.min(other.len() - from));
                let at = rng.below(v.len() + 1);
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

#[test]
fn abi_seeds_and_derived_call_lists_keep_the_host_honest() {
    let (sandbox, compiled) = abi::guest();
    let seeds = seeds("abi");
    for (path, bytes) in &seeds {
        eprintln!("abi seed {}", path.display());
        abi::check(&sandbox, &compiled, bytes);
    }
    let mut rng = Rng(0x00AB_1CA1_15EE_D5EE);
    for i in 0..300 {
        let base = &seeds[rng.below(seeds.len())].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let input: Vec<u8> = if i % 3 == 0 {
            // Fresh call lists: 1 to 20 calls of random bytes.
            (0..13 * (1 + rng.below(20)))
                .map(|_| rng.next() as u8)
                .collect()
        } else {
            mutate(&mut rng, base, other)
        };
        abi::check(&sandbox, &compiled, &input);
    }
}

#[test]
fn inspect_refuses_mutated_modules_without_panicking() {
    let sandbox = inspect::sandbox();
    let mut inputs: Vec<Vec<u8>> = seeds("inspect").into_iter().map(|(_, b)| b).collect();
    // Real guests too: their mutations reach deeper than the small seeds' do.
    inputs.extend(
        [
            artifacts::hostile::ECHO,
            artifacts::hostile::EXIT3,
            artifacts::SUM,
        ]
        .iter()
        .map(|w| w.to_vec()),
    );
    for input in &inputs {
        // Seeds may be refused (that is what some are for); none may panic.
        let _ = sandbox.inspect(input);
    }
    let mut rng = Rng(0x1A5B_EC7E_D0C0_FFEE);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..200 {
        let base = &inputs[rng.below(inputs.len())];
        let other = &inputs[rng.below(inputs.len())];
        match sandbox.inspect(&mutate(&mut rng, base, other)) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("inspect: {accepted} mutated modules accepted, {refused} refused");
    assert!(
        refused > 0,
        "no mutation was refused: the generator is not mutating"
    );
}
