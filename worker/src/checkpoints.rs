//! Checkpoints of running units on disk, so a unit whose guest uses the checkpoint API
//! survives a crash, a kill -9 or a shutdown of this worker and resumes where it saved.
//!
//! One pair of files per unit in `DATA/checkpoints/`, named by a BLAKE3 key over
//! (coordinator, project, unit, module digest, input digest): `KEY.unit` is the assignment
//! (to resume it without asking the coordinator) and `KEY.ckpt` the latest
//! [`sandbox::Checkpoint`]. Both are written to a temporary file, synced and renamed into
//! place, so a crash leaves the previous checkpoint or the new one, never half of one. The
//! files are deleted when the unit's execution ends, and files older than [`MAX_AGE`]
//! (units that never came back) at start-up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sandbox::Checkpoint;

use crate::Error;
use crate::rpc::Assignment;

/// Checkpoints of units that never came back are deleted after this long (BOINC's default
/// deadline is 7 days; a unit is long gone to others by then).
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The checkpoint directory of one worker.
#[derive(Debug)]
pub struct Checkpoints {
    dir: PathBuf,
}

/// Names one unit's checkpoint files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key of `a` from `coordinator`: every part that makes a checkpoint valid.
    pub fn new(coordinator: &str, a: &Assignment) -> Key {
        let mut h = blake3::Hasher::new_derive_key("fallow worker checkpoint key v1");
        h.update(&(coordinator.len() as u64).to_le_bytes());
        h.update(coordinator.as_bytes());
        h.update(&a.project.0.to_le_bytes());
        h.update(&a.unit.0.to_le_bytes());
        h.update(&a.module.0);
        h.update(blake3::hash(&a.input).as_bytes());
        Key(h.finalize().to_hex()[..32].to_string())
    }
}

impl Checkpoints {
    /// Opens (creating) `dir`, removing leftover temporary files and checkpoints older
    /// than [`MAX_AGE`].
    pub fn open(dir: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = path.extension().is_some_and(|e| e == "tmp")
                || entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > MAX_AGE);
            if stale {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(Checkpoints { dir })
    }

    /// The latest checkpoint of `key`, if there is a readable one. A corrupted one is
    /// deleted (the unit then starts from the beginning) and logged.
    pub fn load(&self, key: &Key) -> Option<Checkpoint> {
        let path = self.path(key, "ckpt");
        let bytes = std::fs::read(&path).ok()?;
        match Checkpoint::decode(&bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "{e}; starting the unit from the beginning");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `checkpoint` as the latest of `key` (and the assignment beside it, once).
    pub fn save(
        &self,
        key: &Key,
        coordinator: &str,
        a: &Assignment,
        checkpoint: &Checkpoint,
    ) -> Result<(), Error> {
        let unit = self.path(key, "unit");
        if !unit.exists() {
            let mut record = Vec::new();
            record.extend_from_slice(&(coordinator.len() as u32).to_le_bytes());
            record.extend_from_slice(coordinator.as_bytes());
            record.extend_from_slice(&crate::rpc::encode_assignment(a));
            write_atomically(&unit, &record)?;
        }
        write_atomically(&self.path(key, "ckpt"), &checkpoint.encode())
    }

    /// Deletes `key`'s files (the unit's execution ended, or it went to someone else).
    pub fn remove(&self, key: &Key) {
        for ext in ["ckpt", "unit"] {
            let _ = std::fs::remove_file(self.path(key, ext));
        }
    }

    /// Units of `coordinator` with a checkpoint on disk, to resume after a restart.
    pub fn pending(&self, coordinator: &str) -> Vec<Assignment> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "unit") {
                continue;
            }
            match read_unit(&path) {
                Some((url, a)) if url == coordinator => {
                    if path.with_extension("ckpt").exists() {
                        out.push(a);
                    }
                }
                Some(_) => {} // another coordinator's
                None => {
                    tracing::warn!(path = %path.display(), "unreadable checkpoint record; deleting it");
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(path.with_extension("ckpt"));
                }
            }
        }
        out.sort_by_key(|a| a.unit);
        out
    }

    fn path(&self, key: &Key, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", key.0))
    }
}

fn read_unit(path: &Path) -> Option<(String, Assignment)> {
    let bytes = std::fs::read(path).ok()?;
    let (len, rest) = bytes.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (url, rest) = rest.split_at_checked(len)?;
    let url = String::from_utf8(url.to_vec()).ok()?;
    Some((url, crate::rpc::decode_assignment(rest).ok()?))
}

/// Writes `bytes` to `path` so that a crash at any moment leaves either the old file or
/// the new one: a temporary file, synced, renamed over the old one, then the directory
/// synced so the rename itself is durable.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all(); // not supported on every platform; the rename is done
    }
    Ok(())
}

/// How often a unit's checkpoints reach the disk: the guest may save far more often than
/// is worth an fsync, so only one checkpoint per `every` is written, except the one a
/// shutdown stops at, which always is. Time is an input.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    /// Writes at most once per `every` (zero: every checkpoint).
    pub fn new(every: Duration) -> Self {
        Throttle { every, last: None }
    }

    /// Whether the checkpoint offered at `now` should be written; `force` for the last one
    /// before stopping.
    pub fn due(&mut self, now: Instant, force: bool) -> bool {
        let due = force
            || self
                .last
                .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Digest, Limits, ProjectId, UnitId};

    fn assignment(unit: u64) -> Assignment {
        Assignment {
            project: ProjectId(1),
            unit: UnitId(unit),
            name: format!("u{unit}"),
            input: b"1 100 10".to_vec(),
            module: Digest::of(b"module"),
            limits: Limits::default(),
            quorum: 2,
            lease: Duration::from_secs(60),
            signed: Some(crate::rpc::Signed {
                signer: protocol::provenance::Signer {
                    key: protocol::SubmitterKey::of(&protocol::Identity::from_seed([5; 32])),
                    terms: Digest::of(b"terms"),
                },
                signature: [7; 64],
            }),
            ticket: Some(protocol::ticket::Ticket {
                expires_ms: 123,
                signature: [8; 64],
            }),
            data: Vec::new(),
        }
    }

    fn checkpoint(segment: u32) -> Checkpoint {
        Checkpoint {
            segment,
            fuel: u64::from(segment) * 1000,
            stdout: Vec::new(),
            random: [0, 0],
            state: vec![segment as u8; 32],
        }
    }

    #[test]
    fn the_latest_checkpoint_survives_a_restart_and_is_gone_when_the_unit_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path().join("checkpoints")).expect("open");
        let (a, b) = (assignment(1), assignment(2));
        let url = "http://127.0.0.1:7070";
        let (ka, kb) = (Key::new(url, &a), Key::new(url, &b));
        assert_ne!(ka, kb);
        assert_ne!(
            ka,
            Key::new("http://elsewhere:7070", &a),
            "keyed by coordinator"
        );
        store.save(&ka, url, &a, &checkpoint(1)).expect("save");
        store.save(&ka, url, &a, &checkpoint(2)).expect("save");
        store.save(&kb, url, &b, &checkpoint(5)).expect("save");
        drop(store);

        let store = Checkpoints::open(dir.path().join("checkpoints")).expect("reopen");
        assert_eq!(store.load(&ka), Some(checkpoint(2)));
        let units: Vec<UnitId> = store.pending(url).iter().map(|a| a.unit).collect();
        assert_eq!(units, vec![UnitId(1), UnitId(2)]);
        assert!(store.pending("http://other:1").is_empty());
        let back = &store.pending(url)[0];
        assert_eq!(
            (back.name.as_str(), &back.input, back.quorum),
            ("u1", &a.input, 2)
        );

        store.remove(&ka);
        assert_eq!(store.load(&ka), None);
        assert_eq!(store.pending(url).len(), 1);
    }

    #[test]
    fn a_corrupted_checkpoint_is_dropped_not_resumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path().to_path_buf()).expect("open");
        let a = assignment(1);
        let key = Key::new("u", &a);
        store.save(&key, "u", &a, &checkpoint(3)).expect("save");
        let path = store.path(&key, "ckpt");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[12] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(store.load(&key), None);
        assert!(!path.exists());
    }

    #[test]
    fn the_throttle_writes_once_per_interval_and_always_when_stopping() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        let at = |s| t0 + Duration::from_secs(s);
        let got: Vec<bool> = [(0, false), (3, false), (9, false), (10, false), (12, true)]
            .into_iter()
            .map(|(s, force)| t.due(at(s), force))
            .collect();
        assert_eq!(got, vec![true, false, false, true, true]);
        let mut every = Throttle::new(Duration::ZERO);
        assert!(every.due(t0, false) && every.due(t0, false));
    }
}
