//! `cargo run --release -p bench -- [--quick] [--figure all|sandbox|dashboard]`: prints
//! every figure with its reference.

use clap::Parser;

/// Fallow benchmarks: each figure beside its reference, measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// Small inputs, one repetition: a smoke test (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Which figures: `all`, `sandbox` (overhead, guest speed) or `dashboard` (dispatch
    /// under 1,000 live viewers).
    #[arg(long, default_value = "all", value_parser = ["all", "sandbox", "dashboard"])]
    figure: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = if args.quick {
        bench::Size::Quick
    } else {
        bench::Size::Full
    };
    let figures = match args.figure.as_str() {
        "sandbox" => bench::Figures::Sandbox,
        "dashboard" => bench::Figures::Dashboard,
        _ => bench::Figures::All,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "running {} benchmarks on {cores} cores...",
        if args.quick { "quick" } else { "full" }
    );
    let report = std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || bench::run(size, figures))?
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;
    print!("{}", report.to_markdown());
    Ok(())
}
