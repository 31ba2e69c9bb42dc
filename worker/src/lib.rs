//! Fallow's volunteer worker. It registers with a coordinator under a volunteer account,
//! leases work units, runs each in the sandbox and publishes its result by commit–reveal on
//! the unit's rendezvous boards (peers chosen by hashing the unit over the live
//! membership); when a quorum of independent workers agrees with its own output it submits
//! the quorum certificate with the output bytes.
//!
//! # Layout
//! - [`run`] (this file): validates the [`WorkerConfig`] once, starts what every
//!   coordinator shares (guest threads, checkpoints, control, metrics), one attachment per
//!   coordinator, the cores' loops, and drains on shutdown.
//! - `config`: [`WorkerConfig`], [`Attach`], [`Fault`], validation, and the
//!   per-coordinator `AttachmentConfig`. `error`: [`Error`], the crate's one error type.
//! - `attachment`: one coordinator this worker works for — registration, heartbeats, peer
//!   service and membership, and `Shared`, the state its loops share (the units' state
//!   is one `Mutex<Lifecycle>`: the shell awaits I/O, feeds it events and carries out its
//!   effects). Its submodules:
//!   `work` (the cores' loop: leasing with prefetch, running, checkpointing, handing
//!   back), `exchange` (the gossip loop over the boards of held units, certificate
//!   uploads) and `board` (our own rendezvous board as peers reach it, and the evidence
//!   it reports).
//! - `shares`: how the cores are split over the attached coordinators by resource share,
//!   and how many units to prefetch.
//! - `lifecycle`: the sans-IO life of the units one attachment holds (leased, buffered,
//!   running, committed, uploading, handed back, checkpointed), with time as an input.
//! - `gossip`: [`gossip::Holder`], the sans-IO holder side (which boards, what to send,
//!   what the answers mean) around [`protocol::quorum::QuorumBook`]; the lifecycle owns it.
//! - `membership`: SWIM membership with foca over UDP, for workers that accept inbound
//!   connections (the members, who can be boards).
//! - `stats`: counters of exchanges, board refusals by reason and reports.
//! - `metrics`: Prometheus text format on `--metrics ADDR` (executions, fuel, busy and
//!   idle time, and the `stats`).
//! - `executor`: the guest threads; guest code never runs on the async runtime.
//! - `modules`: module fetch, on-disk cache and compilation.
//! - `checkpoints`: checkpoints of running units on disk (atomic writes, keyed by
//!   coordinator, project, unit, module and input), resumed after a restart.
//! - `rpc`: the gRPC boundary (coordinator client, peer service and client).
//! - `peer_limiter`: how often a connection, an address or a worker key may call the
//!   peer service.
//! - [`tls`]: how the coordinator is reached: plain HTTP on loopback, TLS pinned to its
//!   certificate's SHA-256 (in the URL or trusted on first use) anywhere else.
//! - [`provenance`]: whose projects run here: each unit's submitter signature is checked
//!   before it runs, against `--submitter-key` or a record of signers seen.
//! - `prefs`: the volunteer's preferences (`prefs.toml`, flags on top, live changes).
//! - `policy`: the sans-IO decision to run, throttle or suspend, from readings and time.
//! - `sources`: the real readings (idle time, CPU load, battery, local time) and the
//!   lowest OS priority for guest threads.
//! - `gate`: where guest threads are held (suspension, cores, memory) and slowed (CPU
//!   limit), and each running unit's progress.
//! - `control`: the policy loop, live preferences and the loopback control API with its
//!   client (`fallow worker status|suspend|resume|prefs`).

#![forbid(unsafe_code)]

mod attachment;
mod checkpoints;
mod config;
pub mod control;
mod data;
mod error;
mod executor;
pub mod gate;
pub mod gossip;
mod lifecycle;
pub mod membership;
mod metrics;
mod modules;
mod peer_limiter;
pub mod policy;
pub mod prefs;
pub mod provenance;
pub mod rpc;
mod shares;
pub mod sources;
mod stats;
pub mod tls;

pub use config::{Attach, DEFAULT_SHARE, Fault, WorkerConfig, default_account};
pub use error::Error;
pub use executor::guest_cpu_time;
pub use stats::{Stats, StatsSnapshot};

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::Identity;
use sandbox::{Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

use attachment::{Attached, Common, Shared, core_loop};
use checkpoints::Checkpoints;
use executor::Executor;
use shares::Shares;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here are single map or state-machine operations that do not panic
    // midway: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a worker until `shutdown` completes, then drains: running units get
/// `config.drain` to finish, and whatever is still unverified is handed back.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with_stats(config, shutdown, Arc::new(Stats::default())).await
}

/// [`run`], counting gossip and board activity into `stats` (readable while it runs).
pub async fn run_with_stats(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    // Two workers on one data dir would share an identity and trip over each other's
    // leases: the lock lives as long as this function.
    let _lock = lock_data_dir(&config.data_dir)?;
    // Loaded once: every attached coordinator knows this worker by the same key.
    let identity = Arc::new(Identity::load_or_create(
        &config.data_dir.join("worker.key"),
    )?);
    let account = config
        .account
        .clone()
        .unwrap_or_else(|| default_account(identity.id()));
    let attachments = config.attachments();
    let coordinators = attachments
        .iter()
        .map(|a| a.urls.join(","))
        .collect::<Vec<_>>()
        .join(", ");
    let (control, control_server) = start_control(
        &config,
        &identity,
        &account,
        &coordinators,
        Box::new(sources::SystemSources::new()),
    )
    .await?;
    let mut sandbox = Sandbox::new(SandboxConfig {
        slots: config.cores as u32 + 1,
        ..SandboxConfig::default()
    })?;
    // Compiled modules kept beside the `.wasm` files, so a restart does not compile them
    // again (`modules` counts both in `disk_cache_mb`). Only a cache: without it every
    // start compiles, as before.
    if let Err(e) = sandbox.set_disk_cache(&config.data_dir.join("modules")) {
        tracing::warn!("compiled modules will not be kept across restarts: {e}");
    }
    let sandbox = Arc::new(sandbox);
    let membership_counters = Arc::new(membership::Counters::default());
    let common = Common {
        identity: identity.clone(),
        account: account.clone(),
        executor: Arc::new(
            Executor::new(sandbox.clone(), config.cores)
                .map_err(|e| Error::Config(format!("cannot start guest threads: {e}")))?,
        ),
        sandbox,
        checkpoints: Arc::new(Checkpoints::open(config.data_dir.join("checkpoints"))?),
        data: Arc::new(data::DataCache::new(
            &config.data_dir.join("data"),
            control.disk_cap(),
        )),
        control,
        policy: Arc::new(provenance::Policy::load(
            &config.data_dir,
            &config.submitters,
            config.allow_unsigned,
        )?),
        metrics: Arc::new(metrics::Metrics::new(
            stats.clone(),
            membership_counters.clone(),
        )),
        stats,
        membership_counters,
        cancel: CancellationToken::new(),
    };
    // Validated once above; every attachment shares it and keeps only what is its own.
    let config = Arc::new(config);
    let mut attached = Vec::with_capacity(attachments.len());
    for at in config.attachment_configs() {
        attached.push(Attached::start(config.clone(), at, &common).await?);
    }

    let metrics_stop = CancellationToken::new();
    if let Some(addr) = config.metrics {
        let (local, server) = metrics::serve(
            addr,
            common.metrics.clone(),
            metrics_stop.clone().cancelled_owned(),
        )
        .await?;
        tracing::info!("metrics on http://{local}/metrics");
        tokio::spawn(server);
    }
    {
        let cancel = common.cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            cancel.cancel();
        });
    }
    let mut loops = tokio::task::JoinSet::new();
    let mut registered = Vec::new();
    for a in &attached {
        match a.shared.register(&a.advertised).await {
            Some(heartbeat) => registered.push(heartbeat),
            None => break, // shut down before every coordinator answered
        }
    }
    if registered.len() == attached.len() {
        for (a, heartbeat) in attached.iter().zip(registered) {
            a.shared.take_back_checkpointed_units().await;
            loops.spawn(
                a.shared
                    .clone()
                    .heartbeat_loop(heartbeat, a.advertised.clone()),
            );
            loops.spawn(a.shared.clone().gossip_loop());
        }
        let shares = Arc::new(Mutex::new(Shares::new(
            &attachments.iter().map(|a| a.share).collect::<Vec<_>>(),
        )));
        let all: Arc<Vec<Arc<Shared>>> =
            Arc::new(attached.iter().map(|a| a.shared.clone()).collect());
        for slot in 0..config.cores {
            loops.spawn(core_loop(
                slot,
                all.clone(),
                shares.clone(),
                common.control.clone(),
                common.cancel.clone(),
            ));
        }
    }

    common.cancel.cancelled().await;
    tracing::info!(
        "shutting down: draining running units for up to {:?}",
        config.drain
    );
    let drained = tokio::time::timeout(config.drain, async {
        while loops.join_next().await.is_some() {}
        for a in &attached {
            a.shared.tasks.close();
            a.shared.tasks.wait().await;
        }
    })
    .await;
    loops.abort_all();
    for a in &attached {
        a.shared.settle_held_units(drained.is_err()).await;
    }
    tracing::info!("gossip: {}", common.stats.snapshot());
    metrics_stop.cancel();
    for a in attached {
        a.stop().await;
    }
    common.control.stop();
    control_server.shutdown().await;
    Ok(())
}

/// Loads the preferences, decides once from a first reading, starts the policy loop and
/// the control API.
async fn start_control(
    config: &WorkerConfig,
    identity: &Identity,
    account: &str,
    coordinators: &str,
    mut sources: Box<dyn sources::Sources>,
) -> Result<(Arc<control::Control>, control::ControlServer), Error> {
    // Readings block (sysinfo, X11): not on the async threads.
    let (sources, first) = tokio::task::spawn_blocking(move || {
        let first = sources.read();
        (sources, first)
    })
    .await
    .map_err(|e| Error::Config(format!("reading the machine failed: {e}")))?;
    let control =
        control::Control::new(&config.data_dir, config.cores, config.prefs.clone(), first)?;
    control.spawn_loop(sources)?;
    let server = control::serve(
        control.clone(),
        control::Identity {
            worker: identity.id().to_string(),
            account: account.to_string(),
            coordinator: coordinators.to_string(),
        },
        &config.data_dir,
    )
    .await?;
    tracing::info!(
        "control API on {} (token in {}); state: {:?}",
        server.addr,
        config.data_dir.join(control::TOKEN_FILE).display(),
        control.decision().state
    );
    Ok((control, server))
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let path = dir.join("lock");
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    match protocol::dirlock::lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "another worker is using --data {}; give each worker its own data directory",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worker_cannot_use_the_same_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = lock_data_dir(dir.path()).expect("first lock");
        let err = lock_data_dir(dir.path())
            .expect_err("second lock taken")
            .to_string();
        assert!(err.contains("another worker"), "{err}");
    }
}
