//! What a TLS pin is: the SHA-256 [`Fingerprint`] of a coordinator's certificate, and the
//! [`CoordinatorUrl`] that carries one (`https://HOST:PORT#sha256=HEX`).
//!
//! Pure parsing; the rustls verifier that enforces a pin is `worker::tls`, the certificate
//! a coordinator serves is made by `coordinator::tls`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use sha2::Digest as _;

use crate::Error;

/// The SHA-256 of a certificate's DER encoding, written `sha256:` and 64 lowercase hex
/// digits: the value an operator reads off `fallow coordinator` and gives its workers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(sha2::Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    /// Accepts `sha256:HEX`, `sha256=HEX` or bare `HEX`; the hex may be upper case and may
    /// have `:` between bytes (as `openssl x509 -fingerprint -sha256` prints it).
    fn from_str(s: &str) -> Result<Fingerprint, Error> {
        let bad = |problem: String| Error::Malformed {
            field: "certificate fingerprint",
            problem,
        };
        let trimmed = s.trim();
        let hex_part = ["sha256:", "sha256=", "SHA256:", "SHA256="]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p))
            .unwrap_or(trimmed);
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return Err(bad(format!(
                "expected sha256: and 64 hex digits, got {} digits in {s:?}",
                digits.len()
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out)
            .map_err(|e| bad(format!("{s:?} is not hex: {e}")))?;
        Ok(Fingerprint(out))
    }
}

/// A coordinator URL as a worker or the CLI is given it: `http://HOST:PORT` (loopback
/// development) or `https://HOST:PORT`, optionally with the pinned certificate as
/// `#sha256=HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorUrl {
    /// The URL without the fragment: what the transport connects to.
    pub url: String,
    /// `HOST:PORT` (IPv6 hosts in brackets): the key pins are stored under.
    pub authority: String,
    /// The host alone, without brackets.
    pub host: String,
    /// `https`.
    pub tls: bool,
    /// The certificate pinned in the URL.
    pub pin: Option<Fingerprint>,
}

impl CoordinatorUrl {
    /// Parses `s`, naming what is wrong.
    pub fn parse(s: &str) -> Result<CoordinatorUrl, Error> {
        let bad = |problem: String| Error::Malformed {
            field: "coordinator URL",
            problem,
        };
        let s = s.trim();
        let (base, fragment) = match s.split_once('#') {
            Some((base, fragment)) => (base, Some(fragment)),
            None => (s, None),
        };
        let (tls, rest) = if let Some(rest) = base.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(format!(
                "{s:?} must start with https:// (or http:// on loopback)"
            )));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad(format!("{s:?} has no host")));
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        let pin = match fragment {
            None | Some("") => None,
            Some(f) => {
                let value = f.strip_prefix("sha256=").ok_or_else(|| {
                    bad(format!(
                        "{s:?}: the part after # must be sha256=HEX, the coordinator's certificate fingerprint"
                    ))
                })?;
                if !tls {
                    return Err(bad(format!(
                        "{s:?} pins a certificate but is http://: use https://"
                    )));
                }
                Some(value.parse::<Fingerprint>()?)
            }
        };
        Ok(CoordinatorUrl {
            url: base.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            host: host.to_string(),
            tls,
            pin,
        })
    }

    /// The host is `localhost` or a loopback address: plain HTTP is allowed there.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// `localhost` (or a name under it) or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

    #[test]
    fn fingerprints_parse_in_the_forms_operators_paste() {
        let want: Fingerprint = format!("sha256:{HEX}").parse().expect("canonical");
        assert_eq!(want.to_string(), format!("sha256:{HEX}"));
        for form in [
            HEX.to_string(),
            HEX.to_uppercase(),
            format!("sha256={HEX}"),
            format!(" SHA256:{} ", HEX.to_uppercase()),
            HEX.as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).expect("ascii"))
                .collect::<Vec<_>>()
                .join(":"),
        ] {
            assert_eq!(form.parse::<Fingerprint>().expect(&form), want, "{form}");
        }
        for bad in [
            "",
            "sha256:",
            &HEX[..62],
            &format!("{HEX}00"),
            &HEX.replace('5', "g"),
        ] {
            let err = bad.parse::<Fingerprint>().expect_err(bad).to_string();
            assert!(err.contains("certificate fingerprint"), "{err}");
        }
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_der() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            Fingerprint::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn coordinator_urls_carry_scheme_host_and_pin() {
        let u = CoordinatorUrl::parse(&format!("https://example.org:7070#sha256={HEX}"))
            .expect("pinned");
        assert_eq!(u.url, "https://example.org:7070");
        assert_eq!(u.authority, "example.org:7070");
        assert_eq!(u.host, "example.org");
        assert!(u.tls && !u.is_loopback());
        assert_eq!(u.pin.map(|p| p.0), Some(hex_bytes()));

        let u = CoordinatorUrl::parse("http://127.0.0.1:7070/").expect("plain");
        assert_eq!(
            (u.url.as_str(), u.tls, u.pin),
            ("http://127.0.0.1:7070", false, None)
        );
        assert!(u.is_loopback());

        let u = CoordinatorUrl::parse("https://[::1]:7070#").expect("v6");
        assert_eq!(
            (u.host.as_str(), u.authority.as_str()),
            ("::1", "[::1]:7070")
        );
        assert!(u.is_loopback() && u.pin.is_none());

        for host in ["localhost", "LOCALHOST.", "a.localhost", "127.8.9.1", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "example.org",
            "localhost.example.org",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn bad_coordinator_urls_say_what_to_fix() {
        for (url, says) in [
            ("127.0.0.1:7070", "must start with https://"),
            ("https://", "has no host"),
            ("https://h:1#md5=00", "must be sha256=HEX"),
            (&format!("http://h:1#sha256={HEX}"), "use https://"),
            ("https://h:1#sha256=abc", "64 hex digits"),
        ] {
            let err = CoordinatorUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    fn hex_bytes() -> [u8; 32] {
        let mut b = [0u8; 32];
        hex::decode_to_slice(HEX, &mut b).expect("hex");
        b
    }
}
