//! How workers and the CLI reach a coordinator: plain HTTP on loopback, TLS pinned to the
//! coordinator's certificate fingerprint anywhere else.
//!
//! There is no certificate authority: a coordinator makes its own certificate, and a
//! client trusts exactly the certificate whose SHA-256 it was given, in the URL
//! (`https://HOST:PORT#sha256=HEX`) or remembered on first use in a `known_coordinators`
//! file (one `HOST:PORT sha256:HEX` line per coordinator), the way SSH trusts host keys.
//! [`PinVerifier`] still checks the handshake signature, so a peer must hold the pinned
//! certificate's key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::tls::{CoordinatorUrl, Fingerprint};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::Error;

/// The file, in a worker's data dir, that remembers coordinators trusted on first use.
pub const KNOWN_COORDINATORS: &str = "known_coordinators";

/// What a client accepts besides pinned TLS.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Where pins learnt on first use are stored and read (`DATA/known_coordinators`);
    /// `None`: an unpinned `https://` URL is trusted for this process only.
    pub known: Option<PathBuf>,
    /// Allow plain `http://` to a host that is not loopback (`--insecure-plaintext`).
    pub allow_plaintext: bool,
}

/// A coordinator endpoint and, for TLS, the verifier that enforces its pin.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Connects lazily or eagerly, as the caller chooses.
    pub endpoint: Endpoint,
    /// `None` for plain HTTP.
    pub verifier: Option<Arc<PinVerifier>>,
}

impl Connection {
    /// Why the last handshake was refused, if the certificate was: the message to show
    /// instead of tonic's "transport error".
    pub fn refusal(&self) -> Option<String> {
        self.verifier.as_ref().and_then(|v| v.refusal())
    }
}

/// The endpoint for a coordinator URL (see the module doc), refusing plain HTTP off
/// loopback unless `trust.allow_plaintext`.
pub fn connect(url: &str, trust: &Trust) -> Result<Connection, Error> {
    let parsed = CoordinatorUrl::parse(url)?;
    let endpoint = Endpoint::from_shared(parsed.url.clone())
        .map_err(|e| Error::Config(format!("coordinator {url:?} is not a valid URL: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if !parsed.tls {
        if !parsed.is_loopback() && !trust.allow_plaintext {
            return Err(Error::Config(format!(
                "coordinator {url}: plain http:// is only for loopback; use the https://…#sha256=… \
                 URL `fallow coordinator` prints (or pass --insecure-plaintext to send everything \
                 in clear)"
            )));
        }
        return Ok(Connection {
            endpoint,
            verifier: None,
        });
    }
    let verifier = Arc::new(PinVerifier::new(&parsed, trust.known.clone())?);
    let endpoint = endpoint
        // The name is only sent as SNI (the pin, not the name, is checked); set it from the
        // parsed host so an IPv6 literal goes without its brackets.
        .tls_config_with_verifier(
            ClientTlsConfig::new().domain_name(parsed.host.clone()),
            verifier.clone(),
        )
        .map_err(|e| Error::Config(format!("coordinator {url}: TLS: {e}")))?;
    Ok(Connection {
        endpoint,
        verifier: Some(verifier),
    })
}

/// Where a pin came from, for messages.
#[derive(Debug, Clone)]
enum Source {
    Url,
    Known(PathBuf),
    FirstUse,
}

/// A rustls verifier that accepts exactly one certificate, by SHA-256 of its DER; with no
/// pin yet, it accepts the first certificate it sees, says so loudly, remembers it (in the
/// `known_coordinators` file if it has one) and refuses any other afterwards.
#[derive(Debug)]
pub struct PinVerifier {
    authority: String,
    pin: Mutex<Option<(Fingerprint, Source)>>,
    /// Unpinned: the certificate of the handshake in progress, pinned once the server
    /// proves it holds its key (the handshake signature verifies).
    candidate: Mutex<Option<Fingerprint>>,
    known: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<String>>,
}

impl PinVerifier {
    fn new(url: &CoordinatorUrl, known: Option<PathBuf>) -> Result<PinVerifier, Error> {
        let pin = match (url.pin, &known) {
            (Some(pin), _) => Some((pin, Source::Url)),
            (None, Some(file)) => {
                read_known(file, &url.authority)?.map(|pin| (pin, Source::Known(file.clone())))
            }
            (None, None) => None,
        };
        Ok(PinVerifier {
            authority: url.authority.clone(),
            pin: Mutex::new(pin),
            candidate: Mutex::new(None),
            known,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refusal: Mutex::new(None),
        })
    }

    /// The pinned fingerprint, once there is one.
    pub fn pinned(&self) -> Option<Fingerprint> {
        lock(&self.pin).as_ref().map(|(f, _)| *f)
    }

    /// Why the last certificate was refused (cleared by the next accepted one).
    pub fn refusal(&self) -> Option<String> {
        lock(&self.refusal).clone()
    }

    /// Checks a certificate's fingerprint against the pin; with no pin yet, accepts it as
    /// the candidate for [`PinVerifier::confirm`].
    fn check(&self, seen: Fingerprint) -> Result<(), String> {
        let pin = lock(&self.pin);
        match &*pin {
            Some((pinned, _)) if *pinned == seen => Ok(()),
            Some((pinned, source)) => {
                let how = match source {
                    Source::Url => "in the coordinator URL".to_string(),
                    Source::Known(file) => format!(
                        "on first use in {} (if the coordinator's certificate was replaced on \
                         purpose, delete its line there)",
                        file.display()
                    ),
                    Source::FirstUse => "on first use by this process".to_string(),
                };
                Err(format!(
                    "coordinator {} certificate {seen} does not match the pinned {pinned} \
                     (pinned {how}); refusing to connect",
                    self.authority
                ))
            }
            None => {
                *lock(&self.candidate) = Some(seen);
                Ok(())
            }
        }
    }

    /// The server proved it holds the key of certificate `seen`: with no pin yet, and
    /// `seen` the candidate, trust it on first use — loudly — and remember it. (Pinning
    /// only here means a peer that merely replays someone's certificate pins nothing.)
    fn confirm(&self, seen: Fingerprint) {
        let mut pin = lock(&self.pin);
        if pin.is_some() || lock(&self.candidate).take() != Some(seen) {
            return;
        }
        // A few dozen bytes, once per coordinator: blocking I/O here is fine.
        let source = match &self.known {
            Some(file) => match append_known(file, &self.authority, seen) {
                Ok(()) => Source::Known(file.clone()),
                Err(e) => {
                    tracing::warn!(
                        "cannot remember the coordinator's certificate in {}: {e}",
                        file.display()
                    );
                    Source::FirstUse
                }
            },
            None => Source::FirstUse,
        };
        let remembered = match &source {
            Source::Known(file) => format!("remembered in {}", file.display()),
            _ => "not remembered after this process".to_string(),
        };
        tracing::warn!(
            "TRUSTING COORDINATOR {} ON FIRST USE: its certificate is {seen}, {remembered}. \
             Compare it with the `tls fingerprint` line the coordinator printed; to pin it \
             from the start use https://{}#sha256={}",
            self.authority,
            self.authority,
            hex::encode(seen.0)
        );
        *pin = Some((seen, source));
    }

    /// A handshake signature check's result, confirming a first-use candidate on success.
    fn signed(
        &self,
        cert: &CertificateDer<'_>,
        verified: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if verified.is_ok() {
            self.confirm(Fingerprint::of(cert.as_ref()));
        }
        verified
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Names, dates and issuers do not matter: the pin names the one certificate trusted.
        match self.check(Fingerprint::of(end_entity.as_ref())) {
            Ok(()) => {
                *lock(&self.refusal) = None;
                Ok(ServerCertVerified::assertion())
            }
            Err(message) => {
                // Callers report it (registration refused, the CLI's error); once is enough.
                tracing::debug!("{message}");
                *lock(&self.refusal) = Some(message.clone());
                Err(rustls::Error::General(message))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let verified = rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signed(cert, verified)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let verified = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signed(cert, verified)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The pin remembered for `authority` in a `known_coordinators` file (absent file: none).
fn read_known(file: &Path, authority: &str) -> Result<Option<Fingerprint>, Error> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, e)),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            Error::Config(format!(
                "{} line {}: expected `HOST:PORT sha256:HEX`, got {line:?}",
                file.display(),
                n + 1
            ))
        };
        let (host, pin) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        if host == authority {
            return pin.trim().parse().map(Some).map_err(|_| bad());
        }
    }
    Ok(None)
}

fn append_known(file: &Path, authority: &str, pin: Fingerprint) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    writeln!(f, "{authority} {pin}")?;
    f.sync_all()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (single assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    fn verifier(url: &str, known: Option<PathBuf>) -> PinVerifier {
        PinVerifier::new(&CoordinatorUrl::parse(url).expect("url"), known).expect("verifier")
    }

    /// A handshake presenting `seen` whose signature verifies.
    fn handshake(v: &PinVerifier, seen: Fingerprint) -> Result<(), String> {
        v.check(seen)?;
        v.confirm(seen);
        Ok(())
    }

    #[test]
    fn a_pinned_url_accepts_only_its_certificate() {
        let v = verifier(
            &format!("https://h:1#sha256={}", hex::encode([7u8; 32])),
            None,
        );
        assert_eq!(v.check(fp(7)), Ok(()));
        let err = v.check(fp(8)).expect_err("other certificate");
        assert!(
            err.contains(&format!(
                "certificate {} does not match the pinned {}",
                fp(8),
                fp(7)
            )) && err.contains("in the coordinator URL"),
            "{err}"
        );
    }

    #[test]
    fn trust_on_first_use_remembers_the_first_certificate_per_coordinator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(KNOWN_COORDINATORS);
        let first = verifier("https://h:1", Some(file.clone()));
        assert_eq!(first.pinned(), None);
        // A certificate whose handshake signature fails pins nothing.
        assert_eq!(first.check(fp(9)), Ok(()));
        assert_eq!(first.pinned(), None);
        assert!(!file.exists());
        assert_eq!(handshake(&first, fp(1)), Ok(()));
        assert_eq!(first.pinned(), Some(fp(1)));
        assert!(handshake(&first, fp(2)).is_err(), "pinned in memory");
        // Another coordinator has its own pin.
        assert_eq!(
            handshake(&verifier("https://h:2", Some(file.clone())), fp(2)),
            Ok(())
        );
        // A later process reads the pin back.
        let later = verifier("https://h:1", Some(file.clone()));
        assert_eq!(later.pinned(), Some(fp(1)));
        let err = handshake(&later, fp(3)).expect_err("changed certificate");
        assert!(
            err.contains(&format!(
                "certificate {} does not match the pinned {}",
                fp(3),
                fp(1)
            )) && err.contains(&file.display().to_string()),
            "{err}"
        );
        // A pin in the URL wins over the remembered one.
        let url = format!("https://h:1#sha256={}", hex::encode([3u8; 32]));
        assert_eq!(
            handshake(&verifier(&url, Some(file.clone())), fp(3)),
            Ok(())
        );
        // Without a file nothing is remembered across verifiers.
        assert_eq!(handshake(&verifier("https://h:9", None), fp(4)), Ok(()));
        assert_eq!(handshake(&verifier("https://h:9", None), fp(5)), Ok(()));
        assert_eq!(
            std::fs::read_to_string(&file).expect("known"),
            format!("h:1 {}\nh:2 {}\n", fp(1), fp(2))
        );
    }

    /// A self-signed certificate and its key.
    fn certificate() -> (
        CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        (
            made.cert.der().clone(),
            rustls::pki_types::PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()).into(),
        )
    }

    /// A full TLS handshake in memory between a client using `verifier` and a server
    /// presenting `cert` and signing with `key` (which need not belong to `cert`).
    fn tls_handshake(
        verifier: Arc<PinVerifier>,
        cert: &CertificateDer<'static>,
        key: &rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signer = provider
            .key_provider
            .load_private_key(key.clone_key())
            .expect("key");
        // CertifiedKey::new does not check that the key matches: an impostor's server.
        let served = rustls::sign::CertifiedKey::new(vec![cert.clone()], signer);
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(served)));
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut client = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client writes");
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server reads");
            }
            // The server fails only once the client gave up (an alert): report the client's.
            let server_state = server.process_new_packets().map(|_| ());
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("server writes");
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client reads");
            }
            client.process_new_packets()?;
            server_state?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn real_handshakes_accept_the_pinned_key_holder_only() {
        let (cert_a, key_a) = certificate();
        let (cert_b, key_b) = certificate();
        let pin_a = Fingerprint::of(cert_a.as_ref());
        let pinned = || {
            Arc::new(verifier(
                &format!("https://localhost:1#sha256={}", hex::encode(pin_a.0)),
                None,
            ))
        };
        tls_handshake(pinned(), &cert_a, &key_a).expect("the pinned certificate");
        let err = tls_handshake(pinned(), &cert_b, &key_b).expect_err("another certificate");
        assert!(
            err.to_string().contains("does not match the pinned"),
            "{err}"
        );
        // The pinned certificate replayed by someone without its key: the handshake
        // signature does not verify.
        let err = tls_handshake(pinned(), &cert_a, &key_b).expect_err("impostor");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        );

        // Trust on first use pins nothing for an impostor, then the real key holder.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(KNOWN_COORDINATORS);
        let tofu = Arc::new(verifier("https://localhost:1", Some(file.clone())));
        let err = tls_handshake(tofu.clone(), &cert_a, &key_b).expect_err("impostor");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        );
        assert_eq!(tofu.pinned(), None);
        assert!(!file.exists());
        tls_handshake(tofu.clone(), &cert_a, &key_a).expect("first use");
        assert_eq!(tofu.pinned(), Some(pin_a));
        tls_handshake(tofu, &cert_b, &key_b).expect_err("changed certificate");
        assert_eq!(
            std::fs::read_to_string(&file).expect("known"),
            format!("localhost:1 {pin_a}\n")
        );
    }

    #[test]
    fn a_corrupt_known_coordinators_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(KNOWN_COORDINATORS);
        std::fs::write(&file, "# comment\nh:1 sha256:nothex\n").expect("write");
        let err = PinVerifier::new(
            &CoordinatorUrl::parse("https://h:1").expect("url"),
            Some(file.clone()),
        )
        .expect_err("corrupt")
        .to_string();
        assert!(
            err.contains("line 2") && err.contains(KNOWN_COORDINATORS),
            "{err}"
        );
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        let trust = Trust::default();
        assert!(connect("http://127.0.0.1:7070", &trust).is_ok());
        assert!(connect("http://localhost:7070", &trust).is_ok());
        let err = connect("http://10.1.2.3:7070", &trust)
            .expect_err("plain off loopback")
            .to_string();
        assert!(
            err.contains("https://") && err.contains("--insecure-plaintext"),
            "{err}"
        );
        let allowed = Trust {
            allow_plaintext: true,
            ..Trust::default()
        };
        assert!(connect("http://10.1.2.3:7070", &allowed).is_ok());
        let tls = connect("https://10.1.2.3:7070", &trust).expect("https");
        assert!(tls.verifier.is_some());
    }
}
