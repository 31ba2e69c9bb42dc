//! Figures 1, 6 and 7: the coordinator under load from simulated workers, each in its own
//! process beside the load generator, on the embedded SQLite store in a temporary
//! directory; and the bare tonic echo service as the transport reference.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{self, Fleet, Load, Timed};
use crate::server::{Role, Server};
use crate::{Row, Size};

/// BOINC's published dispatch rate: 8.8 million tasks a day on one server (Anderson,
/// Korpela, Walton, 2005).
const BOINC_PER_SECOND: f64 = 8.8e6 / 86_400.0;
/// Goal of figure 1, absolute.
const GOAL_PER_SECOND: f64 = 20_000.0;
/// Goal of figure 1, as a fraction of the echo rate.
const GOAL_OF_ECHO: f64 = 0.5;
/// Goal of figure 6.
const GOAL_MEMORY: u64 = 256 << 20;
/// Figure 7's cost per unit counts as flat within this factor of the smallest fleet's.
const FLAT_WITHIN: f64 = 1.2;

/// Units a `fallow worker` asks for in one `RequestWork` in steady state: one to run now
/// and its prefetch buffer's default depth (it asks when the buffer is empty).
pub(crate) fn worker_request() -> u32 {
    1 + worker::WorkerConfig::default().prefetch as u32
}

/// How big each coordinator measurement is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Fleet sizes of the scaling curve; the last is figure 1's.
    fleets: &'static [usize],
    /// HTTP/2 connections the load generator shares.
    channels: usize,
    /// Requests in flight at once (the echo reference uses the same).
    concurrency: usize,
    /// Length of each assignment phase (and of each echo run).
    phase: Duration,
    /// Phases per fleet (the median is reported).
    repeats: usize,
    /// Replicas every round finds unleased when it starts: more than its phases can lease,
    /// so that they measure dispatch from a full queue. Before a round that would start
    /// with fewer, the bench submits another project with this many replicas; a phase that
    /// runs dry anyway fails the measurement (see [`Work`]).
    round_leases: u64,
    /// Units and workers of the memory figure.
    memory_units: u64,
    memory_workers: usize,
}

impl Plan {
    fn of(size: Size) -> Plan {
        match size {
            Size::Quick => Plan {
                // 100: the fleet at which the full run stopped.
                fleets: &[10, 100],
                channels: 2,
                concurrency: 8,
                phase: Duration::from_millis(200),
                // Three rounds with a top-up before each, as in the full run, where one
                // project of 150,000 units for three rounds ran out in the third
                // (BENCHMARKS.md, "Dispatch at full size"). A quick round leased ~2,000
                // replicas here; the headroom is for faster CI machines.
                repeats: 3,
                round_leases: 10_000,
                memory_units: 2_000,
                memory_workers: 20,
            },
            Size::Full => Plan {
                fleets: &[100, 1_000, 10_000],
                channels: 4,
                concurrency: 64,
                phase: Duration::from_secs(4),
                repeats: 3,
                // A round leased up to 78,857 replicas on 2 cores (2026-12-07).
                round_leases: 150_000,
                memory_units: 1_000_000,
                memory_workers: 10_000,
            },
        }
    }
}

/// One fleet's measurement: medians over the repeats.
#[derive(Debug, Clone, Copy)]
struct Dispatch {
    workers: usize,
    replication: u32,
    /// Leases handed out per second in the assignment phase (requests as `fallow worker`
    /// makes them: [`worker_request`] units each).
    assigned: f64,
    /// Leases handed out per second when each request asks for one unit.
    assigned_single: f64,
    /// Coordinator CPU time per lease, and cores it kept busy, in each assignment phase.
    lease_cpu: (Duration, f64),
    lease_cpu_single: (Duration, f64),
    /// Coordinator CPU time per accepted certificate, and cores busy, in that phase.
    certificate_cpu: (Duration, f64),
    /// Certificates accepted per second in the certification phase, one per call.
    certified: f64,
    /// The same, several per `SubmitCertificates` call ([`worker_request`]: a worker's
    /// certificates of as many units as one request leases), and its CPU per certificate.
    certified_batched: f64,
    certificate_cpu_batched: (Duration, f64),
    /// Units assigned and certified per second over both phases.
    combined: f64,
    /// Coordinator CPU time per certified unit, both phases.
    cpu_per_unit: Duration,
    /// Coordinator CPU time / wall time over both phases (cores kept busy).
    busy: f64,
    /// Registrations per second.
    registered: f64,
}

pub(crate) fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        let r = r.round() as u64;
        if r >= 1_000 {
            format!("{},{:03}/s", r / 1_000, r % 1_000)
        } else {
            format!("{r}/s")
        }
    } else {
        format!("{r:.1}/s")
    }
}

pub(crate) fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / (1 << 20) as f64)
}

/// The work a measurement has submitted and not yet handed out, counted in replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Work {
    /// Replicas submitted and not yet leased.
    open: u64,
}

impl Work {
    /// Units of the project to submit before the next round, if any: enough that the round
    /// starts with at least `round_leases` replicas open.
    fn top_up(&self, round_leases: u64, replication: u32) -> Option<u64> {
        (self.open < round_leases).then(|| round_leases.div_ceil(u64::from(replication.max(1))))
    }

    /// `units` units of replication `replication` were submitted.
    fn submitted(&mut self, units: u64, replication: u32) {
        self.open += units * u64::from(replication);
    }

    /// A phase handed out `leases` replicas.
    fn leased(&mut self, leases: u64) {
        self.open = self.open.saturating_sub(leases);
    }
}

/// Fails a phase that ran out of work: its rate would be a draining queue's. Before
/// 2026-12-07 one project of 150,000 units served all three rounds of a fleet, and once
/// the lease rate had risen (3 units a request, TCP_NODELAY) the third round found it
/// empty: "no certificate accepted".
fn full_queue(
    phase: &str,
    assigned: &load::Assigned,
    work: Work,
    plan: &Plan,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !assigned.ran_dry,
        "dispatch: the {phase} phase ran out of work after {} leases (about {} replicas were \
         open when the round started, Plan::round_leases = {}): raise round_leases, the \
         figures would measure a draining queue",
        assigned.timed.count,
        work.open,
        plan.round_leases
    );
    Ok(())
}

/// Measures one fleet of `workers` against a fresh coordinator: registration, then
/// `plan.repeats` rounds of (top the work up, assign for `plan.phase` with requests as
/// `fallow worker` makes them, assign for half as long one unit per request, sign, certify
/// everything: half the workers one certificate a call, the other half in batches).
fn measure(
    exe: &Path,
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    workers: usize,
    replication: u32,
) -> anyhow::Result<Dispatch> {
    let dir = tempfile::tempdir()?;
    let server = Server::spawn(
        exe,
        &Role::Coordinator {
            data: dir.path().to_path_buf(),
        },
    )?;
    let fleet = Arc::new(Fleet::new(workers));
    let result = rt.block_on(async {
        let load = Load::connect(server.addr, plan.channels, plan.concurrency).await?;
        load.ready().await?;
        let registered = load.register(&fleet).await?;
        let mut work = Work { open: 0 };
        let (mut assigned, mut single, mut certified, mut combined, mut cpu, mut busy) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut batched = vec![];
        // Per phase: coordinator CPU per operation, and cores busy.
        let (mut per_lease, mut per_lease_single, mut per_certificate, mut per_batched) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..plan.repeats {
            let mut topped = 0;
            if let Some(units) = work.top_up(plan.round_leases, replication) {
                load.submit_project(&server.token, units, replication, replication)
                    .await?;
                work.submitted(units, replication);
                topped = units;
            }
            let open = work;
            let cpu0 = server.cpu()?;
            let as_workers_ask = load.assign(&fleet, plan.phase, worker_request()).await?;
            let cpu_a = server.cpu()?;
            let one_each = load.assign(&fleet, plan.phase / 2, 1).await?;
            let cpu1 = server.cpu()?;
            full_queue("first assignment", &as_workers_ask, open, plan)?;
            full_queue("one-unit assignment", &one_each, open, plan)?;
            let (a, a1) = (as_workers_ask.timed, one_each.timed);
            let mut leases = as_workers_ask.leases;
            leases.extend(one_each.leases);
            work.leased(leases.len() as u64);
            // Half the workers submit one certificate a call, the other half theirs in
            // batches; which half goes first alternates by round.
            let (singles, batches): (Vec<_>, Vec<_>) =
                load::sign(&fleet, &leases, replication as usize)
                    .into_iter()
                    .partition(|c| c.submitter() % 2 == 0);
            let (one, many) = (singles.len(), batches.len());
            let single_phase = || async {
                let before = server.cpu()?;
                let c = load.certify(&fleet, singles).await?;
                Ok::<_, anyhow::Error>((c, server.cpu()? - before))
            };
            let batched_phase = || async {
                let before = server.cpu()?;
                let b = load
                    .certify_batched(&fleet, batches, worker_request() as usize)
                    .await?;
                Ok::<_, anyhow::Error>((b, server.cpu()? - before))
            };
            let ((c, c_cpu), (b, b_cpu)) = if round % 2 == 0 {
                let c = single_phase().await?;
                (c, batched_phase().await?)
            } else {
                let b = batched_phase().await?;
                (single_phase().await?, b)
            };
            eprintln!(
                "    round: {} replicas open ({topped} units submitted before it), {} + {} leases, {one} + {many} certificates (one a call + batched), {} + {} accepted",
                open.open, a.count, a1.count, c.count, b.count
            );
            // Every certificate is for a unit leased in this round with matching claims: one
            // refused means the certified rate is not what it says.
            anyhow::ensure!(
                c.count > 0 && c.count == one as u64 && b.count > 0 && b.count == many as u64,
                "{} of {one} and {} of {many} certificates accepted ({} + {} leases)",
                c.count,
                b.count,
                a.count,
                a1.count
            );
            let spent = (cpu1 - cpu0) + c_cpu + b_cpu;
            per_lease.push(phase_cost(cpu_a - cpu0, &a));
            per_lease_single.push(phase_cost(cpu1 - cpu_a, &a1));
            per_certificate.push(phase_cost(c_cpu, &c));
            per_batched.push(phase_cost(b_cpu, &b));
            let wall = a.elapsed + a1.elapsed + c.elapsed + b.elapsed;
            let units = c.count + b.count;
            assigned.push(a.rate());
            single.push(a1.rate());
            certified.push(c.rate());
            batched.push(b.rate());
            combined.push(units as f64 / wall.as_secs_f64());
            cpu.push(spent.as_secs_f64() / units as f64);
            busy.push(spent.as_secs_f64() / wall.as_secs_f64());
        }
        Ok::<_, anyhow::Error>(Dispatch {
            workers,
            replication,
            assigned: median_f64(assigned),
            assigned_single: median_f64(single),
            lease_cpu: median_cost(per_lease),
            lease_cpu_single: median_cost(per_lease_single),
            certificate_cpu: median_cost(per_certificate),
            certified: median_f64(certified),
            certified_batched: median_f64(batched),
            certificate_cpu_batched: median_cost(per_batched),
            combined: median_f64(combined),
            cpu_per_unit: Duration::from_secs_f64(median_f64(cpu)),
            busy: median_f64(busy),
            registered: registered.rate(),
        })
    });
    server.stop()?;
    result
}

/// Coordinator CPU per operation of a timed phase, and the cores it kept busy.
fn phase_cost(cpu: Duration, phase: &Timed) -> (f64, f64) {
    (
        cpu.as_secs_f64() / phase.count.max(1) as f64,
        cpu.as_secs_f64() / phase.elapsed.as_secs_f64().max(1e-9),
    )
}

/// The median CPU per operation over the rounds, with the cores busy of that round.
fn median_cost(mut rounds: Vec<(f64, f64)>) -> (Duration, f64) {
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu, busy) = rounds[rounds.len() / 2];
    (Duration::from_secs_f64(cpu), busy)
}

/// "N µs coordinator CPU each, C cores busy".
fn fmt_cost((cpu, busy): (Duration, f64)) -> String {
    format!(
        "{:.0} µs coordinator CPU each, {busy:.2} cores busy",
        cpu.as_secs_f64() * 1e6
    )
}

/// The transport reference: the echo service in its own process, the same connections and
/// concurrency; median calls per second over `plan.repeats` runs.
fn echo_rate(exe: &Path, rt: &tokio::runtime::Runtime, plan: &Plan) -> anyhow::Result<f64> {
    let server = Server::spawn(exe, &Role::Echo)?;
    let mut rates = Vec::new();
    for _ in 0..plan.repeats {
        let t: Timed = rt.block_on(load::echo(
            server.addr,
            plan.channels,
            plan.concurrency,
            plan.phase,
        ))?;
        rates.push(t.rate());
    }
    server.stop()?;
    Ok(median_f64(rates))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Figures 1 and 7: dispatch with each fleet size, the echo reference, replication 2 at
/// the largest fleet. `exe` is this benchmark's binary (servers run as its children).
pub fn dispatch_figures(exe: &Path, size: Size) -> anyhow::Result<Vec<Row>> {
    let plan = Plan::of(size);
    let rt = runtime()?;
    let echo = echo_rate(exe, &rt, &plan)?;
    let mut curve = Vec::new();
    for &workers in plan.fleets {
        eprintln!("  dispatch: {workers} workers, replication 1...");
        curve.push(measure(exe, &rt, &plan, workers, 1)?);
    }
    let largest = *plan.fleets.last().unwrap_or(&1);
    eprintln!("  dispatch: {largest} workers, replication 2...");
    let replicated = measure(exe, &rt, &plan, largest, 2)?;
    let main = *curve.last().ok_or_else(|| anyhow::anyhow!("no fleet"))?;

    let reference = format!(
        "echo {} ({} in flight, {} connections)",
        fmt_rate(echo),
        plan.concurrency,
        plan.channels
    );
    let goal = format!("≥ {GOAL_OF_ECHO}x echo and ≥ {}", fmt_rate(GOAL_PER_SECOND));
    let verdict = |rate: f64| rate >= GOAL_OF_ECHO * echo && rate >= GOAL_PER_SECOND;
    let mut rows = Vec::new();
    for d in [main, replicated] {
        let what = format!(
            "{} workers, replication {}, quorum {}",
            fmt_count(d.workers as u64),
            d.replication,
            d.replication
        );
        rows.push(Row {
            figure: format!(
                "coordinator dispatch: replicas leased per second ({what}; up to {} units per `RequestWork`, as `fallow worker` asks)",
                worker_request()
            ),
            measured: format!("{} ({})", fmt_rate(d.assigned), fmt_cost(d.lease_cpu)),
            reference: reference.clone(),
            ratio: Some(d.assigned / echo),
            goal: goal.clone(),
            met: Some(verdict(d.assigned)),
        });
        rows.push(Row {
            figure: format!(
                "  … same, one unit per `RequestWork` (a worker's first request, or `--prefetch 0`) ({what})"
            ),
            measured: format!(
                "{} ({})",
                fmt_rate(d.assigned_single),
                fmt_cost(d.lease_cpu_single)
            ),
            reference: reference.clone(),
            ratio: Some(d.assigned_single / echo),
            goal: "diagnostic".into(),
            met: None,
        });
        rows.push(Row {
            figure: format!(
                "coordinator dispatch: certificates accepted per second, {} a `SubmitCertificates` call (a worker's units of one request, finished together) ({what})",
                worker_request()
            ),
            measured: format!(
                "{} ({})",
                fmt_rate(d.certified_batched),
                fmt_cost(d.certificate_cpu_batched)
            ),
            reference: reference.clone(),
            ratio: Some(d.certified_batched / echo),
            goal: goal.clone(),
            met: Some(verdict(d.certified_batched)),
        });
        rows.push(Row {
            figure: format!(
                "  … same, one certificate a `SubmitCertificate` call (a worker finishing one unit at a time) ({what})"
            ),
            measured: format!(
                "{} ({})",
                fmt_rate(d.certified),
                fmt_cost(d.certificate_cpu)
            ),
            reference: reference.clone(),
            ratio: Some(d.certified / echo),
            goal: goal.clone(),
            met: Some(verdict(d.certified)),
        });
    }
    rows.push(Row {
        figure: format!(
            "  … units leased and certified per second, both phases ({} workers, replication 1)",
            fmt_count(main.workers as u64)
        ),
        measured: fmt_rate(main.combined),
        reference: format!("BOINC {} (8.8 M/day, 2005)", fmt_rate(BOINC_PER_SECOND)),
        ratio: Some(main.combined / BOINC_PER_SECOND),
        goal: "comparison".into(),
        met: None,
    });
    rows.push(Row {
        figure: format!(
            "  … worker registrations per second ({} workers, signed, no peer address)",
            fmt_count(main.workers as u64)
        ),
        measured: fmt_rate(main.registered),
        reference: "—".into(),
        ratio: None,
        goal: "diagnostic".into(),
        met: None,
    });
    let base = curve[0].cpu_per_unit.as_secs_f64();
    for d in &curve {
        let ratio = d.cpu_per_unit.as_secs_f64() / base;
        rows.push(Row {
            figure: format!(
                "scaling: {} workers (replication 1; units leased + certified per second, coordinator CPU per unit, cores busy, registrations per second)",
                fmt_count(d.workers as u64)
            ),
            measured: format!(
                "{}, {:.0} µs CPU/unit, {:.2} cores, {} reg.",
                fmt_rate(d.combined),
                d.cpu_per_unit.as_secs_f64() * 1e6,
                d.busy,
                fmt_rate(d.registered)
            ),
            reference: format!(
                "{} workers: {:.0} µs/unit",
                fmt_count(curve[0].workers as u64),
                base * 1e6
            ),
            ratio: Some(ratio),
            goal: format!("flat (≤ {FLAT_WITHIN}x)"),
            met: Some(ratio <= FLAT_WITHIN),
        });
    }
    Ok(rows)
}

/// Figure 6: the coordinator's resident memory with `memory_units` units in its store and
/// `memory_workers` workers registered, right after submitting them, and again after a
/// restart on the same data (everything loaded from the store).
pub fn memory_figure(exe: &Path, size: Size) -> anyhow::Result<Vec<Row>> {
    let plan = Plan::of(size);
    let rt = runtime()?;
    let dir = tempfile::tempdir()?;
    let role = Role::Coordinator {
        data: dir.path().to_path_buf(),
    };
    let fleet = Arc::new(Fleet::new(plan.memory_workers));
    let server = Server::spawn(exe, &role)?;
    let (idle, submit, registered) = rt.block_on(async {
        let load = Load::connect(server.addr, 1, plan.concurrency).await?;
        load.ready().await?;
        let idle = server.memory()?;
        let (_, submit) = load
            .submit_project(&server.token, plan.memory_units, 2, 2)
            .await?;
        let registered = load.register(&fleet).await?;
        Ok::<_, anyhow::Error>((idle, submit, registered))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let after_submit = server.memory()?;
    server.stop()?;
    let restarted = std::time::Instant::now();
    let server = Server::spawn(exe, &role)?;
    rt.block_on(async {
        let load = Load::connect(server.addr, 1, 1).await?;
        load.ready().await
    })?;
    let load_time = restarted.elapsed();
    let after_restart = server.memory()?;
    server.stop()?;

    let what = format!(
        "{} units, {} workers",
        fmt_count(plan.memory_units),
        fmt_count(plan.memory_workers as u64)
    );
    let goal = format!("≤ {}", mb(GOAL_MEMORY));
    Ok(vec![
        Row {
            figure: format!("coordinator memory after submitting {what} (RSS now, peak)"),
            measured: format!("{}, peak {}", mb(after_submit.rss), mb(after_submit.peak)),
            reference: format!("empty coordinator {}", mb(idle.rss)),
            ratio: None,
            goal: goal.clone(),
            met: Some(after_submit.rss <= GOAL_MEMORY),
        },
        Row {
            figure: format!("coordinator memory after a restart with {what} in the store"),
            measured: format!("{}, peak {}", mb(after_restart.rss), mb(after_restart.peak)),
            reference: format!("empty coordinator {}", mb(idle.rss)),
            ratio: None,
            goal,
            met: Some(after_restart.rss <= GOAL_MEMORY),
        },
        Row {
            figure: format!(
                "  … submit {} units (one SubmitProject), register {} workers, restart",
                fmt_count(plan.memory_units),
                fmt_count(plan.memory_workers as u64)
            ),
            measured: format!(
                "{:.1} s, {:.1} s, {:.1} s",
                submit.as_secs_f64(),
                registered.elapsed.as_secs_f64(),
                load_time.as_secs_f64()
            ),
            reference: "—".into(),
            ratio: None,
            goal: "diagnostic".into(),
            met: None,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every round starts with at least `round_leases` replicas open, whatever the rounds
    /// before it took; rounds as the full run measured them on 2026-12-07 (10,000 workers),
    /// and one that took everything.
    #[test]
    fn every_round_starts_with_a_full_queue() {
        let round_leases = Plan::of(Size::Full).round_leases;
        for (replication, rounds) in [
            (1, [68_531, 62_993, 150_000, 0]),
            (2, [70_126, 59_705, 63_472, 150_000]),
        ] {
            let mut work = Work { open: 0 };
            let mut submitted = 0;
            for taken in rounds {
                if let Some(units) = work.top_up(round_leases, replication) {
                    work.submitted(units, replication);
                    submitted += units;
                }
                assert!(
                    work.open >= round_leases,
                    "{work:?} at replication {replication}"
                );
                work.leased(taken);
            }
            assert!(submitted * u64::from(replication) < 5 * round_leases);
        }
    }
}
