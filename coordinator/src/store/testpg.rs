//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary directory, `pg_ctl
//! start` on a free loopback port (its socket in the same directory), stopped and deleted
//! when dropped. No mock: the store's tests and the end-to-end suite run against it (the
//! e2e suite includes this file with `#[path]`, so it uses only std and `tempfile`).
//!
//! As root (`initdb` refuses root) the server runs as the `postgres` user that Debian's
//! `postgresql` package creates, owning the directory. Without PostgreSQL the test fails,
//! naming the package: a test that needs it never passes silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; the user `fallow` may do anything in it (trust authentication,
/// loopback only).
pub struct TestPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Run the server as `postgres` (we are root).
    as_postgres: bool,
}

impl TestPg {
    /// Starts a cluster, or panics saying what is missing.
    pub fn start() -> TestPg {
        TestPg::start_with(None)
    }

    /// [`TestPg::start`] with TLS on (`ssl = on`), serving the PEM certificate chain and
    /// key given; clients may still connect without TLS (`sslmode=disable`).
    #[allow(dead_code)] // the e2e suite, which includes this file, does not use it
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> TestPg {
        TestPg::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> TestPg {
        let bin = bindir().unwrap_or_else(|| {
            panic!(
                "this test needs PostgreSQL's initdb and pg_ctl, which were not found (no \
                 `pg_config --bindir`, nothing in /usr/lib/postgresql/*/bin): install Debian's \
                 `postgresql` package (apt-get install postgresql), or run scripts/test, which does"
            )
        });
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("fallow-pg-")
            .tempdir()
            .expect("tempdir");
        if as_postgres {
            chown_to_postgres(dir.path());
        }
        let data = dir.path().join("data");
        let mut pg = TestPg {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "fallow".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            // PostgreSQL refuses a key others may read, or owned by another user.
            for (name, bytes) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, bytes).expect("write the server's TLS files");
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if pg.as_postgres {
                    chown_to_postgres(&path);
                }
            }
            ssl = " -c ssl=on".into();
        }
        // A port that was free a moment ago may be taken by the time the server binds it
        // (other tests pick ports too): try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -F{ssl}",
                pg.port,
                pg.dir.path().display()
            );
            let log = pg.dir.path().join("server.log");
            let out = pg.output(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "start".as_ref(),
                ],
            );
            if out.status.success() {
                return pg;
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("pg_ctl start failed five times: {last}");
    }

    /// The URL of database `postgres` (made by `initdb`).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `name`.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://fallow@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` (`createdb`); returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "fallow".as_ref(),
                name.as_ref(),
            ],
        );
        self.url_of(name)
    }

    fn output(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Output {
        let path = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let out = self.output(tool, args);
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        // Immediate: the cluster is thrown away, nothing needs to reach the disk.
        let _ = self.output(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// PostgreSQL's programs: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout, where `pg_config` may belong to another package).
fn bindir() -> Option<PathBuf> {
    let has_tools = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&p) {
            return Some(p);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(dir: &Path) {
    let out = Command::new("chown")
        .arg("postgres")
        .arg(dir)
        .output()
        .expect("run chown");
    assert!(
        out.status.success(),
        "running as root, the test cluster runs as the `postgres` user, which Debian's \
         `postgresql` package creates: chown postgres {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
