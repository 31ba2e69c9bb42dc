//! Figure: the coordinator's dispatch throughput with 1,000 live dashboard viewers, against
//! the same coordinator with none, in one run.
//!
//! A coordinator runs in this process on a temporary data directory with one large project
//! (replication 1, quorum 1). Simulated workers — real gRPC clients with real ed25519 keys,
//! that skip the sandbox and certify a fixed output — lease units and submit certificates
//! as fast as the coordinator answers: every unit costs one share of a `RequestWork`, one
//! signature check and one durable `SubmitCertificate`. Throughput is measured in three
//! equal phases: no viewers, `viewers` open server-sent event streams on `/api/events`
//! (each reading every snapshot), and no viewers again; the figure is phase 2 over the mean
//! of phases 1 and 3, which cancels slow drift (the database growing) to first order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::manifest::ProjectSpec;
use protocol::{Claim, Digest, Identity, Limits, ProjectId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{Row, Size};

/// The settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Dashboard viewers in the middle phase.
    pub viewers: usize,
    /// Simulated workers.
    pub workers: usize,
    /// Units leased per request.
    pub batch: u32,
    /// Length of each phase.
    pub phase: Duration,
    /// Units in the project (must outlast three phases).
    pub units: usize,
}

impl LoadConfig {
    /// The recorded run, or the smoke test.
    pub fn for_size(size: Size) -> Self {
        match size {
            Size::Quick => LoadConfig {
                viewers: 20,
                workers: 4,
                batch: 8,
                phase: Duration::from_millis(700),
                units: 6_000,
            },
            Size::Full => LoadConfig {
                viewers: 1000,
                workers: 16,
                batch: 16,
                phase: Duration::from_secs(10),
                units: 400_000,
            },
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Units certified per second in each phase.
    pub per_second: [f64; 3],
    /// Viewers connected in phase 2.
    pub viewers: usize,
    /// Fewest snapshot events any viewer received in phase 2.
    pub min_events: u64,
    /// Snapshot bytes delivered to all viewers in phase 2.
    pub bytes: u64,
}

impl LoadResult {
    /// Phase 2 throughput over the mean of phases 1 and 3.
    pub fn ratio(&self) -> f64 {
        self.per_second[1] / ((self.per_second[0] + self.per_second[2]) / 2.0).max(1e-9)
    }
}

/// Runs the measurement on its own runtime.
pub fn measure(config: LoadConfig) -> anyhow::Result<LoadResult> {
    // 1,000 viewers cost 2,000 descriptors in this process (both ends of each stream).
    let wanted = (config.viewers as u64) * 2 + 1024;
    let limit = rlimit::increase_nofile_limit(wanted).context("raising the open-file limit")?;
    if limit < wanted {
        bail!(
            "{} viewers need {wanted} open files; the limit is {limit}",
            config.viewers
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: LoadConfig) -> anyhow::Result<LoadResult> {
    let dir = tempfile::Builder::new()
        .prefix("fallow-bench-dashboard-")
        .tempdir()?;
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let stop = CancellationToken::new();
    // Submitting needs a token: mint one before the coordinator starts.
    let token = coordinator::auth::create(&dir.path().join("coordinator"), "bench")?;
    // The coordinator gets its own thread and runtime, as it would have its own process:
    // the load generators' tasks do not share its scheduler queue.
    let server = {
        let stop = stop.clone();
        let config = coordinator::CoordinatorConfig {
            data_dir: dir.path().join("coordinator"),
            // Each of the few simulated workers asks far more often than a real worker's
            // few requests a second; the limiter still runs its check.
            worker_requests_per_second: 1_000_000,
            // Quorum-1 units confirm nobody's record: lease as many as asked.
            limit_unfinished_leases: false,
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("bench-coordinator".into())
            .spawn(move || -> anyhow::Result<()> {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        coordinator::serve(listener, config, stop.cancelled_owned()).await?;
                        Ok(())
                    })
            })?
    };

    let project = submit(&url, &token, config.units).await?;
    let certified = Arc::new(AtomicU64::new(0));
    let halt = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..config.workers {
        workers.spawn(worker(
            url.clone(),
            i,
            project,
            config.batch,
            certified.clone(),
            halt.clone(),
        ));
    }
    // Warm up: registrations, first leases, the broadcaster's first snapshots.
    tokio::time::sleep(config.phase / 2).await;

    let rate = |from: u64, to: u64, took: Duration| (to - from) as f64 / took.as_secs_f64();
    let phase = |certified: Arc<AtomicU64>| async move {
        let (start, t) = (certified.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(config.phase).await;
        rate(start, certified.load(Ordering::Relaxed), t.elapsed())
    };
    let first = phase(certified.clone()).await;

    let watching = Arc::new(AtomicBool::new(false));
    let viewers_stop = CancellationToken::new();
    let mut viewers = tokio::task::JoinSet::new();
    for _ in 0..config.viewers {
        viewers.spawn(viewer(addr, watching.clone(), viewers_stop.clone()));
    }
    // Every viewer must be connected and have its first snapshot before we measure.
    let connected = Instant::now();
    while VIEWERS_READY.load(Ordering::Relaxed) < config.viewers as u64 {
        if connected.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {} viewers got a snapshot within 60 s",
                VIEWERS_READY.load(Ordering::Relaxed),
                config.viewers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.store(true, Ordering::Relaxed);
    let second = phase(certified.clone()).await;
    watching.store(false, Ordering::Relaxed);
    viewers_stop.cancel();
    let mut min_events = u64::MAX;
    let mut bytes = 0;
    while let Some(done) = viewers.join_next().await {
        let (events, b) = done.context("viewer task")??;
        min_events = min_events.min(events);
        bytes += b;
    }
    tokio::time::sleep(config.phase / 4).await; // connections close
    let third = phase(certified.clone()).await;

    halt.cancel();
    while let Some(done) = workers.join_next().await {
        done.context("worker task")??;
    }
    let left = certified.load(Ordering::Relaxed);
    if left as usize >= config.units {
        bail!("the project ran out of units during the measurement: make it larger");
    }
    stop.cancel();
    tokio::task::spawn_blocking(move || server.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the coordinator panicked"))??;
    Ok(LoadResult {
        per_second: [first, second, third],
        viewers: config.viewers,
        min_events: if config.viewers == 0 { 0 } else { min_events },
        bytes,
    })
}

/// The figure's rows.
pub fn rows(size: Size) -> anyhow::Result<Vec<Row>> {
    let config = LoadConfig::for_size(size);
    let r = measure(config)?;
    let ratio = r.ratio();
    Ok(vec![
        Row {
            figure: format!(
                "dispatch with {} live dashboard viewers ({} simulated workers)",
                r.viewers, config.workers
            ),
            measured: format!("{:.0} units/s", r.per_second[1]),
            reference: format!(
                "{:.0} units/s without viewers (before {:.0}, after {:.0})",
                (r.per_second[0] + r.per_second[2]) / 2.0,
                r.per_second[0],
                r.per_second[2]
            ),
            ratio: Some(ratio),
            goal: "≥ 0.90x (drop < 10 %)".into(),
            met: Some(ratio >= 0.9),
        },
        Row {
            figure: "  … snapshots each viewer received while measured".into(),
            measured: format!("≥ {} events", r.min_events),
            reference: format!("{:.1} MB to all viewers", r.bytes as f64 / 1e6),
            ratio: None,
            goal: "every viewer live".into(),
            met: Some(r.min_events >= 1),
        },
    ])
}

/// Viewers that received their first snapshot.
static VIEWERS_READY: AtomicU64 = AtomicU64::new(0);

/// One browser's worth of load: an SSE stream read to the end. Returns the events and
/// bytes received while `watching`.
async fn viewer(
    addr: SocketAddr,
    watching: Arc<AtomicBool>,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut events, mut bytes, mut ready) = (0u64, 0u64, false);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok((events, bytes)),
            n = stream.read(&mut buf) => n?,
        };
        if n == 0 {
            bail!("the coordinator closed a viewer's stream");
        }
        let got = count(&buf[..n], b"event: overview");
        if got > 0 && !ready {
            ready = true;
            VIEWERS_READY.fetch_add(1, Ordering::Relaxed);
        }
        if watching.load(Ordering::Relaxed) {
            events += got;
            bytes += n as u64;
        }
    }
}

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// A simulated worker: leases units and certifies a fixed output for each, alone
/// (quorum 1), until `halt`.
async fn worker(
    url: String,
    i: usize,
    project: ProjectId,
    batch: u32,
    certified: Arc<AtomicU64>,
    halt: CancellationToken,
) -> anyhow::Result<()> {
    let identity = Arc::new(Identity::generate()?);
    let client = worker::rpc::CoordinatorClient::new(&url, identity.clone())?;
    let name = format!("bench-{i}");
    // One account each: the coordinator never gives one account two replicas of a unit.
    client
        .register(
            &identity,
            worker::rpc::Introduction {
                name: &name,
                account: &name,
                team: "",
                peer_addr: "",
                cores: 1,
            },
        )
        .await?;
    let output = b"42\n".to_vec();
    let digest = Digest::of(&output);
    while !halt.is_cancelled() {
        let (units, wait) = client.request_work(batch, &[], false).await?;
        if units.is_empty() {
            tokio::time::sleep(wait).await;
            continue;
        }
        for a in units {
            let claim = Claim::sign(&identity, project, a.unit, digest, 1000);
            if client
                .submit_certificate(a.unit, std::slice::from_ref(&claim), &output)
                .await?
                .accepted
            {
                certified.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Submits a project of `units` tiny units; the module is never run (the simulated workers
/// certify a fixed output), but the coordinator checks it like any other.
async fn submit(url: &str, token: &str, units: usize) -> anyhow::Result<ProjectId> {
    let mut spec = ProjectSpec {
        name: "dispatch-bench".into(),
        module: artifacts::PRIMES.to_vec(),
        reducer: None,
        replication: 1,
        quorum: 1,
        max_replicas: 1,
        adaptive: false,
        error_bound: 0.02,
        limits: Limits {
            fuel: 1_000_000_000,
            memory_mb: 64,
            wall_seconds: 60,
            max_output_bytes: 1 << 20,
            nan_canonicalization: false,
            ..Limits::default()
        },
        units: (0..units)
            .map(|i| (format!("u{i:07}"), format!("{i}\n").into_bytes()))
            .collect(),
        manifest: String::new(),
        data: Vec::new(),
        data_paths: Vec::new(),
        signatures: None,
    };
    spec.sign(&protocol::Identity::generate()?);
    crate::load::submit(&mut crate::load::coordinator(url).await?, token, spec).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure's smoke test: viewers connect, every one of them gets live snapshots,
    /// and the simulated workers make progress. No time is asserted.
    #[test]
    fn quick_dashboard_load_runs_and_every_viewer_is_live() {
        let r = measure(LoadConfig::for_size(Size::Quick)).expect("quick load run");
        assert_eq!(r.viewers, 20);
        assert!(r.min_events >= 1, "a viewer got no snapshot: {r:?}");
        assert!(r.per_second.iter().all(|&x| x > 0.0), "{r:?}");
    }
}
