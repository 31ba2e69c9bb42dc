//! The checkpoint guest API: `fallow::checkpoint_save` and `fallow::checkpoint_load`, and
//! [`Checkpoint`], everything needed to restart a unit exactly where its guest saved.
//!
//! # Why saving restarts the guest
//! `checkpoint_save` never returns. The sandbox takes the guest's bytes, ends the instance,
//! and starts a fresh one from `_start` whose `checkpoint_load` hands the bytes back. So
//! every execution of a checkpointing unit is the same sequence of segments, each
//! beginning with a fresh instance and `checkpoint_load`, whether the segments run in one
//! process or across a crash and a restart on another day. Output, fuel and every other
//! observable are therefore identical for a resumed and an uninterrupted run by
//! construction, and a guest that forgets to save some of its state gets it wrong on every
//! run (and fails verification at once), not only after a rare crash.
//!
//! # Fuel
//! The fuel claimed for a unit is the sum of the fuel of all its segments. A checkpoint
//! records the fuel of the segments before it; a resumed run starts with that much spent
//! and adds its own segments. The work lost by a crash (the part of the segment that was
//! running) is redone but never claimed twice, because the replayed segment starts from
//! the same checkpoint and costs what it always costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{Caller, Extern, Linker};

use crate::host::Host;

/// The import module of the checkpoint API; only modules that import it see it.
pub(crate) const MODULE: &str = "fallow";

/// A guest's saved state plus what the host must restore with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// How many checkpoints the unit has saved, this one included (1 for the first).
    pub segment: u32,
    /// Fuel used by all segments before this checkpoint.
    pub fuel: u64,
    /// Bytes the guest wrote to stdout before it saved (kept, not written again).
    pub stdout: Vec<u8>,
    /// Positions in the secure and insecure WASI random streams, so a resumed guest reads
    /// on where it stopped.
    pub random: [u64; 2],
    /// The guest's own bytes, as passed to `checkpoint_save`.
    pub state: Vec<u8>,
}

/// Why [`Checkpoint::decode`] refused some bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Fallow checkpoint: {0}")]
pub struct BadCheckpoint(&'static str);

const MAGIC: &[u8; 8] = b"FLWCKPT2";
/// The magic of checkpoints from before they named their fuel rules (all of version 1).
const MAGIC_RULES_1: &[u8; 8] = b"FLWCKPT1";

impl Checkpoint {
    /// The on-disk form: magic, the fuel rules the fuel was counted by
    /// ([`crate::meter::VERSION`]), fields little-endian, lengths before bytes, and a BLAKE3
    /// of everything before it (a worker's disk can be corrupted; a torn write cannot happen
    /// because the worker renames complete files into place).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 + 8 * 5 + self.stdout.len() + self.state.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crate::meter::VERSION.to_le_bytes());
        out.extend_from_slice(&self.segment.to_le_bytes());
        out.extend_from_slice(&self.fuel.to_le_bytes());
        out.extend_from_slice(&self.random[0].to_le_bytes());
        out.extend_from_slice(&self.random[1].to_le_bytes());
        out.extend_from_slice(&(self.stdout.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.stdout);
        out.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.state);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Reads [`Checkpoint::encode`]'s form back, checking the magic and the hash. A
    /// checkpoint whose fuel was counted by other fuel rules than this build's is refused:
    /// resumed, its unit would claim a sum of two counts, which no other worker could
    /// match.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadCheckpoint> {
        let (body, sum) = bytes
            .split_at_checked(bytes.len().saturating_sub(32))
            .ok_or(BadCheckpoint("too short"))?;
        if sum.len() != 32 || blake3::hash(body).as_bytes() != sum {
            return Err(BadCheckpoint("hash mismatch (corrupted or truncated)"));
        }
        let mut r = Reader(body);
        match r.take(8)? {
            m if m == MAGIC => {}
            m if m == MAGIC_RULES_1 => return Err(BadCheckpoint(OTHER_RULES)),
            _ => return Err(BadCheckpoint("wrong magic")),
        }
        if u32::from_le_bytes(r.array()?) != crate::meter::VERSION {
            return Err(BadCheckpoint(OTHER_RULES));
        }
        let segment = u32::from_le_bytes(r.array()?);
        let fuel = u64::from_le_bytes(r.array()?);
        let random = [
            u64::from_le_bytes(r.array()?),
            u64::from_le_bytes(r.array()?),
        ];
        let stdout = r.bytes()?.to_vec();
        let state = r.bytes()?.to_vec();
        if !r.0.is_empty() {
            return Err(BadCheckpoint("trailing bytes"));
        }
        Ok(Checkpoint {
            segment,
            fuel,
            stdout,
            random,
            state,
        })
    }
}

const OTHER_RULES: &str = "its fuel was counted by other fuel rules than this build's";

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadCheckpoint> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(BadCheckpoint("truncated"))?;
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadCheckpoint> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn bytes(&mut self) -> Result<&'a [u8], BadCheckpoint> {
        let n = u64::from_le_bytes(self.array()?);
        let n = usize::try_from(n).map_err(|_| BadCheckpoint("length overflows"))?;
        self.take(n)
    }
}

/// What the caller of [`crate::Sandbox::run_resumable`] wants after a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceed {
    /// Restart the guest from the checkpoint and carry on.
    Continue,
    /// Stop here (the worker is shutting down); the run returns the checkpoint.
    Stop,
}

/// Per-segment checkpoint state of a store.
pub(crate) struct Slot {
    /// The state `checkpoint_load` hands out (from the previous segment or from disk).
    pub(crate) load: Option<Arc<[u8]>>,
    /// Set by `checkpoint_save` just before it ends the segment.
    pub(crate) saved: Option<Vec<u8>>,
    /// `[limits].max_checkpoint_bytes`.
    pub(crate) max_bytes: u64,
    /// Current positions of the two random streams (shared with their generators).
    pub(crate) random: [Arc<AtomicU64>; 2],
}

impl Slot {
    pub(crate) fn random_positions(&self) -> [u64; 2] {
        [
            self.random[0].load(Ordering::Relaxed),
            self.random[1].load(Ordering::Relaxed),
        ]
    }
}

/// The trap that ends a segment after a successful `checkpoint_save`.
#[derive(Debug)]
pub(crate) struct Saved;

impl std::fmt::Display for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("checkpoint saved; restarting the guest from it")
    }
}

impl std::error::Error for Saved {}

/// The trap of a `checkpoint_save` over `[limits].max_checkpoint_bytes`.
#[derive(Debug)]
pub(crate) struct TooLarge {
    pub(crate) len: u64,
    pub(crate) max: u64,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint_save of {} bytes is over [limits].max_checkpoint_bytes = {}; save less state or raise the limit in the manifest",
            self.len, self.max
        )
    }
}

impl std::error::Error for TooLarge {}

/// Adds `fallow::checkpoint_save(ptr, len)` and `fallow::checkpoint_load(ptr, cap) -> len`.
pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "checkpoint_save",
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let (ptr, len) = (ptr as u32 as usize, len as u32 as u64);
            let max = caller.data().checkpoint.max_bytes;
            if len > max {
                return Err(wasmtime::Error::new(TooLarge { len, max }));
            }
            let memory = memory(&mut caller)?;
            let mut state = vec![0; len as usize];
            memory.read(&caller, ptr, &mut state)?;
            caller.data_mut().checkpoint.saved = Some(state);
            Err(wasmtime::Error::new(Saved))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "checkpoint_load",
        |mut caller: Caller<'_, Host>, ptr: i32, cap: i32| -> wasmtime::Result<i32> {
            let Some(state) = caller.data().checkpoint.load.clone() else {
                return Ok(-1);
            };
            // Caps keep every checkpoint far below 2 GiB, so the length fits an i32.
            let len = i32::try_from(state.len())
                .map_err(|_| wasmtime::Error::msg("checkpoint too large to load"))?;
            if state.len() > cap as u32 as usize {
                return Ok(len);
            }
            let memory = memory(&mut caller)?;
            memory.write(&mut caller, ptr as u32 as usize, &state)?;
            Ok(len)
        },
    )?;
    Ok(())
}

fn memory(caller: &mut Caller<'_, Host>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::msg("guest exports no memory")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_corruption_is_refused() {
        let cp = Checkpoint {
            segment: 3,
            fuel: 123_456,
            stdout: b"partial\n".to_vec(),
            random: [64, 0],
            state: vec![7; 100],
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(cp));
        for cut in [0, 10, bytes.len() - 1] {
            assert!(Checkpoint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(Checkpoint::decode(&flipped).is_err());
    }

    /// A checkpoint's fuel is a count by one version of the fuel rules: one saved by
    /// another (a worker upgraded with units half done) is refused, naming why, and the
    /// unit starts over, rather than claiming a sum of two counts no other worker could
    /// match.
    #[test]
    fn a_checkpoint_counted_by_other_fuel_rules_is_refused() {
        let bytes = Checkpoint {
            segment: 2,
            fuel: 1234,
            stdout: b"out".to_vec(),
            random: [1, 2],
            state: b"state".to_vec(),
        }
        .encode();
        let resealed = |mut body: Vec<u8>| {
            body.truncate(body.len() - 32);
            let sum = blake3::hash(&body);
            body.extend_from_slice(sum.as_bytes());
            body
        };
        let mut other = bytes.clone();
        other[8..12].copy_from_slice(&(crate::meter::VERSION + 1).to_le_bytes());
        let mut first = bytes.clone();
        first[..8].copy_from_slice(MAGIC_RULES_1);
        for refused in [resealed(other), resealed(first)] {
            let e = Checkpoint::decode(&refused).expect_err("other rules");
            assert!(e.to_string().contains("other fuel rules"), "{e}");
        }
    }
}
