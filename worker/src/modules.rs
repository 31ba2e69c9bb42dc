//! Project modules by BLAKE3 digest: fetched from the coordinator once, kept as `.wasm` in
//! `<data>/modules/`, compiled here (never accepting precompiled code from anyone) and kept
//! compiled in the sandbox's cache.

use std::path::PathBuf;
use std::sync::Arc;

use protocol::Digest;
use sandbox::{Compiled, Sandbox};

use crate::Error;
use crate::rpc::CoordinatorClient;

/// The worker's module store.
#[derive(Debug)]
pub struct Modules {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
}

impl Modules {
    /// Modules kept under `dir`.
    pub fn new(dir: PathBuf, sandbox: Arc<Sandbox>) -> Self {
        Modules { dir, sandbox }
    }

    /// The compiled module for `digest`, fetching and compiling it if needed.
    pub async fn get(
        &self,
        client: &CoordinatorClient,
        digest: Digest,
        nan: bool,
    ) -> Result<Compiled, Error> {
        let path = self.dir.join(format!("{}.wasm", digest.to_hex()));
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) if Digest::of(&bytes) == digest => bytes,
            _ => {
                let bytes = client.module(digest).await?;
                if Digest::of(&bytes) != digest {
                    return Err(Error::Module(format!(
                        "coordinator sent bytes that do not hash to {digest}"
                    )));
                }
                tokio::fs::create_dir_all(&self.dir)
                    .await
                    .map_err(|e| Error::io(&self.dir, e))?;
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, &bytes)
                    .await
                    .map_err(|e| Error::io(&tmp, e))?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| Error::io(&path, e))?;
                bytes
            }
        };
        let sandbox = self.sandbox.clone();
        // Compilation takes tens of milliseconds of CPU: not on the async threads.
        tokio::task::spawn_blocking(move || sandbox.compile(digest, &bytes, nan))
            .await
            .map_err(|e| Error::Module(format!("compiler panicked: {e}")))?
            .map_err(|e| Error::Module(e.to_string()))
    }
}
