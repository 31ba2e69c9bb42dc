//! The command line, a contract that scripts and tests drive: change it only compatibly.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Fallow: volunteer computing with WebAssembly and results verified by quorum.
#[derive(Debug, Parser)]
#[command(name = "fallow", version)]
pub struct Cli {
    /// Allow plain HTTP off loopback: a coordinator listening on another address serves
    /// without TLS, and clients and workers talk http:// to a host that is not loopback.
    /// Tokens, projects and results then travel in clear; use only on a network you trust.
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How `fallow results` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    /// A directory: a file per verified unit, failed.txt, aggregate.
    Dir,
    /// JSON lines: one object per unit.
    Jsonl,
}

/// Default coordinator URL for clients and workers.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// The subcommands.
// Parsed once per process: the size of the largest variant (the worker's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: gRPC API and web dashboard on --listen, state in SQLite under
    /// --data (or in PostgreSQL with --database). With a subcommand, work on its store
    /// instead (backup).
    #[command(args_conflicts_with_subcommands = true)]
    Coordinator {
        /// Work on the store instead of serving.
        #[command(subcommand)]
        action: Option<CoordinatorAction>,
        /// Address to serve the gRPC API and the read-only dashboard on (port 0 picks a free
        /// port; the chosen address is printed as `listening on ADDR`, then the dashboard's
        /// URL as `dashboard on http://ADDR/`).
        #[arg(long, env = "FALLOW_LISTEN", default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Data directory; restarting on the same one resumes everything. With --database
        /// it keeps only a copy of the deployment's key, TLS certificate and tokens, whose
        /// originals are in the database (the same for every coordinator on it).
        #[arg(long, default_value = "fallow-data")]
        data: PathBuf,
        /// Keep the store (projects, units, results, workers, credit) in PostgreSQL instead
        /// of DATA/fallow.db: postgres://USER[:PASSWORD]@HOST:PORT/DB (or postgresql://;
        /// PGPASSWORD works too). The database must exist; the coordinator creates its
        /// tables. Several coordinators may serve one database: one schedules (the first), every
        /// other one listens too and forwards each call to it (an edge, which says so), and
        /// one of them takes over when the scheduling one stops or dies.
        #[arg(
            long,
            env = "FALLOW_DATABASE",
            hide_env_values = true,
            value_name = "URL"
        )]
        database: Option<String>,
        /// With --database: the host name or address the deployment's other coordinators
        /// reach this one at, when it schedules (default: the --listen address, or this
        /// machine's host name when it listens on every interface).
        #[arg(
            long,
            env = "FALLOW_ADVERTISE",
            value_name = "HOST",
            requires = "database"
        )]
        advertise: Option<String>,
        /// Seconds a lease lasts without a heartbeat before the unit is reassigned.
        #[arg(long, default_value_t = 120)]
        lease_seconds: u64,
        /// Allow two replicas of one unit to go to workers in the same /24 (IPv4) or /48
        /// (IPv6) network. By default they may not (workers on loopback are always exempt);
        /// allow it for a fleet inside one network, e.g. a lab or a cluster.
        #[arg(long)]
        allow_same_network: bool,
        /// Most requests per second one worker may make (twice as many in a burst); more
        /// are refused with RESOURCE_EXHAUSTED. An honest worker makes a few. 0: no limit.
        #[arg(long, default_value_t = 100)]
        worker_requests_per_second: u32,
        /// Most worker registrations a minute from one /24 (IPv4) or /48 (IPv6) network,
        /// after a burst of 600 (loopback exempt); more are refused with RESOURCE_EXHAUSTED.
        /// 0: no limit.
        #[arg(long, default_value_t = 60)]
        registrations_per_minute: u32,
        /// Most connections open at once from one IPv4 address or IPv6 /64 (loopback
        /// exempt); a connection past it is closed as soon as it is accepted. A worker
        /// needs one: raise it for a lab of more workers behind one NAT address. 0: no cap.
        #[arg(long, default_value_t = 256)]
        max_connections_per_address: usize,
        /// Seconds a connection may go without a request in flight before it is closed
        /// (clients reconnect when they next call); at least 1.
        #[arg(long, default_value_t = 300)]
        idle_timeout_seconds: u64,
        /// Take only enrolled workers: every worker call must carry a token minted with
        /// `fallow token create --worker --name NAME`; `fallow token revoke --worker NAME`
        /// cuts off the workers using it at once.
        #[arg(long)]
        require_enrollment: bool,
        /// Serve TLS even on loopback (off loopback it is the default). The certificate is
        /// made self-signed on first start in DATA/tls/ and reused; its fingerprint is
        /// printed as `tls fingerprint sha256:HEX`, then the URL to give workers as
        /// `coordinator url https://HOST:PORT#sha256=HEX`.
        #[arg(long)]
        tls: bool,
        /// Serve TLS with this certificate chain (PEM, leaf first) instead of the one in
        /// DATA/tls/.
        #[arg(long, requires = "tls_key", value_name = "PATH")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "PATH")]
        tls_key: Option<PathBuf>,
        /// When the store (DATA/fallow.db) is missing from a data directory that held
        /// one, empty, or damaged: set what is left aside (fallow.db*.aside-TIME) and start
        /// with an empty store, losing its projects. Without it the coordinator refuses to
        /// start and says what is wrong. A healthy store is opened as usual.
        #[arg(long)]
        start_afresh: bool,
        /// Test-only fault injection.
        #[arg(long, hide = true, value_enum)]
        fault: Option<CoordinatorFaultArg>,
    },
    /// Donate CPU: run work units for a coordinator until Ctrl-C. With a subcommand, talk
    /// to the worker already running on --data instead (status, suspend, resume, prefs).
    #[command(args_conflicts_with_subcommands = true)]
    Worker {
        /// Talk to a running worker instead of starting one.
        #[command(subcommand)]
        action: Option<WorkerAction>,
        /// Coordinator URL (when no --attach is given): http://127.0.0.1:PORT on loopback,
        /// otherwise https://HOST:PORT#sha256=HEX as `fallow coordinator` prints it (without
        /// `#sha256=` the first certificate seen is trusted and remembered in
        /// DATA/known_coordinators). A comma-separated list URL1,URL2,… names the
        /// coordinators of ONE deployment (an active one and standbys on one PostgreSQL):
        /// the worker works for one at a time and, when it cannot reach it for a few
        /// seconds, moves to the next, keeping its key, credit and units. Independent
        /// coordinators are --attach flags instead.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR, value_name = "URL[,URL…]")]
        coordinator: String,
        /// Work for this coordinator (URL as for --coordinator, or a comma-separated list of
        /// one deployment's coordinators) with a resource share (default 100); repeat for
        /// several independent coordinators. Cores are split over time in proportion to the
        /// shares of those with work. Replaces --coordinator.
        #[arg(long, value_name = "URL[,URL…][=SHARE]")]
        attach: Vec<String>,
        /// Most units buffered per coordinator beyond the running ones (0: none); never
        /// more than can start before their lease runs out.
        #[arg(long, default_value_t = 2)]
        prefetch: usize,
        /// Data directory (identity key, module cache); one per worker.
        #[arg(long, default_value = "fallow-worker")]
        data: PathBuf,
        /// Units to run at once (default: all cores).
        #[arg(long)]
        cores: Option<usize>,
        /// Name shown to the coordinator (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Volunteer account the credit goes to, 1-64 printable characters (default:
        /// "anon-" and the first 8 hex digits of this worker's key).
        #[arg(long)]
        account: Option<String>,
        /// Team of the account, up to 64 printable characters (default: none).
        #[arg(long, default_value = "")]
        team: String,
        /// Address for the peer service other workers call: gRPC on TCP and membership
        /// (SWIM) on UDP, same port number (port 0 = any port free for both).
        #[arg(long, env = "FALLOW_PEER_LISTEN", default_value = "0.0.0.0:0")]
        peer_listen: SocketAddr,
        /// Address peers should use to reach this worker, TCP and UDP (default: derived).
        #[arg(long)]
        peer_advertise: Option<SocketAddr>,
        /// Accept no inbound connections (behind NAT): never a rendezvous board nor a
        /// membership member, but still computes and verifies over connections it opens.
        #[arg(long, conflicts_with = "peer_advertise")]
        no_inbound: bool,
        /// On Ctrl-C/SIGTERM, seconds to let running units finish, or stop at their next
        /// checkpoint (units whose guest checkpoints), before handing the rest back.
        #[arg(long, default_value_t = 10)]
        drain_seconds: u64,
        /// Least seconds between two checkpoints of a unit written to disk (0: every
        /// checkpoint the guest saves).
        #[arg(long, default_value_t = 30)]
        checkpoint_seconds: u64,
        /// The enrollment token for a coordinator that takes only enrolled workers (its
        /// operator mints one with `fallow token create --worker --name NAME`).
        #[arg(long, env = "FALLOW_ENROLL_TOKEN", hide_env_values = true)]
        enroll_token: Option<String>,
        /// Serve Prometheus metrics (executions by result and failure reason, fuel, busy
        /// and idle time, gossip counters) at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Run only projects signed by this submitter key (the 64 hex digits `fallow key`
        /// prints); repeat for several. Default: any signed project, and each new signer
        /// is logged and remembered in DATA/known_submitters.
        #[arg(long = "submitter-key", value_name = "HEX")]
        submitter_keys: Vec<protocol::SubmitterKey>,
        /// Also run projects a coordinator took before projects were signed (from an older
        /// version's data dir). Their module and inputs cannot be checked.
        #[arg(long)]
        allow_unsigned_projects: bool,
        /// Test-only fault injection.
        #[arg(long, hide = true, value_enum)]
        fault: Option<FaultArg>,
        /// A machine given over to Fallow (a server, a cluster node): never suspend for
        /// the user or for other programs (run_if_idle_minutes = 0,
        /// suspend_cpu_busy_percent = 0; preference flags given too still win). Also
        /// FALLOW_DEDICATED=1.
        #[arg(long, env = "FALLOW_DEDICATED", value_parser = clap::builder::FalseyValueParser::new())]
        dedicated: bool,
        /// Preferences (override `prefs.toml` in --data until restart or `prefs set`).
        #[command(flatten)]
        prefs: PrefFlags,
    },
    /// Validate and upload a project; prints the new project id as the last line.
    Submit {
        /// The project manifest (TOML).
        manifest: PathBuf,
        /// Coordinator URL: https://HOST:PORT#sha256=HEX off loopback.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Token that allows submitting (default: the admin token a coordinator started
        /// here with the default --data wrote to fallow-data/admin.token).
        #[arg(long, env = "FALLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Your submitter key (ed25519, hex, mode 0600), made on first use: it signs every
        /// unit with the module, limits and manifest, and workers check the signature
        /// before running anything. Default ~/.config/fallow/submitter.key.
        #[arg(long, env = "FALLOW_SUBMITTER_KEY", value_name = "PATH")]
        key: Option<PathBuf>,
        /// Submit only if no project with the same module, inputs and terms is on the
        /// coordinator; otherwise print that project's id and create nothing. Without it
        /// a repeated submission is accepted as another project, with a warning naming
        /// the earlier one.
        #[arg(long)]
        once: bool,
    },
    /// Start a project: writes NAME/ with the program, NAME/build.sh (builds NAME.wasm),
    /// NAME/fallow.toml (the manifest), example inputs and a README. After `./build.sh`,
    /// `fallow run` and `fallow submit` take it as it stands.
    New {
        /// The project's directory (new; its last component names the project).
        name: PathBuf,
        /// The language of the program.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::new::Lang,
    },
    /// Run one unit here, in the sandbox a worker uses (same limits, ABI and random seed),
    /// to try a module before submitting it. The guest's stdout goes unchanged to stdout;
    /// fuel, time, the digest and any failure reason go to stderr. Exits non-zero when the
    /// unit fails, with the reason a worker would report.
    Run {
        /// The module: a WASI preview 1 command (`.wasm`).
        module: PathBuf,
        /// The unit's input (its stdin). Default: read this command's stdin.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// The unit's name, which seeds its random numbers (`random_get`) as on a
        /// coordinator. Default: the input file's name (as `[inputs] dir` names units),
        /// or `stdin`.
        #[arg(long, value_name = "UNIT")]
        name: Option<String>,
        /// Apply this manifest's `[limits]` (fuel, memory, wall time, output size, NaN
        /// canonicalization). Default: the default limits.
        #[arg(long, value_name = "FALLOW.TOML")]
        manifest: Option<PathBuf>,
    },
    /// Print your submitter public key (making the key on first use), for volunteers who
    /// want their workers to run only your projects (`fallow worker --submitter-key HEX`).
    Key {
        /// The key file, as for `fallow submit --key`.
        #[arg(long, env = "FALLOW_SUBMITTER_KEY", value_name = "PATH")]
        key: Option<PathBuf>,
    },
    /// Manage the tokens that allow submitting projects to a coordinator (its data dir;
    /// changes apply to a running coordinator at once).
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
        /// The coordinator's data directory.
        #[arg(long, global = true, default_value = "fallow-data")]
        data: PathBuf,
    },
    /// Cancel a project, for good: units not yet settled end as cancelled, workers drop
    /// them, verified results stay downloadable (`fallow results`). Only the submitter key
    /// that signed the project may.
    Cancel(ControlArgs),
    /// Pause a project: none of its units is leased until `fallow resume`; units already
    /// leased may still finish and verify. Only its submitter key may.
    Pause(ControlArgs),
    /// Resume a paused project: its units are leased again. Only its submitter key may.
    Resume(ControlArgs),
    /// Run a project's failed units again: they go back to pending with their failure
    /// history cleared (so the same workers may run them). Only its submitter key may.
    Retry(ControlArgs),
    /// Run a finished project's reducer again now (over its verified outputs). Only its
    /// submitter key may.
    Reduce(ControlArgs),
    /// Add units to a project: MANIFEST's units (its `[inputs]`), signed under the
    /// project's terms; its module, [limits] and quorum must be the project's (usually
    /// the project's own manifest with new inputs). Unit names must be new. The reducer
    /// runs again once every unit settles. Only the project's submitter key may.
    Extend {
        #[command(flatten)]
        control: ControlArgs,
        /// The manifest whose units to add.
        manifest: PathBuf,
    },
    /// Show progress of one project or all.
    Status {
        /// Project id (default: all projects).
        project: Option<u64>,
        /// Coordinator URL: https://HOST:PORT#sha256=HEX off loopback.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Wait until the project(s) finish: progress bars on a terminal, otherwise (and
        /// with --json, on stderr) a line per project each time its numbers change.
        #[arg(long)]
        wait: bool,
        /// JSON Lines: one object per project.
        #[arg(long)]
        json: bool,
    },
    /// The leaderboard: volunteer accounts and teams by credit (fuel of verified units).
    Accounts {
        /// Coordinator URL: https://HOST:PORT#sha256=HEX off loopback.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// JSON: {"accounts": [...], "teams": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Write a project's verified outputs, failures and aggregate to a directory. Fails
    /// (exit code 1) when the reducer failed, or when a stored output no longer matches
    /// its digest (the unit is then verified again).
    Results {
        /// Project id.
        project: u64,
        /// Output directory (created if missing). It must be empty or hold this project's
        /// results (named in its `.fallow-results` file). Required with `--format dir`;
        /// with `--format jsonl` the lines go here as `results.jsonl` instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `dir`: one file per verified unit, `failed.txt` and `aggregate`. `jsonl`: one JSON
        /// object per unit — `unit`, `state` (`verified` or `failed`), and for a verified
        /// unit `digest` (hex BLAKE3), `fuel`, `signers` (hex worker keys), `output_bytes`
        /// and `output` (the output as text when it is UTF-8, else `output_base64`); for a
        /// failed one `reason` — to stdout, or with `--out` into DIR/results.jsonl beside
        /// the files `dir` writes.
        #[arg(long, value_enum, default_value = "dir")]
        format: ResultsFormat,
        /// Write into --out even if it holds other files or another project's results.
        #[arg(long)]
        force: bool,
        /// Keep going while the project runs: write each output (and print or append each
        /// JSON line) as its unit verifies, then the failed units and the aggregate once the
        /// project is finished. Where the project stands is printed to stderr every 30 s.
        /// A unit re-opened and verified again is written again (a later JSON line for a
        /// unit supersedes an earlier one).
        #[arg(long)]
        follow: bool,
        /// Coordinator URL: https://HOST:PORT#sha256=HEX off loopback.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
    },
    /// Run the bundled Mandelbrot project on this machine: a coordinator, several workers,
    /// a progress bar, a verification summary and the picture as a PNG.
    Demo {
        /// Workers to start.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Where to write the picture.
        #[arg(long, default_value = "fallow-demo.png")]
        out: PathBuf,
        /// Picture width in pixels (height is 3/4 of it).
        #[arg(long, default_value_t = 1024)]
        width: u32,
        /// Let one worker lie (corrupt every output) to watch verification catch it.
        #[arg(long)]
        liar: bool,
        /// Address of the demo's coordinator and its live dashboard (port 0 = any free
        /// port; the URL is printed at the start).
        #[arg(long, default_value = "127.0.0.1:0")]
        dashboard: SocketAddr,
        /// Keep the coordinator and its dashboard up after the run, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
}

/// `fallow token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Mint a token and print it (it is shown only this once; the coordinator keeps a hash).
    Create {
        /// Who the token is for: 1 to 64 letters, digits or - _ . @.
        #[arg(long)]
        name: String,
        /// A worker enrollment (for `fallow coordinator --require-enrollment`, given to
        /// workers as `--enroll-token`) instead of a token for submitting projects.
        #[arg(long)]
        worker: bool,
    },
    /// List the names of the valid tokens (with --worker: of the worker enrollments).
    List {
        /// The worker enrollments instead.
        #[arg(long)]
        worker: bool,
    },
    /// Revoke a token by name; a revoked enrollment cuts off its workers at once.
    Revoke {
        /// The token's name.
        name: String,
        /// A worker enrollment.
        #[arg(long)]
        worker: bool,
    },
}

/// `fallow coordinator` subcommands.
#[derive(Debug, Subcommand)]
pub enum CoordinatorAction {
    /// Copy the embedded store (DATA/fallow.db) into a new file, also while the coordinator
    /// runs (SQLite's VACUUM INTO: a consistent copy of the last committed state). To
    /// restore, stop the coordinator and put the file in place as DATA/fallow.db. A store
    /// in PostgreSQL (--database) is backed up with pg_dump instead.
    Backup {
        /// The coordinator's data directory.
        #[arg(long, default_value = "fallow-data")]
        data: PathBuf,
        /// The backup file to write; it must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `fallow worker` subcommands: they talk to the worker running on `--data` through its
/// local control API.
#[derive(Debug, Subcommand)]
pub enum WorkerAction {
    /// What the worker is running (progress bars: fuel used of each unit's fuel limit), its
    /// recent results, and whether it runs or is suspended and why.
    Status {
        /// The running worker's data directory.
        #[arg(long, default_value = "fallow-worker")]
        data: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suspend the worker: running units pause where they are (nothing is lost) and no
    /// new work is taken, until `fallow worker resume`.
    Suspend {
        /// The running worker's data directory.
        #[arg(long, default_value = "fallow-worker")]
        data: PathBuf,
    },
    /// Undo `fallow worker suspend` (the preferences may still keep it suspended).
    Resume {
        /// The running worker's data directory.
        #[arg(long, default_value = "fallow-worker")]
        data: PathBuf,
    },
    /// Show the effective preferences and where each came from, or change one.
    Prefs {
        /// The worker's data directory (prefs.toml is there).
        #[arg(long, global = true, default_value = "fallow-worker")]
        data: PathBuf,
        /// `set KEY VALUE`.
        #[command(subcommand)]
        change: Option<PrefsAction>,
    },
}

/// `fallow worker prefs` subcommands.
#[derive(Debug, Subcommand)]
pub enum PrefsAction {
    /// Set one preference: validated, saved to prefs.toml and applied by the running worker
    /// at once (replacing a flag given at its start).
    Set {
        /// The key, e.g. cpu_limit_percent (`fallow worker prefs` lists them).
        key: String,
        /// The value, e.g. 50, true, or 08:00-18:00,22:00-02:00 for run_hours.
        value: String,
    },
}

/// The preference flags of `fallow worker`; each overrides the same key of `prefs.toml`.
/// Units, defaults and limits: README, "Worker preferences".
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrefFlags {
    /// Run only after the user has been idle this many minutes (0 = even while active).
    #[arg(long)]
    pub run_if_idle_minutes: Option<u32>,
    /// Suspend while other programs use more than this % of all CPUs (0 = never).
    #[arg(long)]
    pub suspend_cpu_busy_percent: Option<u32>,
    /// Percentage of the time guest threads may compute (1-100).
    #[arg(long)]
    pub cpu_limit_percent: Option<u32>,
    /// Most units running at once (0 = --cores).
    #[arg(long)]
    pub max_cores: Option<u32>,
    /// Memory budget for running units while the user is active, % of RAM.
    #[arg(long)]
    pub memory_in_use_percent: Option<u32>,
    /// Memory budget for running units while the user is idle, % of RAM.
    #[arg(long)]
    pub memory_idle_percent: Option<u32>,
    /// Size cap of the module cache on disk, MiB.
    #[arg(long)]
    pub disk_cache_mb: Option<u64>,
    /// Compute while on battery.
    #[arg(long)]
    pub run_on_battery: Option<bool>,
    /// Local time windows to compute in, e.g. 08:00-18:00,22:00-02:00 ("any" = always).
    #[arg(long)]
    pub run_hours: Option<String>,
    /// Once suspended this many seconds, hand back the units without a result or
    /// checkpoint (0 = at once).
    #[arg(long)]
    pub suspend_hand_back_seconds: Option<u32>,
}

impl PrefFlags {
    /// The flags given, key → value text, as `worker::prefs` takes them.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put(
            "run_if_idle_minutes",
            self.run_if_idle_minutes.map(|v| v.to_string()),
        );
        put(
            "suspend_cpu_busy_percent",
            self.suspend_cpu_busy_percent.map(|v| v.to_string()),
        );
        put(
            "cpu_limit_percent",
            self.cpu_limit_percent.map(|v| v.to_string()),
        );
        put("max_cores", self.max_cores.map(|v| v.to_string()));
        put(
            "memory_in_use_percent",
            self.memory_in_use_percent.map(|v| v.to_string()),
        );
        put(
            "memory_idle_percent",
            self.memory_idle_percent.map(|v| v.to_string()),
        );
        put("disk_cache_mb", self.disk_cache_mb.map(|v| v.to_string()));
        put("run_on_battery", self.run_on_battery.map(|v| v.to_string()));
        put("run_hours", self.run_hours.clone());
        put(
            "suspend_hand_back_seconds",
            self.suspend_hand_back_seconds.map(|v| v.to_string()),
        );
        m
    }
}

/// `fallow coordinator --fault` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CoordinatorFaultArg {
    /// Change one byte of every unit's input when handing it out (a compromised
    /// coordinator).
    TamperInput,
}

/// `--fault` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FaultArg {
    /// Corrupt every output before signing it.
    CorruptOutput,
    /// Fail the first unit's preparation once, as a local I/O error would.
    LocalFailureOnce,
}

/// What every project control command (`fallow cancel|pause|resume|retry|reduce|extend`)
/// takes: the project and who asks.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Project id.
    pub project: u64,
    /// Coordinator URL: https://HOST:PORT#sha256=HEX off loopback.
    #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// The submitter key that signed the project (as for `fallow submit --key`); the call
    /// is signed with it, and any other key is refused. Default
    /// ~/.config/fallow/submitter.key.
    #[arg(long, env = "FALLOW_SUBMITTER_KEY", value_name = "PATH")]
    pub key: Option<PathBuf>,
}
