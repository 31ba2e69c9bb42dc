//! Project modules by BLAKE3 digest: fetched from the coordinator once, kept as `.wasm` in
//! `<data>/modules/`, compiled here (never accepting precompiled code from anyone) and kept
//! compiled in the sandbox's cache, in memory and — as `.cwasm` files beside the `.wasm`
//! ones, authenticated with a key only this worker holds (`sandbox::Sandbox::set_disk_cache`)
//! — on disk, so that a restart does not compile them again. The directory stays under
//! `disk_cache_mb`, both kinds counted: past it the least recently used files go (a module
//! in use is recompiled from memory, and fetched again if ever needed).
//!
//! Each module is prepared once however many cores (and prefetched units) ask at the same
//! time: the first asker fetches and compiles, the others wait for it and find it compiled.
//! The disk cache is only a cache: when writing it fails (a full or read-only disk) the
//! module is compiled from the bytes already in memory. So [`Error::Module`] from here
//! always means the module itself does not compile; every other error is this worker's
//! (or the network's) trouble, and the caller hands the unit back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::Digest;
use sandbox::{Compiled, Sandbox};

use crate::Error;
use crate::rpc::CoordinatorClient;

/// The worker's module store.
#[derive(Debug)]
pub struct Modules {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    /// Size cap of `dir` in bytes, changed live by the preferences.
    cap: Arc<AtomicU64>,
    /// One preparation per digest at a time: the turn every asker of that digest waits
    /// for (removed when nobody waits any more).
    turns: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Distinguishes the temporary files of concurrent writers (two attachments of one
/// worker may share the directory).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Modules {
    /// Modules kept under `dir`, at most `cap` bytes of them.
    pub fn new(dir: PathBuf, sandbox: Arc<Sandbox>, cap: Arc<AtomicU64>) -> Self {
        Modules {
            dir,
            sandbox,
            cap,
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled module for `digest`, fetching and compiling it if needed. Concurrent
    /// calls for one digest fetch and compile it once.
    pub async fn get(
        &self,
        client: &CoordinatorClient,
        digest: Digest,
        nan: bool,
    ) -> Result<Compiled, Error> {
        let turn = self.lock_turns().entry(digest).or_default().clone();
        let result = {
            let _mine = turn.lock().await;
            self.prepare(client, digest, nan).await
        };
        let mut turns = self.lock_turns();
        // The map's reference and ours: nobody else waits for this digest.
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(&digest);
        }
        result
    }

    fn lock_turns(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<tokio::sync::Mutex<()>>>> {
        // Single map operations: a poisoned lock is still consistent.
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn prepare(
        &self,
        client: &CoordinatorClient,
        digest: Digest,
        nan: bool,
    ) -> Result<Compiled, Error> {
        // Compiled by an earlier asker: the empty bytes are never looked at on a cache hit.
        if self.sandbox.is_cached(digest, nan)
            && let Ok(compiled) = self.sandbox.compile(digest, &[], nan)
        {
            return Ok(compiled);
        }
        let path = self.dir.join(format!("{}.wasm", digest.to_hex()));
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) if Digest::of(&bytes) == digest => {
                // Last use, for least-recently-used eviction.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                bytes
            }
            _ => {
                let bytes = client.module(digest).await?;
                if Digest::of(&bytes) != digest {
                    return Err(Error::Local(format!(
                        "the coordinator sent module bytes that do not hash to {digest}"
                    )));
                }
                if let Err(e) = self.store(&path, &bytes).await {
                    tracing::warn!(module = %digest, "cannot keep the module in the disk cache ({e}); compiling it from memory");
                }
                bytes
            }
        };
        let sandbox = self.sandbox.clone();
        // Compilation takes tens of milliseconds of CPU: not on the async threads.
        let compiled = tokio::task::spawn_blocking(move || sandbox.compile(digest, &bytes, nan))
            .await
            .map_err(|e| Error::Module(format!("compiler panicked: {e}")))?
            .map_err(|e| Error::Module(e.to_string()))?;
        // The compiled module may have just been written beside the wasm: trim again.
        if let Some(compiled_path) = self.sandbox.disk_cache_path(digest, nan) {
            let (dir, cap) = (self.dir.clone(), self.cap.load(Ordering::Relaxed));
            let _ =
                tokio::task::spawn_blocking(move || evict(&dir, cap, &[path, compiled_path])).await;
        }
        Ok(compiled)
    }

    /// Writes `bytes` to `path` atomically (a temporary file of this writer's own, then a
    /// rename), then trims the cache to its cap.
    async fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| Error::io(&self.dir, e))?;
        let tmp = path.with_extension(format!(
            "{}-{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = match tokio::fs::write(&tmp, bytes).await {
            Ok(()) => tokio::fs::rename(&tmp, path).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::io(path, e));
        }
        let (dir, cap) = (self.dir.clone(), self.cap.load(Ordering::Relaxed));
        let keep = [path.to_path_buf()];
        let _ = tokio::task::spawn_blocking(move || evict(&dir, cap, &keep)).await;
        Ok(())
    }
}

/// Deletes the least recently used `.wasm` and compiled `.cwasm` files in `dir` (never
/// those in `keep`) until the rest add up to at most `cap` bytes. Returns the files
/// deleted.
fn evict(dir: &Path, cap: u64, keep: &[PathBuf]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "wasm" || x == sandbox::COMPILED_EXTENSION)
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut deleted = 0;
    for (_, len, path) in files {
        if total <= cap {
            break;
        }
        if !keep.contains(&path) && std::fs::remove_file(&path).is_ok() {
            total -= len;
            deleted += 1;
            tracing::debug!(file = %path.display(), "module cache over disk_cache_mb: evicted");
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_cache_under_its_cap_oldest_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        // Modules and compiled modules count alike; the compiled cache's key is no entry.
        for (i, name) in ["a.wasm", "b.cwasm", "c.wasm"].iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).expect("write");
            let f = std::fs::File::options()
                .append(true)
                .open(&p)
                .expect("open");
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .expect("mtime");
        }
        std::fs::write(dir.path().join("compiled.key"), [0u8; 32]).expect("key");
        let keep = [dir.path().join("a.wasm")]; // the oldest, but just fetched
        assert_eq!(evict(dir.path(), 150, &keep), 2);
        assert!(keep[0].exists() && dir.path().join("compiled.key").exists());
        assert!(!dir.path().join("b.cwasm").exists() && !dir.path().join("c.wasm").exists());
        assert_eq!(evict(dir.path(), 150, &keep), 0);
    }
}
