//! The only place guest code runs: wasmtime with Cranelift, every limit on, and a WASI
//! preview 1 that gives every honest machine the same answer.
//!
//! # Layout
//! - [`Sandbox`]: engine configuration, the module cache, [`Sandbox::inspect`] (the submit-time
//!   check) and [`Sandbox::run`] (one execution).
//! - `disk_cache`: compiled modules kept on disk across restarts
//!   ([`Sandbox::set_disk_cache`]), authenticated with a key only this worker holds.
//! - `host`: the per-execution store data: deterministic WASI context and the memory limiter.
//! - [`checkpoint`]: the opt-in checkpoint API (`fallow::checkpoint_save`/`checkpoint_load`)
//!   and [`Checkpoint`], with [`Sandbox::run_resumable`] restarting a guest from one.
//! - [`SandboxConfig`]: the knobs, documented like wasmtime documents `Config`.
//! - [`nan`]: NaN canonicalization by rewriting a metered module, for engines that cannot
//!   canonicalize NaNs themselves (a browser's): the bits of the canonicalizing engine here.
//! - [`Pacer`]: the hook through which a worker pauses (suspension) or slows (CPU limit) a
//!   running guest without losing its state; [`Sandbox::run_paced`] and
//!   [`Sandbox::run_resumable`] call it.
//! - `interrupt`: holding and stopping a guest thread from its companion thread, for the
//!   meter's call-free checks.
//!
//! # Determinism
//! A guest sees: stdin = the unit's input; argv = `["main"]`; no environment variables; no
//! files but the project's data files, read-only under `/data` with metadata the same on
//! every machine ([`DataMount`]), and no sockets; WASI clocks frozen at
//! 2000-01-01T00:00:00Z (monotonic clock at 0); WASI random = a BLAKE3 stream seeded by the
//! caller from the work unit; `poll_oneoff` (sleeping) answers `ENOTSUP` at once instead of
//! blocking. Threads and relaxed SIMD are disabled; NaN canonicalization is a per-project
//! option (Cranelift's here; [`nan::canonicalize`] gives the same bits elsewhere). Fuel is deterministic, so the fuel used is part of the result: the module is
//! rewritten to count its own fuel by rules of Fallow's ([`meter`]), so any engine that
//! runs the rewritten bytes (wasmtime here, a browser's on the volunteer page) counts the
//! same fuel. On Linux the rewrite's checks call nothing, and a companion thread per guest
//! thread (`interrupt`) enforces the wall clock and holds a guest for the [`Pacer`];
//! elsewhere the checks' slice calls do both.

// Denied rather than forbidden: `disk_cache::deserialize` is the one exception, a
// function of its own with a `# Safety` section (wasmtime's `Module::deserialize`).
#![deny(unsafe_code)]

pub mod checkpoint;
mod disk_cache;
mod host;
mod interrupt;
pub mod meter;
pub mod nan;

pub use checkpoint::{Checkpoint, Proceed};
pub use disk_cache::DiskCacheStats;
/// The file extension of compiled modules in a disk cache ([`Sandbox::set_disk_cache`]).
pub use disk_cache::EXTENSION as COMPILED_EXTENSION;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{Digest, Failure, FailureKind, Limits};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, Trap};
use wasmtime_wasi::I32Exit;

use host::Host;

/// The one error type of the `sandbox` crate: a module that cannot be accepted. Running a
/// unit never returns this; a unit's failure is a [`protocol::Failure`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a WebAssembly binary at all.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// A component-model binary; Fallow runs core modules (WASI preview 1 commands).
    #[error(
        "this is a WebAssembly component; Fallow runs core modules built for wasm32-wasip1 (WASI preview 1 commands)"
    )]
    Component,
    /// Wasmtime refused the module (invalid, or uses a disabled feature such as threads).
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module imports something outside the guest ABI.
    #[error(
        "module imports `{module}::{name}`, which is outside Fallow's guest ABI (only WASI preview 1 functions from `wasi_snapshot_preview1` and `fallow::checkpoint_save`/`checkpoint_load` are available)"
    )]
    ForbiddenImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The module is not a WASI command (`_start` and `memory` exports).
    #[error("not a WASI command: {0}")]
    NotACommand(String),
    /// The engine could not be set up (bad configuration or out of address space).
    #[error("sandbox engine: {0}")]
    Engine(String),
}

/// Sandbox knobs, fixed for the life of a [`Sandbox`].
#[derive(Debug, Clone, Copy)]
pub struct SandboxConfig {
    /// Executions that may run at the same time (pooling-allocator slots). Default 4.
    /// One more concurrent [`Sandbox::run`] than this fails with `BadModule` ("pool
    /// exhausted"), so a worker sets it to its core count.
    pub slots: u32,
    /// Largest `memory_mb` any project may use here; each slot reserves this much virtual
    /// memory, of which at most the first 2 MiB stays resident between executions (reset
    /// with `memset`, the rest handed back to the kernel). Default 4096 (the manifest
    /// maximum).
    pub max_memory_mb: u32,
    /// Wasm stack limit in bytes. Default 1 MiB: deep enough for real recursion, small
    /// enough that unbounded recursion fails fast with `stack_overflow`. Runs need a native
    /// thread stack bigger than this (see [`GUEST_THREAD_STACK`]).
    pub max_wasm_stack: usize,
    /// Compiled modules kept in memory. Default 64.
    pub module_cache: usize,
    /// How guests are metered. Default [`Metering::Rewrite`], and always that in
    /// coordinators and workers; the others are for benchmarks.
    pub metering: Metering,
}

/// How a sandbox meters guests ([`SandboxConfig::metering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metering {
    /// The module is rewritten to count its own fuel ([`meter`]): the deterministic limit
    /// and the credit unit, the same on every engine. On Linux (x86_64, aarch64) its
    /// checks call nothing ([`meter::Check::Limit`]): a companion thread enforces
    /// `wall_seconds` and holds the guest for the [`Pacer`] (`interrupt`). Elsewhere they
    /// call the host at every slice ([`meter::Check::Slice`]), which does both.
    #[default]
    Rewrite,
    /// Benchmarks only: the rewrite with slice calls ([`meter::Check::Slice`]) wherever
    /// it runs, as a browser runs it and as wasmtime did before call-free checks: the same
    /// fuel, limits and pacing as [`Metering::Rewrite`], to measure the two side by side.
    RewriteWithSliceCalls,
    /// Benchmarks only: wasmtime's own fuel and epoch checks, as Fallow metered guests
    /// before [`meter`], to measure the two side by side. Fuel is counted by wasmtime's
    /// rules (other numbers than [`Metering::Rewrite`]); the epoch deadline never comes,
    /// so there is no wall clock and no pacing, but every check is paid.
    Engine,
    /// Benchmarks only: the rewrite, but a check below zero refills the counter instead
    /// of calling the host ([`meter::Check::Refill`]): what the rewrite's counting costs
    /// without its one call. No fuel limit, wall clock or pacing; `Execution::fuel` is 0.
    RewriteWithoutCalls,
    /// Benchmarks only: nothing metered, no wall clock, no pacing; `Execution::fuel` is 0.
    Off,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            slots: 4,
            max_memory_mb: protocol::limits::MEMORY_MB_RANGE.1,
            max_wasm_stack: 1 << 20,
            module_cache: 64,
            metering: Metering::Rewrite,
        }
    }
}

/// Native stack size for threads that call [`Sandbox::run`].
pub const GUEST_THREAD_STACK: usize = 8 << 20;

/// Bytes at the start of each pooled linear memory reset in place when an execution ends,
/// instead of being handed back to the kernel (`madvise`), whose page-table teardown and
/// TLB shootdown (an interrupt to every core) were over half of a short unit's cost. Only
/// the pages the guest wrote are reset where Linux has `PAGEMAP_SCAN` (6.7+; `memset` of
/// the whole region otherwise): 2.6x less per-unit overhead for a guest that writes little,
/// 1.7x more for one that writes every page of this region (BENCHMARKS.md).
const KEEP_RESIDENT: usize = 2 << 20;
/// The same for tables.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Asked every few milliseconds while a guest runs ([`Sandbox::run_paced`]), with the guest
/// held still: the one place where a host may keep a guest from running.
///
/// Where the meter's checks call nothing (Linux), the guest's companion thread holds the
/// guest thread in a signal handler and calls this every `interrupt::TICK` (5 ms);
/// elsewhere the guest thread calls it at every slice of the fuel meter
/// ([`meter::SLICE_FUEL`] fuel). Either way the guest thread is parked, not unwound, so the
/// whole guest — stack, registers, linear memory — stays exactly as it was, with no async
/// fibers or stack switching, and the same code paces the CPU limit (a duty cycle) and
/// suspension. Fuel and output are untouched by pausing, so a paused and resumed execution
/// is bit-identical to one run straight through.
pub trait Pacer: Send + Sync {
    /// `fuel_used` is the fuel consumed so far (0 when metering is off; with call-free
    /// checks, as of the guest's last call, return, iteration of a loop that holds loops,
    /// or draw from its bank). Also called once, on the calling thread, before the guest
    /// starts. May block for as long as the guest must not run; the time spent here does
    /// not count against `wall_seconds`.
    fn pace(&mut self, fuel_used: u64);
}

/// The pacer of [`Sandbox::run`]: never holds the guest.
struct Unpaced;

impl Pacer for Unpaced {
    fn pace(&mut self, _fuel_used: u64) {}
}

/// The pacer of one [`Sandbox::run_resumable`] call and the guest's running time so far,
/// shared by the slice hooks of its segments.
struct Pace {
    pacer: Box<dyn Pacer>,
    running: Duration,
}

/// What the companion thread (`interrupt`) does for an execution with call-free checks:
/// the guest's running time against `wall_seconds`, and the pacer.
struct Companion {
    pace: Arc<Mutex<Pace>>,
    wall: Duration,
}

impl interrupt::Ticker for Companion {
    fn ran(&mut self, running: Duration) -> bool {
        let mut p = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        p.running += running;
        p.running < self.wall
    }

    fn pace(&mut self, fuel_used: u64) {
        self.pace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pacer
            .pace(fuel_used);
    }
}

/// A project's data files, mounted read-only at `/data` ([`protocol::data::MOUNT`]) in
/// every execution given it.
///
/// The guest sees the same thing on every machine: `dir` is opened as a WASI preopen with
/// read-only rights (writes, creating, renaming, removing and paths leading outside are
/// refused by wasmtime and cap-std), and the calls that would show the host — `fd_filestat_get`,
/// `path_filestat_get` and `fd_readdir` — are shadowed: sizes as they are, inodes and
/// devices 0, one link, every time at the frozen clock, the listing `.`, `..` and
/// [`DataMount::names`] in byte order. Reading a file gives its bytes, as natively.
#[derive(Debug, Clone)]
pub struct DataMount {
    dir: std::path::PathBuf,
    names: Arc<[String]>,
}

impl DataMount {
    /// `dir` must hold exactly the regular files `names` (no links out, nothing else): the
    /// caller builds it (a worker from its verified cache, `fallow run` from the manifest).
    pub fn new(dir: impl Into<std::path::PathBuf>, mut names: Vec<String>) -> Self {
        names.sort();
        DataMount {
            dir: dir.into(),
            names: names.into(),
        }
    }

    /// The files' names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A successful execution.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Everything the guest wrote to stdout.
    pub output: Vec<u8>,
    /// BLAKE3 of `output`.
    pub digest: Digest,
    /// Fuel consumed by the whole unit: every segment, including those before the
    /// checkpoint it was resumed from. The number claimed and credited.
    pub fuel: u64,
    /// Fuel metered in this call alone (less than `fuel` after a resume).
    pub fuel_here: u64,
    /// The checkpoint this call started from (its `segment`), 0 for a fresh start.
    pub resumed_from: u32,
    /// Checkpoints the guest saved over the whole unit.
    pub checkpoints: u32,
}

/// How [`Sandbox::run_resumable`] ended without a failure.
#[derive(Debug, Clone)]
pub enum Finished {
    /// The guest exited 0.
    Done(Execution),
    /// The caller said [`Proceed::Stop`] after this checkpoint.
    Stopped(Checkpoint),
}

/// A compiled module ready to instantiate in microseconds.
#[derive(Clone)]
pub struct Compiled {
    pre: InstancePre<Host>,
    nan_canonicalization: bool,
    checkpoints: bool,
}

impl Compiled {
    /// Whether the module imports the checkpoint API (so a running unit of it can be
    /// stopped at its next checkpoint and resumed later).
    pub fn checkpoints(&self) -> bool {
        self.checkpoints
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").finish_non_exhaustive()
    }
}

/// One engine flavour (with or without NaN canonicalization).
struct Flavour {
    engine: Engine,
    linker: Linker<Host>,
}

/// A wasmtime sandbox: engines, linkers and the compiled-module cache.
pub struct Sandbox {
    plain: Flavour,
    canonical: Flavour,
    /// Every (module, function) the linker defines: WASI preview 1 and the checkpoint API.
    abi: HashSet<(String, String)>,
    cache: Mutex<HashMap<(Digest, bool), Compiled>>,
    cache_limit: usize,
    /// Compiled modules on disk, if [`Sandbox::set_disk_cache`] set a directory.
    disk: Option<disk_cache::DiskCache>,
    metering: Metering,
    /// What the rewrite's checks do, if modules are rewritten.
    check: Option<meter::Check>,
    /// Tests only: the metered module is also rewritten by [`nan::canonicalize`], as the
    /// volunteer page runs it, so that the plain engine can be compared with the
    /// canonicalizing one.
    #[cfg(test)]
    rewrite_nans: bool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engines.
    pub fn new(config: SandboxConfig) -> Result<Self, Error> {
        let plain = Flavour::new(&config, false)?;
        let canonical = Flavour::new(&config, true)?;
        let abi = {
            let mut store = Store::new(&plain.engine, Host::placeholder());
            plain
                .linker
                .iter(&mut store)
                .filter(|(module, _, _)| {
                    *module == host::WASI_MODULE || *module == checkpoint::MODULE
                })
                .map(|(module, name, _)| (module.to_string(), name.to_string()))
                .collect()
        };
        Ok(Sandbox {
            plain,
            canonical,
            abi,
            cache: Mutex::new(HashMap::new()),
            cache_limit: config.module_cache.max(1),
            disk: None,
            metering: config.metering,
            check: match config.metering {
                Metering::Rewrite if interrupt::SUPPORTED => {
                    interrupt::install().map_err(Error::Engine)?;
                    Some(meter::Check::Limit)
                }
                Metering::Rewrite | Metering::RewriteWithSliceCalls => Some(meter::Check::Slice),
                Metering::RewriteWithoutCalls => Some(meter::Check::Refill),
                Metering::Engine | Metering::Off => None,
            },
            #[cfg(test)]
            rewrite_nans: false,
        })
    }

    /// Keeps compiled modules in `dir` too, so that they survive a restart: [`Sandbox::compile`]
    /// loads a module from there instead of compiling it, but only an entry this cache
    /// wrote itself, authenticated with the key `dir/compiled.key` (made here, mode 0600);
    /// anything else there is deleted and compiled again. Entries are
    /// `<digest>-<flavour>.cwasm`; the caller bounds the directory's size (the worker
    /// counts them in its `disk_cache_mb`). Fails only if `dir` or its key cannot be
    /// made; the sandbox then works as before, without it.
    pub fn set_disk_cache(&mut self, dir: &std::path::Path) -> Result<(), Error> {
        let cache = disk_cache::DiskCache::open(dir).map_err(|e| {
            Error::Engine(format!(
                "compiled-module cache {}: {e}",
                dir.join(disk_cache::KEY_FILE).display()
            ))
        })?;
        self.disk = Some(cache);
        Ok(())
    }

    /// How the on-disk cache has fared (all zero without one).
    pub fn disk_cache_stats(&self) -> DiskCacheStats {
        self.disk
            .as_ref()
            .map(disk_cache::DiskCache::stats)
            .unwrap_or_default()
    }

    /// The on-disk entry of `digest` in this flavour, if there is a disk cache (whether or
    /// not it exists yet): for a caller that trims the directory and must keep it.
    pub fn disk_cache_path(
        &self,
        digest: Digest,
        nan_canonicalization: bool,
    ) -> Option<std::path::PathBuf> {
        self.disk
            .as_ref()
            .map(|d| d.path(digest, nan_canonicalization))
    }

    /// Checks that `bytes` is a module Fallow will run: valid core wasm, a WASI command, and
    /// importing nothing outside the guest ABI. The coordinator calls this at submit; workers
    /// call it again (through [`Sandbox::compile`]) before running anything.
    pub fn inspect(&self, bytes: &[u8]) -> Result<(), Error> {
        self.compile_module(&self.plain, bytes).map(|_| ())
    }

    /// Compiles (or fetches from the cache) the module whose digest is `digest`.
    /// Never accepts precompiled code from the caller: the bytes are always wasm, checked
    /// against `digest`, and compiled here — or loaded from this sandbox's own disk cache
    /// ([`Sandbox::set_disk_cache`]), which holds only code it compiled from such bytes.
    pub fn compile(
        &self,
        digest: Digest,
        bytes: &[u8],
        nan_canonicalization: bool,
    ) -> Result<Compiled, Error> {
        let key = (digest, nan_canonicalization);
        if let Some(hit) = self.lock_cache().get(&key) {
            return Ok(hit.clone());
        }
        if Digest::of(bytes) != digest {
            return Err(Error::Invalid(format!(
                "module bytes do not hash to {digest}"
            )));
        }
        let flavour = if nan_canonicalization {
            &self.canonical
        } else {
            &self.plain
        };
        let cached = self
            .disk
            .as_ref()
            .and_then(|d| d.load(&flavour.engine, digest, nan_canonicalization));
        let module = match cached {
            // Compiled here from these very bytes (the entry is authenticated and names
            // their digest), after the checks below passed; they are cheap, so they run
            // again rather than trusting that.
            Some(module) => {
                self.check_module(&module)?;
                module
            }
            None => {
                let module = self.compile_module(flavour, bytes)?;
                if let Some(d) = &self.disk {
                    d.store(&module, digest, nan_canonicalization);
                }
                module
            }
        };
        let pre = flavour
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Invalid(format!("{e:#}")))?;
        let checkpoints = module.imports().any(|i| i.module() == checkpoint::MODULE);
        let compiled = Compiled {
            pre,
            nan_canonicalization,
            checkpoints,
        };
        let mut cache = self.lock_cache();
        if cache.len() >= self.cache_limit {
            // Modules are per project and few; dropping an arbitrary one only costs a recompile.
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Whether a compiled module for `digest` is cached.
    pub fn is_cached(&self, digest: Digest, nan_canonicalization: bool) -> bool {
        self.lock_cache()
            .contains_key(&(digest, nan_canonicalization))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(Digest, bool), Compiled>> {
        // A panic while holding this lock cannot leave the map half-updated (single
        // insert/remove calls), so a poisoned lock is still consistent.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass of the module's sections (no validation, no compilation): refuses an import
    /// outside the guest ABI and a module without `_start` and `memory` exports. Malformed
    /// sections are left to wasmtime, which names the problem better.
    fn precheck(&self, bytes: &[u8]) -> Result<(), Error> {
        use wasmparser::{ExternalKind, Parser, Payload};
        let (mut start, mut memory) = (false, false);
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else {
                return Ok(()); // malformed: wasmtime's error follows
            };
            match payload {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let Ok(import) = import else {
                            return Ok(());
                        };
                        if !self
                            .abi
                            .contains(&(import.module.to_string(), import.name.to_string()))
                        {
                            return Err(Error::ForbiddenImport {
                                module: import.module.to_string(),
                                name: import.name.to_string(),
                            });
                        }
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let Ok(export) = export else {
                            return Ok(());
                        };
                        match (export.name, export.kind) {
                            ("_start", ExternalKind::Func | ExternalKind::FuncExact) => {
                                start = true;
                            }
                            ("memory", ExternalKind::Memory) => memory = true,
                            _ => {}
                        }
                    }
                }
                // The fuel meter adds a memory of its own (`meter::Check::Limit`).
                Payload::MemorySection(reader) if reader.count() > 1 => {
                    return Err(Error::Invalid(format!(
                        "the module defines {} memories; a Fallow guest has one linear memory",
                        reader.count()
                    )));
                }
                // Exports come before code: nothing after them is needed here.
                Payload::CodeSectionStart { .. } => break,
                _ => {}
            }
        }
        if !start {
            return Err(Error::NotACommand(
                "no exported function `_start` (build a binary, not a library, for wasm32-wasip1)"
                    .into(),
            ));
        }
        if !memory {
            return Err(Error::NotACommand("no exported `memory`".into()));
        }
        Ok(())
    }

    fn compile_module(&self, flavour: &Flavour, bytes: &[u8]) -> Result<Module, Error> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            let head: String = bytes
                .iter()
                .take(16)
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            return Err(Error::NotWasm(format!(
                "{} bytes starting {head:?}; expected the \\0asm magic of a .wasm file",
                bytes.len()
            )));
        }
        // Bytes 4..8 are the version/layer: core modules are 1,0,0,0; components differ.
        if bytes[4..8] != [1, 0, 0, 0] {
            return Err(Error::Component);
        }
        // The import allow-list and the command's exports are read before anything is
        // compiled: a module outside the ABI costs a parse, not a Cranelift compilation.
        self.precheck(bytes)?;
        let module = if let Some(check) = self.check {
            // Validated as submitted first, so that errors name offsets in the
            // scientist's module; then rewritten to meter itself, and compiled.
            Module::validate(&flavour.engine, bytes)
                .map_err(|e| Error::Invalid(format!("{e:#}")))?;
            let metered = meter::instrument_as(bytes, check)?;
            #[cfg(test)]
            let metered = if self.rewrite_nans {
                nan::canonicalize(&metered)?
            } else {
                metered
            };
            Module::new(&flavour.engine, &metered)
        } else {
            Module::new(&flavour.engine, bytes)
        }
        .map_err(|e| Error::Invalid(format!("{e:#}")))?;
        self.check_module(&module)?;
        Ok(module)
    }

    /// The compiled module's imports are within the guest ABI and it is a WASI command.
    fn check_module(&self, module: &Module) -> Result<(), Error> {
        for import in module.imports() {
            // The rewrite's own import (the module as submitted may not have it: `precheck`
            // and `meter::instrument` refuse it).
            let metering = self.check.is_some()
                && import.module() == meter::MODULE
                && import.name() == meter::SLICE;
            if !metering
                && !self
                    .abi
                    .contains(&(import.module().to_string(), import.name().to_string()))
            {
                return Err(Error::ForbiddenImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        let start = module
            .get_export("_start")
            .and_then(|e| e.func().cloned())
            .ok_or_else(|| Error::NotACommand("no exported function `_start` (build a binary, not a library, for wasm32-wasip1)".into()))?;
        if start.params().len() != 0 || start.results().len() != 0 {
            return Err(Error::NotACommand(
                "`_start` must take and return nothing".into(),
            ));
        }
        if module
            .get_export("memory")
            .and_then(|e| e.memory().cloned())
            .is_none()
        {
            return Err(Error::NotACommand("no exported `memory`".into()));
        }
        Ok(())
    }

    /// Runs one execution: `input` on stdin, `seed` for WASI random, every limit of
    /// `limits` enforced. Blocks the calling thread for as long as the guest runs: call it
    /// from a thread with a [`GUEST_THREAD_STACK`] stack, never from an async task.
    /// A guest that checkpoints runs to the end here, its checkpoints kept in memory only.
    pub fn run(
        &self,
        compiled: &Compiled,
        input: &[u8],
        seed: [u8; 32],
        limits: &Limits,
    ) -> Result<Execution, Failure> {
        self.run_paced(compiled, input, seed, limits, Box::new(Unpaced))
    }

    /// [`Sandbox::run`] with a project's data files mounted at `/data`.
    pub fn run_with_data(
        &self,
        compiled: &Compiled,
        input: &[u8],
        seed: [u8; 32],
        limits: &Limits,
        data: Option<&DataMount>,
    ) -> Result<Execution, Failure> {
        match self.run_resumable(
            compiled,
            input,
            seed,
            limits,
            data,
            None,
            Box::new(Unpaced),
            &mut |_| Proceed::Continue,
        )? {
            Finished::Done(exec) => Ok(exec),
            // Unreachable: the callback above never stops.
            Finished::Stopped(_) => Err(Failure::new(FailureKind::BadModule, "stopped")),
        }
    }

    /// [`Sandbox::run`] with a [`Pacer`] called at every slice of the fuel meter (a few
    /// milliseconds of the guest's running time). `wall_seconds` counts only the time the guest was not held by the
    /// pacer, so a suspended unit does not time out.
    pub fn run_paced(
        &self,
        compiled: &Compiled,
        input: &[u8],
        seed: [u8; 32],
        limits: &Limits,
        pacer: Box<dyn Pacer>,
    ) -> Result<Execution, Failure> {
        match self.run_resumable(
            compiled,
            input,
            seed,
            limits,
            None,
            None,
            pacer,
            &mut |_| Proceed::Continue,
        )? {
            Finished::Done(exec) => Ok(exec),
            // Unreachable: the callback above never stops.
            Finished::Stopped(_) => Err(Failure::new(FailureKind::BadModule, "stopped")),
        }
    }

    /// [`Sandbox::run_paced`] for guests that may checkpoint: starts from `resume` if given
    /// (a checkpoint of this very module, input and seed), and calls `on_checkpoint` on
    /// this thread after every `checkpoint_save` — to persist it, and to say whether to
    /// carry on or stop there. Output and fuel are the same whether or not the unit was
    /// resumed (see [`checkpoint`]). `wall_seconds` covers the guest's running time over
    /// every segment of this call, time held by `pacer` excluded. `data`, if given, is
    /// mounted at `/data` ([`DataMount`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run_resumable(
        &self,
        compiled: &Compiled,
        input: &[u8],
        seed: [u8; 32],
        limits: &Limits,
        data: Option<&DataMount>,
        resume: Option<Checkpoint>,
        mut pacer: Box<dyn Pacer>,
        on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Proceed,
    ) -> Result<Finished, Failure> {
        let flavour = if compiled.nan_canonicalization {
            &self.canonical
        } else {
            &self.plain
        };
        if let Some(c) = &resume
            && (c.fuel > limits.fuel
                || c.stdout.len() as u64 > limits.max_output_bytes
                || c.state.len() as u64 > limits.max_checkpoint_bytes)
        {
            return Err(Failure::new(
                FailureKind::BadModule,
                "checkpoint does not fit this unit's limits",
            ));
        }
        // Asked once before the guest starts, so a held execution does not even start.
        pacer.pace(resume.as_ref().map_or(0, |c| c.fuel));
        // Shared by the slice hooks of every segment's store: the pacer, and the guest's
        // running time so far (time held by the pacer excluded).
        let pace = Arc::new(Mutex::new(Pace {
            pacer,
            running: Duration::ZERO,
        }));
        let wall = Duration::from_secs(u64::from(limits.wall_seconds));
        let resumed_from = resume.as_ref().map_or(0, |c| c.segment);
        let mut segment = resumed_from;
        let mut current = resume;
        let mut fuel_here = 0u64;
        loop {
            let before = current.as_ref().map_or(0, |c| c.fuel);
            // A mount that cannot be opened is this machine's trouble (the caller built
            // it), reported as such rather than as anything the guest did.
            let (host, pipes) = Host::new(input, seed, limits, current.as_ref(), data)
                .map_err(|e| Failure::new(FailureKind::BadModule, format!("data mount: {e}")))?;
            let mut store = Store::new(&flavour.engine, host);
            store.limiter(|h| &mut h.limiter);
            let budget = limits.fuel - before;
            match (self.check, self.metering) {
                (Some(meter::Check::Slice), _) => {
                    // At every slice: the guest's running time against `wall_seconds`,
                    // then the pacer, which may hold it.
                    let shared = pace.clone();
                    let mut last = Instant::now();
                    store.data_mut().metered = host::Metered {
                        meter: meter::Meter::new(budget),
                        before,
                        on_slice: Box::new(move |used| {
                            let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
                            p.running += last.elapsed();
                            if p.running >= wall {
                                return false;
                            }
                            p.pacer.pace(used);
                            last = Instant::now();
                            true
                        }),
                    };
                }
                (Some(meter::Check::Limit), _) => {
                    store.data_mut().metered.meter = meter::Meter::upfront(budget);
                }
                (_, Metering::Engine) => {
                    store.set_fuel(budget).map_err(|e| {
                        Failure::new(FailureKind::BadModule, format!("cannot set fuel: {e}"))
                    })?;
                    // Checked at every loop head and call, never reached.
                    store.set_epoch_deadline(u64::MAX / 2);
                }
                _ => {}
            }

            let call_free = self.check == Some(meter::Check::Limit);
            let mut instance = None;
            let mut limit_memory = None;
            let mut watch = None;
            let outcome = compiled.pre.instantiate(&mut store).and_then(|i| {
                instance = Some(i);
                if call_free {
                    // Before any guest code runs: the counter gets the whole budget, the
                    // limit is 0, and the companion watches (`interrupt`).
                    let memory =
                        i.get_memory(&mut store, meter::LIMIT_EXPORT)
                            .ok_or_else(|| {
                                host::HostTrouble::error("the metered module has no limit memory")
                            })?;
                    let issued = store.data().metered.meter.issued();
                    let set = |store: &mut Store<Host>, at, value: i64| {
                        memory
                            .write(store, at, &value.to_le_bytes())
                            .map_err(|e| host::HostTrouble::error(format!("fuel meter: {e}")))
                    };
                    set(&mut store, 0, 0)?;
                    set(&mut store, meter::COUNTER_OFFSET, 0)?;
                    set(&mut store, meter::BANK_OFFSET, issued as i64)?;
                    limit_memory = Some(memory);
                    let code = compiled.pre.module().image_range();
                    watch = Some(
                        interrupt::Watch::start(
                            memory.data_ptr(&store),
                            code.start as usize..code.end as usize,
                            before,
                            issued,
                            Box::new(Companion {
                                pace: pace.clone(),
                                wall,
                            }),
                        )
                        .map_err(host::HostTrouble::error)?,
                    );
                    if let Ok(start) = i.get_typed_func::<(), ()>(&mut store, meter::START_EXPORT) {
                        start.call(&mut store, ())?;
                    }
                }
                let start = i.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call(&mut store, ())
            });
            let timed_out = watch.take().is_some_and(interrupt::Watch::end);
            let used = match (self.check, self.metering) {
                // The counter as the guest last stored it (before every call and return,
                // and at a check that stops it), so this is the same however the run ended.
                (Some(meter::Check::Slice), _) => {
                    let counter = instance
                        .and_then(|i| i.get_global(&mut store, meter::FUEL_EXPORT))
                        .and_then(|g| g.get(&mut store).i64())
                        .unwrap_or(0);
                    store.data().metered.meter.used(counter)
                }
                (Some(meter::Check::Limit), _) => {
                    let issued = store.data().metered.meter.issued();
                    let word = |m: wasmtime::Memory, at| {
                        let mut bytes = [0u8; 8];
                        m.read(&store, at, &mut bytes)
                            .ok()
                            .map(|()| i64::from_le_bytes(bytes))
                    };
                    // What is left: the counter plus the bank (`meter`, "Call-free checks").
                    let left = limit_memory.and_then(|m| {
                        Some(
                            word(m, meter::COUNTER_OFFSET)?
                                .saturating_add(word(m, meter::BANK_OFFSET)?),
                        )
                    });
                    // Not instantiated: nothing ran.
                    store
                        .data()
                        .metered
                        .meter
                        .used(left.unwrap_or(issued as i64))
                }
                (_, Metering::Engine) => budget.saturating_sub(store.get_fuel().unwrap_or(budget)),
                _ => 0,
            };
            // A call-free check traps below its limit: with the counter past the budget,
            // that was the fuel limit; with the limit raised, the wall clock.
            let outcome = match outcome {
                Err(_) if call_free && used > budget => Err(wasmtime::Error::new(host::OutOfFuel)),
                Err(_) if timed_out => Err(wasmtime::Error::new(host::TimedOut)),
                other => other,
            };
            fuel_here += used;
            let fuel = before + used;
            let memory_hit = store.data().limiter.hit;
            let saved = store.data_mut().checkpoint.saved.take();
            let random = store.data().checkpoint.random_positions();
            drop(store);
            let mut output = current.take().map(|c| c.stdout).unwrap_or_default();
            output.extend_from_slice(&pipes.stdout.contents());
            if output.len() as u64 > limits.max_output_bytes {
                return Err(Failure::new(
                    FailureKind::OutputTooLarge,
                    format!(
                        "stdout exceeded max_output_bytes = {}",
                        limits.max_output_bytes
                    ),
                ));
            }
            // The limit is checked at function entries and loop heads, so the segments after
            // a run's last check can take it past the limit. A unit never uses more than its
            // fuel (a coordinator refuses a claim that states more), so that run ran out of
            // fuel too, on every machine alike (guest.js says the same).
            if fuel > limits.fuel {
                return Err(Failure::new(
                    FailureKind::FuelExhausted,
                    format!(
                        "used all {} fuel{}",
                        limits.fuel,
                        stderr_suffix(&pipes.stderr_tail())
                    ),
                ));
            }
            let exit = match outcome {
                Ok(()) => 0,
                Err(e) => {
                    if let Some(exit) = e.downcast_ref::<I32Exit>() {
                        exit.0
                    } else if let Some(state) =
                        saved.filter(|_| e.downcast_ref::<checkpoint::Saved>().is_some())
                    {
                        segment += 1;
                        let next = Checkpoint {
                            segment,
                            fuel,
                            stdout: output,
                            random,
                            state,
                        };
                        match on_checkpoint(&next) {
                            Proceed::Continue => {
                                current = Some(next);
                                continue;
                            }
                            Proceed::Stop => return Ok(Finished::Stopped(next)),
                        }
                    } else {
                        return Err(classify_error(&e, memory_hit, limits, &pipes.stderr_tail()));
                    }
                }
            };
            if exit != 0 {
                return Err(Failure::new(
                    FailureKind::ExitCode,
                    format!("exit code {exit}{}", stderr_suffix(&pipes.stderr_tail())),
                ));
            }
            return Ok(Finished::Done(Execution {
                digest: Digest::of(&output),
                output,
                fuel,
                fuel_here,
                resumed_from,
                checkpoints: segment,
            }));
        }
    }
}

/// Warnings about a module's determinism pitfalls, read from its imports (nothing is
/// compiled): what `fallow submit` and `fallow run` print before going on. Empty for a
/// module that is not WebAssembly (the compile error says more).
pub fn determinism_warnings(bytes: &[u8]) -> Vec<String> {
    use wasmparser::{Parser, Payload};
    let mut wasi = HashSet::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ImportSection(reader)) => {
                for import in reader.into_imports().flatten() {
                    if import.module == "wasi_snapshot_preview1" {
                        wasi.insert(import.name.to_string());
                    }
                }
            }
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let mut warnings = Vec::new();
    if wasi.contains("clock_time_get") && !wasi.contains("random_get") {
        warnings.push(
            "the module reads the clock (clock_time_get) but never asks for random numbers \
             (random_get): clocks are frozen in the sandbox, so a generator seeded from the time \
             (srand(time(NULL)), a seed from SystemTime) gives every unit the same numbers. Seed \
             it from getentropy() in C or the getrandom crate in Rust: the stream is the same on \
             every worker of a unit and differs between units. Ignore this if the clock is read \
             for another reason."
                .to_string(),
        );
    }
    warnings
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}{}", hints(stderr))
    }
}

/// What to do about messages a guest's language runtime prints when it meets the sandbox's
/// rules, none of which says that the sandbox is why (found by scientists porting programs).
fn hints(stderr: &str) -> String {
    const HINTS: [(&[&str], &str); 2] = [
        (
            // wasi-libc's strerror(ENOTCAPABLE) after fopen; Rust's std::fs, which finds no
            // preopened directory (ENOENT is WASI's errno 44, ENOTCAPABLE 76). The only files
            // are the data files under /data, read-only, so any of these is about that.
            &[
                "Capabilities insufficient",
                "No such file or directory",
                "os error 76",
                "pre-opened file descriptor",
            ],
            "the only files are the project's data files, read-only under /data (the \
             manifest's [data]); read the unit's input from stdin and write the result to \
             stdout (README: the guest ABI)",
        ),
        (
            &["RUST_BACKTRACE"],
            "a guest cannot set environment variables, so there is no backtrace: the panic \
             message above is the reason; reproduce it with `fallow run MODULE.wasm --input \
             FILE`, or run the program natively",
        ),
    ];
    HINTS
        .iter()
        .filter(|(needles, _)| needles.iter().any(|n| stderr.contains(n)))
        .map(|(_, hint)| format!(" (hint: {hint})"))
        .collect()
}

fn classify_error(e: &wasmtime::Error, memory_hit: bool, limits: &Limits, stderr: &str) -> Failure {
    let tail = stderr_suffix(stderr);
    if let Some(too_large) = e.downcast_ref::<checkpoint::TooLarge>() {
        return Failure::new(FailureKind::CheckpointTooLarge, too_large.to_string());
    }
    if memory_hit {
        return Failure::new(
            FailureKind::MemoryExhausted,
            format!(
                "guest tried to grow memory past memory_mb = {}{tail}",
                limits.memory_mb
            ),
        );
    }
    if let Some(trouble) = e.downcast_ref::<host::HostTrouble>() {
        return Failure::new(FailureKind::BadModule, trouble.to_string());
    }
    if e.downcast_ref::<host::OutOfFuel>().is_some() {
        return Failure::new(
            FailureKind::FuelExhausted,
            format!("used all {} fuel{tail}", limits.fuel),
        );
    }
    if e.downcast_ref::<host::TimedOut>().is_some() {
        return Failure::new(
            FailureKind::Timeout,
            format!(
                "still running after wall_seconds = {}{tail}",
                limits.wall_seconds
            ),
        );
    }
    match e.downcast_ref::<Trap>() {
        // Metering::Engine (benchmarks).
        Some(Trap::OutOfFuel) => Failure::new(
            FailureKind::FuelExhausted,
            format!("used all {} fuel{tail}", limits.fuel),
        ),
        Some(Trap::Interrupt) => Failure::new(
            FailureKind::Timeout,
            format!(
                "still running after wall_seconds = {}{tail}",
                limits.wall_seconds
            ),
        ),
        Some(Trap::StackOverflow) => Failure::new(
            FailureKind::StackOverflow,
            format!("wasm stack overflow{tail}"),
        ),
        Some(trap) => Failure::new(FailureKind::Trap, format!("{trap}{tail}")),
        // A host function that refused the guest's arguments (a pointer past the end of
        // its memory, a string that is not UTF-8): the guest's doing, the same on every
        // machine, so a trap like any other. (This used to be reported as `bad_module`,
        // which is neither true nor deterministic; the `abi` fuzz target found it.)
        None => Failure::new(
            FailureKind::Trap,
            format!("a host call refused the guest's arguments: {e:#}{tail}"),
        ),
    }
}

impl Flavour {
    fn new(config: &SandboxConfig, nan_canonicalization: bool) -> Result<Self, Error> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Two memories per instance: the guest's and the fuel meter's limit
        // (`meter::Check::Limit`; guests themselves may have one, `precheck`).
        pool.total_core_instances(config.slots)
            .total_memories(config.slots * 2)
            .total_tables(config.slots)
            .total_stacks(0)
            .total_component_instances(0)
            .max_memories_per_module(2)
            .max_tables_per_module(2)
            .max_memory_size((config.max_memory_mb as usize) << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut c = Config::new();
        // Threads are off because wasmtime is built without its `threads` feature: a module
        // with shared memory or atomics-wait fails validation at submit.
        let engine_metering = config.metering == Metering::Engine;
        c.consume_fuel(engine_metering)
            .epoch_interruption(engine_metering)
            .max_wasm_stack(config.max_wasm_stack)
            // SIMD128 (wasmtime's default, said here because guests are built with it) is
            // deterministic: each lane has one defined result, NaN bits aside, and
            // `cranelift_nan_canonicalization` rewrites vector float results too (f32x4,
            // f64x2; sandbox test `simd_nan_results_are_canonical_when_asked`). Relaxed
            // SIMD leaves results to the hardware, so it stays off: a module using it fails
            // validation at submit.
            .wasm_simd(true)
            .wasm_multi_memory(true)
            .wasm_relaxed_simd(false)
            .cranelift_nan_canonicalization(nan_canonicalization)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        // For profiling guest code: `FALLOW_WASM_PROFILER=jitdump perf record -k 1 ...`, then
        // `perf inject --jit`, shows compiled guest functions by name (`perfmap` for symbols
        // only). Off unless asked for; it changes nothing a guest can observe. jitdump needs
        // wasmtime's `profiling` feature, which only this crate's `jitdump` feature turns on
        // (it keeps Intel's ittapi library out of the release binary); without it, say how to
        // get it rather than pass on wasmtime's "disabled at compile time".
        match std::env::var("FALLOW_WASM_PROFILER").as_deref() {
            Ok("jitdump") if !cfg!(feature = "jitdump") => {
                return Err(Error::Engine(
                    "FALLOW_WASM_PROFILER=jitdump needs a build with `--features \
                     sandbox/jitdump` (BENCHMARKS.md); FALLOW_WASM_PROFILER=perfmap needs none"
                        .into(),
                ));
            }
            Ok("jitdump") => {
                c.profiler(wasmtime::ProfilingStrategy::JitDump);
            }
            Ok("perfmap") => {
                c.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            _ => {}
        }
        let engine = Engine::new(&c).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| Error::Engine(format!("{e:#}")))?;
        Ok(Flavour { engine, linker })
    }
}

#[cfg(test)]
mod tests;
