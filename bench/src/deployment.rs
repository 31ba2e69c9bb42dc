//! Issue 20's figure: leases and certificates per second with 1, 2 and 3 coordinators on
//! one PostgreSQL, beside the single coordinator on the embedded SQLite store, in one run
//! on this machine, with the same fleet, replication and connections for all four.
//!
//! Each coordinator runs in a process of its own ([`crate::server`], role
//! [`Role::Deployment`]), doing what `fallow coordinator --database URL` does: the first on
//! the database holds its lock and schedules (`coordinator::promote`); every later one is
//! an edge that forwards each call to it (`coordinator::forward`). PostgreSQL is a
//! throwaway cluster in a temporary directory (the store's `testpg`, shared rather than
//! copied), with a fresh database for each configuration. The load generator's
//! connections are spread evenly over all the coordinators' addresses.
//!
//! Beside each rate: the CPU per operation of the coordinators (the scheduling one and
//! the edges apart), of PostgreSQL (the postmaster and its backends), and the cores kept
//! busy by each and by the load generator, read from `/proc` over the timed phase. That
//! split says what bounds each configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::dispatch::{fmt_count, fmt_rate, median_f64, worker_request};
use crate::load::{self, Fleet, Load, Timed};
use crate::server::{Role, Server, processes, stat_fields};
use crate::{Row, Size};

#[allow(dead_code)] // the cluster's helpers the bench does not call
#[path = "../../coordinator/src/store/testpg.rs"]
mod testpg;

/// Connections of the load generator: a multiple of 1, 2 and 3, so that every coordinator
/// of a configuration gets as many (and the echo reference the same).
const CHANNELS: usize = 6;

/// Replication and quorum of the project in every configuration (as the issue's
/// deployment runs): each certificate carries two claims.
const REPLICATION: u32 = 2;

/// How big each measurement is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    workers: usize,
    /// Requests in flight at once.
    concurrency: usize,
    /// Length of each assignment phase (and of each echo run).
    phase: Duration,
    /// Rounds per configuration (the median is reported).
    repeats: usize,
    /// Units in the project: more than the phases can lease.
    units: u64,
}

impl Plan {
    fn of(size: Size) -> Plan {
        match size {
            Size::Quick => Plan {
                workers: 30,
                concurrency: 12,
                phase: Duration::from_millis(300),
                repeats: 1,
                units: 3_000,
            },
            Size::Full => Plan {
                workers: 10_000,
                concurrency: 64,
                phase: Duration::from_secs(4),
                repeats: 3,
                units: 150_000,
            },
        }
    }
}

/// One configuration under test.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// One coordinator on the embedded SQLite store.
    Sqlite,
    /// `n` coordinators on one PostgreSQL database: one schedules, `n - 1` are edges.
    Postgres(usize),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Sqlite => "1 coordinator on SQLite".into(),
            Setup::Postgres(1) => "1 coordinator on PostgreSQL".into(),
            Setup::Postgres(n) => format!(
                "{n} coordinators on one PostgreSQL (1 scheduling + {} edge{})",
                n - 1,
                if n > 2 { "s" } else { "" }
            ),
        }
    }
}

/// CPU time so far of everything that takes part, and the wall clock.
struct Snapshot {
    at: Instant,
    /// Each coordinator process's, the scheduling one first.
    coordinators: Vec<Duration>,
    /// PostgreSQL's processes' (none on SQLite).
    postgres: Duration,
    /// This process's: the load generator.
    load: cpu_time::ProcessTime,
    /// The whole machine's busy time, every core (other helpers' builds included).
    machine: Duration,
    /// Time the coordinators' and PostgreSQL's threads spent runnable but waiting for a
    /// core (`/proc/PID/task/TID/schedstat`, live threads only).
    coordinators_queued: Duration,
    postgres_queued: Duration,
}

/// Where the CPU of one timed phase went, per operation and as cores kept busy.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    /// CPU per operation, seconds: the scheduling coordinator, the edges, PostgreSQL.
    scheduler: f64,
    edges: f64,
    postgres: f64,
    /// Cores busy over the phase: all coordinators, PostgreSQL, load generator, machine.
    coordinators_busy: f64,
    postgres_busy: f64,
    load_busy: f64,
    machine_busy: f64,
    /// Threads waiting for a core over the phase, on average: coordinators, PostgreSQL.
    coordinators_queued: f64,
    postgres_queued: f64,
}

/// A configuration's measurement: medians over the rounds.
#[derive(Debug, Clone, Copy)]
struct Measured {
    setup: Setup,
    leases: f64,
    certificates: f64,
    lease_split: Split,
    certificate_split: Split,
}

/// The running processes of one configuration.
struct Running {
    servers: Vec<Server>,
    /// The postmaster's pid (its backends are its children).
    postmaster: Option<u32>,
}

impl Running {
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            at: Instant::now(),
            coordinators: self
                .servers
                .iter()
                .map(Server::cpu)
                .collect::<anyhow::Result<_>>()?,
            postgres: match self.postmaster {
                Some(pid) => tree_cpu(pid)?,
                None => Duration::ZERO,
            },
            load: cpu_time::ProcessTime::now(),
            machine: machine_busy()?,
            coordinators_queued: self.servers.iter().map(|s| queued(s.pid(), false)).sum(),
            postgres_queued: self
                .postmaster
                .map_or(Duration::ZERO, |pid| queued(pid, true)),
        })
    }

    fn stop(self) -> anyhow::Result<()> {
        // Edges first (each in turn), then the scheduling coordinator.
        for server in self.servers.into_iter().rev() {
            server.stop()?;
        }
        Ok(())
    }
}

/// The split of a phase of `count` operations between two snapshots.
fn split(before: &Snapshot, after: &Snapshot, count: u64) -> Split {
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let n = count.max(1) as f64;
    let spent: Vec<f64> = after
        .coordinators
        .iter()
        .zip(&before.coordinators)
        .map(|(a, b)| a.saturating_sub(*b).as_secs_f64())
        .collect();
    let scheduler = spent.first().copied().unwrap_or(0.0);
    let edges: f64 = spent.iter().skip(1).sum();
    let postgres = after.postgres.saturating_sub(before.postgres).as_secs_f64();
    Split {
        scheduler: scheduler / n,
        edges: edges / n,
        postgres: postgres / n,
        coordinators_busy: (scheduler + edges) / wall,
        postgres_busy: postgres / wall,
        load_busy: after.load.duration_since(before.load).as_secs_f64() / wall,
        machine_busy: after.machine.saturating_sub(before.machine).as_secs_f64() / wall,
        coordinators_queued: after
            .coordinators_queued
            .saturating_sub(before.coordinators_queued)
            .as_secs_f64()
            / wall,
        postgres_queued: after
            .postgres_queued
            .saturating_sub(before.postgres_queued)
            .as_secs_f64()
            / wall,
    }
}

/// Time the threads of process `pid` (and, with `children`, of its child processes) spent
/// runnable and waiting for a core, so far: the second field of each live thread's
/// `/proc/PID/task/TID/schedstat`, in nanoseconds. Unreadable entries count as zero (a
/// thread may exit while it is read).
fn queued(pid: u32, children: bool) -> Duration {
    let mut pids = vec![pid];
    if children {
        pids.extend(
            processes().into_iter().filter(|&p| {
                stat_fields(p).and_then(|f| f.get(1).copied()) == Some(u64::from(pid))
            }),
        );
    }
    let mut nanos = 0u64;
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let waited = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
            nanos += waited.unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

/// CPU time of process `pid`, its live children and its reaped ones (a postmaster's
/// backends are its children), from `/proc`.
fn tree_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut ticks = 0;
    // A process may exit between listing and reading: skip it. utime, stime, cutime and
    // cstime are fields 14 to 17 of the line (11 to 14 of `stat_fields`), in clock ticks
    // (USER_HZ, 100); the parent's pid is field 4 (1).
    for p in processes() {
        let Some(fields) = stat_fields(p) else {
            continue;
        };
        if p == pid {
            ticks += fields.get(11..15).map_or(0, |f| f.iter().sum::<u64>());
        } else if fields.get(1).copied() == Some(u64::from(pid)) {
            ticks += fields.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
    }
    Ok(Duration::from_millis(ticks * 10))
}

/// The machine's busy CPU time so far, all cores (`/proc/stat`: everything but idle and
/// iowait).
fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(values.len() == 8, "/proc/stat format: {line}");
    let busy: u64 = values.iter().sum::<u64>() - values[3] - values[4];
    Ok(Duration::from_millis(busy * 10))
}

/// The pid of the postmaster listening on `port` (its command line names the port).
fn postmaster(port: u16) -> anyhow::Result<u32> {
    let wanted = format!("-p\0{port}\0");
    for p in processes() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("postgres\0") && cmdline.contains(&wanted) {
            return Ok(p);
        }
    }
    anyhow::bail!("no PostgreSQL server process listening on port {port} found in /proc")
}

/// Starts the coordinators of `setup` (on `pg` for PostgreSQL, database `bench_N`), the
/// scheduling one first and ready before the edges start.
fn start(exe: &Path, setup: Setup, pg: &testpg::TestPg, dir: &Path) -> anyhow::Result<Running> {
    match setup {
        Setup::Sqlite => Ok(Running {
            servers: vec![Server::spawn(
                exe,
                &Role::Coordinator {
                    data: dir.join("sqlite"),
                },
            )?],
            postmaster: None,
        }),
        Setup::Postgres(n) => {
            let database = pg.create_database(&format!("bench_{n}"));
            let mut servers = Vec::with_capacity(n);
            for i in 0..n {
                let data = dir.join(format!("postgres-{n}-{i}"));
                std::fs::create_dir_all(&data)?;
                servers.push(Server::spawn(
                    exe,
                    &Role::Deployment {
                        database: database.clone(),
                        data,
                        edge: i > 0,
                    },
                )?);
            }
            Ok(Running {
                servers,
                postmaster: Some(postmaster(pg.port)?),
            })
        }
    }
}

/// Measures one configuration: submit, register the fleet through every coordinator,
/// then `plan.repeats` rounds of (assign for `plan.phase`, sign untimed, certify all).
fn measure(
    exe: &Path,
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    setup: Setup,
    pg: &testpg::TestPg,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("sqlite"))?;
    let running = start(exe, setup, pg, dir.path())?;
    let fleet = Arc::new(Fleet::new(plan.workers));
    let addrs: Vec<SocketAddr> = running.servers.iter().map(|s| s.addr).collect();
    let token = running.servers[0].token.clone();
    let result = rt.block_on(async {
        let load = Load::connect_spread(&addrs, CHANNELS, plan.concurrency).await?;
        load.ready().await?;
        let (_, submitted) = load
            .submit_project(&token, plan.units, REPLICATION, REPLICATION)
            .await?;
        let registered = load.register(&fleet).await?;
        eprintln!(
            "    submitted {} units in {:.1} s, registered {} workers in {:.1} s",
            fmt_count(plan.units),
            submitted.as_secs_f64(),
            fmt_count(plan.workers as u64),
            registered.elapsed.as_secs_f64()
        );
        let mut rounds = Vec::new();
        for _ in 0..plan.repeats {
            let s0 = running.snapshot()?;
            let assigned = load.assign(&fleet, plan.phase, worker_request()).await?;
            anyhow::ensure!(
                !assigned.ran_dry,
                "{}: the project ran out of work mid-phase ({} leases): the figure would \
                 measure a draining queue; give it more units",
                setup.label(),
                assigned.timed.count
            );
            let (leases, a) = (assigned.leases, assigned.timed);
            let s1 = running.snapshot()?;
            let certificates = load::sign(&fleet, &leases, REPLICATION as usize);
            let signed = certificates.len();
            let s2 = running.snapshot()?;
            let c: Timed = load.certify(&fleet, certificates).await?;
            let s3 = running.snapshot()?;
            eprintln!(
                "    round: {} leases, {signed} certificates, {} accepted",
                a.count, c.count
            );
            anyhow::ensure!(
                c.count > 0,
                "{}: no certificate accepted ({} leases, {signed} certificates)",
                setup.label(),
                a.count
            );
            rounds.push((
                a.rate(),
                c.rate(),
                split(&s0, &s1, a.count),
                split(&s2, &s3, c.count),
            ));
        }
        Ok::<_, anyhow::Error>(rounds)
    });
    running.stop()?;
    let rounds = result?;
    // The round of the median lease rate gives the lease split; likewise certificates.
    // `rounds` has `plan.repeats` (at least 1) entries: every round pushed one or failed.
    let median_round = |rate: fn(&(f64, f64, Split, Split)) -> f64| {
        let m = median_f64(rounds.iter().map(rate).collect());
        rounds
            .iter()
            .find(|r| rate(r) == m)
            .copied()
            .unwrap_or(rounds[0])
    };
    let by_leases = median_round(|r| r.0);
    let by_certificates = median_round(|r| r.1);
    Ok(Measured {
        setup,
        leases: by_leases.0,
        certificates: by_certificates.1,
        lease_split: by_leases.2,
        certificate_split: by_certificates.3,
    })
}

/// "CPU per lease: N µs coordinators (S scheduling + E edges), P µs PostgreSQL; cores
/// busy: …; threads waiting for a core: …".
fn fmt_split(s: &Split, what: &str, machine_cores: usize) -> String {
    let us = |x: f64| format!("{:.0}", x * 1e6);
    let coordinators = if s.edges > 0.0 {
        format!(
            "{} µs coordinators ({} scheduling + {} edges)",
            us(s.scheduler + s.edges),
            us(s.scheduler),
            us(s.edges)
        )
    } else {
        format!("{} µs coordinator", us(s.scheduler))
    };
    let postgres = if s.postgres > 0.0 {
        format!(", {} µs PostgreSQL", us(s.postgres))
    } else {
        String::new()
    };
    let postgres_busy = if s.postgres_busy > 0.0 {
        format!(" + {:.2} PostgreSQL", s.postgres_busy)
    } else {
        String::new()
    };
    let postgres_queued = if s.postgres_busy > 0.0 {
        format!(", {:.2} PostgreSQL", s.postgres_queued)
    } else {
        String::new()
    };
    format!(
        "CPU per {what}: {coordinators}{postgres}; cores busy: {:.2} coordinators{postgres_busy} + {:.2} load generator, machine {:.2} of {machine_cores}; threads waiting for a core: {:.2} coordinators{postgres_queued}",
        s.coordinators_busy, s.load_busy, s.machine_busy, s.coordinators_queued
    )
}

/// The rows: leases and certificates per second for each configuration, each against the
/// single SQLite coordinator, and the echo reference over the same connections. Needs
/// PostgreSQL's `initdb` and `pg_ctl` (Debian's `postgresql` package).
pub fn rows(exe: &Path, size: Size) -> anyhow::Result<Vec<Row>> {
    let plan = Plan::of(size);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // TestPg panics, naming the missing package, when PostgreSQL is not installed.
    let pg = std::panic::catch_unwind(testpg::TestPg::start).map_err(|p| {
        let said = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow::anyhow!("deployment: cannot start a PostgreSQL cluster: {said}")
    })?;
    let echo = {
        let server = Server::spawn(exe, &Role::Echo)?;
        let mut rates = Vec::new();
        for _ in 0..plan.repeats {
            let t = rt.block_on(load::echo(
                server.addr,
                CHANNELS,
                plan.concurrency,
                plan.phase,
            ))?;
            rates.push(t.rate());
        }
        server.stop()?;
        median_f64(rates)
    };
    let mut measured = Vec::new();
    for setup in [
        Setup::Sqlite,
        Setup::Postgres(1),
        Setup::Postgres(2),
        Setup::Postgres(3),
    ] {
        eprintln!("  deployment: {}...", setup.label());
        measured.push(measure(exe, &rt, &plan, setup, &pg)?);
    }
    drop(pg);
    let base = measured[0];
    let what = format!(
        "{} workers, replication {REPLICATION}, quorum {REPLICATION}; {CHANNELS} connections, {} in flight, spread evenly over the coordinators",
        fmt_count(plan.workers as u64),
        plan.concurrency
    );
    let mut rows = Vec::new();
    for m in &measured {
        rows.push(Row {
            figure: format!(
                "deployment: replicas leased per second, {} ({what}; up to {} units per `RequestWork`)",
                m.setup.label(),
                worker_request()
            ),
            measured: format!(
                "{} ({})",
                fmt_rate(m.leases),
                fmt_split(&m.lease_split, "lease", cores)
            ),
            reference: format!("{}: {}", Setup::Sqlite.label(), fmt_rate(base.leases)),
            ratio: Some(m.leases / base.leases),
            goal: "diagnostic".into(),
            met: None,
        });
    }
    for m in &measured {
        rows.push(Row {
            figure: format!(
                "deployment: certificates accepted per second, {} ({what})",
                m.setup.label()
            ),
            measured: format!(
                "{} ({})",
                fmt_rate(m.certificates),
                fmt_split(&m.certificate_split, "certificate", cores)
            ),
            reference: format!("{}: {}", Setup::Sqlite.label(), fmt_rate(base.certificates)),
            ratio: Some(m.certificates / base.certificates),
            goal: "diagnostic".into(),
            met: None,
        });
    }
    rows.push(Row {
        figure: format!(
            "  … transport reference: bare tonic echo calls per second, one process ({CHANNELS} connections, {} in flight)",
            plan.concurrency
        ),
        measured: fmt_rate(echo),
        reference: format!(
            "{}: leases {}",
            Setup::Sqlite.label(),
            fmt_rate(base.leases)
        ),
        ratio: Some(echo / base.leases),
        goal: "reference".into(),
        met: None,
    });
    Ok(rows)
}

/// The child side of [`Role::Deployment`]: what `fallow coordinator --database` does
/// (`deployment()` in the CLI), without TLS (as the bench's SQLite coordinator) and
/// without taking over (an edge stops when the benchmark stops it). Announces its address
/// once it serves: the scheduling coordinator after it published itself, an edge after it
/// has the deployment's key.
pub(crate) async fn serve_member(
    listener: tokio::net::TcpListener,
    database: &str,
    data: std::path::PathBuf,
    edge: bool,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use coordinator::forward::{Edge, Switch, secret};
    use coordinator::store::postgres::{Attached, PostgresStore};
    use tokio_util::sync::CancellationToken;

    let name = format!("fallow bench pid {}", std::process::id());
    let mut config = crate::server::config(data.clone());
    config.database = Some(database.to_string());
    let addr = listener.local_addr()?;
    let key_of = |data: &Path| {
        protocol::Identity::load_or_create(&data.join(coordinator::deployment::KEY_FILE))
            .map_err(|e| anyhow::anyhow!("the deployment's key in {}: {e}", data.display()))
    };
    match (PostgresStore::attach(database, &name).await?, edge) {
        (Attached::Active(store), false) => {
            coordinator::deployment::pull(&store, &data).await?;
            coordinator::deployment::push(&store, &data, config.require_enrollment).await?;
            let key = key_of(&data)?;
            // Nobody to forward to: it promotes itself before it answers anything.
            let switch =
                Switch::forwarding(Edge::new(tokio::sync::watch::channel(None).1, secret(&key)));
            let (shutdown, stopping) = (CancellationToken::new(), CancellationToken::new());
            let server = {
                let (config, switch, shutdown, stopping) = (
                    config.clone(),
                    switch.clone(),
                    shutdown.clone(),
                    stopping.clone(),
                );
                tokio::spawn(async move {
                    coordinator::serve_switched(
                        listener,
                        &config,
                        &switch,
                        shutdown.cancelled_owned(),
                        stopping,
                    )
                    .await
                })
            };
            let scheduling =
                coordinator::promote(&switch, store.clone(), &config, stopping).await?;
            store.publish_leader(&format!("http://{addr}")).await?;
            crate::server::announce(addr)?;
            stop.await;
            shutdown.cancel();
            server.await??;
            scheduling.wind_down().await;
        }
        (Attached::Standby(standby), true) => {
            let files = loop {
                let files = standby.deployment_files().await?;
                if files.contains_key(coordinator::deployment::KEY_FILE) {
                    break files;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            coordinator::deployment::write_files(files, &data)?;
            let key = key_of(&data)?;
            let switch = Switch::forwarding(Edge::new(
                standby
                    .leader_watch()
                    .spawn(Duration::from_secs(1), &format!("http://{addr}")),
                secret(&key),
            ));
            crate::server::announce(addr)?;
            coordinator::serve_switched(listener, &config, &switch, stop, CancellationToken::new())
                .await?;
            // Holds the lock's connection until the end: an edge, never a second scheduler.
            drop(standby);
        }
        (Attached::Active(_), true) => {
            anyhow::bail!("expected an edge, but no other coordinator holds {database}")
        }
        (Attached::Standby(_), false) => {
            anyhow::bail!("expected to schedule, but another coordinator holds {database}")
        }
    }
    Ok(())
}
