//! `fallow demo`: the whole system on one machine — a coordinator on a temporary data
//! directory, several workers, the bundled Mandelbrot project, a live progress bar, a
//! verification summary, and the assembled picture as a PNG.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coordinator::scheduler::TRUST_AFTER;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::mosaic;

/// Tile edge in pixels.
const TILE: u32 = 128;
/// Iteration cap per pixel.
const MAX_ITER: u32 = 1500;

/// `fallow demo`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workers to start.
    pub workers: usize,
    /// Where to write the picture.
    pub out: PathBuf,
    /// Picture width.
    pub width: u32,
    /// Let worker 0 corrupt every output.
    pub liar: bool,
    /// The coordinator's (and dashboard's) address.
    pub listen: SocketAddr,
    /// Keep the coordinator up after the run until Ctrl-C.
    pub keep: bool,
}

/// Runs the demo.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let Options {
        workers,
        ref out,
        width,
        liar,
        listen,
        keep,
    } = options;
    if !(1..=32).contains(&workers) {
        bail!("--workers must be between 1 and 32 (got {workers})");
    }
    if !(128..=8192).contains(&width) {
        bail!("--width must be between 128 and 8192 (got {width})");
    }
    if liar && workers < 3 {
        bail!("--liar needs at least 3 workers: two honest ones must be able to out-vote it");
    }
    let height = width * 3 / 4;
    let started = Instant::now();
    let cpu_started = cpu_time::ProcessTime::now();
    let guest_started = worker::guest_cpu_time();
    let dir = tempfile::Builder::new()
        .prefix("fallow-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;

    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (--dashboard)"))?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop_coordinator = CancellationToken::new();
    // The coordinator gets a thread with its own runtime, as it would have its own process:
    // its future need not be `Send` (sqlx futures over borrowed paths are not, in general).
    // The demo mints its own submit token before the coordinator starts (which then keeps
    // it instead of minting an admin token).
    let token = coordinator::auth::create(&dir.path().join("coordinator"), "demo")?;
    let coordinator = {
        let stop = stop_coordinator.clone();
        let config = coordinator::CoordinatorConfig {
            data_dir: dir.path().join("coordinator"),
            lease: Duration::from_secs(30),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("demo-coordinator".into())
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    coordinator::serve(listener, config, stop.cancelled_owned()).await?;
                    Ok(())
                })
            })?
    };

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = (cpus / workers).max(1);
    let stop_workers = CancellationToken::new();
    // A throwaway submitter key; the workers run only what it signed, as a volunteer who
    // pins a project's key would (and every tile's signature is checked as anywhere).
    let submitter = protocol::Identity::generate()?;
    let mut handles = Vec::new();
    for i in 0..workers {
        let config = worker::WorkerConfig {
            coordinator: url.clone(),
            data_dir: dir.path().join(format!("worker-{i}")),
            cores,
            name: format!("demo-worker-{i}"),
            // One account per worker: the coordinator never gives two replicas of a unit to
            // the same account, so workers sharing one could never verify anything.
            account: Some(format!("demo-{}", i + 1)),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain: Duration::from_secs(2),
            fault: (liar && i == 0).then_some(worker::Fault::CorruptOutput),
            // The demo is watched at the keyboard, and its workers and coordinator load the
            // CPU themselves: neither may suspend it.
            prefs: worker::prefs::dedicated(),
            // The demo's coordinator runs in this process and serves plain HTTP, also when
            // --dashboard puts it off loopback.
            insecure_plaintext: true,
            submitters: vec![protocol::SubmitterKey::of(&submitter)],
            ..Default::default()
        };
        handles.push(tokio::spawn(worker::run(
            config,
            stop_workers.clone().cancelled_owned(),
        )));
    }

    let manifest = write_project(&dir.path().join("mandelbrot"), width, height)?;
    let mut spec = protocol::manifest::load(&manifest)?;
    spec.sign(&submitter);
    let tiles = spec.units.len();
    let trust = worker::tls::Trust {
        known: None,
        allow_plaintext: true,
    };
    let client = Client::connect(&url, &trust).await?.with_token(Some(token));
    let project = client.submit(spec, false).await?.id;
    println!(
        "Fallow demo: {workers} workers ({cores} core{} each) render a {width}x{height} Mandelbrot in {tiles} tiles;",
        if cores == 1 { "" } else { "s" }
    );
    println!(
        "every tile runs on 2 independent workers and counts only when their signed results match;"
    );
    println!(
        "a worker whose last {TRUST_AFTER} results others confirmed earns tiles of its own, secretly spot-checked (adaptive replication)."
    );
    if liar {
        println!("worker 0 lies: it corrupts every output it produces.");
    }
    println!("watch it live: {url}/projects/{project}");
    crate::commands::wait_for(&client, Some(project), crate::commands::Progress::Bars).await?;
    let status = client
        .status(Some(project))
        .await?
        .into_iter()
        .next()
        .context("the project vanished")?;
    let results = client.results(project).await?;
    let process_cpu = cpu_started.elapsed();
    let guest_cpu = worker::guest_cpu_time().saturating_sub(guest_started);

    stop_workers.cancel();
    for h in handles {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("a worker stopped with an error: {e}"),
            Err(e) => eprintln!("a worker panicked: {e}"),
        }
    }
    let parsed = results
        .verified
        .iter()
        .map(|v| mosaic::parse_tile(&v.output).with_context(|| format!("tile {}", v.unit)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (w, h, rgb) = mosaic::assemble(&parsed)?;
    mosaic::write_png(out, w, h, &rgb)?;

    println!();
    println!("verification summary");
    println!(
        "  tiles verified      {} of {}",
        status.verified, status.total
    );
    println!("  tiles failed        {}", status.failed);
    println!(
        "  executions          {} ({:.2} per verified tile; replication {}, quorum {})",
        status.executions,
        status.executions as f64 / status.verified.max(1) as f64,
        status.replication,
        status.quorum
    );
    println!(
        "  solo tiles          {} (run by one trusted worker; {} more secretly spot-checked)",
        status.solo, status.spot_checks
    );
    println!(
        "  disputes            {} (disagreeing results that needed an extra replica)",
        status.disputes
    );
    println!("  credit (fuel)       {}", status.credit);
    println!(
        "  time                {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  guest code          {:.1}% of this process's CPU time ({:.2} s of {:.2} s; coordinator and workers included)",
        100.0 * guest_cpu.as_secs_f64() / process_cpu.as_secs_f64().max(1e-9),
        guest_cpu.as_secs_f64(),
        process_cpu.as_secs_f64()
    );
    println!(
        "  the coordinator checked signatures and digests; it never ran or compared a tile itself"
    );
    for (unit, reason) in &results.failed {
        println!("  failed {unit}: {reason}");
    }
    let path = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    println!("picture: {}", path.display());
    if keep {
        println!("dashboard stays up at {url}/ until Ctrl-C");
        crate::shutdown_signal().await;
    }
    stop_coordinator.cancel();
    match tokio::task::spawn_blocking(move || coordinator.join()).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("the coordinator stopped with an error: {e}"),
        Ok(Err(_)) | Err(_) => eprintln!("the coordinator panicked"),
    }

    if status.verified != status.total {
        bail!("{} tiles did not verify", status.total - status.verified);
    }
    Ok(())
}

/// Writes the Mandelbrot project (module, one input file per tile, manifest); returns the
/// manifest path.
fn write_project(dir: &Path, width: u32, height: u32) -> anyhow::Result<std::path::PathBuf> {
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    std::fs::write(dir.join("mandelbrot.wasm"), artifacts::MANDELBROT)?;
    for (row, y) in (0..height).step_by(TILE as usize).enumerate() {
        for (col, x) in (0..width).step_by(TILE as usize).enumerate() {
            let (w, h) = (TILE.min(width - x), TILE.min(height - y));
            std::fs::write(
                inputs.join(format!("tile-{row:03}-{col:03}")),
                format!("{x} {y} {w} {h} {width} {height} {MAX_ITER}\n"),
            )?;
        }
    }
    let manifest = dir.join("mandelbrot.toml");
    std::fs::write(
        &manifest,
        "name = \"mandelbrot\"\nwasm = \"mandelbrot.wasm\"\nreplication = 2\nquorum = 2\n\n[limits]\nfuel = 50_000_000_000\nmemory_mb = 64\nwall_seconds = 120\nmax_output_bytes = 1_048_576\n\n[inputs]\ndir = \"inputs\"\n",
    )?;
    Ok(manifest)
}
