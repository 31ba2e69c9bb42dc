//! A deployment's own files in its PostgreSQL database (`--database`), so that every
//! coordinator on it serves as the same deployment: the coordinator key (lease tickets and
//! membership credentials verify under it), the TLS certificate and key in `DATA/tls/`
//! (workers pin its fingerprint), and the token lists (`DATA/tokens`, `DATA/enrollments`,
//! and the admin token `DATA/admin.token`).
//!
//! The database holds the originals; each coordinator's data directory holds a copy, which
//! the rest of the coordinator reads as it always has (`auth`, `tls`, the key). Only the
//! coordinator holding the database's lock (the active one) touches them:
//! 1. [`pull`]: what the database has replaces the data directory's copy.
//! 2. The coordinator makes what is missing, as on a first start (`fallow coordinator`
//!    makes the TLS certificate; [`push`] the key and the admin token).
//! 3. [`push`]: what the database lacks is put there from the data directory. The first
//!    coordinator on a database therefore creates the deployment's files; every later
//!    one, and every standby taking over, loads them.
//! 4. [`watch`]: token lists changed while it serves (`fallow token create|revoke --data`
//!    on the active coordinator's data directory) are put in the database, so a standby
//!    taking over accepts the same tokens.
//!
//! The embedded SQLite store keeps these files in its data directory only, as before.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::Error;
use crate::auth;
use crate::store::postgres::PostgresStore;

/// The coordinator key's file in the data directory.
pub const KEY_FILE: &str = "coordinator.key";

/// The files a deployment shares, by their path under the data directory (`/`-separated,
/// also their name in the database).
pub const SHARED: &[&str] = &[
    KEY_FILE,
    "tls/cert.pem",
    "tls/key.pem",
    auth::TOKENS_FILE,
    auth::ADMIN_TOKEN_FILE,
    auth::ENROLLMENTS_FILE,
];

/// The token lists [`watch`] keeps in step.
const WATCHED: &[&str] = &[
    auth::TOKENS_FILE,
    auth::ENROLLMENTS_FILE,
    auth::ADMIN_TOKEN_FILE,
];

/// How often [`watch`] looks at the token lists.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Replaces the data directory's copies of the deployment's files with the database's;
/// returns the names it wrote.
pub async fn pull(store: &PostgresStore, data_dir: &Path) -> Result<Vec<String>, Error> {
    write_files(store.deployment_files().await?, data_dir)
}

/// Replaces the data directory's copies of the deployment's files with `files` (as the
/// database holds them: an edge reads them through its `Standby`); returns the names it
/// wrote.
pub fn write_files(
    files: BTreeMap<String, Vec<u8>>,
    data_dir: &Path,
) -> Result<Vec<String>, Error> {
    let mut written = Vec::new();
    for (name, bytes) in files {
        if !SHARED.contains(&name.as_str()) {
            continue; // a newer Fallow's file: not ours to write
        }
        let path = data_dir.join(&name);
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::DataDir {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        auth::write_private(&path, &bytes)?;
        written.push(name);
    }
    if !written.is_empty() {
        tracing::info!(
            data = %data_dir.display(),
            "loaded the deployment's {} from the database",
            written.join(", ")
        );
    }
    Ok(written)
}

/// Makes the coordinator key and the token lists if the data directory has none, then puts
/// every shared file the database lacks there (the first coordinator's copy wins; the
/// lock makes "first" well defined). Returns the names it put.
pub async fn push(
    store: &PostgresStore,
    data_dir: &Path,
    require_enrollment: bool,
) -> Result<Vec<String>, Error> {
    protocol::Identity::load_or_create(&data_dir.join(KEY_FILE)).map_err(|e| Error::DataDir {
        path: data_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    // Mints the admin token on a first start, and the enrollment list when required.
    auth::Gate::open(data_dir, require_enrollment)?;
    let held = store.deployment_files().await?;
    let mut put = Vec::new();
    for name in SHARED {
        if held.contains_key(*name) {
            continue;
        }
        let Ok(bytes) = std::fs::read(data_dir.join(name)) else {
            continue; // not made here (no TLS, no enrollments): nothing to share
        };
        if store.put_deployment_file(name, &bytes, false).await? {
            put.push(name.to_string());
        }
    }
    if !put.is_empty() {
        tracing::info!(
            "put the deployment's {} in the database for the other coordinators",
            put.join(", ")
        );
    }
    Ok(put)
}

/// Puts the token lists in the database whenever they change in the data directory, every
/// [`WATCH_EVERY`], until the process ends (the coordinator holds the database until then).
pub fn watch(store: PostgresStore, data_dir: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for name in WATCHED {
            if let Ok(bytes) = std::fs::read(data_dir.join(name)) {
                last.insert(name, bytes);
            }
        }
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            for name in WATCHED {
                let Ok(bytes) = std::fs::read(data_dir.join(name)) else {
                    continue;
                };
                if last.get(name) == Some(&bytes) {
                    continue;
                }
                match store.put_deployment_file(name, &bytes, true).await {
                    Ok(_) => {
                        tracing::info!(
                            "{name} changed: put in the database for the other coordinators"
                        );
                        last.insert(name, bytes);
                    }
                    Err(e) => tracing::warn!(
                        "{name} changed but cannot be put in the database ({e}); retrying"
                    ),
                }
            }
        }
    })
}
