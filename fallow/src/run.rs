//! `fallow run`: one unit on this machine, in the sandbox and ABI a worker uses, so a
//! scientist can try a module before submitting it.
//!
//! What reaches stdout is the guest's stdout, unchanged: the bytes a worker would sign.
//! Fuel, time, the digest and any failure reason go to stderr.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use protocol::{Digest, Limits};
use sandbox::{Execution, Sandbox, SandboxConfig};

/// What `fallow run` was asked.
#[derive(Debug)]
pub struct Options {
    /// The module (`.wasm`, WASI preview 1 command).
    pub module: PathBuf,
    /// The unit's stdin; `None`: this process's stdin.
    pub input: Option<PathBuf>,
    /// The unit's name, which seeds its random numbers.
    pub name: Option<String>,
    /// A manifest whose `[limits]` apply; `None`: the default limits.
    pub manifest: Option<PathBuf>,
}

/// The name a unit gets when `--name` is not given: the input file's name, as a unit of
/// `[inputs] dir` is named on a coordinator, or `stdin`.
pub fn default_name(input: Option<&Path>) -> String {
    input
        .and_then(|p| p.file_name())
        .map_or_else(|| "stdin".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Runs the unit; `Ok` when the guest exited 0 (its output is on stdout), an error naming
/// the failure kind and reason otherwise.
pub fn run(options: Options) -> anyhow::Result<()> {
    let module = std::fs::read(&options.module)
        .with_context(|| format!("cannot read the module {}", options.module.display()))?;
    for warning in sandbox::determinism_warnings(&module) {
        eprintln!("warning: {}: {warning}", options.module.display());
    }
    let (limits, data) = match &options.manifest {
        Some(path) => (limits_of(path)?, data_of(path)?),
        None => (Limits::default(), None),
    };
    let input = match &options.input {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the input {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            bytes
        }
    };
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| default_name(options.input.as_deref()));
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 1,
        ..SandboxConfig::default()
    })
    .context("cannot start the sandbox")?;
    let compiled = sandbox
        .compile(Digest::of(&module), &module, limits.nan_canonicalization)
        .with_context(|| {
            format!(
                "{}: a coordinator would refuse this module",
                options.module.display()
            )
        })?;
    let seed = protocol::unit_seed(&name, &input);
    let started = Instant::now();
    // Guest code runs on a thread with the stack a worker's guest threads have.
    let result = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("guest".into())
            .stack_size(sandbox::GUEST_THREAD_STACK)
            .spawn_scoped(s, || {
                sandbox.run_with_data(
                    &compiled,
                    &input,
                    seed,
                    &limits,
                    data.as_ref().map(|d| &d.mount),
                )
            })
            .context("cannot start the guest thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the guest thread panicked"))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(exec) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&exec.output)
                .and_then(|()| out.flush())
                .context("cannot write the output to stdout")?;
            eprintln!("{}", summary(&name, &exec, &limits, seconds));
            Ok(())
        }
        Err(failure) => Err(anyhow::anyhow!(
            "unit {name:?} failed after {seconds:.3} s: {}: {} (a worker would report this \
             failure; it counts against the unit, as on a coordinator)",
            failure.kind.as_str(),
            failure.detail
        )),
    }
}

/// The stderr line of a unit that ran.
fn summary(name: &str, exec: &Execution, limits: &Limits, seconds: f64) -> String {
    format!(
        "fallow run: unit {name:?} ok: {} output bytes, digest {}, fuel {} of {} ({:.1} %), {seconds:.3} s",
        exec.output.len(),
        exec.digest,
        exec.fuel,
        limits.fuel,
        exec.fuel as f64 * 100.0 / limits.fuel.max(1) as f64,
    )
}

/// The manifest's `[data]` files in a directory of their own, named as a worker names
/// them, removed when dropped.
struct LocalData {
    mount: sandbox::DataMount,
    dir: PathBuf,
}

impl Drop for LocalData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Mounts the manifest's `[data]` files as a worker would: the same names under `/data`,
/// the same read-only, deterministic view (hard links to the files, or copies where the
/// file system has none). `None` without data.
fn data_of(path: &Path) -> anyhow::Result<Option<LocalData>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    let manifest = protocol::manifest::Manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    let entries = manifest
        .data
        .entries()
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    if entries.is_empty() {
        return Ok(None);
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = std::env::temp_dir().join(format!("fallow-run-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let local = LocalData {
        mount: sandbox::DataMount::new(&dir, entries.iter().map(|(n, _)| n.clone()).collect()),
        dir: dir.clone(),
    };
    for (name, rel) in &entries {
        let file = base.join(rel);
        if !std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            anyhow::bail!(
                "manifest {}: [data] {name} = {rel:?}: {} is not a readable file (paths are relative to the manifest)",
                path.display(),
                file.display()
            );
        }
        let link = dir.join(name);
        if std::fs::hard_link(&file, &link).is_err() {
            std::fs::copy(&file, &link)
                .with_context(|| format!("cannot copy {} for /data", file.display()))?;
        }
    }
    Ok(Some(local))
}

/// The `[limits]` of a manifest, checked as `fallow submit` checks them (only the
/// manifest text is read: not its module or inputs).
fn limits_of(path: &Path) -> anyhow::Result<Limits> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    let manifest = protocol::manifest::Manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    manifest
        .limits
        .validate()
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    Ok(manifest.limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_named_like_a_coordinator_names_it() {
        assert_eq!(default_name(Some(Path::new("inputs/tile-07"))), "tile-07");
        assert_eq!(default_name(None), "stdin");
    }
}
