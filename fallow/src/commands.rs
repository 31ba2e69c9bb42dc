//! One function per subcommand.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use worker::tls::Trust;

use crate::client::{Client, Status};

/// `fallow coordinator`.
pub async fn coordinator(
    listen: SocketAddr,
    tls: ServeTls,
    mut config: coordinator::CoordinatorConfig,
) -> anyhow::Result<()> {
    let data = config.data_dir.clone();
    let store = coordinator::store::sqlite::SqliteStore::open(&data).await?;
    let identity = tls.identity(listen, &data)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (is another coordinator running there?)")
        })?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to learn the port when --listen has port 0.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")?;
    // A script that reads only the first line may have closed the pipe by now: not an
    // error (println! would panic on it).
    match &identity {
        Some(identity) => {
            let host = if addr.ip().is_unspecified() {
                host_name()
            } else {
                match addr {
                    SocketAddr::V4(a) => a.ip().to_string(),
                    SocketAddr::V6(a) => format!("[{}]", a.ip()),
                }
            };
            let pin = hex::encode(identity.fingerprint.0);
            tracing::info!(
                cert = %identity.cert_path.display(),
                "serving TLS; tls fingerprint {}",
                identity.fingerprint
            );
            let _ = writeln!(stdout, "tls fingerprint {}", identity.fingerprint);
            let _ = writeln!(
                stdout,
                "coordinator url https://{host}:{}#sha256={pin}",
                addr.port()
            );
            let _ = writeln!(stdout, "dashboard on https://{addr}/");
        }
        None => {
            let _ = writeln!(stdout, "dashboard on http://{addr}/");
        }
    }
    let _ = stdout.flush();
    drop(stdout);
    config.tls = identity;
    coordinator::serve_with(listener, store, config, crate::shutdown_signal()).await?;
    Ok(())
}

/// The TLS flags of `fallow coordinator`.
#[derive(Debug, Default)]
pub struct ServeTls {
    /// `--tls`: TLS on loopback too.
    pub force: bool,
    /// `--tls-cert`, `--tls-key`.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// `--insecure-plaintext`: plain HTTP off loopback.
    pub insecure_plaintext: bool,
}

impl ServeTls {
    /// The certificate to serve on `listen`, or `None` for plain HTTP: TLS off loopback,
    /// or when asked for; plain HTTP on loopback, or off it only when asked for.
    fn identity(
        &self,
        listen: SocketAddr,
        data: &Path,
    ) -> anyhow::Result<Option<coordinator::tls::TlsIdentity>> {
        let asked = self.force || self.cert.is_some();
        if asked && self.insecure_plaintext {
            return Err(anyhow!(
                "--insecure-plaintext contradicts --tls/--tls-cert: choose one"
            ));
        }
        if !asked && listen.ip().is_loopback() {
            return Ok(None);
        }
        if !asked && self.insecure_plaintext {
            tracing::warn!(
                "serving plain HTTP on {listen}, which is not loopback (--insecure-plaintext): \
                 tokens, projects and results travel in clear and can be changed on the way"
            );
            return Ok(None);
        }
        let identity = match &self.cert {
            Some((cert, key)) => coordinator::tls::TlsIdentity::load(cert, key)?,
            None => {
                let mut names = vec![host_name()];
                if !listen.ip().is_unspecified() {
                    names.push(listen.ip().to_string());
                }
                coordinator::tls::TlsIdentity::load_or_create(data, &names)?
            }
        };
        Ok(Some(identity))
    }
}

/// `fallow worker`.
pub async fn worker(config: worker::WorkerConfig) -> anyhow::Result<()> {
    worker::run(config, crate::shutdown_signal()).await?;
    Ok(())
}

/// The machine's host name, for the default worker name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// `fallow submit`.
pub async fn submit(
    manifest: &Path,
    coordinator: &str,
    trust: &Trust,
    token: Option<String>,
    key: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut spec = protocol::manifest::load(manifest)?;
    let submitter = submitter_key(key)?;
    spec.sign(&submitter);
    let units = spec.units.len();
    let name = spec.name.clone();
    // Without --token: the admin token of a coordinator started here on the default data
    // dir, so the five-minute path needs no copying of secrets.
    let token = token.or_else(|| {
        std::fs::read_to_string(Path::new("fallow-data").join(coordinator::auth::ADMIN_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string())
    });
    let client = Client::connect(coordinator, trust).await?.with_token(token);
    let id = client.submit(spec).await?;
    eprintln!("submitted project {name:?} with {units} units");
    println!("{id}");
    Ok(())
}

/// Where the submitter key lives: `--key`/`FALLOW_SUBMITTER_KEY`, else
/// `$XDG_CONFIG_HOME/fallow/submitter.key`, else `~/.config/fallow/submitter.key`.
fn submitter_key_path(key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = key {
        return Ok(path);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no home directory to keep the submitter key in: pass --key PATH or set FALLOW_SUBMITTER_KEY"
            )
        })?;
    Ok(config.join("fallow").join("submitter.key"))
}

/// Loads the submitter key, making it (mode 0600) on first use and saying so.
fn submitter_key(key: Option<PathBuf>) -> anyhow::Result<protocol::Identity> {
    let path = submitter_key_path(key)?;
    let existed = path.exists();
    let identity = protocol::Identity::load_or_create(&path)?;
    if !existed {
        eprintln!(
            "created submitter key {} (public key {}); keep it: workers that pin your key run only projects it signed",
            path.display(),
            protocol::SubmitterKey::of(&identity)
        );
    }
    Ok(identity)
}

/// `fallow key`: prints the submitter public key.
pub fn key(key: Option<PathBuf>) -> anyhow::Result<()> {
    let identity = submitter_key(key)?;
    println!("{}", protocol::SubmitterKey::of(&identity));
    Ok(())
}

/// `fallow status`.
pub async fn status(
    coordinator: &str,
    trust: &Trust,
    project: Option<u64>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client = Client::connect(coordinator, trust).await?;
    if wait {
        wait_for(&client, project, json).await?;
    }
    let projects = client.status(project).await?;
    print_status(&projects, json)?;
    Ok(())
}

fn print_status(projects: &[Status], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for p in projects {
            writeln!(out, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(());
    }
    if projects.is_empty() {
        writeln!(out, "no projects")?;
        return Ok(());
    }
    if let Some(p) = projects.first() {
        writeln!(out, "workers: {}", p.fleet)?;
    }
    writeln!(
        out,
        "{:>4}  {:<24} {:>8} {:>8} {:>6} {:>8} {:>8}  state",
        "id", "name", "verified", "total", "failed", "running", "execs"
    )?;
    for p in projects {
        let state = if p.finished {
            "finished"
        } else if p.total == p.verified + p.failed {
            "reducing"
        } else {
            "running"
        };
        writeln!(
            out,
            "{:>4}  {:<24} {:>8} {:>8} {:>6} {:>8} {:>8}  {state}",
            p.id, p.name, p.verified, p.total, p.failed, p.in_progress, p.executions
        )?;
        if !p.aggregate_error.is_empty() {
            writeln!(out, "      reducer failed: {}", p.aggregate_error)?;
        }
        for w in &p.waiting {
            writeln!(out, "      waiting: {w}")?;
        }
        if p.submitter.is_empty() {
            writeln!(
                out,
                "      unsigned: submitted before projects were signed; only workers with --allow-unsigned-projects run it"
            )?;
        }
    }
    Ok(())
}

/// A progress bar per project until all shown projects are finished.
pub(crate) async fn wait_for(
    client: &Client,
    project: Option<u64>,
    quiet: bool,
) -> anyhow::Result<()> {
    let multi = if quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{bar:40.green/white}] {pos}/{len} verified {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: std::collections::HashMap<u64, ProgressBar> = std::collections::HashMap::new();
    let mut said: std::collections::HashMap<u64, Vec<String>> = std::collections::HashMap::new();
    loop {
        let projects = client.status(project).await?;
        if projects.is_empty() {
            bail!("no projects to wait for");
        }
        for p in &projects {
            let bar = bars.entry(p.id).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(p.total));
                b.set_style(style.clone());
                b.set_prefix(format!("{} {}", p.id, truncate(&p.name, 12)));
                b
            });
            bar.set_position(p.verified);
            // indicatif's own estimate reads "0s left" when nothing moves: say "unknown"
            // while no worker computes, and why.
            let left = if p.workers_running == 0 {
                format!("(ETA unknown; workers: {})", p.fleet)
            } else {
                format!(
                    "({} left; workers: {})",
                    indicatif::HumanDuration(bar.eta()),
                    p.fleet
                )
            };
            bar.set_message(format!(
                "· {} failed · {} running {left}",
                p.failed, p.in_progress
            ));
            let before = said.entry(p.id).or_default();
            if *before != p.waiting {
                for w in p.waiting.iter().filter(|w| !before.contains(w)) {
                    let _ = multi.println(format!("project {}: {w}", p.id));
                }
                *before = p.waiting.clone();
            }
            if p.finished {
                bar.finish();
            }
        }
        if projects.iter().all(|p| p.finished) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `fallow accounts`.
pub async fn accounts(coordinator: &str, trust: &Trust, json: bool) -> anyhow::Result<()> {
    let client = Client::connect(coordinator, trust).await?;
    let (accounts, teams) = client.accounts().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "accounts": accounts, "teams": teams })
        )?;
        return Ok(());
    }
    if accounts.is_empty() {
        writeln!(out, "no accounts yet")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>4}  {:<24} {:<16} {:>16} {:>9} {:>7}",
        "rank", "account", "team", "credit (fuel)", "verified", "workers"
    )?;
    for (i, a) in accounts.iter().enumerate() {
        writeln!(
            out,
            "{:>4}  {:<24} {:<16} {:>16} {:>9} {:>7}",
            i + 1,
            a.name,
            a.team,
            a.credit,
            a.verified,
            a.workers
        )?;
    }
    if !teams.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:>4}  {:<24} {:>16} {:>8}",
            "rank", "team", "credit (fuel)", "accounts"
        )?;
        for (i, t) in teams.iter().enumerate() {
            writeln!(
                out,
                "{:>4}  {:<24} {:>16} {:>8}",
                i + 1,
                t.name,
                t.credit,
                t.accounts
            )?;
        }
    }
    Ok(())
}

/// `fallow results`.
pub async fn results(
    coordinator: &str,
    trust: &Trust,
    project: u64,
    out: &Path,
) -> anyhow::Result<()> {
    let client = Client::connect(coordinator, trust).await?;
    let results = client.results(project).await?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (unit, output) in &results.verified {
        // Names were checked at submit, but this coordinator may not be ours: never let a
        // name escape the output directory.
        protocol::manifest::check_unit_name(unit)
            .map_err(|e| anyhow::anyhow!("coordinator sent a bad unit name: {e}"))?;
        write_atomic(&out.join(unit), output)?;
    }
    let mut failed = String::new();
    for (unit, reason) in &results.failed {
        failed.push_str(&format!("{unit}\t{}\n", reason.replace('\n', " ")));
    }
    write_atomic(&out.join("failed.txt"), failed.as_bytes())?;
    match &results.aggregate {
        Some(Ok(bytes)) => write_atomic(&out.join("aggregate"), bytes)?,
        Some(Err(e)) => eprintln!("reducer failed: {e}"),
        None => {}
    }
    eprintln!(
        "wrote {} verified outputs, {} failed units{} to {}",
        results.verified.len(),
        results.failed.len(),
        if matches!(results.aggregate, Some(Ok(_))) {
            " and the aggregate"
        } else {
            ""
        },
        out.display()
    );
    Ok(())
}

/// Writes via a temporary file and a rename, so a crash never leaves half a result.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".fallow-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `fallow worker status|suspend|resume|prefs`: talks to the worker running on `--data`.
pub async fn worker_action(action: crate::cli::WorkerAction) -> anyhow::Result<()> {
    use crate::cli::{PrefsAction, WorkerAction};
    match action {
        WorkerAction::Status { data, json } => {
            let status = worker::control::Client::open(&data)?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_worker_status(&status);
            }
        }
        WorkerAction::Suspend { data } => {
            let status = worker::control::Client::open(&data)?.suspend().await?;
            let held = status.running.len();
            println!(
                "suspended: {held} running unit{} paused where {}; no new work until `fallow worker resume --data {}`",
                if held == 1 { "" } else { "s" },
                if held == 1 { "it is" } else { "they are" },
                data.display()
            );
        }
        WorkerAction::Resume { data } => {
            let status = worker::control::Client::open(&data)?.resume().await?;
            match &status.reason {
                None => println!("resumed: running"),
                Some(reason) => println!("resumed, but still suspended: {reason}"),
            }
        }
        WorkerAction::Prefs { data, change } => {
            let client = worker::control::Client::open(&data);
            let rows = match (change, client) {
                (None, Ok(c)) => c.prefs().await?,
                (Some(PrefsAction::Set { key, value }), Ok(c)) => {
                    let rows = c.set_pref(&key, &value).await?;
                    println!("{key} set; the running worker applied it and saved it to prefs.toml");
                    rows
                }
                // No worker running: the file alone (a worker's flags are unknown).
                (None, Err(_)) => {
                    println!(
                        "(no worker running on --data {}; showing prefs.toml and defaults)",
                        data.display()
                    );
                    worker::prefs::Effective::load(&data, Default::default())?.rows()
                }
                (Some(PrefsAction::Set { key, value }), Err(_)) => {
                    std::fs::create_dir_all(&data)
                        .with_context(|| format!("cannot create {}", data.display()))?;
                    let mut eff = worker::prefs::Effective::load(&data, Default::default())?;
                    eff.set(&data, &key, &value)?;
                    println!(
                        "{key} saved to {}; it applies when the worker starts",
                        worker::prefs::path(&data).display()
                    );
                    eff.rows()
                }
            };
            let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
            for r in rows {
                println!("{:width$}  {:24}  ({})", r.key, r.value, r.source);
            }
        }
    }
    Ok(())
}

fn print_worker_status(s: &worker::control::Status) {
    use std::io::IsTerminal;
    println!(
        "worker {}… (account {}) for {}",
        &s.worker[..s.worker.len().min(16)],
        s.account,
        s.coordinator
    );
    match &s.reason {
        None => println!("state: running"),
        Some(reason) => println!("state: suspended: {reason}"),
    }
    println!(
        "limits: {} core{}, CPU {} % of the time, memory budget {} MiB (user {})",
        s.cores,
        if s.cores == 1 { "" } else { "s" },
        s.cpu_limit_percent,
        s.memory_budget_mb,
        if s.user_active { "active" } else { "idle" }
    );
    println!(
        "machine: user idle {}; other programs' CPU {:.0} %; {}",
        match s.user_idle_seconds {
            Some(secs) => format!("{} min {} s", secs / 60, secs % 60),
            None => "unknown (no graphical session: counted as idle)".into(),
        },
        s.other_cpu_percent,
        if s.on_battery { "on battery" } else { "on AC" }
    );
    if s.running.is_empty() {
        println!("running: nothing");
    } else {
        println!("running:");
        // indicatif draws real bars on a terminal; piped output gets the same as text.
        let terminal = std::io::stdout().is_terminal();
        for u in &s.running {
            let label = format!("unit {} {}", u.unit, u.name);
            let detail = format!(
                "{} / {} fuel, {:.0} s{}",
                fuel(u.fuel_used),
                fuel(u.fuel_limit),
                u.seconds,
                if u.held { ", held" } else { "" }
            );
            if terminal {
                let bar = ProgressBar::with_draw_target(
                    Some(u.fuel_limit.max(1)),
                    indicatif::ProgressDrawTarget::stdout(),
                );
                bar.set_style(
                    ProgressStyle::with_template("  {prefix:30} [{bar:30}] {percent:>3}% {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("#>-"),
                );
                bar.set_prefix(label);
                bar.set_message(detail);
                bar.set_position(u.fuel_used.min(u.fuel_limit));
                bar.abandon();
            } else {
                let pct = (u.fuel_used as f64 / u.fuel_limit.max(1) as f64 * 100.0).min(100.0);
                let filled = (pct / 100.0 * 30.0).round() as usize;
                println!(
                    "  {label:30} [{}{}] {pct:>3.0}% {detail}",
                    "#".repeat(filled),
                    "-".repeat(30 - filled)
                );
            }
        }
    }
    if !s.recent.is_empty() {
        println!("recent results:");
        for f in &s.recent {
            println!(
                "  unit {} {:24} {:16} {} fuel, {:.1} s",
                f.unit,
                f.name,
                f.result,
                fuel(f.fuel),
                f.seconds
            );
        }
    }
}

/// Fuel in a short human form: 1.2e9.
fn fuel(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        format!("{:.1e}", n as f64)
    }
}

fn kind(worker: bool) -> coordinator::auth::Kind {
    if worker {
        coordinator::auth::Kind::Worker
    } else {
        coordinator::auth::Kind::Submit
    }
}

/// `fallow token`.
pub fn token(data: &Path, action: crate::cli::TokenAction) -> anyhow::Result<()> {
    use crate::cli::TokenAction;
    match action {
        TokenAction::Create { name, worker } => {
            let token = coordinator::auth::create_kind(data, kind(worker), &name)?;
            let what = if worker { "worker enrollment" } else { "token" };
            eprintln!(
                "{what} {name:?} created for the coordinator in {}; it is shown only now:",
                data.display()
            );
            println!("{token}");
        }
        TokenAction::List { worker } => {
            for name in coordinator::auth::list_kind(data, kind(worker))? {
                println!("{name}");
            }
        }
        TokenAction::Revoke { name, worker } => {
            if !coordinator::auth::revoke_kind(data, kind(worker), &name)? {
                let what = if worker { "worker enrollment" } else { "token" };
                anyhow::bail!("no {what} named {name:?} in {}", data.display());
            }
            eprintln!("{name:?} revoked");
        }
    }
    Ok(())
}
