//! `cargo run --release -p bench -- [--quick]`: prints every figure with its reference.

use clap::Parser;

/// Fallow benchmarks: each figure beside its reference, measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// Small inputs, one repetition: a smoke test (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Only these groups of figures (comma-separated): guest, browser, verification,
    /// dispatch, memory, dashboard, latency, endtoend, deployment. Default: all. `browser`
    /// needs node and Chromium (`FALLOW_NODE`, `FALLOW_CHROMIUM`); without them it prints
    /// why it was skipped.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A directory of guest modules built another way (`primes.wasm`, `pi.wasm`,
    /// `mandelbrot.wasm`, `nbody.wasm`; for example without `simd128`): the guest group times
    /// them beside this build's in the same runs and checks that they print the same bytes.
    #[arg(long)]
    baseline_guests: Option<std::path::PathBuf>,
    /// Internal: serve `coordinator`, `deployment`, `echo` or `worker` as a process under
    /// test, until stdin closes.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// Internal: the data directory with `--serve coordinator` or `--serve worker`.
    #[arg(long, hide = true)]
    data: Option<std::path::PathBuf>,
    /// Internal: the coordinator URL with `--serve worker`.
    #[arg(long, hide = true)]
    coordinator: Option<String>,
    /// Internal: the submitter key a `--serve worker` runs projects of.
    #[arg(long, hide = true)]
    submitter: Option<protocol::SubmitterKey>,
    /// Internal: the account of a `--serve worker`.
    #[arg(long, hide = true)]
    account: Option<String>,
    /// Internal: the PostgreSQL URL with `--serve deployment`.
    #[arg(long, hide = true)]
    database: Option<String>,
    /// Internal: with `--serve deployment`, another coordinator schedules the database.
    #[arg(long, hide = true)]
    edge: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match (args.serve.as_deref(), args.data) {
        (None, _) => {}
        (Some("coordinator"), Some(data)) => {
            return bench::server::serve(bench::server::Role::Coordinator { data });
        }
        (Some("deployment"), Some(data)) => {
            let Some(database) = args.database else {
                anyhow::bail!("--serve deployment needs --database");
            };
            return bench::server::serve(bench::server::Role::Deployment {
                database,
                data,
                edge: args.edge,
            });
        }
        (Some("echo"), None) => return bench::server::serve(bench::server::Role::Echo),
        (Some("worker"), Some(data)) => {
            let (Some(coordinator), Some(submitter), Some(account)) =
                (args.coordinator, args.submitter, args.account)
            else {
                anyhow::bail!("--serve worker needs --coordinator, --submitter and --account");
            };
            return bench::endtoend::serve_worker(bench::endtoend::WorkerRole {
                data,
                coordinator,
                submitter,
                account,
            });
        }
        (Some(role), _) => {
            anyhow::bail!(
                "--serve {role}: expected coordinator --data DIR, deployment --data DIR \
                 --database URL, echo, or worker --data DIR ..."
            )
        }
    }
    let size = if args.quick {
        bench::Size::Quick
    } else {
        bench::Size::Full
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "running {} benchmarks on {cores} cores...",
        if args.quick { "quick" } else { "full" }
    );
    for g in &args.only {
        anyhow::ensure!(
            bench::GROUPS.contains(&g.as_str()),
            "--only {g}: expected one of {}",
            bench::GROUPS.join(", ")
        );
    }
    let groups: Vec<&'static str> = bench::GROUPS
        .into_iter()
        .filter(|g| args.only.is_empty() || args.only.iter().any(|o| o == g))
        .collect();
    let exe = std::env::current_exe()?;
    let baseline = args.baseline_guests;
    let report = std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || bench::run_groups(size, &exe, &groups, baseline.as_deref()))?
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;
    print!("{}", report.to_markdown());
    Ok(())
}
