//! `cargo run --release -p bench -- [--quick]`: prints every figure with its reference.

use clap::Parser;

/// Fallow benchmarks: each figure beside its reference, measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// Small inputs, one repetition: a smoke test (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Only these groups of figures (comma-separated): guest, verification, dispatch,
    /// memory, dashboard, latency. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: serve `coordinator` or `echo` as a server under test, until stdin closes.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// Internal: the coordinator's data directory with `--serve coordinator`.
    #[arg(long, hide = true)]
    data: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match (args.serve.as_deref(), args.data) {
        (None, _) => {}
        (Some("coordinator"), Some(data)) => {
            return bench::server::serve(bench::server::Role::Coordinator { data });
        }
        (Some("echo"), None) => return bench::server::serve(bench::server::Role::Echo),
        (Some(role), _) => {
            anyhow::bail!("--serve {role}: expected coordinator --data DIR, or echo")
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
    let report = std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || bench::run_groups(size, &exe, &groups))?
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;
    print!("{}", report.to_markdown());
    Ok(())
}
