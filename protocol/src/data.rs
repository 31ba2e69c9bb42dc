//! Project data: files a project's units read under `/data` (the manifest's `[data]`),
//! content-addressed by BLAKE3 and bound into every unit's signature.
//!
//! The submitter's signature over a unit covers [`list_digest`] of the project's data list
//! (name, size and digest of every file), so a worker that checks the signature and then
//! the BLAKE3 of each file it fetched runs the unit on exactly the bytes the submitter
//! published: a coordinator cannot swap a data file any more than it can swap the module.
//!
//! Files travel in chunks of [`CHUNK_BYTES`] (`PutData` up, `GetData` down), because a
//! gRPC message cannot hold a 1 GiB file; the limits below are the documented ones
//! (README, docs/guides.md).

use std::io::Read;
use std::path::Path;

use crate::Digest;

/// Largest data file.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest total of one project's data files.
pub const MAX_PROJECT_BYTES: u64 = 2 << 30;
/// Most data files per project.
pub const MAX_FILES: usize = 32;
/// The chunk size of `PutData` and `GetData`, and of the coordinator's stored chunks.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Where the files appear in the guest.
pub const MOUNT: &str = "/data";

const LIST_CONTEXT: &[u8] = b"fallow/project-data/v1\0";

/// One data file: the name the guest opens it by (`/data/NAME`), its size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataFile {
    /// The file's name under [`MOUNT`] ([`check_name`]).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// BLAKE3 of its bytes.
    pub digest: Digest,
}

/// The digest of a data list that unit signatures cover, `None` for no data (so units of
/// projects without data sign exactly what they signed before data existed). The list is
/// taken in the order given; [`check_list`] requires it sorted by name.
pub fn list_digest(files: &[DataFile]) -> Option<Digest> {
    if files.is_empty() {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update(LIST_CONTEXT);
    h.update(&(files.len() as u64).to_le_bytes());
    for f in files {
        h.update(&(f.name.len() as u64).to_le_bytes());
        h.update(f.name.as_bytes());
        h.update(&f.size.to_le_bytes());
        h.update(&f.digest.0);
    }
    Some(Digest(*h.finalize().as_bytes()))
}

/// A data file's name: 1 to 100 characters of `a-z 0-9 . _ -`, not starting with `.`.
/// Lower case only, so that a guest opening `/data/Table` fails the same way on a worker
/// whose file system ignores case as on one that does not.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "[data]: name {name:?} is not usable under {MOUNT}: use 1 to 100 characters of \
             a-z 0-9 . _ -, not starting with '.' (e.g. `table = \"Table.BIN\"` mounts \
             Table.BIN as {MOUNT}/table)"
        ))
    }
}

/// Checks a project's data list: names valid, sorted and unique, and the documented
/// limits (file count, size per file, total). The message names the limit and the fix.
pub fn check_list(files: &[DataFile]) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!(
            "[data] names {} files, at most {MAX_FILES} per project: pack small files into one \
             (e.g. a tar or SQLite file)",
            files.len()
        ));
    }
    let mut total = 0u64;
    for (i, f) in files.iter().enumerate() {
        check_name(&f.name)?;
        if i > 0 && files[i - 1].name >= f.name {
            return Err(format!(
                "[data]: names must be unique and sorted ({:?} then {:?})",
                files[i - 1].name,
                f.name
            ));
        }
        if f.size > MAX_FILE_BYTES {
            return Err(format!(
                "[data]: {} is {} bytes, over the {MAX_FILE_BYTES}-byte (1 GiB) limit per file: \
                 split it into several files",
                f.name, f.size
            ));
        }
        total = total.saturating_add(f.size);
    }
    if total > MAX_PROJECT_BYTES {
        return Err(format!(
            "[data]: the files total {total} bytes, over the {MAX_PROJECT_BYTES}-byte (2 GiB) \
             limit per project: shrink them or split the project"
        ));
    }
    Ok(())
}

/// Hashes the file at `path` without holding it in memory: its size and digest.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    let mut file = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Digest(*h.finalize().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> DataFile {
        DataFile {
            name: name.into(),
            size,
            digest: Digest::of(name.as_bytes()),
        }
    }

    /// Each limit is enforced and its error names the limit and the fix.
    #[test]
    fn the_documented_limits_are_enforced_naming_the_fix() {
        let check = |files: Vec<DataFile>| match check_list(&files) {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        assert_eq!(check(vec![file("a", 1), file("b", MAX_FILE_BYTES)]), "ok");
        for (files, says) in [
            (vec![file("a", MAX_FILE_BYTES + 1)], "split it"),
            (
                vec![
                    file("a", MAX_FILE_BYTES),
                    file("b", MAX_FILE_BYTES),
                    file("c", 1),
                ],
                "limit per project",
            ),
            (
                (0..=MAX_FILES)
                    .map(|i| file(&format!("f{i:03}"), 1))
                    .collect(),
                "at most 32",
            ),
            (vec![file("b", 1), file("a", 1)], "sorted"),
            (vec![file("a", 1), file("a", 1)], "unique"),
            (vec![file("Table", 1)], "a-z"),
            (vec![file("../x", 1)], "a-z"),
            (vec![file(".hidden", 1)], "not starting"),
        ] {
            let err = check(files);
            assert!(err.contains(says), "{says:?} not in {err:?}");
        }
    }

    /// No data signs as before; any change to a name, size or digest changes the digest.
    #[test]
    fn the_list_digest_covers_every_name_size_and_digest() {
        assert_eq!(list_digest(&[]), None);
        let base = vec![file("a", 1), file("b", 2)];
        let d = list_digest(&base);
        let mut renamed = base.clone();
        renamed[0].name = "c".into();
        let mut resized = base.clone();
        resized[1].size = 3;
        let mut swapped = base.clone();
        swapped[1].digest = Digest([9; 32]);
        for other in [renamed, resized, swapped, base[..1].to_vec()] {
            assert_ne!(list_digest(&other), d);
        }
    }
}
