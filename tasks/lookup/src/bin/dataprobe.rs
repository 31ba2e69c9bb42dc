//! Shows everything a guest can learn about the data mount, one line per fact, so a test
//! can compare two runs over different host directories byte for byte: the listing of
//! `/data` with each entry's metadata, each file's BLAKE3-free checksum (FNV-1a) and size
//! read by `read`, and the outcome of every forbidden operation (write, create, remove,
//! rename, reaching outside with `..` and absolute paths). Exits 0.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::wasi::fs::MetadataExt;

fn main() {
    let mut out = String::new();
    let meta = |m: &fs::Metadata| {
        format!(
            "dev={} ino={} nlink={} size={} file={} dir={} mtim={} atim={} ctim={} ro={}",
            m.dev(),
            m.ino(),
            m.nlink(),
            m.size(),
            m.is_file(),
            m.is_dir(),
            m.mtim(),
            m.atim(),
            m.ctim(),
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
                        let m = e.metadata().map(|m| meta(&m)).unwrap_or_else(|e| e.to_string());
                        out.push_str(&format!("entry {}: {m}\n", path.display()));
                        let mut bytes = Vec::new();
                        let read = fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes));
                        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                        for b in &bytes {
                            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
                        }
                        out.push_str(&format!("  read {read:?} fnv={h:016x}\n"));
                        if let Ok(f) = fs::File::open(&path) {
                            let fm = f.metadata().map(|m| meta(&m)).unwrap_or_else(|e| e.to_string());
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
        out.push_str(&format!("{what}: {}\n", match r {
            Ok(()) => "ALLOWED".to_string(),
            Err(e) => format!("refused ({:?})", e.kind()),
        }));
    };
    if let Some(first) = &first {
        attempt(
            "write",
            OpenOptions::new().write(true).open(first).and_then(|mut f| f.write_all(b"x")),
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
