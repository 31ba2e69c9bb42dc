//! Starts and stops real `fallow` processes and drives the CLI like a user would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Test workers share the machine with the coordinator, each other and the test runner:
/// neither user activity nor that load may suspend them (`--dedicated`).
pub const NEVER_SUSPEND: [&str; 1] = ["--dedicated"];

/// A raw client for the board of worker `key` at `addr`, as any peer reaches it: over TLS,
/// accepting only a certificate bound to that worker's key (`connections::peer_tls`).
pub async fn peer(
    addr: &str,
    key: protocol::WorkerId,
) -> proto::v1::peer_client::PeerClient<tonic::transport::Channel> {
    let addr = addr.parse().expect("a peer address");
    let channel = connections::peer_tls::endpoint(addr, key)
        .expect("peer endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the board at {addr}: {e}"));
    proto::v1::peer_client::PeerClient::new(channel)
}

/// The binary under test.
pub fn fallow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fallow"));
    // `fallow submit` signs with this key (made on first use) instead of one in the home
    // directory of whoever runs the tests.
    c.env("FALLOW_SUBMITTER_KEY", submitter_key());
    c
}

/// The submitter key file the tests sign with (see [`fallow`]).
/// A loopback address free to listen on, for a child process to bind by number (its
/// metrics, a standby's API). Chosen below the kernel's ephemeral range (32768 and up on
/// Linux), so no listener on port 0 — another worker's peer port, the coordinator's —
/// can take it between this check and the child's bind: CI once saw a worker refuse to
/// start because its own peer listener had been given the number picked for its metrics.
pub fn free_port() -> std::net::SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..10_000 {
        // RandomState is seeded afresh for each one made: a random port per try.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 20_000 + (random % 12_000) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a bound address");
        }
    }
    panic!("no free loopback port between 20000 and 31999");
}

pub fn submitter_key() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-submitter.key")
}

/// A coordinator plus workers, each a real process, killed when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: String,
    coordinator: Option<Child>,
    workers: Vec<(String, Child)>,
    lease_seconds: u64,
    restarts: u32,
    /// The token `submit` sends (`fallow token create`).
    pub token: String,
    /// Extra `fallow coordinator` arguments, e.g. `--tls`.
    coordinator_args: Vec<String>,
    /// With TLS: the coordinator's `tls fingerprint` (`sha256:HEX`); `url` then carries it.
    pub fingerprint: Option<String>,
}

impl Cluster {
    /// Starts a coordinator on a free port with the given lease.
    pub fn start(lease_seconds: u64) -> Cluster {
        Cluster::start_prepared(lease_seconds, |_| {})
    }

    /// [`Cluster::start`], calling `prepare` with the coordinator's data dir (not created
    /// yet) before the coordinator starts: e.g. to mount a small filesystem there.
    pub fn start_prepared(lease_seconds: u64, prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_with(lease_seconds, &[], prepare)
    }

    /// [`Cluster::start_prepared`] with extra `fallow coordinator` arguments (kept for
    /// restarts). With `--tls`, `url` is the pinned `https://…#sha256=…` URL it prints.
    pub fn start_with(
        lease_seconds: u64,
        coordinator_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("fallow-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut cluster = Cluster {
            dir,
            url: String::new(),
            addr: "127.0.0.1:0".into(),
            coordinator: None,
            workers: Vec::new(),
            lease_seconds,
            restarts: 0,
            token: String::new(),
            coordinator_args: coordinator_args.iter().map(|a| a.to_string()).collect(),
            fingerprint: None,
        };
        prepare(&cluster.coordinator_data());
        cluster.token = cluster.mint_token("e2e");
        cluster.start_coordinator();
        cluster
    }

    /// `fallow token create --name NAME` on the coordinator's data dir; the token.
    pub fn mint_token(&self, name: &str) -> String {
        let out = fallow()
            .args(["token", "create", "--name", name, "--data"])
            .arg(self.coordinator_data())
            .output()
            .expect("run fallow token create");
        assert!(
            out.status.success(),
            "fallow token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The coordinator's data directory.
    pub fn coordinator_data(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// Starts (or restarts, on the same port and data dir) the coordinator.
    pub fn start_coordinator(&mut self) {
        let log = self
            .dir
            .path()
            .join(format!("coordinator-{}.log", self.restarts));
        self.restarts += 1;
        let mut child = fallow()
            .args([
                "coordinator",
                "--listen",
                &self.addr,
                "--lease-seconds",
                &self.lease_seconds.to_string(),
                "--data",
            ])
            .arg(self.coordinator_data())
            .args(&self.coordinator_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start coordinator");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read listening line");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}; log: {}", read(&log)))
            .to_string();
        self.url = format!("http://{addr}");
        self.fingerprint = None;
        // Then `tls fingerprint …` and `coordinator url …` with TLS, and the dashboard.
        loop {
            let mut line = String::new();
            if stdout
                .read_line(&mut line)
                .expect("read coordinator stdout")
                == 0
            {
                panic!("coordinator stdout ended early; log: {}", read(&log));
            }
            let line = line.trim();
            if let Some(f) = line.strip_prefix("tls fingerprint ") {
                self.fingerprint = Some(f.to_string());
            } else if let Some(url) = line.strip_prefix("coordinator url ") {
                self.url = url.to_string();
            } else if line.starts_with("dashboard on ") {
                break;
            }
        }
        self.addr = addr;
        self.coordinator = Some(child);
    }

    /// kill -9 the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a worker process with extra arguments; returns its index.
    pub fn start_worker(&mut self, extra: &[&str]) -> usize {
        let url = self.url.clone();
        self.start_worker_via(&url, extra)
    }

    /// [`Cluster::start_worker`] reaching the coordinator at `url` (e.g. through a proxy).
    pub fn start_worker_via(&mut self, url: &str, extra: &[&str]) -> usize {
        let i = self.workers.len();
        let name = format!("w{i}");
        let log = self.dir.path().join(format!("{name}.log"));
        let child = self.spawn_worker(url, &name, &log, extra);
        self.workers.push((name, child));
        i
    }

    /// A one-core test worker (unless `extra` gives `--cores`) named `name` for `url`, on
    /// its own data dir under the cluster's directory, logging to `log`.
    fn spawn_worker(&self, url: &str, name: &str, log: &Path, extra: &[&str]) -> Child {
        let cores: &[&str] = if extra.contains(&"--cores") {
            &[]
        } else {
            &["--cores", "1"]
        };
        fallow()
            .args(["worker", "--coordinator", url])
            .args(cores)
            .args(["--name", name, "--peer-listen", "127.0.0.1:0"])
            .args(NEVER_SUSPEND)
            .arg("--data")
            .arg(self.dir.path().join(name))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start worker")
    }

    /// Starts a worker attached to several coordinators (`--attach URL=SHARE` each, no
    /// `--coordinator`) with extra arguments; returns its index.
    pub fn start_attached_worker(&mut self, attach: &[String], extra: &[&str]) -> usize {
        let i = self.workers.len();
        let name = format!("w{i}");
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = fallow();
        cmd.args(["worker", "--name", &name, "--peer-listen", "127.0.0.1:0"])
            .args(NEVER_SUSPEND);
        for a in attach {
            cmd.args(["--attach", a]);
        }
        let child = cmd
            .arg("--data")
            .arg(self.dir.path().join(&name))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start worker");
        self.workers.push((name, child));
        i
    }

    /// Starts worker `i` again (after a kill or an interrupt) on the same data directory,
    /// with `extra` arguments; its log goes to a new file.
    pub fn restart_worker(&mut self, i: usize, extra: &[&str]) {
        let name = self.workers[i].0.clone();
        let mut k = 1;
        while self
            .dir
            .path()
            .join(format!("{name}-restart{k}.log"))
            .exists()
        {
            k += 1;
        }
        let log = self.dir.path().join(format!("{name}-restart{k}.log"));
        let child = self.spawn_worker(&self.url, &name, &log, extra);
        self.workers[i].1 = child;
    }

    /// The data directory of worker `i`.
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.workers[i].0)
    }

    /// Everything worker `i` logged, across restarts.
    pub fn worker_logs(&self, i: usize) -> String {
        let name = &self.workers[i].0;
        let mut out = self.worker_log(i);
        let mut k = 1;
        while let Ok(text) =
            std::fs::read_to_string(self.dir.path().join(format!("{name}-restart{k}.log")))
        {
            out.push_str(&text);
            k += 1;
        }
        out
    }

    /// Sends SIGINT (Ctrl-C) to a worker and waits for it to exit; returns whether it
    /// exited successfully within `limit`.
    pub fn interrupt_worker(&mut self, i: usize, limit: Duration) -> bool {
        let pid = self.workers[i].1.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGINT to worker {i}");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.workers[i].1.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// kill -9 a worker.
    pub fn kill_worker(&mut self, i: usize) {
        let _ = self.workers[i].1.kill();
        let _ = self.workers[i].1.wait();
    }

    /// Runs a CLI command against this cluster's coordinator.
    pub fn cli(&self, args: &[&str]) -> Output {
        fallow()
            .args(args)
            .env("FALLOW_COORDINATOR", &self.url)
            .output()
            .expect("run fallow")
    }

    /// Submits a manifest; the project id, or the stderr of the refusal.
    pub fn submit(&self, manifest: &Path) -> Result<u64, String> {
        self.submit_signed(manifest, &submitter_key())
    }

    /// [`Cluster::submit`], signed with the submitter key in `key` (made if missing).
    pub fn submit_signed(&self, manifest: &Path, key: &Path) -> Result<u64, String> {
        let out = fallow()
            .env("FALLOW_SUBMITTER_KEY", key)
            .arg("submit")
            .arg(manifest)
            .args(["--coordinator", &self.url, "--token", &self.token])
            .output()
            .expect("run fallow submit");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(stderr);
        }
        let last = stdout.lines().last().unwrap_or_default();
        Ok(last
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("last line {last:?} is not an id; stderr: {stderr}")))
    }

    /// `fallow status --json` for one project.
    pub fn status(&self, project: u64) -> Option<Value> {
        let out = self.cli(&["status", &project.to_string(), "--json"]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?;
        Some(serde_json::from_str(line).expect("status --json is JSON"))
    }

    /// Polls until the project is finished, or panics with the logs after `limit`.
    pub fn wait_finished(&self, project: u64, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(project)
                && s["finished"] == Value::Bool(true)
            {
                return s;
            }
            if start.elapsed() > limit {
                panic!(
                    "project {project} did not finish in {limit:?}: {:?}\n{}",
                    self.status(project),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Polls until `pred` holds on the status, or panics.
    pub fn wait_until(
        &self,
        project: u64,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(project)
                && pred(&s)
            {
                return s;
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not reached in {limit:?}: {:?}\n{}",
                    self.status(project),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `fallow results` into a fresh directory; returns it.
    pub fn results(&self, project: u64) -> PathBuf {
        let out = self.dir.path().join(format!("results-{project}"));
        let o = self.cli(&[
            "results",
            &project.to_string(),
            "--out",
            out.to_str().expect("utf-8 path"),
        ]);
        assert!(
            o.status.success(),
            "results failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    /// The leaderboard: (account, verified units, credit) per account, from
    /// `fallow accounts --json`.
    pub fn accounts(&self) -> Vec<(String, u64, u64)> {
        let o = self.cli(&["accounts", "--json"]);
        assert!(
            o.status.success(),
            "accounts failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("accounts --json is JSON");
        v["accounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|a| {
                        (
                            a["name"].as_str().unwrap_or_default().to_string(),
                            a["verified"].as_u64().unwrap_or(0),
                            a["credit"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The log of worker `i`.
    pub fn worker_log(&self, i: usize) -> String {
        read(&self.dir.path().join(format!("{}.log", self.workers[i].0)))
    }

    /// Everything the coordinator logged, across restarts.
    pub fn coordinator_log(&self) -> String {
        (0..self.restarts)
            .map(|i| read(&self.dir.path().join(format!("coordinator-{i}.log"))))
            .collect()
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            paths.sort();
            for p in paths {
                let text = read(&p);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                all.push_str(&format!("--- {} (last 40 lines)\n", p.display()));
                for l in tail.into_iter().rev() {
                    all.push_str(l);
                    all.push('\n');
                }
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, w) in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.kill_coordinator();
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}

impl Cluster {
    /// After a failure: copies every process's whole log (the panic message shows only
    /// their tails) to `failed-e2e/<dir>/` under `CARGO_TARGET_TMPDIR`, and says where.
    fn keep_logs(&self) {
        let Some(name) = self.dir.path().file_name() else {
            return;
        };
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("failed-e2e")
            .join(name);
        if std::fs::create_dir_all(&kept).is_err() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for p in entries.flatten().map(|e| e.path()) {
            if p.extension().is_some_and(|e| e == "log")
                && let Some(file) = p.file_name()
            {
                let _ = std::fs::copy(&p, kept.join(file));
            }
        }
        eprintln!("whole logs of the failed test kept in {}", kept.display());
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Writes a project directory with `wasm` (and optionally a reducer) and a manifest whose
/// body (everything but name and wasm) is `body`; returns the manifest path.
pub fn project(
    root: &Path,
    name: &str,
    wasm: &[u8],
    reducer: Option<&[u8]>,
    body: &str,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("project dir");
    std::fs::write(dir.join("module.wasm"), wasm).expect("module");
    let mut manifest = format!("name = \"{name}\"\nwasm = \"module.wasm\"\n{body}\n");
    if let Some(r) = reducer {
        std::fs::write(dir.join("reduce.wasm"), r).expect("reducer");
        manifest.push_str("\n[reduce]\nwasm = \"reduce.wasm\"\n");
    }
    let path = dir.join("project.toml");
    std::fs::write(&path, manifest).expect("manifest");
    path
}

/// Sum of the integers in every verified output file of a results directory.
pub fn sum_outputs(dir: &Path) -> (u64, usize) {
    let mut sum = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("results dir").flatten() {
        let name = entry.file_name().into_string().expect("utf-8");
        // `.fallow-results` names the project; unit names never start with a dot.
        if name == "failed.txt" || name == "aggregate" || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("output");
        sum += text
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("output of {name} is {text:?}"));
        files += 1;
    }
    (sum, files)
}

/// A JSON number field.
pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Primes below two billion: the answer of [`primes_below_two_billion`].
pub const PRIMES_BELOW_TWO_BILLION: u64 = 98_222_287;

/// A project counting the primes below two billion in `units` equal units (each a few
/// hundred milliseconds of guest time: long enough to inject faults mid-run), with the
/// `sum` reducer. Fixed replication 2, quorum 2 unless `adaptive`.
pub fn primes_below_two_billion(root: &Path, name: &str, units: u64, adaptive: bool) -> PathBuf {
    let step = 2_000_000_000 / units;
    project(
        root,
        name,
        artifacts::PRIMES,
        Some(artifacts::SUM),
        &format!(
            "replication = 2\nquorum = 2\nadaptive = {adaptive}\n\
             [inputs]\nsweep = {{ from = 0, to = 2_000_000_000, step = {step} }}\n"
        ),
    )
}

/// After kill `kill` of `kills` in a chaos run: the project's status, checked to have
/// gone no backwards from `seen` verified units and not to have finished before the last
/// kill. Returns the verified count.
pub fn after_kill(c: &Cluster, project: u64, kill: u32, kills: u32, seen: u64) -> u64 {
    let status = c.status(project).expect("status after a kill");
    let verified = n(&status, "verified");
    assert!(
        verified >= seen,
        "kill {kill}: verified units went back from {seen} to {verified}"
    );
    assert!(
        status["finished"] != Value::Bool(true) || kill == kills,
        "the run finished after {kill} of {kills} kills; make it longer: {status}"
    );
    verified
}

/// The end of a chaos run over [`primes_below_two_billion`] in `units` units: finished
/// with every unit verified, each result and credit once, and the right aggregate.
pub fn assert_chaos_done(c: &Cluster, project: u64, units: u64) {
    let status = c.wait_finished(project, Duration::from_secs(600));
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (units, units, 0),
        "{status}"
    );
    assert_settled_once(c, project, units);
    assert_eq!(
        std::fs::read_to_string(c.results(project).join("aggregate")).expect("aggregate"),
        format!("{PRIMES_BELOW_TWO_BILLION}\n")
    );
}

/// A finished replication-2 primes-below-two-billion run of `units` units lost and doubled
/// nothing: the outputs sum to [`PRIMES_BELOW_TWO_BILLION`] over `units` files, no account
/// is credited for a unit twice, and each unit went to the 2 accounts of its certificate
/// (3 when a replica reissued after a fault also matched before it went in).
pub fn assert_settled_once(c: &Cluster, project: u64, units: u64) {
    assert_eq!(
        sum_outputs(&c.results(project)),
        (PRIMES_BELOW_TWO_BILLION, units as usize),
        "results lost or doubled"
    );
    let accounts = c.accounts();
    for (name, verified, _) in &accounts {
        assert!(
            *verified <= units,
            "account {name} credited for {verified} units of {units}: credit granted twice"
        );
    }
    let grants: u64 = accounts.iter().map(|(_, verified, _)| verified).sum();
    assert!(
        (2 * units..=3 * units).contains(&grants),
        "{units} units credited to 2 or 3 accounts each, got {grants} grants: {accounts:?}"
    );
}
