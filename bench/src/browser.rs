//! Guest speed in the browser beside wasmtime and native, in one run: each kernel of
//! [`crate::KERNELS`] on the same input natively, in the production sandbox (fuel metered
//! by the rewrite), in the sandbox unmetered, and in headless Chromium's V8 through the
//! volunteer page's runtime (`coordinator/assets/volunteer/guest.js`) in a module Web
//! Worker, as the page runs guests: the module as a browser worker gets it
//! (`sandbox::meter::instrument`, and `sandbox::nan::canonicalize` for the NaN rows; the
//! bytes `GetModule` serves with `fuel_rules`) and as built. The runs are interleaved,
//! kernel by kernel, so that drift in the machine's load hits every engine alike; figures
//! are medians. Every run's output must be the native bytes, and the browser's fuel
//! wasmtime's, or the group fails.
//!
//! The browser side is `coordinator/assets/volunteer/tools/browser-speed.mjs` under node,
//! which starts Chromium and hands it one unit at a time. `FALLOW_NODE` names node (default
//! `node`), `FALLOW_CHROMIUM` Chromium (default `/usr/bin/chromium`), as the e2e tests. The
//! group is skipped, with the reason printed and a row saying so, when either is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::Digest;
use sandbox::{Metering, Sandbox, SandboxConfig};

use crate::{Row, Size, bench_limits, fmt_duration, median};

/// The driver script, from this crate's source tree.
const DRIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../coordinator/assets/volunteer/tools/browser-speed.mjs"
);

/// How long Chromium may take to start and ask for work, and one unit to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Timed runs of each kernel on each engine. More than the other groups' 5: the kernels
/// take tens of milliseconds and this machine is shared, and the medians of 5 runs moved
/// by up to a third from one invocation to the next.
fn repeats(size: Size) -> usize {
    match size {
        Size::Quick => 1,
        Size::Full => 21,
    }
}

/// Warm-up runs of each module in the browser before it is timed (on the quick input):
/// V8 first runs a module's code from its baseline compiler (Liftoff) and tiers hot
/// functions up to TurboFan for later calls; a worker runs many units of a module, so the
/// steady state is what is measured. wasmtime compiles fully before its first run.
const WARM_UPS: usize = 2;

/// The group's rows (or one row saying why it was skipped). Guest code runs on this
/// thread, as in [`crate::guest_speed`].
pub fn rows(size: Size) -> anyhow::Result<Vec<Row>> {
    if let Some(why) = missing() {
        eprintln!("browser: SKIPPED, {why}");
        return Ok(vec![Row {
            figure: "guest speed in Chromium: skipped".into(),
            measured: why,
            reference: "—".into(),
            ratio: None,
            goal: "measured (issue 22)".into(),
            met: None,
        }]);
    }
    let sandbox = |metering| {
        Sandbox::new(SandboxConfig {
            slots: 2,
            metering,
            ..SandboxConfig::default()
        })
    };
    let (production, bare) = (sandbox(Metering::Rewrite)?, sandbox(Metering::Off)?);
    let dir = tempfile::tempdir()?;
    let mut names = Vec::new();
    for k in &crate::KERNELS {
        names.push(browser_modules(dir.path(), k)?);
    }
    let mut driver = Driver::start(dir.path(), dir.path().join("driver.stderr"))?;
    eprintln!("browser: {}", driver.user_agent);
    let mut lines = Vec::new();
    for (k, (built, metered)) in crate::KERNELS.iter().zip(&names) {
        let input = match size {
            Size::Quick => k.quick,
            Size::Full => k.full,
        }
        .as_bytes();
        let limits = bench_limits(k.nan_canonicalization);
        let digest = Digest::of(k.wasm);
        let compiled = production.compile(digest, k.wasm, k.nan_canonicalization)?;
        let unmetered = bare.compile(digest, k.wasm, k.nan_canonicalization)?;
        for _ in 0..WARM_UPS {
            for module in [built, metered] {
                driver.run(module, k.quick.as_bytes())?;
            }
        }
        let (mut native, mut wasmtime, mut wasmtime_off, mut v8, mut v8_built) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut fuel = 0;
        for _ in 0..repeats(size) {
            let t = Instant::now();
            let out = (k.native)(input).map_err(|e| anyhow::anyhow!("{}: {e}", k.name))?;
            native.push(t.elapsed());
            let want = Digest::of(&out).to_hex();

            let t = Instant::now();
            let exec = production
                .run(&compiled, input, [0; 32], &limits)
                .map_err(|f| anyhow::anyhow!("{}: {f}", k.name))?;
            wasmtime.push(t.elapsed());
            anyhow::ensure!(
                exec.digest.to_hex() == want,
                "{}: native and sandbox outputs differ",
                k.name
            );
            fuel = exec.fuel;

            let t = Instant::now();
            let plain = bare
                .run(&unmetered, input, [0; 32], &limits)
                .map_err(|f| anyhow::anyhow!("{}, unmetered: {f}", k.name))?;
            wasmtime_off.push(t.elapsed());
            anyhow::ensure!(
                plain.digest.to_hex() == want,
                "{}: native and unmetered sandbox outputs differ",
                k.name
            );

            let run = driver.run(metered, input)?;
            anyhow::ensure!(
                run.blake3 == want,
                "{}: Chromium's output (metered module, BLAKE3 {}) differs from native ({want})",
                k.name,
                run.blake3
            );
            anyhow::ensure!(
                run.fuel == exec.fuel,
                "{}: Chromium counted {} fuel, wasmtime {}",
                k.name,
                run.fuel,
                exec.fuel
            );
            v8.push(run.time);

            let run = driver.run(built, input)?;
            anyhow::ensure!(
                run.blake3 == want,
                "{}: Chromium's output (module as built, BLAKE3 {}) differs from native ({want})",
                k.name,
                run.blake3
            );
            v8_built.push(run.time);
        }
        lines.push(Line {
            name: k.name,
            input: String::from_utf8_lossy(input).trim().to_string(),
            native: median(native),
            wasmtime: median(wasmtime),
            wasmtime_off: median(wasmtime_off),
            v8: median(v8),
            v8_built: median(v8_built),
            fuel,
        });
    }
    driver.stop();
    let user_agent = driver.user_agent.clone();
    eprintln!("{}", summary(&lines, size));
    Ok(lines
        .iter()
        .flat_map(|l| line_rows(l, &user_agent))
        .collect())
}

/// One kernel's medians.
struct Line {
    name: &'static str,
    input: String,
    native: Duration,
    wasmtime: Duration,
    wasmtime_off: Duration,
    v8: Duration,
    v8_built: Duration,
    fuel: u64,
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// A line's rows in the report.
fn line_rows(l: &Line, user_agent: &str) -> Vec<Row> {
    let native = format!("{} native", fmt_duration(l.native));
    let diagnostic = |figure: String, d: Duration| Row {
        figure,
        measured: fmt_duration(d),
        reference: native.clone(),
        ratio: Some(ratio(d, l.native)),
        goal: "diagnostic".into(),
        met: None,
    };
    let chromium = user_agent
        .split(' ')
        .find(|w| w.starts_with("HeadlessChrome/") || w.starts_with("Chrome/"))
        .unwrap_or("Chromium");
    vec![
        Row {
            figure: format!(
                "guest speed in Chromium: {} (stdin `{}`), V8 in a module Web Worker ({chromium}), the module as the browser worker gets it (fuel {} = wasmtime's)",
                l.name, l.input, l.fuel
            ),
            measured: format!("{} in Chromium", fmt_duration(l.v8)),
            reference: native.clone(),
            ratio: Some(ratio(l.v8, l.native)),
            goal: "measured (issue 22)".into(),
            met: None,
        },
        diagnostic(
            format!(
                "  … same, the module as built (metering costs {:.2}x in V8)",
                ratio(l.v8, l.v8_built)
            ),
            l.v8_built,
        ),
        diagnostic(
            format!(
                "  … same, wasmtime, production (metering costs {:.2}x in wasmtime)",
                ratio(l.wasmtime, l.wasmtime_off)
            ),
            l.wasmtime,
        ),
        diagnostic("  … same, wasmtime unmetered".into(), l.wasmtime_off),
    ]
}

/// The BENCHMARKS.md table of the run, printed on stderr.
fn summary(lines: &[Line], size: Size) -> String {
    let mut out = format!(
        "browser: medians of {} interleaved runs\n\
         | kernel | native | wasmtime metered | wasmtime unmetered | Chromium V8 metered | Chromium V8 as built | metering cost, wasmtime | metering cost, V8 | fuel equal |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        repeats(size)
    );
    for l in lines {
        out.push_str(&format!(
            "| {} | {} | {} ({:.2}x) | {} ({:.2}x) | {} ({:.2}x) | {} ({:.2}x) | {:.2}x | {:.2}x | yes ({}) |\n",
            l.name,
            fmt_duration(l.native),
            fmt_duration(l.wasmtime),
            ratio(l.wasmtime, l.native),
            fmt_duration(l.wasmtime_off),
            ratio(l.wasmtime_off, l.native),
            fmt_duration(l.v8),
            ratio(l.v8, l.native),
            fmt_duration(l.v8_built),
            ratio(l.v8_built, l.native),
            ratio(l.wasmtime, l.wasmtime_off),
            ratio(l.v8, l.v8_built),
            l.fuel
        ));
    }
    out
}

fn node() -> PathBuf {
    std::env::var_os("FALLOW_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

fn chromium() -> PathBuf {
    std::env::var_os("FALLOW_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the group cannot run here, if it cannot.
fn missing() -> Option<String> {
    let version = Command::new(node())
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "`{} --version` does not run (set FALLOW_NODE, or install node: scripts/test does)",
            node().display()
        ));
    }
    if !chromium().exists() {
        return Some(format!(
            "no Chromium at {} (set FALLOW_CHROMIUM, or install Debian's chromium: scripts/test does)",
            chromium().display()
        ));
    }
    if !Path::new(DRIVER).exists() {
        return Some(format!(
            "the driver {DRIVER} is missing (bench run outside its source tree)"
        ));
    }
    None
}

/// One answer of the driver.
struct BrowserRun {
    time: Duration,
    fuel: u64,
    blake3: String,
}

/// The node driver and the Chromium it started: one unit at a time.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: PathBuf,
    /// Chromium's user agent, from its first request.
    user_agent: String,
}

impl Driver {
    fn start(modules: &Path, stderr: PathBuf) -> anyhow::Result<Driver> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(node())
            .arg(DRIVER)
            .arg(modules)
            .env("FALLOW_CHROMIUM", chromium())
            // A group of its own: a timeout stops node and nothing else (Chromium runs in
            // its own group and node stops it on SIGTERM or at the end of stdin).
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {} {DRIVER}", node().display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .context("the driver's stdout is piped")?;
        let (tx, lines) = std::sync::mpsc::channel();
        // A thread reads the answers so that waiting for one can time out.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut driver = Driver {
            child,
            stdin,
            lines,
            stderr,
            user_agent: String::new(),
        };
        let ready = driver.answer(START_TIMEOUT, "Chromium to start")?;
        let Some(agent) = ready.strip_prefix("READY ") else {
            anyhow::bail!("the browser driver said {ready:?} instead of READY");
        };
        driver.user_agent = agent.to_string();
        Ok(driver)
    }

    /// The next line from the driver, failing with what it printed on stderr.
    fn answer(&mut self, limit: Duration, what: &str) -> anyhow::Result<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => Ok(line),
            Err(e) => {
                let why = match e {
                    RecvTimeoutError::Timeout => {
                        format!("no answer in {limit:?} waiting for {what}")
                    }
                    RecvTimeoutError::Disconnected => {
                        format!("the browser driver exited waiting for {what}")
                    }
                };
                self.stop();
                anyhow::bail!(
                    "{why}; its stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                )
            }
        }
    }

    /// Runs `module` (a file `NAME.wasm` of the modules' directory) on `input` in the tab's
    /// Web Worker.
    fn run(&mut self, module: &str, input: &[u8]) -> anyhow::Result<BrowserRun> {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let stdin = self
            .stdin
            .as_mut()
            .context("the driver's stdin is closed")?;
        writeln!(stdin, "RUN {module} {hex}").context("writing to the browser driver")?;
        stdin.flush()?;
        let line = self.answer(RUN_TIMEOUT, module)?;
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("DONE"), Some(ms), Some(fuel), Some(blake3)) => {
                let ms: f64 = ms.parse().with_context(|| format!("time in {line:?}"))?;
                anyhow::ensure!(ms.is_finite() && ms >= 0.0, "time in {line:?}");
                Ok(BrowserRun {
                    time: Duration::from_secs_f64(ms / 1e3),
                    fuel: fuel.parse().with_context(|| format!("fuel in {line:?}"))?,
                    blake3: blake3.to_string(),
                })
            }
            _ => anyhow::bail!("{module} in Chromium: {line}"),
        }
    }

    /// Ends the driver: closes its stdin (it stops Chromium and exits), then, if it is
    /// still there after a while, SIGTERM and SIGKILL to its process group.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let pgid = format!("-{}", self.child.id());
        for signal in [None, Some("-TERM"), Some("-KILL")] {
            if let Some(signal) = signal {
                let _ = Command::new("kill").args([signal, &pgid]).status();
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The modules of one kernel in the browser: (as built, as a browser worker gets it).
fn browser_modules(dir: &Path, k: &crate::Kernel) -> anyhow::Result<(String, String)> {
    let stem = k.file.trim_end_matches(".wasm");
    let metered = sandbox::meter::instrument(k.wasm)?;
    let (plain, served, suffix) = if k.nan_canonicalization {
        // The NaN rows: both forms canonicalized, as the coordinator serves a project
        // that asks for it (the metered bytes, then the NaN rewrite).
        (
            sandbox::nan::canonicalize(k.wasm)?,
            sandbox::nan::canonicalize(&metered)?,
            ".nan",
        )
    } else {
        (k.wasm.to_vec(), metered, "")
    };
    let names = (format!("{stem}{suffix}"), format!("{stem}{suffix}.metered"));
    std::fs::write(dir.join(format!("{}.wasm", names.0)), plain)?;
    std::fs::write(dir.join(format!("{}.wasm", names.1)), served)?;
    Ok(names)
}
