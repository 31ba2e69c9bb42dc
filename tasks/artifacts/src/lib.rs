//! The Fallow guest programs, built for `wasm32-wasip1` by this crate's build
//! script and embedded as WebAssembly modules.
//!
//! # Guest ABI
//!
//! Every guest is a WASI preview 1 command module. stdin carries the work
//! unit's input bytes, stdout receives its output bytes, and exit code 0
//! means success (bad input exits with 2 and a message on stderr). Guests
//! use no files, environment, network, clocks or randomness, so the same
//! input always yields the same output on every host.
//!
//! # Reducer ABI
//!
//! A reducer ([`SUM`], [`PI_REDUCE`]) is a guest whose stdin holds the
//! verified outputs of all units of a job, sorted by unit name, as records
//! repeated to EOF:
//!
//! ```text
//! u32 LE name length | name (UTF-8) | u64 LE output length | output bytes
//! ```
//!
//! Its stdout is the job's final result.

/// Renders a Mandelbrot tile. Input: `x y w h width height max_iter`;
/// output: a binary PPM (P6) of the tile with a `# fallow-tile` comment.
pub const MANDELBROT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mandelbrot.wasm"));

/// Counts primes in `[a, b)`. Input: `a b` (`b <= 10^12`); output: `N\n`.
pub const PRIMES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/primes.wasm"));

/// Monte Carlo pi over sample indices `[a, b)`. Input: `a b`; output:
/// `<hits> <samples>\n`.
pub const PI: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pi.wasm"));

/// The Sun and the Jovian planets, `steps` symplectic Euler steps of 0.01 in double
/// precision. Input: `steps` (1 to 10^9); output: `<energy before> <energy after> <bits
/// of the energy after, hex>\n`.
pub const NBODY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nbody.wasm"));

/// Reducer: sums integer unit outputs; output `N\n`.
pub const SUM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sum.wasm"));

/// Reducer: combines `pi` unit outputs; output
/// `pi ~= <estimate> (<hits> hits of <samples> samples)\n`.
pub const PI_REDUCE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pi-reduce.wasm"));

/// Collatz stopping times over `[a, b)`, checkpointing every `interval` numbers with the
/// `fallow` checkpoint API. Input: `a b [interval]`; output:
/// `<sum of steps> <max steps> <first n with max steps>\n`.
pub const COLLATZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/collatz.wasm"));

/// Sums rows of the data file `/data/table` (one integer per line) named by stdin (row
/// numbers), plus `/data/offset` if present; output `<sum>\n`.
pub const LOOKUP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lookup.wasm"));

/// Prints what a guest can learn about `/data`: the listing with every entry's metadata,
/// each file's checksum, and the outcome of each forbidden operation (write, create,
/// remove, reaching outside).
pub const DATAPROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dataprobe.wasm"));

/// Misbehaving guests for testing the sandbox, plus well-behaved controls.
pub mod hostile {
    /// Loops forever without making any host calls.
    pub const SPIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/spin.wasm"));
    /// Allocates and touches 1 MiB blocks forever.
    pub const MEMBOMB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/membomb.wasm"));
    /// Recurses without bound until the stack is exhausted.
    pub const RECURSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/recurse.wasm"));
    /// Writes to stdout forever; exits 1 once a write is refused.
    pub const FLOOD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flood.wasm"));
    /// Tries to read `/etc/passwd`; prints the error and exits 1 on failure.
    pub const OPENFILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openfile.wasm"));
    /// Imports and calls `env::launch_missiles`, which is not part of WASI.
    pub const BADIMPORT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/badimport.wasm"));
    /// Copies stdin to stdout: a well-behaved control.
    pub const ECHO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo.wasm"));
    /// Prints `bad things` to stderr and exits with code 3.
    pub const EXIT3: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exit3.wasm"));
    /// Saves a 64 KiB checkpoint, then prints `restored N bytes`.
    pub const HOARD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hoard.wasm"));
    /// Makes the host calls its stdin lists, with arbitrary arguments (the `abi` fuzz
    /// target's guest), and prints each call's errno.
    pub const ABICALL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/abicall.wasm"));
}

/// Every embedded module, named by package for the real guests and as
/// `hostile/<binary>` for the sandbox test guests.
pub const ALL: &[(&str, &[u8])] = &[
    ("mandelbrot", MANDELBROT),
    ("primes", PRIMES),
    ("pi", PI),
    ("sum", SUM),
    ("pi-reduce", PI_REDUCE),
    ("collatz", COLLATZ),
    ("lookup", LOOKUP),
    ("hostile/dataprobe", DATAPROBE),
    ("hostile/spin", hostile::SPIN),
    ("hostile/membomb", hostile::MEMBOMB),
    ("hostile/recurse", hostile::RECURSE),
    ("hostile/flood", hostile::FLOOD),
    ("hostile/openfile", hostile::OPENFILE),
    ("hostile/badimport", hostile::BADIMPORT),
    ("hostile/echo", hostile::ECHO),
    ("hostile/exit3", hostile::EXIT3),
    ("hostile/hoard", hostile::HOARD),
    ("hostile/abicall", hostile::ABICALL),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_wasm() {
        assert_eq!(ALL.len(), 18);
        for (name, module) in ALL {
            assert!(!module.is_empty(), "{name} is empty");
            assert!(module.starts_with(b"\0asm"), "{name} lacks the wasm magic");
            // Version 1 of the core binary format, not a component.
            assert_eq!(&module[4..8], &[1, 0, 0, 0], "{name} is not a core module");
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn modules_are_distinct() {
        for (i, (a, x)) in ALL.iter().enumerate() {
            for (b, y) in &ALL[i + 1..] {
                assert_ne!(x, y, "{a} and {b} are the same module");
            }
        }
    }

    /// The build asks LLVM for SIMD128 (build.rs): every module's `target_features` custom
    /// section lists it as used (`+`, then the name's length and the name).
    #[test]
    fn every_module_is_built_with_simd128() {
        let needle = b"\x2b\x07simd128";
        for (name, module) in ALL.iter().chain([&("nbody", NBODY)]) {
            let listed = module.windows(needle.len()).any(|w| w == needle);
            assert!(listed, "{name} was not built with +simd128");
        }
    }

    #[test]
    fn bad_import_is_present() {
        let needle = b"launch_missiles";
        assert!(
            hostile::BADIMPORT
                .windows(needle.len())
                .any(|w| w == needle),
            "badimport does not import launch_missiles"
        );
        // And only there: no other guest may reach outside WASI.
        for (name, module) in ALL.iter().filter(|(name, _)| *name != "hostile/badimport") {
            assert!(
                !module.windows(needle.len()).any(|w| w == needle),
                "{name} mentions launch_missiles"
            );
        }
    }
}
