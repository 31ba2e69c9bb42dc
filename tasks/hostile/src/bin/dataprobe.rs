//! Shows everything a guest can learn about the data mount (`/data`), one line per fact,
//! so a test can compare two runs over different host directories byte for byte: the
//! listing with each entry's metadata (std's and every field of the raw
//! `path_filestat_get`), each file's checksum (FNV-1a) as read, and the outcome of every
//! forbidden operation (write, create, remove, rename, reaching outside with `..` and
//! absolute paths). Exits 0.

// The one raw WASI call below (see `raw_stat`).
#![allow(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::time::SystemTime;

// The raw call, because std shows inode, device and link count only through the unstable
// `std::os::wasi::fs::MetadataExt`.
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn path_filestat_get(
        fd: i32,
        flags: i32,
        path: *const u8,
        path_len: usize,
        buf: *mut u8,
    ) -> i32;
}

/// The first preopen: /data.
const DATA_FD: i32 = 3;

/// Every field of `path_filestat_get` for `path` (relative to /data): dev, ino, filetype,
/// nlink, size, atim, mtim, ctim.
fn raw_stat(path: &str) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is 64 writable bytes, the size of WASI's filestat; `path` is valid
    // for `path.len()` bytes.
    let errno =
        unsafe { path_filestat_get(DATA_FD, 1, path.as_ptr(), path.len(), buf.as_mut_ptr()) };
    if errno != 0 {
        return format!("errno {errno}");
    }
    let u = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(b)
    };
    format!(
        "dev={} ino={} type={} nlink={} size={} atim={} mtim={} ctim={}",
        u(0),
        u(8),
        buf[16],
        u(24),
        u(32),
        u(40),
        u(48),
        u(56)
    )
}

fn secs(t: std::io::Result<SystemTime>) -> String {
    match t {
        Ok(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos().to_string(),
            Err(_) => "before-epoch".into(),
        },
        Err(e) => format!("{:?}", e.kind()),
    }
}

fn main() {
    let mut out = String::new();
    let meta = |m: &fs::Metadata| {
        format!(
            "len={} file={} dir={} modified={} accessed={} created={} ro={}",
            m.len(),
            m.is_file(),
            m.is_dir(),
            secs(m.modified()),
            secs(m.accessed()),
            secs(m.created()),
            m.permissions().readonly()
        )
    };

    match fs::metadata("/data") {
        Ok(m) => out.push_str(&format!("/data: {}\n", meta(&m))),
        Err(e) => out.push_str(&format!("/data: error {e}\n")),
    }
    match fs::read_dir("/data") {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(e) => {
                        let path = e.path();
                        let m = e
                            .metadata()
                            .map(|m| meta(&m))
                            .unwrap_or_else(|e| e.to_string());
                        out.push_str(&format!("entry {}: {m}\n", path.display()));
                        let name = e.file_name().to_string_lossy().into_owned();
                        out.push_str(&format!("  raw {}\n", raw_stat(&name)));
                        let mut bytes = Vec::new();
                        let read =
                            fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes));
                        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                        for b in &bytes {
                            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
                        }
                        out.push_str(&format!("  read {read:?} fnv={h:016x}\n"));
                        if let Ok(f) = fs::File::open(&path) {
                            let fm = f
                                .metadata()
                                .map(|m| meta(&m))
                                .unwrap_or_else(|e| e.to_string());
                            out.push_str(&format!("  fstat {fm}\n"));
                        }
                    }
                    Err(e) => out.push_str(&format!("entry error {e}\n")),
                }
            }
        }
        Err(e) => out.push_str(&format!("read_dir: error {e}\n")),
    }
    let first = fs::read_dir("/data")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    let mut attempt = |what: &str, r: std::io::Result<()>| {
        out.push_str(&format!(
            "{what}: {}\n",
            match r {
                Ok(()) => "ALLOWED".to_string(),
                Err(e) => format!("refused ({:?})", e.kind()),
            }
        ));
    };
    if let Some(first) = &first {
        attempt(
            "write",
            OpenOptions::new()
                .write(true)
                .open(first)
                .and_then(|mut f| f.write_all(b"x")),
        );
        attempt(
            "append",
            OpenOptions::new().append(true).open(first).map(|_| ()),
        );
        attempt("remove", fs::remove_file(first));
        attempt("rename", fs::rename(first, "/data/renamed"));
    }
    attempt("create", fs::write("/data/new", b"x"));
    attempt("mkdir", fs::create_dir("/data/sub"));
    attempt("outside ..", fs::read("/data/../etc/passwd").map(|_| ()));
    attempt("outside /etc", fs::read("/etc/passwd").map(|_| ()));
    attempt("outside /", fs::read_dir("/").map(|_| ()));
    print!("{out}");
}
