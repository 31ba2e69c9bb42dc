//! The crate's one error type.

use std::path::{Path, PathBuf};

/// The one error type of the `worker` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; the text names it.
    #[error("{0}")]
    Config(String),
    /// An RPC failed (coordinator or peer unreachable, or it refused the call).
    #[error("{call}: {}", status.message())]
    Rpc {
        /// The call.
        call: &'static str,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// Malformed data from the coordinator or a peer.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// The module does not compile or instantiate: the module's fault (reported as
    /// `bad_module`). Never used for this worker's own trouble.
    #[error("module: {0}")]
    Module(String),
    /// A project's data files do not fit in this worker's `disk_cache_mb`: the unit fails
    /// with this reason (it names the sizes and the fix) rather than waiting for room that
    /// never comes.
    #[error("{0}")]
    DataTooLarge(String),
    /// This worker's own trouble, not the unit's: a guest thread gone, bad bytes in
    /// transit, an injected test fault. Units it hits are handed back, not failed.
    #[error("{0}")]
    Local(String),
    /// The sandbox could not start.
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    /// A file in the data directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The peer server failed.
    #[error("peer server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The peer service's TLS identity or a peer's endpoint could not be made.
    #[error(transparent)]
    PeerTls(#[from] connections::Error),
    /// The local control API: the worker is not running, refused the token or the
    /// request; the text says which and what to do.
    #[error("{0}")]
    Control(String),
    /// The coordinator's TLS certificate is not the pinned one; nothing was sent. The text
    /// names both fingerprints.
    #[error("{0}")]
    Certificate(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether retrying later may succeed (the other side is down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}
