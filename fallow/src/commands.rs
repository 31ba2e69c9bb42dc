//! One function per subcommand.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use worker::tls::Trust;

use coordinator::scheduler::Outcome;

use crate::client::{Client, Status};

/// `fallow coordinator`.
pub async fn coordinator(
    listen: SocketAddr,
    tls: ServeTls,
    advertise: Option<String>,
    config: coordinator::CoordinatorConfig,
) -> anyhow::Result<()> {
    // Before the store is opened or created: a bad flag leaves nothing behind.
    config.validate().context("fallow coordinator")?;
    match config.database.clone() {
        Some(url) => deployment(listen, tls, advertise, config, &url).await,
        None => {
            let store = coordinator::store::sqlite::SqliteStore::open_with(
                &config.data_dir,
                coordinator::store::sqlite::OpenOptions {
                    start_afresh: config.start_afresh,
                },
            )
            .await?;
            serve(listen, tls, config, store).await
        }
    }
}

/// `fallow coordinator backup`.
pub async fn coordinator_action(action: crate::cli::CoordinatorAction) -> anyhow::Result<()> {
    match action {
        crate::cli::CoordinatorAction::Backup { data, out } => {
            coordinator::store::sqlite::backup(&data, &out).await?;
            println!(
                "backed up {} to {}",
                coordinator::database_path(&data).display(),
                out.display()
            );
            Ok(())
        }
    }
}

/// `fallow coordinator --database URL`: one of the deployment's coordinators on a shared
/// PostgreSQL database (`coordinator::forward`). It listens at once. If another
/// coordinator schedules the database, this one forwards every call to it (an edge), and
/// takes over when that one stops or dies; then it schedules, and publishes its URL for
/// the others. It stops on Ctrl-C/SIGTERM, or with an error if it loses the database's
/// lock while scheduling.
async fn deployment(
    listen: SocketAddr,
    tls: ServeTls,
    advertise: Option<String>,
    mut config: coordinator::CoordinatorConfig,
    url: &str,
) -> anyhow::Result<()> {
    use coordinator::store::postgres::{Attached, PostgresStore};
    let shown = coordinator::store::postgres::redact(url);
    let name = format!(
        "fallow coordinator {} pid {}",
        host_name(),
        std::process::id()
    );
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create data directory {}", data.display()))?;
    let attached = PostgresStore::attach(url, &name).await?;
    // The deployment's key, certificate and tokens: the database's, or this coordinator's
    // put there if it is the first (`coordinator::deployment`).
    if let Attached::Active(store) = &attached {
        coordinator::deployment::pull(store, &data).await?;
    }
    if let Attached::Standby(standby) = &attached {
        let who = standby
            .holder()
            .map_or_else(|| "another coordinator".to_string(), |h| h.to_string());
        eprintln!(
            "edge: {who} schedules database {shown}; this coordinator forwards every call to \
             it, and takes over when it stops"
        );
        tracing::info!(holder = %who, database = %shown, "serving as an edge");
        let mut said = false;
        loop {
            let files = standby.deployment_files().await?;
            if files.contains_key(coordinator::deployment::KEY_FILE) {
                coordinator::deployment::write_files(files, &data)?;
                break;
            }
            if !said {
                eprintln!(
                    "edge: waiting for the scheduling coordinator to put the deployment's key \
                     in {shown}"
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let identity = tls.identity(listen, &data)?;
    if let Attached::Active(store) = &attached {
        coordinator::deployment::push(store, &data, config.require_enrollment).await?;
        coordinator::deployment::watch(store.clone(), data.clone());
    }
    let key = protocol::Identity::load_or_create(&data.join(coordinator::deployment::KEY_FILE))
        .map_err(|e| {
            anyhow!(
                "the deployment's coordinator key in {}: {e}",
                data.display()
            )
        })?;
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let my_url = leader_url(advertise.as_deref(), addr, identity.as_ref());
    config.tls = identity.clone();
    let leaders = match &attached {
        Attached::Standby(standby) => standby
            .leader_watch()
            .spawn(Duration::from_secs(1), &my_url),
        Attached::Active(_) => tokio::sync::watch::channel(None).1,
    };
    let switch = coordinator::forward::Switch::forwarding(coordinator::forward::Edge::new(
        leaders,
        coordinator::forward::secret(&key),
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = tokio_util::sync::CancellationToken::new();
    // The scheduling coordinator loads the store before it announces itself, so that a
    // script that read `listening on` finds it serving; an edge announces itself at once.
    let (attached, scheduled) = match attached {
        Attached::Active(store) => {
            let scheduling =
                coordinator::promote(&switch, store.clone(), &config, stop.clone()).await?;
            store.publish_leader(&my_url).await?;
            tracing::info!(url = %my_url, "scheduling the deployment");
            (None, Some((store, scheduling)))
        }
        Attached::Standby(standby) => (Some(standby), None),
    };
    announce(addr, identity.as_ref())?;
    let server = {
        let (config, switch, shutdown, stop) = (
            config.clone(),
            switch.clone(),
            shutdown.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            coordinator::serve_switched(
                listener,
                &config,
                &switch,
                shutdown.cancelled_owned(),
                stop,
            )
            .await
        })
    };
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            shutdown.cancel();
        });
    }
    let (store, scheduling) = match (scheduled, attached) {
        (Some(scheduled), _) => scheduled,
        (None, Some(standby)) => {
            let store = tokio::select! {
                store = standby.take_over() => store?,
                () = shutdown.cancelled() => {
                    server.await??;
                    return Ok(());
                }
            };
            eprintln!("edge: the scheduling coordinator is gone; taking over {shown}");
            tracing::info!(database = %shown, "taking over as the scheduling coordinator");
            coordinator::deployment::pull(&store, &data).await?;
            coordinator::deployment::push(&store, &data, config.require_enrollment).await?;
            coordinator::deployment::watch(store.clone(), data.clone());
            let scheduling = coordinator::promote(&switch, store.clone(), &config, stop).await?;
            store.publish_leader(&my_url).await?;
            tracing::info!(url = %my_url, "scheduling the deployment");
            (store, scheduling)
        }
        (None, None) => bail!("attached to {shown} neither as the scheduler nor as an edge"),
    };
    let lost = store.lost();
    let was_lost = tokio::select! {
        () = lost => {
            shutdown.cancel();
            true
        }
        () = shutdown.cancelled() => false,
    };
    server.await??;
    scheduling.wind_down().await;
    if was_lost {
        bail!(
            "lost the database's coordinator lock (its connection failed), so stopped serving: \
             two coordinators must never schedule one database at once. Start this one again: \
             it serves as an edge if another coordinator took over"
        );
    }
    Ok(())
}

/// The URL the other coordinators of a deployment reach this one at: `--advertise`'s host
/// (or the listening address's; the host name when it listens on every interface), with
/// the certificate's pin over TLS.
fn leader_url(
    advertise: Option<&str>,
    addr: SocketAddr,
    identity: Option<&coordinator::tls::TlsIdentity>,
) -> String {
    let host = match advertise {
        Some(host) => host.to_string(),
        None => url_host(addr),
    };
    match identity {
        Some(identity) => format!(
            "https://{host}:{}#sha256={}",
            addr.port(),
            hex::encode(identity.fingerprint.0)
        ),
        None => format!("http://{host}:{}", addr.port()),
    }
}

/// The host part of a URL for `addr`: the host name when it is every interface.
fn url_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        host_name()
    } else {
        match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    }
}

/// Binds `listen`.
async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (is another coordinator running there?)")
        })
}

/// Prints where the coordinator serves: `listening on ADDR` first (scripts and tests read
/// it to learn the port when --listen has port 0), then the TLS fingerprint and URL, and
/// the dashboard's address.
fn announce(
    addr: SocketAddr,
    identity: Option<&coordinator::tls::TlsIdentity>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")?;
    // A script that reads only the first line may have closed the pipe by now: not an
    // error (println! would panic on it).
    match identity {
        Some(identity) => {
            let host = url_host(addr);
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
    Ok(())
}

/// The rest of `fallow coordinator` on the embedded store, once it is open; it stops on
/// Ctrl-C/SIGTERM.
async fn serve(
    listen: SocketAddr,
    tls: ServeTls,
    mut config: coordinator::CoordinatorConfig,
    store: impl coordinator::store::Store,
) -> anyhow::Result<()> {
    let identity = tls.identity(listen, &config.data_dir)?;
    // The admin token exists before anyone can connect (`fallow submit` reads it then).
    coordinator::auth::mint_on_first_start(&config.data_dir)?;
    let listener = bind(listen).await?;
    announce(listener.local_addr()?, identity.as_ref())?;
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
    once: bool,
) -> anyhow::Result<()> {
    let mut spec = protocol::manifest::load(manifest)?;
    for warning in sandbox::determinism_warnings(&spec.module) {
        eprintln!("warning: {}: {warning}", manifest.display());
    }
    let submitter = submitter_key(key)?;
    spec.sign(&submitter);
    let units = spec.units.len();
    let name = spec.name.clone();
    let client = Client::connect(coordinator, trust).await?;
    // Without --token: the admin token of a coordinator started here on the default data
    // dir, so the five-minute path needs no copying of secrets. Read once connected: a
    // coordinator that was just started writes it before it binds its port.
    let token = token.or_else(|| {
        std::fs::read_to_string(Path::new("fallow-data").join(coordinator::auth::ADMIN_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string())
    });
    let client = client.with_token(token);
    // Data first, each file once: the coordinator refuses a project naming data it lacks.
    let uploaded = client.upload_data(&spec).await?;
    if !spec.data.is_empty() {
        eprintln!(
            "data: {} of {} files uploaded ({} already on the coordinator)",
            uploaded,
            spec.data.len(),
            spec.data.len() - uploaded
        );
    }
    let submitted = client.submit(spec, once).await?;
    if submitted.reused {
        eprintln!(
            "project {name:?} was submitted before as project {} (the same module, inputs and terms); --once: nothing submitted",
            submitted.id
        );
    } else {
        eprintln!("submitted project {name:?} with {units} units");
        if !submitted.duplicates.is_empty() {
            eprintln!(
                "warning: {}",
                duplicate_warning(&submitted.duplicates, submitted.id)
            );
        }
    }
    println!("{}", submitted.id);
    Ok(())
}

/// What `fallow submit` says when the same project was submitted before.
fn duplicate_warning(earlier: &[u64], id: u64) -> String {
    let list = earlier
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "the same module, inputs and terms were already submitted as project{} {list}; \
         project {id} is another copy and runs every unit again \
         (`fallow submit --once` submits only what was not submitted before)",
        if earlier.len() == 1 { "" } else { "s" }
    )
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

/// `fallow cancel|pause|resume|retry|reduce`: signs the call with the submitter key and
/// says what happened.
pub async fn control(
    args: &crate::cli::ControlArgs,
    trust: &Trust,
    action: protocol::control::Action,
) -> anyhow::Result<()> {
    let submitter = submitter_key(args.key.clone())?;
    let client = Client::connect(&args.coordinator, trust).await?;
    let project = args.project;
    let done = client
        .control(project, action, &submitter)
        .await
        .map_err(|e| {
            anyhow!(
                "coordinator {} refused to {action} project {project}: {e}",
                args.coordinator
            )
        })?;
    println!("{}", control_sentence(project, action, &done));
    Ok(())
}

/// What a control call did, in one sentence.
fn control_sentence(
    project: u64,
    action: protocol::control::Action,
    d: &protocol::control::Done,
) -> String {
    use protocol::control::Action;
    let units = |n: u64| {
        if n == 1 {
            "1 unit".to_string()
        } else {
            format!("{n} units")
        }
    };
    let running = if d.in_progress > 0 {
        format!(
            "; {} leased may still finish and verify",
            units(d.in_progress)
        )
    } else {
        String::new()
    };
    match action {
        Action::Pause => format!(
            "project {project} paused: {} pending will not be leased until `fallow resume {project}`{running}",
            units(d.pending)
        ),
        Action::Resume => format!(
            "project {project} resumed: {} pending will be leased again",
            units(d.pending)
        ),
        Action::Cancel => format!(
            "project {project} cancelled: {} not yet settled ended as cancelled (workers drop \
             the ones they hold); verified results stay: `fallow results {project}`",
            units(d.units)
        ),
        Action::Retry => format!(
            "project {project}: {} that failed will run again ({} pending now); `fallow status {project}` shows progress",
            units(d.units),
            d.pending
        ),
        Action::Reduce => format!(
            "project {project}: reducer started again; `fallow status {project}` says when the \
             aggregate is ready, `fallow results {project}` writes it"
        ),
    }
}

/// `fallow extend PROJECT MANIFEST`: signs MANIFEST's units under the project's terms
/// (which the coordinator's status names) and adds them.
pub async fn extend(
    args: &crate::cli::ControlArgs,
    trust: &Trust,
    manifest: &Path,
) -> anyhow::Result<()> {
    let spec = protocol::manifest::load(manifest)?;
    let submitter = submitter_key(args.key.clone())?;
    let client = Client::connect(&args.coordinator, trust).await?;
    let project = args.project;
    let status = client
        .status(Some(project))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("coordinator {} has no project {project}", args.coordinator))?;
    let Some(terms) = status.terms else {
        bail!(
            "project {project} was submitted before projects were signed: it has no terms to \
             sign new units under, so it cannot be extended"
        );
    };
    let module = protocol::Digest::of(&spec.module);
    let data = protocol::data::list_digest(&spec.data);
    let signatures = spec
        .units
        .iter()
        .map(|(name, input)| {
            protocol::provenance::UnitTerms {
                terms,
                module,
                limits: spec.limits,
                quorum: spec.quorum,
                name,
                input,
                data,
            }
            .sign(&submitter)
        })
        .collect();
    let count = spec.units.len();
    let extension = protocol::control::Extension {
        project: protocol::ProjectId(project),
        key: protocol::SubmitterKey::of(&submitter),
        units: spec.units,
        signatures,
    };
    let done = client.extend(extension, &submitter).await.map_err(|e| {
        anyhow!(
            "coordinator {} refused to extend project {project} with {}: {e}",
            args.coordinator,
            manifest.display()
        )
    })?;
    let paused = if done.state == protocol::control::State::Paused {
        format!(" (the project is paused: `fallow resume {project}` leases them)")
    } else {
        String::new()
    };
    println!(
        "project {project} extended: {count} units added from {}, {} pending now{paused}; the \
         reducer, if any, runs again once every unit settles",
        manifest.display(),
        done.pending
    );
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
        wait_for(&client, project, Progress::for_status(json)).await?;
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
        writeln!(
            out,
            "{:>4}  {:<24} {:>8} {:>8} {:>6} {:>8} {:>8}  {}",
            p.id.0,
            p.name,
            p.verified,
            p.total,
            p.failed,
            p.in_progress,
            p.executions,
            p.outcome.as_str()
        )?;
        if !p.aggregate_error.is_empty() {
            writeln!(out, "      reducer failed: {}", p.aggregate_error)?;
        } else if p.outcome == Outcome::Failed {
            writeln!(
                out,
                "      every unit failed: `fallow results` writes why to failed.txt"
            )?;
        }
        match p.state {
            protocol::control::State::Paused => writeln!(
                out,
                "      paused: {} units pending are not leased until `fallow resume {}`",
                p.pending, p.id.0
            )?,
            protocol::control::State::Cancelled => writeln!(
                out,
                "      cancelled: {} units ended unsettled; verified results stay downloadable",
                p.cancelled
            )?,
            protocol::control::State::Active => {}
        }
        for w in &p.waiting {
            writeln!(out, "      waiting: {w}")?;
        }
        for w in &p.warnings {
            writeln!(out, "      warning: {w}")?;
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

/// How `wait_for` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A progress bar per project (on stderr, when it is a terminal).
    Bars,
    /// A line per project each time its numbers change: for logs and pipes, where bars
    /// would show nothing until the end. On stderr when stdout is kept for JSON.
    Lines {
        /// Write them to stderr.
        stderr: bool,
    },
}

impl Progress {
    /// `fallow status --wait`: bars on a terminal, lines otherwise (and with `--json`).
    fn for_status(json: bool) -> Progress {
        use std::io::IsTerminal;
        if !json && std::io::stdout().is_terminal() {
            Progress::Bars
        } else {
            Progress::Lines { stderr: json }
        }
    }
}

/// Shows progress until all shown projects are finished.
pub(crate) async fn wait_for(
    client: &Client,
    project: Option<u64>,
    progress: Progress,
) -> anyhow::Result<()> {
    let multi = match progress {
        Progress::Bars => MultiProgress::new(),
        Progress::Lines { .. } => {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        }
    };
    let mut lines = ChangeLines::default();
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{bar:40.green/white}] {pos}/{len} verified {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: std::collections::HashMap<u64, ProgressBar> = std::collections::HashMap::new();
    let mut said: std::collections::HashMap<u64, Vec<String>> = std::collections::HashMap::new();
    let mut warned: std::collections::HashSet<(u64, String)> = std::collections::HashSet::new();
    loop {
        let projects = client.status(project).await?;
        if projects.is_empty() {
            bail!("no projects to wait for");
        }
        // A line for the reader: above the bars, or on its own without a terminal.
        let say = |line: &str| match progress {
            Progress::Bars => {
                let _ = multi.println(line);
            }
            // A closed pipe is the reader's choice, not an error of ours.
            Progress::Lines { stderr: true } => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Progress::Lines { stderr: false } => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        };
        if let Progress::Lines { .. } = progress {
            for line in lines.changed(&projects) {
                say(&line);
            }
        }
        for p in &projects {
            let bar = bars.entry(p.id.0).or_insert_with(|| {
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
            let before = said.entry(p.id.0).or_default();
            if *before != p.waiting {
                for w in p.waiting.iter().filter(|w| !before.contains(w)) {
                    say(&format!("project {}: {w}", p.id));
                }
                *before = p.waiting.clone();
            }
            // Each warning once: it stays true while the project runs.
            for w in &p.warnings {
                if warned.insert((p.id.0, w.clone())) {
                    say(&format!("project {}: warning: {w}", p.id));
                }
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

/// The progress lines of `status --wait` without a terminal: one per project whose line
/// changed since it was last printed.
#[derive(Debug, Default)]
struct ChangeLines {
    last: std::collections::HashMap<u64, String>,
}

impl ChangeLines {
    fn changed(&mut self, projects: &[Status]) -> Vec<String> {
        let mut out = Vec::new();
        for p in projects {
            let line = progress_line(p);
            if self.last.get(&p.id.0) != Some(&line) {
                self.last.insert(p.id.0, line.clone());
                out.push(line);
            }
        }
        out
    }
}

/// `project 3 primes: running · 12/40 verified · 1 failed · 4 running · workers: 2
/// running, 1 suspended: …` (the fleet only while the project runs).
fn progress_line(p: &Status) -> String {
    let mut line = format!(
        "project {} {}: {} · {}/{} verified · {} failed · {} running",
        p.id,
        p.name,
        p.outcome.as_str(),
        p.verified,
        p.total,
        p.failed,
        p.in_progress
    );
    if !p.aggregate_error.is_empty() {
        line.push_str(&format!(" · reducer failed: {}", p.aggregate_error));
    }
    if !p.finished && !p.fleet.is_empty() {
        line.push_str(&format!(" · workers: {}", p.fleet));
    }
    line
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

/// `fallow results`: refuses a directory holding something else than this project's
/// results (unless `force`), writes the outputs, `failed.txt` and the aggregate, and
/// fails when the reducer did. With `follow`, each output is written as its unit verifies
/// (and each JSON line printed or appended at once) until the project is finished.
pub async fn results(
    coordinator: &str,
    trust: &Trust,
    project: u64,
    out: Option<&Path>,
    format: crate::cli::ResultsFormat,
    force: bool,
    follow: bool,
) -> anyhow::Result<()> {
    if out.is_none() && format == crate::cli::ResultsFormat::Dir {
        bail!(
            "--out DIR is needed to write the results as files; or --format jsonl prints them to stdout"
        );
    }
    let client = Client::connect(coordinator, trust).await?;
    let status = client
        .status(Some(project))
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("project {project} is not on {coordinator}"))?;
    let marker = ResultsMarker {
        project,
        name: status.name.clone(),
        coordinator: coordinator.to_string(),
    };
    if let Some(out) = out {
        check_results_dir(out, &marker, force)?;
    }
    let jsonl = format == crate::cli::ResultsFormat::Jsonl;
    // Without --follow nothing is written before the whole answer is in: an answer that
    // ends in an error leaves no directory behind.
    let mut sink = if follow {
        Some(ResultsSink::new(out, &marker, jsonl, follow)?)
    } else {
        None
    };
    let mut stream = client.result_stream(project, follow).await?;
    // While following, say every half minute where the project stands, so a long wait
    // explains itself (on stderr: stdout may be the JSON lines).
    let progress = follow.then(|| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(FOLLOW_PROGRESS_EVERY).await;
                if let Ok(projects) = client.status(Some(project)).await
                    && let Some(p) = projects.first()
                {
                    let mut line = progress_line(p);
                    for w in &p.waiting {
                        line.push_str(&format!("\n  waiting: {w}"));
                    }
                    if line != last {
                        eprintln!("{line}");
                        last = line;
                    }
                }
            }
        })
    });
    let mut results = crate::client::Results::default();
    let received = async {
        while let Some(item) = stream.next().await? {
            match item {
                crate::client::ResultItem::Verified(v) => {
                    // Names were checked at submit, but this coordinator may not be ours:
                    // never let a name escape the output directory (nor reach a script's
                    // JSON unchecked).
                    protocol::manifest::check_unit_name(&v.unit)
                        .map_err(|e| anyhow!("coordinator sent a bad unit name: {e}"))?;
                    if let Some(sink) = &mut sink {
                        sink.verified(&v)?;
                    }
                    results.verified.push(crate::client::Verified {
                        output: if follow { Vec::new() } else { v.output },
                        ..v
                    });
                }
                crate::client::ResultItem::Failed { unit, reason } => {
                    results.failed.push((unit, reason))
                }
                crate::client::ResultItem::Aggregate(a) => results.aggregate = Some(a),
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(progress) = progress {
        progress.abort();
    }
    received?;
    let sink = match sink {
        Some(sink) => sink,
        None => {
            let mut sink = ResultsSink::new(out, &marker, jsonl, follow)?;
            for v in &results.verified {
                sink.verified(v)?;
            }
            sink
        }
    };
    sink.finish(&results)?;
    let status = if follow {
        // Finished now: say so from a fresh status, not the one from before the wait.
        client
            .status(Some(project))
            .await?
            .into_iter()
            .next()
            .unwrap_or(status)
    } else {
        status
    };
    reducer_outcome(project, &results, &status, out)
}

/// How often `fallow results --follow` prints where the project stands.
const FOLLOW_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Where `fallow results` puts what arrives: files in `--out`, JSON lines on stdout or in
/// DIR/results.jsonl.
struct ResultsSink<'a> {
    out: Option<&'a Path>,
    /// The JSON lines written so far (`--format jsonl` without `--follow` into a
    /// directory: written whole at the end, like every other file).
    lines: Option<String>,
    /// Where JSON lines go at once: stdout, or (with `--follow --out`) the
    /// results.jsonl file, appended to as units verify.
    live: Option<Box<dyn Write>>,
}

impl<'a> ResultsSink<'a> {
    /// Creates `out` (if given) with its marker first, so a directory left half-written
    /// still says whose results it holds.
    fn new(
        out: Option<&'a Path>,
        marker: &ResultsMarker,
        jsonl: bool,
        follow: bool,
    ) -> anyhow::Result<Self> {
        if let Some(out) = out {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_atomic(
                &out.join(RESULTS_MARKER),
                format!("{}\n", serde_json::to_string(marker)?).as_bytes(),
            )?;
        }
        let (lines, live): (Option<String>, Option<Box<dyn Write>>) = match (jsonl, out) {
            (false, _) => (None, None),
            (true, None) => (None, Some(Box::new(std::io::stdout()))),
            (true, Some(dir)) if follow => {
                let path = dir.join(RESULTS_JSONL);
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                (None, Some(Box::new(file)))
            }
            (true, Some(_)) => (Some(String::new()), None),
        };
        Ok(ResultsSink { out, lines, live })
    }

    fn line(&mut self, object: &serde_json::Value) -> anyhow::Result<()> {
        let line = format!("{object}\n");
        if let Some(lines) = &mut self.lines {
            lines.push_str(&line);
        }
        if let Some(live) = &mut self.live {
            live.write_all(line.as_bytes())?;
            live.flush()?;
        }
        Ok(())
    }

    /// One verified unit: its file, its JSON line.
    fn verified(&mut self, v: &crate::client::Verified) -> anyhow::Result<()> {
        if let Some(out) = self.out {
            write_atomic(&out.join(&v.unit), &v.output)?;
        }
        if self.lines.is_some() || self.live.is_some() {
            self.line(&verified_json(v))?;
        }
        Ok(())
    }

    /// The failed units (their JSON lines and failed.txt), the aggregate, and the JSON
    /// lines file when it is written whole.
    fn finish(mut self, results: &crate::client::Results) -> anyhow::Result<()> {
        for (unit, reason) in &results.failed {
            if self.lines.is_some() || self.live.is_some() {
                self.line(
                    &serde_json::json!({ "unit": unit, "state": "failed", "reason": reason }),
                )?;
            }
        }
        let Some(out) = self.out else {
            return Ok(());
        };
        let mut failed = String::new();
        for (unit, reason) in &results.failed {
            failed.push_str(&format!("{unit}\t{}\n", reason.replace('\n', " ")));
        }
        write_atomic(&out.join("failed.txt"), failed.as_bytes())?;
        if let Some(lines) = &self.lines {
            write_atomic(&out.join(RESULTS_JSONL), lines.as_bytes())?;
        }
        if let Some(Ok(bytes)) = &results.aggregate {
            write_atomic(&out.join("aggregate"), bytes)?;
        }
        Ok(())
    }
}

/// The JSON lines file `--format jsonl --out DIR` writes: a name no unit may have
/// ([`protocol::manifest::RESERVED_UNIT_NAMES`]).
const RESULTS_JSONL: &str = "results.jsonl";

/// A verified unit's JSON line: name, digest, fuel, signers, when it was verified and the
/// output (as text when it is UTF-8, else base64).
fn verified_json(v: &crate::client::Verified) -> serde_json::Value {
    use base64::Engine as _;
    let mut object = serde_json::json!({
        "unit": v.unit,
        "state": "verified",
        "digest": hex::encode(&v.digest),
        "fuel": v.fuel,
        "signers": v.signers.iter().map(hex::encode).collect::<Vec<_>>(),
        "verified_ms": v.verified_ms,
        "output_bytes": v.output.len(),
    });
    match std::str::from_utf8(&v.output) {
        Ok(text) => object["output"] = text.into(),
        Err(_) => {
            object["output_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&v.output)
                .into()
        }
    }
    object
}

/// What `fallow results` says last, and whether it fails: a failed reducer is an error
/// (the outputs were written all the same).
fn reducer_outcome(
    project: u64,
    results: &crate::client::Results,
    status: &crate::client::Status,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let wrote = format!(
        "{} verified outputs and {} failed units",
        results.verified.len(),
        results.failed.len()
    );
    let to = out.map_or_else(|| "stdout".to_string(), |o| o.display().to_string());
    match &results.aggregate {
        Some(Err(e)) => bail!(
            "project {project}'s reducer failed: {e}; wrote {wrote} to {to}, but there is no aggregate"
        ),
        Some(Ok(_)) if out.is_some() => eprintln!("wrote {wrote} and the aggregate to {to}"),
        None if status.has_reducer => eprintln!(
            "wrote {wrote} to {to}; no aggregate yet: project {project} is {} ({} of {} units settled)",
            status.outcome.as_str(),
            status.verified + status.failed,
            status.total
        ),
        _ => eprintln!("wrote {wrote} to {to}"),
    }
    Ok(())
}

/// The file in a results directory that names the project whose results it holds (a
/// unit's name never starts with a dot, so no output can take its place).
const RESULTS_MARKER: &str = ".fallow-results";

/// What [`RESULTS_MARKER`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ResultsMarker {
    /// The project id.
    project: u64,
    /// Its name.
    name: String,
    /// The coordinator it came from (for the record; the same project may be reached
    /// under another URL).
    coordinator: String,
}

/// Refuses to write `mine` into `dir` when it holds anything but `mine`'s results (another
/// project's, or files of no project) unless `force`: two projects' outputs would mix.
fn check_results_dir(dir: &Path, mine: &ResultsMarker, force: bool) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let theirs: Option<ResultsMarker> = std::fs::read_to_string(dir.join(RESULTS_MARKER))
        .ok()
        .and_then(|text| serde_json::from_str(text.trim()).ok());
    let same = theirs
        .as_ref()
        .is_some_and(|t| t.project == mine.project && t.name == mine.name);
    if same {
        return Ok(());
    }
    let holds = match &theirs {
        Some(t) => format!(
            "holds the results of project {} {:?} (from {})",
            t.project, t.name, t.coordinator
        ),
        None => format!(
            "is not empty ({} entr{}, e.g. {:?}) and holds no results of project {}",
            names.len(),
            if names.len() == 1 { "y" } else { "ies" },
            names.iter().min().map(String::as_str).unwrap_or_default(),
            mine.project
        ),
    };
    if force {
        eprintln!(
            "warning: {} {holds}; writing project {} {:?} there anyway (--force)",
            dir.display(),
            mine.project,
            mine.name
        );
        return Ok(());
    }
    bail!(
        "{} {holds}: choose an empty or new --out directory, or pass --force to write project {} {:?} there anyway (files of the same name are replaced, the others stay)",
        dir.display(),
        mine.project,
        mine.name
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(project: u64, name: &str) -> ResultsMarker {
        ResultsMarker {
            project,
            name: name.into(),
            coordinator: "http://127.0.0.1:7070".into(),
        }
    }

    /// `results` writes into a new or empty directory, or one holding the same project's
    /// results; anything else only with --force.
    #[test]
    fn results_refuse_a_directory_holding_other_files_unless_forced() {
        let root = tempfile::tempdir().expect("tempdir");
        let mine = marker(3, "primes");
        let new = root.path().join("new");
        check_results_dir(&new, &mine, false).expect("a new directory");
        std::fs::create_dir(&new).expect("mkdir");
        check_results_dir(&new, &mine, false).expect("an empty directory");

        let same = root.path().join("same");
        std::fs::create_dir(&same).expect("mkdir");
        std::fs::write(same.join("u1"), "1").expect("output");
        std::fs::write(
            same.join(RESULTS_MARKER),
            serde_json::to_string(&marker(3, "primes")).expect("json"),
        )
        .expect("marker");
        check_results_dir(&same, &mine, false).expect("this project's results");

        let other = root.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        std::fs::write(
            other.join(RESULTS_MARKER),
            serde_json::to_string(&marker(2, "mandel")).expect("json"),
        )
        .expect("marker");
        let err = check_results_dir(&other, &mine, false)
            .expect_err("another project's results")
            .to_string();
        assert!(
            err.contains("holds the results of project 2 \"mandel\"") && err.contains("--force"),
            "{err}"
        );
        check_results_dir(&other, &mine, true).expect("forced");

        let stray = root.path().join("stray");
        std::fs::create_dir(&stray).expect("mkdir");
        std::fs::write(stray.join("notes.txt"), "mine").expect("file");
        let err = check_results_dir(&stray, &mine, false)
            .expect_err("files of no project")
            .to_string();
        assert!(
            err.contains("is not empty") && err.contains("\"notes.txt\""),
            "{err}"
        );
    }

    #[test]
    fn a_repeated_submission_is_named() {
        let one = duplicate_warning(&[3], 7);
        assert!(
            one.contains("submitted as project 3;") && one.contains("project 7 is another copy"),
            "{one}"
        );
        assert!(one.contains("--once"), "{one}");
        assert!(duplicate_warning(&[3, 5], 7).contains("projects 3, 5;"));
    }

    fn status(verified: u64, failed: u64, running: u64, finished: bool) -> Status {
        let total = 4;
        Status {
            id: protocol::ProjectId(1),
            name: "p".into(),
            total,
            verified,
            failed,
            cancelled: 0,
            in_progress: running,
            pending: total - verified - failed - running,
            executions: 0,
            disputes: 0,
            replication: 2,
            quorum: 2,
            credit: 0,
            solo: 0,
            spot_checks: 0,
            mismatches: 0,
            reopened: 0,
            finished,
            outcome: Outcome::of(
                total,
                (verified, failed, 0),
                finished,
                false,
                protocol::control::State::Active,
            ),
            state: protocol::control::State::Active,
            has_reducer: false,
            aggregate_ready: false,
            aggregate_error: String::new(),
            submitter: String::new(),
            terms: None,
            workers_running: 0,
            workers_suspended: 0,
            workers_idle: 0,
            fleet: String::new(),
            waiting: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Each control command says what happened and what to do next.
    #[test]
    fn control_sentences_say_what_happened() {
        use protocol::control::{Action, Done, State};
        let done = |units, pending, in_progress| Done {
            state: State::Paused,
            units,
            pending,
            in_progress,
        };
        assert_eq!(
            control_sentence(3, Action::Pause, &done(0, 12, 0)),
            "project 3 paused: 12 units pending will not be leased until `fallow resume 3`"
        );
        let paused = control_sentence(3, Action::Pause, &done(0, 12, 1));
        assert!(
            paused.ends_with("; 1 unit leased may still finish and verify"),
            "{paused}"
        );
        let cancel = control_sentence(3, Action::Cancel, &done(5, 0, 0));
        assert!(
            cancel.starts_with("project 3 cancelled: 5 units"),
            "{cancel}"
        );
        assert!(cancel.contains("`fallow results 3`"), "{cancel}");
        let retry = control_sentence(3, Action::Retry, &done(1, 1, 0));
        assert!(
            retry.starts_with("project 3: 1 unit that failed will run again"),
            "{retry}"
        );
    }

    /// Without a terminal, `status --wait` prints a line each time a project's numbers
    /// change, and nothing while they stay the same.
    #[test]
    fn progress_lines_come_once_per_change() {
        let mut lines = ChangeLines::default();
        assert_eq!(
            lines.changed(&[status(0, 0, 0, false)]),
            ["project 1 p: running · 0/4 verified · 0 failed · 0 running"]
        );
        assert!(lines.changed(&[status(0, 0, 0, false)]).is_empty());
        assert_eq!(lines.changed(&[status(1, 0, 2, false)]).len(), 1);
        assert_eq!(
            lines.changed(&[status(0, 4, 0, true)]),
            ["project 1 p: failed · 0/4 verified · 4 failed · 0 running"]
        );
        // While it runs, the line says what the fleet does, and a change there is a change.
        let mut suspended = status(1, 0, 0, false);
        suspended.fleet = "1 suspended: other programs use 47 % of the CPUs".into();
        assert_eq!(
            lines.changed(&[suspended]),
            [
                "project 1 p: running · 1/4 verified · 0 failed · 0 running · workers: 1 suspended: other programs use 47 % of the CPUs"
            ]
        );
    }
}
