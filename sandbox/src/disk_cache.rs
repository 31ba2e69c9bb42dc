//! Compiled modules kept on disk, so that a restarted worker does not compile its modules
//! again (Cranelift takes ~180 ms of CPU for the demo's module; loading it back takes a
//! few milliseconds, BENCHMARKS.md).
//!
//! Machine code read from a file runs with the worker's rights, so a file is loaded only
//! if this worker wrote it: each entry carries a BLAKE3 keyed hash (a MAC) under a random
//! 32-byte key that only this cache holds (`compiled.key` in the directory, created mode
//! 0600 and replaced if anyone else may read or write it). The MAC covers the engine's
//! configuration (wasmtime's `precompile_compatibility_hash`, the profiler setting), the
//! module's digest, the flavour (NaN canonicalization) and every byte of the serialized
//! module. An entry that fails the check — corrupt, truncated, written under another key
//! or for another engine — is never deserialized: it is deleted with a log line and the
//! module is compiled from its wasm as if nothing had been cached. So this cache never
//! runs code compiled by anyone else, and it is only a cache: every failure to read or
//! write it costs a compilation, never an execution.
//!
//! Entries are `<digest>-<p|n>.cwasm` files beside the worker's `.wasm` files; the worker
//! bounds the directory as a whole by its `disk_cache_mb` (least recently used first; a
//! hit refreshes the file's modification time).
//!
//! This is the crate's one `unsafe` block ([`DiskCache::load`]): wasmtime's
//! `Module::deserialize` trusts its input.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::Digest;
use wasmtime::{Engine, Module};

/// File-format tag and version: a layout change makes old entries fail the check.
const MAGIC: &[u8; 8] = b"FLWCM\x00\x00\x01";
/// Bytes before the serialized module: the tag and the MAC.
const HEADER: usize = MAGIC.len() + blake3::OUT_LEN;
/// Domain separation for the MAC.
const CONTEXT: &[u8] = b"fallow sandbox compiled module v1";
/// The key's file name inside the cache directory.
pub const KEY_FILE: &str = "compiled.key";
/// Compiled entries end with this.
pub const EXTENSION: &str = "cwasm";

/// How the on-disk cache has fared since the sandbox started (tests and logs read it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCacheStats {
    /// Modules loaded from disk instead of compiled.
    pub hits: u64,
    /// Modules not on disk (compiled, then written).
    pub misses: u64,
    /// Entries that failed the check or did not load (deleted, then recompiled).
    pub rejected: u64,
    /// Entries written.
    pub written: u64,
}

/// The directory and its key.
pub(crate) struct DiskCache {
    dir: PathBuf,
    key: [u8; 32],
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    written: AtomicU64,
}

/// Distinguishes the temporary files of concurrent writers.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Opens (creating) the cache in `dir` and its key.
    pub(crate) fn open(dir: &Path) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            key,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> DiskCacheStats {
        DiskCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
        }
    }

    /// Where the entry for `digest` in this flavour lives.
    pub(crate) fn path(&self, digest: Digest, nan_canonicalization: bool) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.{EXTENSION}",
            digest.to_hex(),
            if nan_canonicalization { "n" } else { "p" }
        ))
    }

    /// The MAC of one entry: everything that decides what the machine code is.
    fn mac(
        &self,
        engine: &Engine,
        digest: Digest,
        nan_canonicalization: bool,
        serialized: &[u8],
    ) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(CONTEXT);
        h.update(&engine_fingerprint(engine));
        // The code is the module as rewritten by the fuel meter: an entry compiled under
        // other metering rules is not this module's code any more.
        h.update(&crate::meter::VERSION.to_le_bytes());
        h.update(&crate::meter::CODE_VERSION.to_le_bytes());
        h.update(&digest.0);
        h.update(&[u8::from(nan_canonicalization)]);
        h.update(&(serialized.len() as u64).to_le_bytes());
        h.update(serialized);
        h.finalize()
    }

    /// The module for `digest` compiled by this cache's owner earlier, if a valid entry
    /// exists. An entry that fails the check is deleted and `None` returned.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        digest: Digest,
        nan_canonicalization: bool,
    ) -> Option<Module> {
        let path = self.path(digest, nan_canonicalization);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), "cannot read the compiled module ({e}): compiling it again");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let checked = bytes.len() >= HEADER && bytes[..MAGIC.len()] == MAGIC[..] && {
            let (mac, serialized) = bytes[MAGIC.len()..].split_at(blake3::OUT_LEN);
            // `blake3::Hash`'s equality is constant-time.
            blake3::Hash::from_slice(mac)
                .is_ok_and(|mac| mac == self.mac(engine, digest, nan_canonicalization, serialized))
        };
        if !checked {
            self.reject(
                &path,
                "it fails the check (corrupt, or not written by this worker)",
            );
            return None;
        }
        match deserialize(engine, &bytes[HEADER..]) {
            Ok(module) => {
                // Last use, for the worker's least-recently-used eviction.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(module)
            }
            Err(e) => {
                self.reject(&path, &format!("wasmtime refuses it ({e:#})"));
                None
            }
        }
    }

    fn reject(&self, path: &Path, why: &str) {
        tracing::warn!(file = %path.display(), "compiled module not loaded: {why}; deleted, compiling it again");
        let _ = std::fs::remove_file(path);
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `module` as the entry for `digest` (atomically: a temporary file, then a
    /// rename). A failure is logged; the module is in memory either way.
    pub(crate) fn store(&self, module: &Module, digest: Digest, nan_canonicalization: bool) {
        let path = self.path(digest, nan_canonicalization);
        let written = module
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|serialized| {
                let mac = self.mac(module.engine(), digest, nan_canonicalization, &serialized);
                let mut file = Vec::with_capacity(HEADER + serialized.len());
                file.extend_from_slice(MAGIC);
                file.extend_from_slice(mac.as_bytes());
                file.extend_from_slice(&serialized);
                let tmp = path.with_extension(format!(
                    "{}-{}.tmp",
                    std::process::id(),
                    TMP_SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                let result =
                    std::fs::write(&tmp, &file).and_then(|()| std::fs::rename(&tmp, &path));
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result.map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot keep the compiled module on disk ({e})");
            }
        }
    }
}

/// Deserializes bytes that [`DiskCache::load`] has just authenticated.
///
/// # Safety
/// `Module::deserialize` runs whatever machine code its input holds. It is called only on
/// bytes whose MAC, under a key that never leaves this worker's cache directory (mode
/// 0600), checked out: bytes this worker's own `Module::serialize` wrote for an engine
/// configured the same way. Wasmtime itself refuses (with an error, safely) output of
/// another wasmtime version or an incompatible configuration.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, authenticated: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: see the function's doc: only authenticated output of `Module::serialize`.
    unsafe { Module::deserialize(engine, authenticated) }
}

/// 32 bytes naming the engine's code-generation settings, stable for one build of the
/// worker (wasmtime's compatibility hash, fed to BLAKE3 rather than to `DefaultHasher`,
/// whose output may change between Rust releases), plus the profiler setting.
fn engine_fingerprint(engine: &Engine) -> [u8; 32] {
    use std::hash::Hash;
    struct Blake3Hasher(blake3::Hasher);
    impl std::hash::Hasher for Blake3Hasher {
        fn finish(&self) -> u64 {
            0 // unused: the whole state is read through `finalize` below
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let profiler = std::env::var("FALLOW_WASM_PROFILER").unwrap_or_default();
    h.0.update(profiler.as_bytes());
    *h.0.finalize().as_bytes()
}

/// Reads the key at `path`, or makes a new one there (mode 0600) when it is missing, the
/// wrong size, or readable or writable by anyone but its owner (then entries written
/// under the old key fail the check and are compiled again).
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.is_file()
        && private(&meta)
        && let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| std::io::Error::other(format!("no OS random source: {e}")))?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &key).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| key)
}

/// Whether only the file's owner may read or write it.
#[cfg(unix)]
fn private(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 == 0
}

#[cfg(not(unix))]
fn private(_meta: &std::fs::Metadata) -> bool {
    true
}
