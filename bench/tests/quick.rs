//! The quick run is CI's smoke test of the bench: every figure must complete at toy scale,
//! and native and sandboxed kernels must agree byte for byte. No time is asserted.

#[test]
fn quick_benchmarks_run_and_native_matches_the_sandbox() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let report = std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || bench::run_all(bench::Size::Quick, &exe))
        .expect("thread")
        .join()
        .expect("no panic")
        .expect("quick run");
    let table = report.to_markdown();
    for figure in [
        "per-unit sandbox overhead",
        "module start-up at worker start",
        "guest speed: primes",
        "guest speed: n-body",
        // Measured, or skipped with the reason in the row (no node or Chromium here).
        "guest speed in Chromium",
        "verification cost: executions per verified unit",
        "coordinator dispatch: certificates accepted per second",
        "scaling: 10 workers",
        "coordinator memory after a restart",
        "interactive 1 ms sleep, median oversleep",
        "end to end: guest share of worker CPU, the demo project",
        "deployment: certificates accepted per second, 3 coordinators on one PostgreSQL",
    ] {
        assert!(table.contains(figure), "no {figure:?} row in\n{table}");
    }
}
