//! `cargo run --release -p sim -- [--workers N] [--units N] [--scenario NAME]`: runs the
//! trust scenarios and prints one Markdown table (TRUST.md records it).

use clap::Parser;

/// Deterministic simulation of a Fallow fleet with cheaters, crashes and partitions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Simulated workers.
    #[arg(long, default_value_t = 2000)]
    workers: usize,
    /// Work units per scenario.
    #[arg(long, default_value_t = 100_000)]
    units: u64,
    /// Run only scenarios whose name contains this text.
    #[arg(long)]
    scenario: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.workers < 4 || args.units == 0 {
        anyhow::bail!("--workers must be at least 4 and --units at least 1");
    }
    let mut reports = Vec::new();
    for mut s in sim::Scenario::table(args.workers, args.units) {
        if args
            .scenario
            .as_deref()
            .is_some_and(|f| !s.name.contains(f))
        {
            continue;
        }
        s.seed = args.seed;
        let started = std::time::Instant::now();
        let r = sim::run(&s);
        eprintln!(
            "{}: {:.1} s wall, {:.3} executions per verified unit, {} wrong accepted",
            s.name,
            started.elapsed().as_secs_f64(),
            r.executions_per_verified(),
            r.wrong_accepted
        );
        reports.push(r);
    }
    println!(
        "{} workers, {} units per scenario, seed {}\n",
        args.workers, args.units, args.seed
    );
    print!("{}", sim::table(&reports));
    Ok(())
}
