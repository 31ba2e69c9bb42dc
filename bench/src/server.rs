//! Servers under test run in a process of their own — this same binary, started again with
//! the hidden `--serve` flag — so that their CPU time and resident memory are theirs alone,
//! read from `/proc`, and the load generator's CPU is not counted against them.
//!
//! The coordinator child does what `fallow coordinator` does (`SqliteStore::open`, then
//! `coordinator::serve_with` on a default multi-threaded tokio runtime), minus logging; a
//! deployment's coordinator does what `fallow coordinator --database` does
//! (`crate::deployment::serve_member`). Each stops when its stdin closes, so a benchmark
//! that dies never leaves a server behind.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// What a child process serves.
#[derive(Debug, Clone)]
pub enum Role {
    /// A coordinator on the SQLite store in `data`.
    Coordinator {
        /// Data directory.
        data: PathBuf,
    },
    /// A coordinator of a deployment on the PostgreSQL `database`, as `fallow coordinator
    /// --database` runs it (`crate::deployment`): the first on the database schedules,
    /// every later one is an edge forwarding to it. `edge` says which this one must be.
    Deployment {
        /// The database's `postgres://` URL.
        database: String,
        /// Its own data directory (the deployment's files are copied there).
        data: PathBuf,
        /// Whether another coordinator already schedules the database.
        edge: bool,
    },
    /// The bare tonic echo service (the transport reference).
    Echo,
}

/// Lease given by the benchmark coordinator: long enough that no lease expires between the
/// assignment and certification phases of a measurement.
pub const LEASE_SECONDS: u64 = 600;

/// A running server process.
#[derive(Debug)]
pub struct Server {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A coordinator's submit token ("" for the echo server).
    pub token: String,
}

/// The numeric fields of `/proc/PID/stat` after the parenthesised command name, from the
/// parent's pid on (field 4 of the line is index 1 here; the state letter, index 0, reads
/// as 0), or `None` if the process is gone.
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// The ids of the processes running now, from `/proc` (none if it cannot be read).
pub(crate) fn processes() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// A process's resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now, bytes.
    pub rss: u64,
    /// `VmHWM`: the most it was ever resident, bytes.
    pub peak: u64,
}

impl Server {
    /// Starts `exe --serve ...` and waits for its `listening on ADDR` line.
    pub fn spawn(exe: &Path, role: &Role) -> anyhow::Result<Server> {
        let mut cmd = Command::new(exe);
        let mut token = String::new();
        match role {
            Role::Coordinator { data }
            | Role::Deployment {
                data, edge: false, ..
            } => {
                // Submitting needs a token: minted once per data dir, kept for restarts (a
                // deployment's scheduling coordinator puts it in the database).
                let kept = data.join("bench.token");
                token = match std::fs::read_to_string(&kept) {
                    Ok(t) => t,
                    Err(_) => {
                        let t = coordinator::auth::create(data, "bench")?;
                        std::fs::write(&kept, &t)?;
                        t
                    }
                };
                cmd.arg("--serve").arg(match role {
                    Role::Coordinator { .. } => "coordinator",
                    _ => "deployment",
                });
                cmd.arg("--data").arg(data);
            }
            Role::Deployment { data, .. } => {
                cmd.arg("--serve")
                    .arg("deployment")
                    .arg("--data")
                    .arg(data)
                    .arg("--edge");
            }
            Role::Echo => {
                cmd.arg("--serve").arg("echo");
            }
        }
        if let Role::Deployment { database, .. } = role {
            cmd.arg("--database").arg(database);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("{role:?} server did not start (said {line:?})"))?
            .parse()?;
        Ok(Server { child, addr, token })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's CPU time so far, user plus system, all threads (dead ones included).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let fields = stat_fields(self.child.id()).context("/proc/PID/stat unreadable")?;
        // utime and stime are fields 14 and 15 of the whole line, in clock ticks (USER_HZ,
        // 100 on Linux).
        let ticks = fields.get(11..13).context("/proc/PID/stat format")?;
        Ok(Duration::from_millis(ticks.iter().sum::<u64>() * 10))
    }

    /// The process's resident memory now and at its peak.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .context("/proc/PID/status format")?
                .parse()?;
            Ok(kb * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// Closes its stdin (its stop signal) and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The child side: serves `role` on 127.0.0.1 (a free port), prints `listening on ADDR`,
/// and runs until stdin closes.
pub fn serve(role: Role) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            })
            .await;
        };
        match role {
            Role::Coordinator { data } => {
                let store = coordinator::store::sqlite::SqliteStore::open(&data).await?;
                announce(listener.local_addr()?)?;
                coordinator::serve_with(listener, store, config(data), stop).await?;
            }
            Role::Deployment {
                database,
                data,
                edge,
            } => crate::deployment::serve_member(listener, &database, data, edge, stop).await?,
            Role::Echo => {
                announce(listener.local_addr()?)?;
                crate::load::serve_echo(listener, stop).await?;
            }
        }
        Ok(())
    })
}

/// The benchmark coordinators' configuration, with its data directory.
pub(crate) fn config(data: PathBuf) -> coordinator::CoordinatorConfig {
    coordinator::CoordinatorConfig {
        data_dir: data,
        lease: Duration::from_secs(LEASE_SECONDS),
        // A small fleet's simulated workers each ask far more often than a real worker's
        // few requests a second; the limiter still runs its check.
        worker_requests_per_second: 1_000_000,
        // They lease many units each and certify them later, in a phase of their own.
        limit_unfinished_leases: false,
        ..Default::default()
    }
}

/// Tells the parent where this server listens (its first line on stdout).
pub(crate) fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    Ok(())
}
