//! Project data files (`[data]`), kept content-addressed under `<data>/data/` and mounted
//! read-only at `/data` for the units of their project.
//!
//! Each file is fetched once per worker (`GetData`, resumed from the bytes already on disk
//! after an interrupted download), checked against the BLAKE3 digest the submitter signed,
//! and kept as `blobs/<digest>`, surviving restarts. A unit gets a directory of its own
//! under `mounts/` holding hard links named as the project names them (a copy where the
//! file system has no hard links), removed when the unit ends, so the sandbox sees exactly
//! the project's files and nothing else. The blobs stay under `disk_cache_mb`: before a
//! fetch the least recently used blobs no running unit uses go (in practice those of
//! finished projects); a project whose files alone are bigger than the cap fails its units
//! with [`Error::DataTooLarge`], which names the fix, instead of waiting for room.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::Digest;
use protocol::data::DataFile;
use sandbox::DataMount;

use crate::Error;
use crate::rpc::CoordinatorClient;

/// Attempts of one download, each resuming where the last stopped.
const ATTEMPTS: u32 = 3;

/// The worker's data file store.
#[derive(Debug)]
pub struct DataCache {
    blobs: PathBuf,
    mounts: PathBuf,
    /// Size cap of `blobs` in bytes (`disk_cache_mb`), changed live by the preferences.
    cap: Arc<AtomicU64>,
    /// One download per digest at a time.
    turns: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs in use by running units (count per digest): never evicted.
    pinned: Arc<Mutex<HashMap<Digest, usize>>>,
}

/// A unit's mounted data: the mount, and the pins and directory it holds until dropped.
#[derive(Debug)]
pub struct Mounted {
    /// What the sandbox mounts.
    pub mount: DataMount,
    dir: PathBuf,
    digests: Vec<Digest>,
    pinned: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut pinned = lock(&self.pinned);
        for d in &self.digests {
            if let Some(n) = pinned.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pinned.remove(d);
                }
            }
        }
    }
}

static MOUNT_SEQ: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single map operations: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataCache {
    /// Data kept under `dir` (`blobs/` and `mounts/`), at most `cap` bytes of blobs. Mounts
    /// left by a worker that stopped mid-unit are removed.
    pub fn new(dir: &Path, cap: Arc<AtomicU64>) -> Self {
        let mounts = dir.join("mounts");
        let _ = std::fs::remove_dir_all(&mounts);
        DataCache {
            blobs: dir.join("blobs"),
            mounts,
            cap,
            turns: Mutex::new(HashMap::new()),
            pinned: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The project's files, fetched if needed, mounted for one unit. `None` for a project
    /// without data.
    pub async fn mount(
        &self,
        client: &CoordinatorClient,
        files: &[DataFile],
    ) -> Result<Option<Mounted>, Error> {
        if files.is_empty() {
            return Ok(None);
        }
        let cap = self.cap.load(Ordering::Relaxed);
        let total: u64 = files.iter().map(|f| f.size).sum();
        if let Some(big) = files.iter().find(|f| f.size > cap) {
            return Err(Error::DataTooLarge(format!(
                "data file {} is {} MiB, more than this worker's disk_cache_mb ({} MiB): raise \
                 disk_cache_mb on the workers that should run it, or split the file",
                big.name,
                big.size.div_ceil(1 << 20),
                cap >> 20
            )));
        }
        if total > cap {
            return Err(Error::DataTooLarge(format!(
                "the project's data files total {} MiB, more than this worker's disk_cache_mb \
                 ({} MiB): raise disk_cache_mb on the workers that should run it",
                total.div_ceil(1 << 20),
                cap >> 20
            )));
        }
        // Pinned first, so a concurrent eviction never takes a file this unit is about to use.
        let digests: Vec<Digest> = files.iter().map(|f| f.digest).collect();
        {
            let mut pinned = lock(&self.pinned);
            for d in &digests {
                *pinned.entry(*d).or_default() += 1;
            }
        }
        let dir = self.mounts.join(format!(
            "{}-{}",
            std::process::id(),
            MOUNT_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mounted = Mounted {
            mount: DataMount::new(&dir, files.iter().map(|f| f.name.clone()).collect()),
            dir: dir.clone(),
            digests,
            pinned: self.pinned.clone(),
        };
        for f in files {
            self.ensure(client, f).await?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for f in files {
            let blob = self.blob(f.digest);
            let link = dir.join(&f.name);
            if std::fs::hard_link(&blob, &link).is_err() {
                std::fs::copy(&blob, &link).map_err(|e| Error::io(&link, e))?;
            }
        }
        Ok(Some(mounted))
    }

    fn blob(&self, digest: Digest) -> PathBuf {
        self.blobs.join(digest.to_hex())
    }

    /// Makes sure `f`'s blob is on disk and whole, fetching it once however many units ask.
    async fn ensure(&self, client: &CoordinatorClient, f: &DataFile) -> Result<(), Error> {
        let turn = lock(&self.turns).entry(f.digest).or_default().clone();
        let result = {
            let _mine = turn.lock().await;
            self.ensure_locked(client, f).await
        };
        let mut turns = lock(&self.turns);
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(&f.digest);
        }
        result
    }

    async fn ensure_locked(&self, client: &CoordinatorClient, f: &DataFile) -> Result<(), Error> {
        let blob = self.blob(f.digest);
        if let Ok(m) = std::fs::metadata(&blob)
            && m.len() == f.size
        {
            // Verified when it was fetched; last use, for least-recently-used eviction.
            if let Ok(file) = std::fs::File::options().append(true).open(&blob) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
            return Ok(());
        }
        std::fs::create_dir_all(&self.blobs).map_err(|e| Error::io(&self.blobs, e))?;
        let cap = self.cap.load(Ordering::Relaxed);
        let pinned: Vec<Digest> = lock(&self.pinned).keys().copied().collect();
        let blobs = self.blobs.clone();
        let need = f.size;
        let _ =
            tokio::task::spawn_blocking(move || evict(&blobs, cap.saturating_sub(need), &pinned))
                .await;
        let part = self.blobs.join(format!("{}.part", f.digest.to_hex()));
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if have >= f.size {
                break;
            }
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .await
                .map_err(|e| Error::io(&part, e))?;
            match client.data(f.digest, have, &mut out).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %f.name, attempt, "data download interrupted ({e}); resuming");
                    last = Some(e);
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let check = part.clone();
        let (size, digest) = tokio::task::spawn_blocking(move || protocol::data::hash_file(&check))
            .await
            .map_err(|e| Error::Local(format!("hashing panicked: {e}")))?
            .map_err(|e| Error::io(&part, e))?;
        if size != f.size || digest != f.digest {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Local(format!(
                "the coordinator sent data file {} as {size} bytes hashing to {digest}, not the \
                 {} bytes hashing to {} that the submitter signed; refetching later",
                f.name, f.size, f.digest
            )));
        }
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        tracing::info!(file = %f.name, digest = %f.digest, bytes = f.size, "data file fetched and verified");
        Ok(())
    }
}

/// Deletes the least recently used blobs in `dir` (never a pinned one) until the rest add
/// up to at most `cap` bytes. Returns the files deleted.
fn evict(dir: &Path, cap: u64, pinned: &[Digest]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let pinned: Vec<String> = pinned.iter().map(|d| d.to_hex()).collect();
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf, bool)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(".part").to_string();
            Some((
                m.modified().ok()?,
                m.len(),
                e.path(),
                pinned.contains(&stem),
            ))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut deleted = 0;
    for (_, len, path, pinned) in files {
        if total <= cap {
            break;
        }
        if !pinned && std::fs::remove_file(&path).is_ok() {
            total -= len;
            deleted += 1;
            tracing::info!(file = %path.display(), "data cache over disk_cache_mb: evicted");
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Oldest unpinned blobs go first; a pinned blob stays even when it is the oldest.
    #[test]
    fn eviction_takes_the_least_recently_used_unpinned_blobs() {
        let dir = tempfile::tempdir().expect("tmp");
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let digests: Vec<Digest> = (0..3u8).map(|i| Digest([i; 32])).collect();
        for (i, d) in digests.iter().enumerate() {
            let p = dir.path().join(d.to_hex());
            std::fs::write(&p, vec![0u8; 100]).expect("write");
            let f = std::fs::File::options()
                .append(true)
                .open(&p)
                .expect("open");
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .expect("mtime");
        }
        // Room for one: the oldest (0) is pinned by a running unit, so 1 and 2 go.
        assert_eq!(evict(dir.path(), 100, &[digests[0]]), 2);
        assert!(dir.path().join(digests[0].to_hex()).exists());
        assert_eq!(evict(dir.path(), 100, &[digests[0]]), 0);
        assert_eq!(evict(dir.path(), 0, &[]), 1);
    }
}
