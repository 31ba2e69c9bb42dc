//! The certificate a coordinator serves gRPC and the dashboard with off loopback: made
//! self-signed on first start (`DATA/tls/cert.pem`, `key.pem`) or given by the operator.
//! Workers trust it by its SHA-256 fingerprint (`protocol::tls`), not by a CA, so nothing
//! here checks names or dates.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::tls::Fingerprint;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// A certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The fingerprint of the leaf certificate, the pin workers use.
    pub fingerprint: Fingerprint,
    /// Where the certificate came from.
    pub cert_path: PathBuf,
}

impl fmt::Debug for TlsIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The certificate in `DATA/tls/`, made on first use: a self-signed ECDSA P-256
    /// certificate for `names` (host names or IP addresses; only for the operator's eyes,
    /// workers check the fingerprint) and its key, written with mode 0600.
    pub fn load_or_create(data_dir: &Path, names: &[String]) -> Result<TlsIdentity, Error> {
        let dir = data_dir.join("tls");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        match (cert.exists(), key.exists()) {
            (true, true) => return TlsIdentity::load(&cert, &key),
            (false, false) => {}
            (true, false) => {
                return Err(tls_error(
                    &key,
                    "missing beside cert.pem (remove both to make a new certificate)",
                ));
            }
            (false, true) => {
                return Err(tls_error(
                    &cert,
                    "missing beside key.pem (remove both to make a new certificate)",
                ));
            }
        }
        let mut names = names.to_vec();
        if !names.iter().any(|n| n == "localhost") {
            names.push("localhost".into());
        }
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| tls_error(&cert, &format!("cannot make a certificate: {e}")))?;
        std::fs::create_dir_all(&dir).map_err(|e| tls_error(&dir, &e.to_string()))?;
        // The key first: a crash in between leaves a key without certificate, reported
        // above, never a certificate whose key is lost.
        write_file(&key, made.signing_key.serialize_pem().as_bytes(), true)?;
        write_file(&cert, made.cert.pem().as_bytes(), false)?;
        tracing::info!(cert = %cert.display(), "made a self-signed TLS certificate");
        TlsIdentity::load(&cert, &key)
    }

    /// The certificate chain in `cert` (PEM, leaf first) and the private key in `key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1), with an error naming the file that is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, Error> {
        let cert_pem = std::fs::read(cert).map_err(|e| tls_error(cert, &e.to_string()))?;
        let key_pem = std::fs::read(key).map_err(|e| tls_error(key, &e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(cert, &format!("not a PEM certificate: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(tls_error(
                cert,
                "holds no PEM certificate (BEGIN CERTIFICATE)",
            ));
        };
        let fingerprint = Fingerprint::of(leaf.as_ref());
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| tls_error(key, &format!("not a PEM private key: {e}")))?;
        // The same checks tonic's acceptor makes, here so the error can name the files.
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| tls_error(key, &format!("cannot be used with {}: {e}", cert.display())))?;
        Ok(TlsIdentity {
            cert_pem,
            key_pem,
            fingerprint,
            cert_path: cert.to_path_buf(),
        })
    }

    /// tonic's server settings for this identity.
    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}

fn tls_error(path: &Path, message: &str) -> Error {
    Error::Tls {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes a new file (never over an old one); `private` files get mode 0600 on Unix.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| tls_error(path, &e.to_string()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| tls_error(path, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = TlsIdentity::load_or_create(dir.path(), &["127.0.0.1".into()]).expect("made");
        let again = TlsIdentity::load_or_create(dir.path(), &[]).expect("reused");
        assert_eq!(first.fingerprint, again.fingerprint);
        let pem = std::fs::read(dir.path().join("tls/cert.pem")).expect("cert");
        let der = CertificateDer::from_pem_slice(&pem).expect("pem");
        assert_eq!(Fingerprint::of(der.as_ref()), first.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = TlsIdentity::load_or_create(other.path(), &[]).expect("made");
        assert_ne!(
            fresh.fingerprint, first.fingerprint,
            "a new data dir, a new key"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = TlsIdentity::load_or_create(&dir.path().join("a"), &[]).expect("a");
        let b = TlsIdentity::load_or_create(&dir.path().join("b"), &[]).expect("b");
        let key_b = dir.path().join("b/tls/key.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").expect("write");
        let missing = dir.path().join("missing.pem");
        for (cert, key, names, says) in [
            (&junk, &key_b, &junk, "no PEM certificate"),
            (&a.cert_path, &junk, &junk, "not a PEM private key"),
            (&missing, &key_b, &missing, "No such file"),
            (&a.cert_path, &key_b, &key_b, "cannot be used with"),
        ] {
            let err = TlsIdentity::load(cert, key).expect_err(says).to_string();
            assert!(
                err.contains(&names.display().to_string()) && err.contains(says),
                "{err}"
            );
        }
        assert_eq!(
            TlsIdentity::load(&b.cert_path, &key_b)
                .expect("b")
                .fingerprint,
            b.fingerprint
        );
        std::fs::remove_file(&key_b).expect("remove");
        let err = TlsIdentity::load_or_create(&dir.path().join("b"), &[])
            .expect_err("half")
            .to_string();
        assert!(err.contains("key.pem") && err.contains("missing"), "{err}");
    }
}
