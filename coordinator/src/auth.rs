//! Who may change what: the coordinator's tokens.
//!
//! Worker calls are authenticated by the worker's own ed25519 key (signed registrations and
//! claims); the one state-changing call nothing signs, `SubmitProject`, needs a token in
//! the `authorization: Bearer TOKEN` metadata. Tokens live in `DATA/tokens`, one
//! `NAME HASH` line each, where HASH is the BLAKE3 of the token in hex: the tokens
//! themselves are never stored. The file is re-read when it changes, so
//! `fallow token create|revoke` apply to a running coordinator at once. The first start
//! mints the `admin` token and writes it, readable by its owner only, to
//! `DATA/admin.token`. The dashboard and the read-only RPCs stay public.
//!
//! Workers are enrolled the same way when the coordinator runs with
//! `--require-enrollment`: every worker call (registration, heartbeats, work, results)
//! must carry a token from `DATA/enrollments` (`fallow token create --worker --name lab`).
//! Revoking it cuts off every worker started with it at its next call, without a restart.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Error;

/// The token list in the data dir.
pub const TOKENS_FILE: &str = "tokens";
/// The admin token minted on first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Worker enrollment tokens, in the same format.
pub const ENROLLMENTS_FILE: &str = "enrollments";
/// gRPC methods that need a token.
/// Data uploads are a submission's first half: the same token.
const PROTECTED: &[&str] = &[
    "/fallow.v1.Coordinator/SubmitProject",
    "/fallow.v1.Coordinator/PutData",
    "/fallow.v1.Coordinator/HasData",
];
/// gRPC methods of workers, which need an enrollment when one is required.
const WORKER_METHODS: &[&str] = &[
    "/fallow.v1.Coordinator/RegisterWorker",
    "/fallow.v1.Coordinator/Heartbeat",
    "/fallow.v1.Coordinator/RequestWork",
    "/fallow.v1.Coordinator/GetModule",
    "/fallow.v1.Coordinator/GetData",
    "/fallow.v1.Coordinator/ReportFailure",
    "/fallow.v1.Coordinator/SubmitCertificate",
    "/fallow.v1.Coordinator/SubmitCertificates",
    "/fallow.v1.Coordinator/ReportDispute",
    "/fallow.v1.Coordinator/ReturnUnits",
    "/fallow.v1.Coordinator/ReportMisbehaviour",
];

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Submitting projects (`DATA/tokens`).
    Submit,
    /// Taking part as a worker (`DATA/enrollments`).
    Worker,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Submit => TOKENS_FILE,
            Kind::Worker => ENROLLMENTS_FILE,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Submit => "token",
            Kind::Worker => "worker enrollment",
        }
    }
}

/// What the middleware checks: submit tokens always, enrollments when required.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) submit: Tokens,
    pub(crate) enroll: Option<Tokens>,
}

impl Gate {
    /// The gate of `data_dir`: mints the admin token on first start; with
    /// `require_enrollment`, also opens (creating it empty) the enrollment list.
    pub(crate) fn open(data_dir: &Path, require_enrollment: bool) -> Result<Gate, Error> {
        let enroll = if require_enrollment {
            let path = data_dir.join(ENROLLMENTS_FILE);
            create_empty(&path)?;
            let tokens = Tokens {
                path,
                cache: Mutex::new(Cache::default()),
            };
            tokens.refresh()?;
            tracing::info!(
                "workers need an enrollment: mint one with `fallow token create --worker --name NAME --data {}`",
                data_dir.display()
            );
            Some(tokens)
        } else {
            None
        };
        Ok(Gate {
            submit: Tokens::open(data_dir)?,
            enroll,
        })
    }
}

/// Mints the admin token on a first start (`DATA/admin.token`), as the server would when
/// it opens its gate. `fallow coordinator` calls it before it binds its port: `fallow
/// submit` on this machine reads the file as soon as it can connect, which is as soon as
/// the port is bound, before the server answers.
pub fn mint_on_first_start(data_dir: &Path) -> Result<(), Error> {
    Tokens::open(data_dir).map(drop)
}

/// The tokens a running coordinator accepts.
#[derive(Debug)]
pub(crate) struct Tokens {
    path: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// Modification time and length of the file when it was read.
    stamp: Option<(SystemTime, u64)>,
    names: HashMap<[u8; 32], String>,
}

impl Tokens {
    /// The tokens of `data_dir`; on first start (no token file) mints the admin token.
    pub(crate) fn open(data_dir: &Path) -> Result<Tokens, Error> {
        let path = data_dir.join(TOKENS_FILE);
        if !path.exists() {
            let token = create(data_dir, "admin")?;
            let admin = data_dir.join(ADMIN_TOKEN_FILE);
            write_private(&admin, format!("{token}\n").as_bytes())?;
            tracing::info!(
                path = %admin.display(),
                "admin token created: `fallow submit` on this machine reads it from there"
            );
        }
        let tokens = Tokens {
            path,
            cache: Mutex::new(Cache::default()),
        };
        tokens.refresh()?;
        Ok(tokens)
    }

    /// The name of the token, if it is valid now.
    pub(crate) fn check(&self, token: &str) -> Option<String> {
        if let Err(e) = self.refresh() {
            // Keep the last good list: a half-written or unreadable file must not lock
            // everyone out (or in).
            tracing::warn!("token file: {e}");
        }
        let hash = *blake3::hash(token.trim().as_bytes()).as_bytes();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.names.get(&hash).cloned()
    }

    fn refresh(&self) -> Result<(), Error> {
        let meta = std::fs::metadata(&self.path).map_err(|e| io_error(&self.path, e))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.stamp == Some(stamp) {
            return Ok(());
        }
        let names = read(&self.path)?
            .into_iter()
            .map(|(name, hash)| (hash, name))
            .collect();
        *cache = Cache {
            stamp: Some(stamp),
            names,
        };
        Ok(())
    }
}

/// Refuses protected calls without a valid token, and worker calls without a valid
/// enrollment when one is required, as gRPC `UNAUTHENTICATED`.
pub(crate) async fn require_token(
    State(gate): State<Arc<Gate>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(enroll) = &gate.enroll
        && WORKER_METHODS.contains(&path)
    {
        let refusal = match presented.map(|t| enroll.check(t)) {
            Some(Some(name)) => {
                tracing::trace!(enrollment = name, "worker call admitted");
                return next.run(request).await;
            }
            Some(None) => {
                "this worker's enrollment is not valid on this coordinator (unknown or revoked); ask its operator for a new one (`fallow worker --enroll-token TOKEN`)"
            }
            None => {
                "this coordinator only takes enrolled workers: start the worker with `--enroll-token TOKEN` (or FALLOW_ENROLL_TOKEN); its operator mints one with `fallow token create --worker --name NAME`"
            }
        };
        return crate::service::to_status(Error::NotAuthorized(refusal.to_string()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    if !PROTECTED.contains(&path) {
        return next.run(request).await;
    }
    let tokens = &gate.submit;
    let refusal = match presented {
        None => "submitting a project needs a token: pass `fallow submit --token TOKEN` or set \
                 FALLOW_TOKEN (the coordinator wrote its admin token to DATA/admin.token; mint \
                 more with `fallow token create --name NAME`)"
            .to_string(),
        Some(t) => match tokens.check(t) {
            Some(name) => {
                tracing::debug!(token = name, "authorized");
                return next.run(request).await;
            }
            None => "the token is not valid on this coordinator (unknown or revoked)".into(),
        },
    };
    crate::service::to_status(Error::NotAuthorized(refusal))
        .into_http::<axum::body::Body>()
        .into_response()
}

/// Mints a submit token named `name` in `data_dir` (creating the directory); returns the
/// token, which is shown only this once.
pub fn create(data_dir: &Path, name: &str) -> Result<String, Error> {
    create_kind(data_dir, Kind::Submit, name)
}

/// Mints a token of `kind` named `name` in `data_dir`; returns it (shown only this once).
pub fn create_kind(data_dir: &Path, kind: Kind, name: &str) -> Result<String, Error> {
    check_name(data_dir, name)?;
    std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
    let path = data_dir.join(kind.file());
    let mut entries = if path.exists() {
        read(&path)?
    } else {
        Vec::new()
    };
    if entries.iter().any(|(n, _)| n == name) {
        return Err(Error::DataDir {
            path,
            message: format!(
                "a {} named {name:?} exists already; revoke it first (`fallow token revoke {name}{}`)",
                kind.what(),
                if kind == Kind::Worker {
                    " --worker"
                } else {
                    ""
                }
            ),
        });
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Error::DataDir {
        path: path.clone(),
        message: format!("no randomness for a token: {e}"),
    })?;
    let token = format!("fallow_{}", hex::encode(secret));
    entries.push((name.to_string(), *blake3::hash(token.as_bytes()).as_bytes()));
    write_entries(&path, &entries, kind)?;
    Ok(token)
}

/// Revokes the submit token named `name`; false if there was none.
pub fn revoke(data_dir: &Path, name: &str) -> Result<bool, Error> {
    revoke_kind(data_dir, Kind::Submit, name)
}

/// Revokes the token of `kind` named `name`; false if there was none.
pub fn revoke_kind(data_dir: &Path, kind: Kind, name: &str) -> Result<bool, Error> {
    let path = data_dir.join(kind.file());
    if kind == Kind::Worker && !path.exists() {
        return Ok(false);
    }
    let mut entries = read(&path)?;
    let before = entries.len();
    entries.retain(|(n, _)| n != name);
    if entries.len() == before {
        return Ok(false);
    }
    write_entries(&path, &entries, kind)?;
    Ok(true)
}

/// The names of the valid submit tokens.
pub fn list(data_dir: &Path) -> Result<Vec<String>, Error> {
    list_kind(data_dir, Kind::Submit)
}

/// The names of the valid tokens of `kind` (none when there is no such list yet).
pub fn list_kind(data_dir: &Path, kind: Kind) -> Result<Vec<String>, Error> {
    let path = data_dir.join(kind.file());
    if kind == Kind::Worker && !path.exists() {
        return Ok(Vec::new());
    }
    Ok(read(&path)?.into_iter().map(|(n, _)| n).collect())
}

fn check_name(data_dir: &Path, name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::DataDir {
            path: data_dir.to_path_buf(),
            message: format!("token name {name:?}: use 1 to 64 letters, digits or - _ . @"),
        })
    }
}

fn read(path: &Path) -> Result<Vec<(String, [u8; 32])>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::DataDir {
            path: path.to_path_buf(),
            message: format!("line {}: {why} (expected `NAME BLAKE3-HEX`)", i + 1),
        };
        let (name, hash) = line.split_once(' ').ok_or_else(|| bad("no hash"))?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(hash.trim(), &mut h)
            .map_err(|_| bad("the hash is not 64 hex digits"))?;
        entries.push((name.to_string(), h));
    }
    Ok(entries)
}

fn write_entries(path: &Path, entries: &[(String, [u8; 32])], kind: Kind) -> Result<(), Error> {
    let mut text = match kind {
        Kind::Submit => String::from(
            "# Fallow coordinator tokens: NAME BLAKE3(token). Manage with `fallow token`.\n",
        ),
        Kind::Worker => String::from(
            "# Fallow worker enrollments: NAME BLAKE3(token). Manage with `fallow token --worker`.\n",
        ),
    };
    for (name, hash) in entries {
        text.push_str(&format!("{name} {}\n", hex::encode(hash)));
    }
    write_private(path, text.as_bytes())
}

/// Creates the enrollment list empty unless it exists. Never replaces one: `fallow token
/// create --worker` may be writing it at this very moment.
fn create_empty(path: &Path) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut f) => f
            .write_all(
                b"# Fallow worker enrollments: NAME BLAKE3(token). Manage with `fallow token --worker`.\n",
            )
            .and_then(|()| f.sync_all())
            .map_err(|e| io_error(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), readable by its
/// owner only. The temporary file's name is this process's own, so two processes
/// writing the same list (a coordinator and `fallow token`) never share one.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(|e| io_error(&tmp, e))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::DataDir {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_minted_checked_and_revoked_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(dir.path()).expect("open");
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).expect("admin");
        assert_eq!(tokens.check(&admin).as_deref(), Some("admin"));
        assert_eq!(tokens.check("fallow_nonsense"), None);

        let alice = create(dir.path(), "alice").expect("create");
        assert!(create(dir.path(), "alice").is_err(), "names are unique");
        assert!(create(dir.path(), "bad name").is_err());
        assert_eq!(tokens.check(&alice).as_deref(), Some("alice"));
        assert_eq!(list(dir.path()).expect("list"), ["admin", "alice"]);
        // The file holds hashes only.
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("file");
        assert!(!file.contains(&alice) && !file.contains(admin.trim()));

        assert!(revoke(dir.path(), "alice").expect("revoke"));
        assert!(!revoke(dir.path(), "alice").expect("second revoke"));
        assert_eq!(
            tokens.check(&alice),
            None,
            "revocation applies without a restart"
        );
        assert_eq!(tokens.check(&admin).as_deref(), Some("admin"));

        // A second start keeps the admin token.
        let again = Tokens::open(dir.path()).expect("reopen");
        assert_eq!(again.check(&admin).as_deref(), Some("admin"));
    }

    #[test]
    fn enrollments_are_their_own_list_and_revocable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = Gate::open(dir.path(), true).expect("open");
        let enroll = gate.enroll.as_ref().expect("required");
        assert!(
            list_kind(dir.path(), Kind::Worker)
                .expect("list")
                .is_empty()
        );
        let lab = create_kind(dir.path(), Kind::Worker, "lab").expect("create");
        assert_eq!(enroll.check(&lab).as_deref(), Some("lab"));
        // Not a submit token, and the admin token is not an enrollment.
        assert_eq!(gate.submit.check(&lab), None);
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).expect("admin");
        assert_eq!(enroll.check(&admin), None);
        assert!(!revoke(dir.path(), "lab").expect("no such submit token"));
        assert!(revoke_kind(dir.path(), Kind::Worker, "lab").expect("revoke"));
        assert_eq!(enroll.check(&lab), None, "revoked without a restart");
        assert!(
            Gate::open(dir.path(), false)
                .expect("open")
                .enroll
                .is_none()
        );
    }

    #[test]
    fn a_coordinator_starting_while_enrollments_are_minted_loses_nothing() {
        // The coordinator creates the list if missing while `fallow token create --worker`
        // writes it: neither may fail, and no minted enrollment may be lost.
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_path_buf();
        let minter = {
            let data = data.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| create_kind(&data, Kind::Worker, &format!("w{i}")).expect("create"))
                    .collect::<Vec<_>>()
            })
        };
        for _ in 0..40 {
            Gate::open(&data, true).expect("a coordinator starts");
        }
        let minted = minter.join().expect("minter");
        let gate = Gate::open(&data, true).expect("open");
        let enroll = gate.enroll.as_ref().expect("required");
        for (i, token) in minted.iter().enumerate() {
            assert_eq!(enroll.check(token), Some(format!("w{i}")));
        }
    }
}
