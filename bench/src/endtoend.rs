//! Figure 4, end to end: the fraction of a worker's CPU time spent running guest code, over
//! the demo's Mandelbrot project and over the same picture cut into fewer, longer units.
//!
//! Everything runs as it would across machines, each part in a process of its own: a
//! coordinator (`--serve coordinator`) and two workers (`--serve worker`: `worker::run`
//! with one core each, the demo's preferences and a pinned submitter key), all on
//! loopback. The project is the demo's — 128-pixel tiles of a 1024x768 Mandelbrot at 1,500
//! iterations, replication 2 and quorum 2 — except that adaptive replication is off, so
//! both workers run every tile and every run does the same work. When the project is
//! finished, each worker prints its whole process's CPU time (user + system, from the
//! start of the process: registration, module download, compilation, gRPC, gossip,
//! signatures, SQLite-free bookkeeping, the runtime) and the CPU time its guest threads
//! spent in `Sandbox::run` (`worker::guest_cpu_time`: instantiation, guest code, output).
//! The figure is the second over the first, summed over both workers.
//!
//! What bounds it is the split into a fixed cost per worker (compiling the module, measured
//! here on its own) and a cost per unit (lease, commit–reveal, certificate), against the
//! guest's time per unit: the longer-unit variants show how the share moves with it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::manifest::ProjectSpec;
use protocol::{Identity, Limits, SubmitterKey};
use tokio_util::sync::CancellationToken;

use crate::load;
use crate::server::{Role, Server};
use crate::{Row, Size};

/// Goal of figure 4: at least this share of worker CPU in guest code.
const GOAL_SHARE: f64 = 0.90;
/// Worker processes (one core each): the demo's replication.
const WORKERS: usize = 2;
/// The demo's iteration cap (`fallow demo`).
const DEMO_ITER: u32 = 1500;

/// One project: a `width` x 3/4 `width` Mandelbrot in `tile`-pixel tiles.
#[derive(Debug, Clone, Copy)]
struct Variant {
    width: u32,
    tile: u32,
    /// Runs; the figure is the median share.
    runs: usize,
}

impl Variant {
    fn height(self) -> u32 {
        self.width * 3 / 4
    }

    fn tiles(self) -> usize {
        (self.width.div_ceil(self.tile) * self.height().div_ceil(self.tile)) as usize
    }

    fn spec(self) -> ProjectSpec {
        let (width, height, tile) = (self.width, self.height(), self.tile);
        let mut units = Vec::new();
        for (row, y) in (0..height).step_by(tile as usize).enumerate() {
            for (col, x) in (0..width).step_by(tile as usize).enumerate() {
                let (w, h) = (tile.min(width - x), tile.min(height - y));
                units.push((
                    format!("tile-{row:03}-{col:03}"),
                    format!("{x} {y} {w} {h} {width} {height} {DEMO_ITER}\n").into_bytes(),
                ));
            }
        }
        ProjectSpec {
            name: format!("mandelbrot {width}x{height} in {tile}-pixel tiles"),
            module: artifacts::MANDELBROT.to_vec(),
            reducer: None,
            replication: WORKERS as u32,
            quorum: WORKERS as u32,
            max_replicas: WORKERS as u32 + 3,
            adaptive: false,
            error_bound: protocol::manifest::DEFAULT_ERROR_BOUND,
            // The demo's manifest.
            limits: Limits {
                fuel: 50_000_000_000,
                memory_mb: 64,
                wall_seconds: 120,
                max_output_bytes: 1 << 20,
                ..Limits::default()
            },
            units,
            manifest: String::new(),
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        }
    }
}

/// What one run measured, both workers together.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Worker processes' CPU time.
    worker_cpu: Duration,
    /// Their guest threads' CPU time in `Sandbox::run`.
    guest_cpu: Duration,
    /// Executions of the project (every one on a worker measured here).
    executions: u64,
    /// Wall time from submission to the project's end.
    wall: Duration,
}

impl Measured {
    fn share(&self) -> f64 {
        self.guest_cpu.as_secs_f64() / self.worker_cpu.as_secs_f64().max(1e-9)
    }
}

/// The figure's rows.
pub fn rows(exe: &Path, size: Size) -> anyhow::Result<Vec<Row>> {
    let compile = compile_cpu()?;
    let demo = Variant {
        width: if size == Size::Quick { 256 } else { 1024 },
        tile: 128,
        runs: if size == Size::Quick { 1 } else { 3 },
    };
    let mut variants = vec![demo];
    if size == Size::Full {
        // The same picture region, fewer and longer units: 4x and 16x the pixels per tile.
        variants.push(Variant {
            width: 2048,
            tile: 256,
            runs: 1,
        });
        variants.push(Variant {
            width: 4096,
            tile: 512,
            runs: 1,
        });
    }
    let mut rows = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let mut runs = Vec::new();
        for _ in 0..v.runs {
            runs.push(run(exe, *v)?);
        }
        runs.sort_by(|a, b| a.share().total_cmp(&b.share()));
        let m = runs[runs.len() / 2];
        let per_worker = m.executions as f64 / WORKERS as f64;
        let guest_ms = m.guest_cpu.as_secs_f64() * 1e3 / m.executions.max(1) as f64;
        // What is left once compilation is taken out, per execution.
        let other_ms = (m.worker_cpu.as_secs_f64()
            - m.guest_cpu.as_secs_f64()
            - WORKERS as f64 * compile.as_secs_f64())
            * 1e3
            / m.executions.max(1) as f64;
        let spread = if runs.len() > 1 {
            format!(
                "; {} runs, {:.1}–{:.1} %",
                runs.len(),
                100.0 * runs[0].share(),
                100.0 * runs[runs.len() - 1].share()
            )
        } else {
            String::new()
        };
        let what = if i == 0 {
            format!(
                "end to end: guest share of worker CPU, the demo project ({} tiles of {} px, {}x{}, replication 2; {WORKERS} worker processes)",
                v.tiles(),
                v.tile,
                v.width,
                v.height()
            )
        } else {
            format!(
                "  … same picture region in {} tiles of {} px ({}x{}, {}x the pixels per tile)",
                v.tiles(),
                v.tile,
                v.width,
                v.height(),
                (v.tile / demo.tile).pow(2)
            )
        };
        rows.push(Row {
            figure: what,
            measured: format!(
                "{:.1} % ({:.2} s of {:.2} s; {guest_ms:.1} ms guest per execution, {per_worker:.0} per worker, {:.1} s wall{spread})",
                100.0 * m.share(),
                m.guest_cpu.as_secs_f64(),
                m.worker_cpu.as_secs_f64(),
                m.wall.as_secs_f64()
            ),
            reference: format!(
                "compiling the module: {:.0} ms CPU per worker; the rest: {other_ms:.1} ms per execution",
                compile.as_secs_f64() * 1e3
            ),
            ratio: None,
            goal: if i == 0 {
                format!("≥ {:.0} %", GOAL_SHARE * 100.0)
            } else {
                "diagnostic".into()
            },
            met: (i == 0).then_some(m.share() >= GOAL_SHARE),
        });
    }
    Ok(rows)
}

/// CPU time of one compilation of the Mandelbrot module with production settings (median
/// of 3), as each worker does once per project.
fn compile_cpu() -> anyhow::Result<Duration> {
    let digest = protocol::Digest::of(artifacts::MANDELBROT);
    let mut samples = Vec::new();
    for _ in 0..3 {
        // A fresh sandbox each time: a sandbox keeps what it compiled.
        let sandbox = sandbox::Sandbox::new(sandbox::SandboxConfig::default())?;
        let started = cpu_time::ProcessTime::now();
        let compiled = sandbox.compile(digest, artifacts::MANDELBROT, false)?;
        samples.push(started.elapsed());
        drop(compiled);
    }
    Ok(crate::median(samples))
}

/// One run of `variant` on a fresh coordinator and fresh workers.
fn run(exe: &Path, variant: Variant) -> anyhow::Result<Measured> {
    let dir = tempfile::Builder::new()
        .prefix("fallow-bench-e2e-")
        .tempdir()?;
    let coordinator = Server::spawn(
        exe,
        &Role::Coordinator {
            data: dir.path().join("coordinator"),
        },
    )?;
    let url = format!("http://{}", coordinator.addr);
    let submitter = Identity::generate()?;
    let key = SubmitterKey::of(&submitter).to_string();
    let mut workers = (0..WORKERS)
        .map(|i| WorkerProcess::spawn(exe, &url, &dir.path().join(format!("worker-{i}")), i, &key))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut spec = variant.spec();
    spec.sign(&submitter);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (executions, wall) = rt.block_on(submit_and_wait(
        &url,
        &coordinator.token,
        spec,
        &mut workers,
    ))?;
    let (mut worker_cpu, mut guest_cpu) = (Duration::ZERO, Duration::ZERO);
    for w in workers.drain(..) {
        let (cpu, guest) = w.finish()?;
        worker_cpu += cpu;
        guest_cpu += guest;
    }
    coordinator.stop()?;
    Ok(Measured {
        worker_cpu,
        guest_cpu,
        executions,
        wall,
    })
}

/// Submits `spec`, waits until every unit is verified, and returns the executions it took
/// and the time from submission.
async fn submit_and_wait(
    url: &str,
    token: &str,
    spec: ProjectSpec,
    workers: &mut [WorkerProcess],
) -> anyhow::Result<(u64, Duration)> {
    let total = spec.units.len() as u64;
    let mut client = load::coordinator(url).await?;
    let started = Instant::now();
    let project = load::submit(&mut client, token, spec).await?;
    loop {
        let status = load::progress(&mut client, project).await?;
        if status.finished {
            if status.verified != total {
                bail!(
                    "the project ended with {} of {total} units verified ({} failed)",
                    status.verified,
                    status.failed
                );
            }
            return Ok((status.executions, started.elapsed()));
        }
        for w in workers.iter_mut() {
            if let Some(exit) = w.child.try_wait()? {
                bail!("a worker process stopped early ({exit})");
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the project is not done after 600 s ({} of {total} verified)",
                status.verified
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker in a process of its own (`exe --serve worker`).
struct WorkerProcess {
    child: std::process::Child,
}

impl WorkerProcess {
    fn spawn(
        exe: &Path,
        url: &str,
        data: &Path,
        i: usize,
        submitter: &str,
    ) -> anyhow::Result<Self> {
        let child = Command::new(exe)
            .arg("--serve")
            .arg("worker")
            .arg("--data")
            .arg(data)
            .arg("--coordinator")
            .arg(url)
            .arg("--submitter")
            .arg(submitter)
            .arg("--account")
            .arg(format!("bench-e2e-{i}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(WorkerProcess { child })
    }

    /// Closes its stdin (its stop signal) and reads the CPU times it prints.
    fn finish(mut self) -> anyhow::Result<(Duration, Duration)> {
        drop(self.child.stdin.take());
        let stdout = self.child.stdout.take().context("worker stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let status = self.child.wait()?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["cpu", cpu, "guest", guest] if status.success() => Ok((
                Duration::from_nanos(cpu.parse()?),
                Duration::from_nanos(guest.parse()?),
            )),
            _ => bail!("the worker process failed ({status}; said {line:?})"),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `--serve worker` runs.
#[derive(Debug, Clone)]
pub struct WorkerRole {
    /// Data directory.
    pub data: PathBuf,
    /// Coordinator URL.
    pub coordinator: String,
    /// The one submitter key whose projects it runs.
    pub submitter: SubmitterKey,
    /// Its volunteer account.
    pub account: String,
}

/// The child side of [`WorkerProcess`]: a worker with one core until stdin closes; then it
/// prints `cpu NANOS guest NANOS` (this process's CPU time so far, and its guest threads')
/// and shuts down.
pub fn serve_worker(role: WorkerRole) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let config = worker::WorkerConfig {
            coordinator: role.coordinator,
            data_dir: role.data,
            cores: 1,
            name: role.account.clone(),
            account: Some(role.account),
            peer_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            drain: Duration::ZERO,
            prefs: worker::prefs::dedicated(),
            submitters: vec![role.submitter],
            ..Default::default()
        };
        let worker = tokio::spawn(worker::run(config, stop.clone().cancelled_owned()));
        tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        })
        .await?;
        let cpu = cpu_time::ProcessTime::now().as_duration();
        let guest = worker::guest_cpu_time();
        let mut out = std::io::stdout();
        writeln!(out, "cpu {} guest {}", cpu.as_nanos(), guest.as_nanos())?;
        out.flush()?;
        stop.cancel();
        worker.await??;
        Ok(())
    })
}
