//! The command line, a contract that scripts and tests drive: change it only compatibly.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Fallow: volunteer computing with WebAssembly and results verified by quorum.
#[derive(Debug, Parser)]
#[command(name = "fallow", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Default coordinator URL for clients and workers.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: gRPC API and web dashboard on --listen, state in SQLite under
    /// --data.
    Coordinator {
        /// Address to serve the gRPC API and the read-only dashboard on (port 0 picks a free
        /// port; the chosen address is printed as `listening on ADDR`, then the dashboard's
        /// URL as `dashboard on http://ADDR/`).
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Data directory; restarting on the same one resumes everything.
        #[arg(long, default_value = "fallow-data")]
        data: PathBuf,
        /// Seconds a lease lasts without a heartbeat before the unit is reassigned.
        #[arg(long, default_value_t = 120)]
        lease_seconds: u64,
        /// Allow two replicas of one unit to go to workers in the same /24 (IPv4) or /48
        /// (IPv6) network. By default they may not (workers on loopback are always exempt);
        /// allow it for a fleet inside one network, e.g. a lab or a cluster.
        #[arg(long)]
        allow_same_network: bool,
    },
    /// Donate CPU: run work units for a coordinator until Ctrl-C.
    Worker {
        /// Coordinator URL (when no --attach is given).
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Work for this coordinator with a resource share (default 100); repeat for
        /// several. Cores are split over time in proportion to the shares of those with
        /// work. Replaces --coordinator.
        #[arg(long, value_name = "URL[=SHARE]")]
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
        #[arg(long, default_value = "0.0.0.0:0")]
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
        /// Serve Prometheus metrics (executions by result and failure reason, fuel, busy
        /// and idle time, gossip counters) at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Test-only fault injection.
        #[arg(long, hide = true, value_enum)]
        fault: Option<FaultArg>,
    },
    /// Validate and upload a project; prints the new project id as the last line.
    Submit {
        /// The project manifest (TOML).
        manifest: PathBuf,
        /// Coordinator URL.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
    },
    /// Show progress of one project or all.
    Status {
        /// Project id (default: all projects).
        project: Option<u64>,
        /// Coordinator URL.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Show a progress bar until the project(s) finish.
        #[arg(long)]
        wait: bool,
        /// JSON Lines: one object per project.
        #[arg(long)]
        json: bool,
    },
    /// The leaderboard: volunteer accounts and teams by credit (fuel of verified units).
    Accounts {
        /// Coordinator URL.
        #[arg(long, env = "FALLOW_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// JSON: {"accounts": [...], "teams": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Write a project's verified outputs, failures and aggregate to a directory.
    Results {
        /// Project id.
        project: u64,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Coordinator URL.
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

/// `--fault` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FaultArg {
    /// Corrupt every output before signing it.
    CorruptOutput,
}
