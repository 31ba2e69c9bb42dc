//! Worker-to-worker TLS: a worker's peer service (its board) is reached only over TLS, and
//! a client reaches exactly the worker whose key it names.
//!
//! There is no certificate authority, no name and no date to check. Each worker makes a
//! fresh TLS key and a self-signed certificate for it when it starts serving
//! ([`PeerTls::new`]); the certificate carries a binding — an extension with the worker's
//! public key and the worker key's signature over the certificate's public key
//! (`protocol::identity::verify_peer_tls`). A client connecting to a board knows the
//! board's worker key (from the membership or the coordinator's peer list) and accepts
//! only a certificate bound to that key ([`BoundVerifier`]); rustls then checks that the
//! server holds the certificate's key (the handshake signature). So a connection is
//! encrypted and reaches the named worker, whoever answers at the address.
//!
//! The TLS key is not the worker key: a TLS 1.2 server signs bytes that start with the
//! client's random, so a worker key used for TLS could be made to sign bytes a client
//! chose. The worker key signs only the binding, under its own domain separation.
//!
//! The server does not ask clients for certificates: what a client sends a board is signed
//! by its sender (commitments, reveals) and vouched for by the coordinator (lease tickets),
//! and the board limits clients per address and per key (SECURITY.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::tls::Fingerprint;
use protocol::{Identity, WorkerId};
use rcgen::PublicKeyData as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{ClientTlsConfig, Endpoint, ServerTlsConfig};
use x509_parser::oid_registry::Oid;

use crate::Error;

/// The object identifier of the binding extension: an arc under `2.25` (UUID-derived
/// identifiers, which need no registration), fixed for Fallow.
const BINDING_OID: &[u64] = &[2, 25, 113_262_944_590_561_274, 1];

/// The name peer certificates are made for and clients ask for (SNI). Only a label: no
/// name is checked.
const PEER_NAME: &str = "fallow-peer";

/// A worker's TLS identity for its peer service.
#[derive(Clone)]
pub struct PeerTls {
    cert_pem: String,
    key_pem: String,
    worker: WorkerId,
}

impl std::fmt::Debug for PeerTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// A fresh TLS key (ECDSA P-256) and a self-signed certificate bound to `identity`.
    pub fn new(identity: &Identity) -> Result<PeerTls, Error> {
        let made = |e: rcgen::Error| Error::PeerTls(format!("cannot make a certificate: {e}"));
        let key = rcgen::KeyPair::generate().map_err(made)?;
        let binding = binding(identity, &key.subject_public_key_info());
        let mut params =
            rcgen::CertificateParams::new(vec![PEER_NAME.to_string()]).map_err(made)?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                BINDING_OID,
                binding,
            ));
        let cert = params.self_signed(&key).map_err(made)?;
        Ok(PeerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            worker: identity.id(),
        })
    }

    /// The worker this identity is bound to.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// tonic's server settings: serve with this certificate.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(Duration::from_secs(5))
    }
}

/// The extension's content: the worker key, then its signature over the TLS key's DER
/// `SubjectPublicKeyInfo`.
fn binding(identity: &Identity, spki_der: &[u8]) -> Vec<u8> {
    let mut content = identity.id().0.to_vec();
    content.extend_from_slice(&identity.sign_peer_tls(spki_der));
    content
}

/// An endpoint for the board at `addr` that connects only to the worker `expected`
/// (lazily: connect with [`Endpoint::connect_lazy`] or [`Endpoint::connect`]).
pub fn endpoint(addr: SocketAddr, expected: WorkerId) -> Result<Endpoint, Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| Error::PeerTls(format!("bad peer address {addr}: {e}")))?
        .tls_config_with_verifier(
            ClientTlsConfig::new().domain_name(PEER_NAME),
            Arc::new(BoundVerifier::new(expected)),
        )
        .map_err(|e| Error::PeerTls(format!("peer {addr}: TLS: {e}")))
}

/// Checks a certificate's binding: the worker key it names and that key's signature over
/// the certificate's public key. `Ok` names the worker.
pub fn bound_worker(cert: &[u8]) -> Result<WorkerId, String> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let oid = Oid::from(BINDING_OID).map_err(|_| "binding identifier".to_string())?;
    let extension = parsed
        .tbs_certificate
        .get_extension_unique(&oid)
        .map_err(|e| format!("bad extensions: {e}"))?
        .ok_or("no worker binding (not a Fallow peer certificate)")?;
    let content = extension.value;
    let (key, signature) = content
        .split_at_checked(32)
        .ok_or("the worker binding is too short")?;
    let worker = WorkerId(
        key.try_into()
            .map_err(|_| "the worker binding is too short")?,
    );
    protocol::identity::verify_peer_tls(worker, parsed.public_key().raw, signature)
        .map_err(|_| format!("the binding to worker {worker} does not verify"))?;
    Ok(worker)
}

/// An endpoint for the coordinator at `url` (`https://HOST:PORT`) that connects only to a
/// server presenting the certificate whose fingerprint is `pin`: how one coordinator of a
/// deployment reaches another (they share the deployment's certificate), with no name or
/// date checked, as workers pin it (lazily, like [`endpoint`]).
pub fn pinned_endpoint(url: &str, host: &str, pin: Fingerprint) -> Result<Endpoint, Error> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::PeerTls(format!("bad coordinator URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tls_config_with_verifier(
            ClientTlsConfig::new().domain_name(host),
            Arc::new(BoundVerifier {
                expected: Expected::Pinned(pin),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }),
        )
        .map_err(|e| Error::PeerTls(format!("coordinator {url}: TLS: {e}")))
}

/// What a [`BoundVerifier`] accepts.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// A certificate bound to this worker key (a board).
    Worker(WorkerId),
    /// Exactly the certificate with this fingerprint (a coordinator of the deployment).
    Pinned(Fingerprint),
}

/// A rustls verifier that accepts exactly the certificates bound to one worker key (see
/// the module doc), or one pinned certificate ([`pinned_endpoint`]), and checks the
/// handshake signature with the certificate's key.
#[derive(Debug)]
pub struct BoundVerifier {
    expected: Expected,
    provider: Arc<CryptoProvider>,
}

impl BoundVerifier {
    /// A verifier for the board of `expected`.
    pub fn new(expected: WorkerId) -> BoundVerifier {
        BoundVerifier {
            expected: Expected::Worker(expected),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for BoundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = |why: String| {
            tracing::debug!("peer certificate refused: {why}");
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        };
        match self.expected {
            Expected::Worker(expected) => {
                let worker = bound_worker(end_entity.as_ref()).map_err(refused)?;
                if worker != expected {
                    return Err(refused(format!(
                        "bound to worker {worker}, not to {expected}"
                    )));
                }
            }
            Expected::Pinned(pin) => {
                let seen = Fingerprint::of(end_entity.as_ref());
                if seen != pin {
                    return Err(refused(format!(
                        "certificate {seen} is not the deployment's {pin}"
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;

    fn der(tls: &PeerTls) -> Vec<u8> {
        CertificateDer::from_pem_slice(tls.cert_pem.as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_certificate_is_bound_to_its_worker_and_to_no_other() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let tls = PeerTls::new(&a).expect("made");
        assert_eq!(tls.worker(), a.id());
        let cert = der(&tls);
        assert_eq!(bound_worker(&cert), Ok(a.id()));
        let now = UnixTime::now();
        let name = ServerName::try_from(PEER_NAME).expect("name");
        let check = |expected: WorkerId, cert: &[u8]| {
            BoundVerifier::new(expected).verify_server_cert(
                &CertificateDer::from(cert.to_vec()),
                &[],
                &name,
                &[],
                now,
            )
        };
        assert!(check(a.id(), &cert).is_ok());
        assert!(check(b.id(), &cert).is_err(), "a's certificate is not b's");
        // Two certificates of one worker carry different TLS keys, both bound.
        assert_ne!(der(&PeerTls::new(&a).expect("made")), cert);
    }

    #[test]
    fn a_binding_copied_onto_another_key_or_edited_is_refused() {
        let a = Identity::from_seed([1; 32]);
        let genuine = PeerTls::new(&a).expect("made");
        let genuine_cert = der(&genuine);
        let (_, parsed) = x509_parser::parse_x509_certificate(&genuine_cert).expect("parse");
        let oid = Oid::from(BINDING_OID).expect("oid");
        let stolen = parsed
            .tbs_certificate
            .get_extension_unique(&oid)
            .expect("unique")
            .expect("bound")
            .value
            .to_vec();
        // An attacker's own TLS key with a's binding copied over.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![PEER_NAME.into()]).expect("params");
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                BINDING_OID,
                stolen.clone(),
            ));
        let copied = params.self_signed(&key).expect("cert");
        let err = bound_worker(copied.der()).expect_err("copied binding");
        assert!(err.contains("does not verify"), "{err}");
        // Edited, cut, missing, not a certificate.
        let mut edited = stolen.clone();
        edited[40] ^= 1;
        for (content, says) in [
            (Some(edited), "does not verify"),
            (Some(stolen[..20].to_vec()), "too short"),
            (None, "no worker binding"),
        ] {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(vec![PEER_NAME.into()]).expect("params");
            if let Some(content) = content {
                params
                    .custom_extensions
                    .push(rcgen::CustomExtension::from_oid_content(
                        BINDING_OID,
                        content,
                    ));
            }
            let cert = params.self_signed(&key).expect("cert");
            let err = bound_worker(cert.der()).expect_err(says);
            assert!(err.contains(says), "{err}");
        }
        assert!(bound_worker(b"junk").is_err());
        let mut trailing = genuine_cert.clone();
        trailing.push(0);
        assert!(bound_worker(&trailing).is_err());
    }
}
