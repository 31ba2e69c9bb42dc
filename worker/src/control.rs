//! Local control: the policy loop (readings → [`Policy`] → [`Gate`]), live preferences,
//! and the loopback HTTP/JSON API that `fallow worker status|suspend|resume|prefs` use.
//!
//! The API listens on `127.0.0.1:0`; the worker writes the chosen address to
//! `<data>/control.addr` and a fresh random token to `<data>/control.token` (mode 0600 on
//! Unix) at every start. Every request carries `Authorization: Bearer <token>`, so only
//! someone who can read the data directory controls the worker.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | [`Status`] |
//! | `POST /v1/suspend`, `POST /v1/resume` | [`Status`] after the change |
//! | `GET /v1/prefs` | the effective preferences, `[`[`Row`]`]` |
//! | `POST /v1/prefs` with `{"key": K, "value": V}` | the effective preferences after the change, or 400 with `{"error": …}` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::gate::{Finished, Gate, RunningUnit};
use crate::policy::{Decision, Policy, Readings, State};
use crate::prefs::{self, Effective, Row};
use crate::sources::Sources;

/// File in the data directory holding the control API's address.
pub const ADDR_FILE: &str = "control.addr";
/// File in the data directory holding the control API's token.
pub const TOKEN_FILE: &str = "control.token";

/// How often the policy loop reads the machine (≥ sysinfo's 200 ms minimum).
pub const READ_EVERY: Duration = Duration::from_secs(1);

/// What `fallow worker status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The worker's key (hex).
    pub worker: String,
    /// Its account.
    pub account: String,
    /// Its coordinator.
    pub coordinator: String,
    /// Running or suspended, and why.
    pub state: State,
    /// The reason in words, when suspended.
    pub reason: Option<String>,
    /// Whether `fallow worker suspend` is in force.
    pub suspended_by_user: bool,
    /// Units that may run at once.
    pub cores: usize,
    /// CPU limit in force (% of the time).
    pub cpu_limit_percent: u32,
    /// Memory budget for running units, MiB.
    pub memory_budget_mb: u64,
    /// Whether the user counts as active.
    pub user_active: bool,
    /// The last readings: user idle seconds (`None`: cannot tell, counted as idle).
    pub user_idle_seconds: Option<u64>,
    /// The last readings: other programs' CPU load, % of all cores.
    pub other_cpu_percent: f32,
    /// The last readings: on battery.
    pub on_battery: bool,
    /// Units on guest threads, oldest first.
    pub running: Vec<RunningUnit>,
    /// Recent results, newest first.
    pub recent: Vec<Finished>,
}

/// Who this worker is, for [`Status`].
#[derive(Debug, Clone)]
pub struct Identity {
    /// The worker's key (hex).
    pub worker: String,
    /// Its account.
    pub account: String,
    /// Its coordinator.
    pub coordinator: String,
}

/// The worker's control: policy, preferences, gate. Shared by the policy loop, the API
/// and the worker's slot loops.
pub struct Control {
    dir: PathBuf,
    gate: Arc<Gate>,
    inner: Mutex<Inner>,
    decisions: watch::Sender<Decision>,
    disk_cap: Arc<AtomicU64>,
    started: Instant,
    stop: AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

struct Inner {
    policy: Policy,
    prefs: Effective,
    readings: Readings,
    /// `prefs.toml`'s modification time when last read.
    prefs_modified: Option<SystemTime>,
}

impl Control {
    /// Loads `<dir>/prefs.toml` with `flags` (key → value) on top and decides once from
    /// `first` readings, for a worker with `threads` guest threads.
    pub fn new(
        dir: &Path,
        threads: usize,
        flags: BTreeMap<String, String>,
        first: Readings,
    ) -> Result<Arc<Control>, Error> {
        let prefs = Effective::load(dir, flags)?;
        let mut policy = Policy::new(threads);
        let decision = policy.step(0, &first, &prefs.prefs);
        let disk_cap = Arc::new(AtomicU64::new(prefs.prefs.disk_cache_mb << 20));
        Ok(Arc::new(Control {
            dir: dir.to_path_buf(),
            gate: Arc::new(Gate::new(decision)),
            inner: Mutex::new(Inner {
                policy,
                prefs,
                readings: first,
                prefs_modified: modified(&prefs::path(dir)),
            }),
            decisions: watch::Sender::new(decision),
            disk_cap,
            started: Instant::now(),
            stop: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Critical sections are single state-machine steps that do not panic midway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate every execution passes.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The module cache's size cap in bytes (`disk_cache_mb`), updated live.
    pub fn disk_cap(&self) -> Arc<AtomicU64> {
        self.disk_cap.clone()
    }

    /// The decision in force.
    pub fn decision(&self) -> Decision {
        *self.decisions.borrow()
    }

    /// Steps the policy with `readings` taken at `now_ms` (milliseconds since start) and
    /// applies the decision. The policy loop calls this every [`READ_EVERY`]; tests call it
    /// with fake readings and a fake clock.
    pub fn step(&self, now_ms: u64, readings: Readings) -> Decision {
        let mut inner = self.lock();
        inner.readings = readings;
        self.decide(&mut inner, now_ms)
    }

    fn decide(&self, inner: &mut Inner, now_ms: u64) -> Decision {
        let Inner {
            policy,
            prefs,
            readings,
            ..
        } = inner;
        let decision = policy.step(now_ms, readings, &prefs.prefs);
        let before = self.decision();
        if decision.state != before.state {
            match decision.state {
                State::Running => tracing::info!("running"),
                State::Suspended(r) => tracing::info!("suspended: {}", r.describe()),
            }
        }
        self.disk_cap
            .store(prefs.prefs.disk_cache_mb << 20, Ordering::Relaxed);
        self.gate.apply(decision);
        self.decisions.send_replace(decision);
        decision
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `fallow worker suspend`.
    pub fn suspend(&self) -> Decision {
        let mut inner = self.lock();
        inner.policy.suspend();
        self.decide(&mut inner, self.now_ms())
    }

    /// `fallow worker resume`.
    pub fn resume(&self) -> Decision {
        let mut inner = self.lock();
        inner.policy.resume();
        self.decide(&mut inner, self.now_ms())
    }

    /// The effective preferences with their sources.
    pub fn prefs(&self) -> Vec<Row> {
        self.lock().prefs.rows()
    }

    /// `fallow worker prefs set KEY VALUE`: validated, written to `prefs.toml`, applied.
    pub fn set_pref(&self, key: &str, value: &str) -> Result<Vec<Row>, Error> {
        let mut inner = self.lock();
        inner.prefs.set(&self.dir, key, value)?;
        inner.prefs_modified = modified(&prefs::path(&self.dir));
        tracing::info!(key, value, "preference set");
        self.decide(&mut inner, self.now_ms());
        Ok(inner.prefs.rows())
    }

    /// Re-reads `prefs.toml` if it changed on disk since last read.
    fn reload_if_changed(&self) {
        let mut inner = self.lock();
        let now = modified(&prefs::path(&self.dir));
        if now == inner.prefs_modified {
            return;
        }
        inner.prefs_modified = now;
        match inner.prefs.reload(&self.dir) {
            Ok(()) => {
                tracing::info!("{} changed; new preferences in force", prefs::FILE);
                self.decide(&mut inner, self.now_ms());
            }
            Err(e) => tracing::error!("{e}; keeping the preferences in force"),
        }
    }

    /// Waits until slot `slot` may lease work (running, and `slot` < allowed cores);
    /// false if cancelled first.
    pub async fn wait_to_lease(&self, slot: usize, cancel: &CancellationToken) -> bool {
        let mut rx = self.decisions.subscribe();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.running() && slot < d.cores {
                    return true;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                changed = rx.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// What `fallow worker status` shows.
    pub fn status(&self, who: &Identity) -> Status {
        let (decision, readings, by_user) = {
            let inner = self.lock();
            (
                self.decision(),
                inner.readings,
                inner.policy.suspended_by_user(),
            )
        };
        let (running, recent) = self.gate.snapshot();
        Status {
            worker: who.worker.clone(),
            account: who.account.clone(),
            coordinator: who.coordinator.clone(),
            state: decision.state,
            reason: match decision.state {
                State::Running => None,
                State::Suspended(r) => Some(r.describe().to_string()),
            },
            suspended_by_user: by_user,
            cores: decision.cores,
            cpu_limit_percent: decision.cpu_limit_percent,
            memory_budget_mb: decision.memory_budget >> 20,
            user_active: decision.user_active,
            user_idle_seconds: readings.user_idle.map(|d| d.as_secs()),
            other_cpu_percent: readings.other_cpu_percent,
            on_battery: readings.on_battery,
            running,
            recent,
        }
    }

    /// Starts the policy loop on its own thread (readings block: sysinfo, X11): every
    /// [`READ_EVERY`] it re-reads `prefs.toml` if it changed, reads `sources` and applies
    /// the decision. It ends after [`Control::stop`].
    pub fn spawn_loop(self: &Arc<Self>, mut sources: Box<dyn Sources>) -> Result<(), Error> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("fallow-policy".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(READ_EVERY);
                    me.reload_if_changed();
                    let readings = sources.read();
                    me.step(me.now_ms(), readings);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the policy thread: {e}")))?;
        Ok(())
    }

    /// Ends the policy loop, and lets held guests go (a shutdown drains them).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

// ---------------------------------------------------------------------------------------
// The API server.

#[derive(Clone)]
struct Api {
    control: Arc<Control>,
    who: Arc<Identity>,
    token: blake3::Hash,
}

/// The body of `POST /v1/prefs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPref {
    /// The key.
    pub key: String,
    /// The value as typed.
    pub value: String,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, naming the fix.
    pub error: String,
}

fn error(code: StatusCode, text: impl Into<String>) -> Response {
    (code, Json(ApiError { error: text.into() })).into_response()
}

impl Api {
    fn authorized(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Comparing hashes (constant-time equality) does not leak the token's prefix.
        if blake3::hash(given.as_bytes()) == self.token {
            Ok(())
        } else {
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "missing or wrong token: send the one in {TOKEN_FILE} of this worker's data directory"
                ),
            )))
        }
    }
}

/// A running control API; [`ControlServer::shutdown`] stops it and removes its address file.
#[derive(Debug)]
pub struct ControlServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    dir: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Stops the server and removes `control.addr`.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_file(self.dir.join(ADDR_FILE));
    }
}

/// Serves the control API on `127.0.0.1:0` and writes `control.addr` and a new
/// `control.token` to `dir`.
pub async fn serve(
    control: Arc<Control>,
    who: Identity,
    dir: &Path,
) -> Result<ControlServer, Error> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| Error::Config(format!("control API: cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("control API: {e}")))?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| Error::Config(format!("control API: no randomness for the token: {e}")))?;
    let token = hex::encode(raw);
    write_private(&dir.join(TOKEN_FILE), token.as_bytes())?;
    write_private(&dir.join(ADDR_FILE), addr.to_string().as_bytes())?;
    let api = Api {
        control,
        who: Arc::new(who),
        token: blake3::hash(token.as_bytes()),
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/suspend", post(suspend))
        .route("/v1/resume", post(resume))
        .route("/v1/prefs", get(get_prefs).post(set_pref))
        .with_state(api);
    let stop = CancellationToken::new();
    let until = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(until)
            .await
        {
            tracing::warn!("control API stopped: {e}");
        }
    });
    Ok(ControlServer {
        addr,
        dir: dir.to_path_buf(),
        stop,
        task,
    })
}

/// Writes `bytes` to `path` readable by the owner only (Unix), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

async fn status(AxState(api): AxState<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorized(&headers) {
        return *r;
    }
    Json(api.control.status(&api.who)).into_response()
}

async fn suspend(AxState(api): AxState<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorized(&headers) {
        return *r;
    }
    api.control.suspend();
    tracing::info!("suspended by the control API");
    Json(api.control.status(&api.who)).into_response()
}

async fn resume(AxState(api): AxState<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorized(&headers) {
        return *r;
    }
    api.control.resume();
    tracing::info!("resumed by the control API");
    Json(api.control.status(&api.who)).into_response()
}

async fn get_prefs(AxState(api): AxState<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorized(&headers) {
        return *r;
    }
    Json(api.control.prefs()).into_response()
}

async fn set_pref(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = api.authorized(&headers) {
        return *r;
    }
    let Ok(req) = serde_json::from_slice::<SetPref>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"key\": ..., \"value\": ...}",
        );
    };
    match api.control.set_pref(&req.key, &req.value) {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// The client `fallow worker status|suspend|resume|prefs` uses.

/// A client of a running worker's control API, found through its data directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
    addr: String,
    token: String,
}

impl Client {
    /// Reads `control.addr` and `control.token` from the worker's data directory.
    pub fn open(dir: &Path) -> Result<Client, Error> {
        let not_running = || {
            Error::Control(format!(
                "no worker is running with --data {dir} (no {ADDR_FILE} there); start one with \
                 `fallow worker --data {dir}`, or pass the --data of the running worker",
                dir = dir.display()
            ))
        };
        let addr = std::fs::read_to_string(dir.join(ADDR_FILE)).map_err(|_| not_running())?;
        let token = std::fs::read_to_string(dir.join(TOKEN_FILE)).map_err(|e| {
            Error::Control(format!(
                "cannot read the control token {}: {e} (run as the user that runs the worker)",
                dir.join(TOKEN_FILE).display()
            ))
        })?;
        Ok(Client {
            dir: dir.to_path_buf(),
            addr: addr.trim().to_string(),
            token: token.trim().to_string(),
        })
    }

    /// The same worker with another token (tests: a wrong token is refused).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = token.to_string();
        self
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, Error> {
        self.call("GET", "/v1/status", None).await
    }

    /// `POST /v1/suspend`.
    pub async fn suspend(&self) -> Result<Status, Error> {
        self.call("POST", "/v1/suspend", None).await
    }

    /// `POST /v1/resume`.
    pub async fn resume(&self) -> Result<Status, Error> {
        self.call("POST", "/v1/resume", None).await
    }

    /// `GET /v1/prefs`.
    pub async fn prefs(&self) -> Result<Vec<Row>, Error> {
        self.call("GET", "/v1/prefs", None).await
    }

    /// `POST /v1/prefs`.
    pub async fn set_pref(&self, key: &str, value: &str) -> Result<Vec<Row>, Error> {
        let body = serde_json::to_vec(&SetPref {
            key: key.into(),
            value: value.into(),
        })
        .map_err(|e| Error::Control(e.to_string()))?;
        self.call("POST", "/v1/prefs", Some(body)).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<axum::body::Bytes>>();
        let request = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(axum::body::Bytes::from(
                body.unwrap_or_default(),
            )))
            .map_err(|e| Error::Control(format!("bad control request: {e}")))?;
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| {
                Error::Control(format!(
                    "the worker at {} (from {}) did not answer within 10 s",
                    self.addr,
                    self.dir.join(ADDR_FILE).display()
                ))
            })?
            .map_err(|e| {
                Error::Control(format!(
                    "no worker answers at {} (from {}): {e}; is it still running with --data {}?",
                    self.addr,
                    self.dir.join(ADDR_FILE).display(),
                    self.dir.display()
                ))
            })?;
        let code = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Control(format!("control API: {e}")))?
            .to_bytes();
        if !code.is_success() {
            let text = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Error::Control(if code == StatusCode::UNAUTHORIZED {
                format!(
                    "the worker refused the token from {}: {text}",
                    self.dir.join(TOKEN_FILE).display()
                )
            } else {
                text
            }));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Control(format!("control API sent unexpected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests;
