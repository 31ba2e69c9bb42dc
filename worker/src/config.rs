//! The worker's settings: plain data checked once by [`WorkerConfig::validate`], and the
//! per-coordinator settings derived from them ([`AttachmentConfig`]).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocol::WorkerId;

use crate::{Error, tls};

/// Test-only misbehaviour, to prove that verification catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Change every output before signing it (a lying or broken worker).
    CorruptOutput,
    /// The first unit's preparation fails once as a local I/O error would (a worker-side,
    /// non-deterministic failure): the unit must be handed back, not failed.
    LocalFailureOnce,
}

/// A deployment to work for and its resource share (`--attach URL[,URL…][=SHARE]`).
///
/// A deployment is one coordinator, or several coordinators of one deployment on one
/// database (an active one and standbys): the worker talks to one of them at a time and
/// moves to the next when it cannot reach it (`attachment::failover`). Distinct
/// deployments are distinct `Attach`es, each with its own share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The deployment's coordinator URLs, in the order they are tried; at least one.
    pub urls: Vec<String>,
    /// Resource share: cores are split over time in proportion to the shares of the
    /// coordinators that have work. Default 100 (BOINC's); 1 to 1,000,000.
    pub share: u32,
}

/// The default resource share.
pub const DEFAULT_SHARE: u32 = 100;

impl Attach {
    /// Parses `URL` or `URL=SHARE`, where URL may be a comma-separated list of the
    /// coordinators of one deployment (`URL1,URL2=SHARE`).
    pub fn parse(s: &str) -> Result<Attach, Error> {
        let (url, share) = match s.rsplit_once('=') {
            // `https://HOST:PORT#sha256=HEX` without a share.
            Some((url, _)) if url.ends_with("#sha256") => (s, DEFAULT_SHARE),
            Some((url, share)) => {
                let share = share.trim().parse::<u32>().ok().filter(|s| (1..=1_000_000).contains(s)).ok_or_else(|| {
                    Error::Config(format!(
                        "--attach {s}: the share after `=` must be a whole number from 1 to 1000000 (got {share:?})"
                    ))
                })?;
                (url, share)
            }
            None => (s, DEFAULT_SHARE),
        };
        Ok(Attach {
            urls: split_urls(url),
            share,
        })
    }

    /// One deployment of the URLs in `list` (`URL1,URL2,…`), with the default share.
    pub fn deployment(list: &str) -> Attach {
        Attach {
            urls: split_urls(list),
            share: DEFAULT_SHARE,
        }
    }
}

/// The URLs of a comma-separated list, trimmed; empty entries (a trailing comma) dropped.
/// A URL never holds a comma of its own (`https://HOST:PORT#sha256=HEX` has none).
fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL, when `attach` is empty. Default `http://127.0.0.1:7070`. A
    /// comma-separated list (`URL1,URL2,…`) names the coordinators of one deployment
    /// (active and standbys on one database): the worker works for one at a time and
    /// moves to the next when the current one is unreachable.
    pub coordinator: String,
    /// Coordinators to work for, with their shares; empty: `coordinator` alone. Each gets
    /// its own registration, peer service (the first on `peer_listen`, the others on any
    /// free port) and membership; the cores are shared by resource share.
    pub attach: Vec<Attach>,
    /// Most units buffered per coordinator beyond the running ones, to keep cores busy
    /// across network hiccups. Default 2; 0 turns the buffer off. The buffer never takes
    /// more than the cores can start before the units' deadlines (their lease time).
    pub prefetch: usize,
    /// Data directory (identity key, module cache). Default `./fallow-worker`.
    pub data_dir: PathBuf,
    /// Units run at once. Default: all cores.
    pub cores: usize,
    /// Name shown to the coordinator. Default: the host name.
    pub name: String,
    /// Volunteer account the credit goes to: 1 to 64 printable characters. Default
    /// (`None`): `anon-` and the first 8 hex digits of the worker key.
    pub account: Option<String>,
    /// Team of the account: up to 64 printable characters; empty for none. Default empty.
    pub team: String,
    /// Whether to accept inbound connections: serve the peer service (a rendezvous board)
    /// and join the SWIM membership. Default true. False (`--no-inbound`, for workers behind
    /// NAT) still takes full part: it talks to boards over connections it opens itself.
    pub inbound: bool,
    /// Where the peer service listens: gRPC on TCP, and SWIM membership on UDP on the same
    /// port number. Default `0.0.0.0:0` (any free port free for both). If it cannot be
    /// bound the worker carries on without inbound connections.
    pub peer_listen: SocketAddr,
    /// Address peers use to reach us (TCP and UDP). Default: the listen port on the local
    /// address that routes to the coordinator.
    pub peer_advertise: Option<SocketAddr>,
    /// How long a graceful shutdown waits for running units: those whose guest
    /// checkpoints stop at their next checkpoint, the others may finish; what is still
    /// running then is handed back (or kept, if it has a checkpoint on disk).
    pub drain: Duration,
    /// Least time between two checkpoints of one unit written to disk. Default 30 s
    /// (BOINC writes at most every 60 s); 0 writes every checkpoint the guest saves. A
    /// crash loses at most this much plus one of the guest's own checkpoint intervals.
    pub checkpoint_every: Duration,
    /// Test-only fault injection.
    pub fault: Option<Fault>,
    /// Where to serve `GET /metrics` (Prometheus text format). Default: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Preference overrides (key → value as `fallow worker prefs set` takes it), applied
    /// over `<data>/prefs.toml`: the `fallow worker` flags. Default none.
    pub prefs: BTreeMap<String, String>,
    /// Allow plain `http://` to a coordinator that is not on loopback
    /// (`--insecure-plaintext`). Default false: off loopback only `https://` is accepted,
    /// pinned by `#sha256=` in the URL or on first use (`DATA/known_coordinators`).
    pub insecure_plaintext: bool,
    /// The enrollment token sent with every coordinator call (`--enroll-token`), for a
    /// coordinator that takes only enrolled workers. Default none.
    pub enroll_token: Option<String>,
    /// Run only projects signed by these submitter keys (`--submitter-key`). Default
    /// empty: any signed project, each new signer logged and recorded
    /// (`DATA/known_submitters`).
    pub submitters: Vec<protocol::SubmitterKey>,
    /// Also run projects submitted before projects were signed
    /// (`--allow-unsigned-projects`). Default false.
    pub allow_unsigned: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            attach: Vec::new(),
            prefetch: 2,
            data_dir: PathBuf::from("fallow-worker"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: "worker".into(),
            account: None,
            team: String::new(),
            inbound: true,
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer_advertise: None,
            drain: Duration::from_secs(10),
            checkpoint_every: Duration::from_secs(30),
            fault: None,
            metrics: None,
            prefs: BTreeMap::new(),
            insecure_plaintext: false,
            enroll_token: None,
            submitters: Vec::new(),
            allow_unsigned: false,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings, naming the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cores == 0 || self.cores > 1024 {
            return Err(Error::Config(format!(
                "--cores must be between 1 and 1024 (got {})",
                self.cores
            )));
        }
        if self.name.is_empty() || self.name.len() > 64 || self.name.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "--name must be 1 to 64 printable characters (got {:?})",
                self.name
            )));
        }
        if let Some(account) = &self.account
            && !printable(account, 1)
        {
            return Err(Error::Config(format!(
                "--account must be 1 to 64 printable characters, no control characters (got {account:?})"
            )));
        }
        if !printable(&self.team, 0) {
            return Err(Error::Config(format!(
                "--team must be at most 64 printable characters, no control characters (got {:?})",
                self.team
            )));
        }
        if self.attach.is_empty() {
            let urls = split_urls(&self.coordinator);
            if urls.is_empty() || !urls.iter().all(|u| is_url(u)) {
                return Err(Error::Config(format!(
                    "--coordinator must be a URL such as http://127.0.0.1:7070, or a \
                     comma-separated list of the coordinators of one deployment (got {:?})",
                    self.coordinator
                )));
            }
        }
        let mut seen = HashSet::new();
        for a in &self.attachments() {
            let shown = a.urls.join(",");
            if a.urls.is_empty() || !a.urls.iter().all(|u| is_url(u)) {
                return Err(Error::Config(format!(
                    "--attach must be a URL such as http://127.0.0.1:7070 (or a comma-separated \
                     list of one deployment's coordinators), optionally with =SHARE (got {shown:?})"
                )));
            }
            if !(1..=1_000_000).contains(&a.share) {
                return Err(Error::Config(format!(
                    "--attach {shown}: the share must be from 1 to 1000000 (got {})",
                    a.share
                )));
            }
            for url in &a.urls {
                tls::connect(url, &self.trust())?;
                if !seen.insert(url.trim_end_matches('/')) {
                    return Err(Error::Config(format!(
                        "{url} is given twice; name each coordinator once (one deployment's \
                         coordinators in one comma-separated list)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// How this worker trusts coordinators: pins learnt on first use go to
    /// `DATA/known_coordinators`.
    pub fn trust(&self) -> tls::Trust {
        tls::Trust {
            known: Some(self.data_dir.join(tls::KNOWN_COORDINATORS)),
            allow_plaintext: self.insecure_plaintext,
        }
    }

    /// The deployments to work for: `attach`, or `coordinator` with the default share.
    pub fn attachments(&self) -> Vec<Attach> {
        if self.attach.is_empty() {
            vec![Attach::deployment(&self.coordinator)]
        } else {
            self.attach.clone()
        }
    }
}

/// What differs between the coordinators one worker is attached to; the rest of the
/// settings are the one validated [`WorkerConfig`], shared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttachmentConfig {
    /// The deployment's coordinator URLs, in the order they are tried (one for a lone
    /// coordinator).
    pub urls: Vec<String>,
    /// This coordinator's share of all shares (1 when it is the only one).
    pub share_fraction: f64,
    /// Where this attachment's peer service listens: `--peer-listen` for the first, any
    /// free port for the others (one peer port per coordinator).
    pub peer_listen: SocketAddr,
    /// The address peers use to reach this attachment: `--peer-advertise` for the first,
    /// found from the listen port for the others.
    pub peer_advertise: Option<SocketAddr>,
}

impl WorkerConfig {
    /// The settings of each coordinator to work for ([`WorkerConfig::attachments`]), in
    /// order.
    pub(crate) fn attachment_configs(&self) -> Vec<AttachmentConfig> {
        let attachments = self.attachments();
        let total: u64 = attachments.iter().map(|a| u64::from(a.share)).sum();
        attachments
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let (mut peer_listen, mut peer_advertise) = (self.peer_listen, self.peer_advertise);
                if i > 0 {
                    // One peer port per coordinator: the first gets the one asked for.
                    peer_listen.set_port(0);
                    peer_advertise = None;
                }
                AttachmentConfig {
                    share_fraction: f64::from(a.share) / total.max(1) as f64,
                    urls: a.urls,
                    peer_listen,
                    peer_advertise,
                }
            })
            .collect()
    }
}

impl AttachmentConfig {
    /// The deployment as one string, the URL list as given (the URL of a lone
    /// coordinator): what checkpoints and recorded submitters are filed under, the same
    /// whichever of its coordinators the worker talks to.
    pub(crate) fn deployment(&self) -> String {
        self.urls.join(",")
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// `min` to 64 characters, none of them control characters, and not only blanks.
fn printable(s: &str, min: usize) -> bool {
    let n = s.chars().count();
    (min..=64).contains(&n) && !s.chars().any(char::is_control) && (n == 0 || !s.trim().is_empty())
}

/// The account of a worker started without `--account`.
pub fn default_account(worker: WorkerId) -> String {
    format!("anon-{}", hex::encode(&worker.0[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Identity;

    #[test]
    fn settings_are_validated_naming_the_flag() {
        let bad = [
            WorkerConfig {
                cores: 0,
                ..Default::default()
            },
            WorkerConfig {
                name: String::new(),
                ..Default::default()
            },
            WorkerConfig {
                coordinator: "127.0.0.1:7070".into(),
                ..Default::default()
            },
        ];
        for (config, flag) in bad.into_iter().zip(["--cores", "--name", "--coordinator"]) {
            let err = config.validate().expect_err("accepted").to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn pinned_coordinator_urls_attach_with_and_without_a_share() {
        let pin = format!("sha256={}", "ab".repeat(32));
        let url = format!("https://example.org:7070#{pin}");
        for (arg, share) in [(url.clone(), DEFAULT_SHARE), (format!("{url}=300"), 300)] {
            let a = Attach::parse(&arg).expect(&arg);
            assert_eq!(
                (a.urls.clone(), a.share),
                (vec![url.clone()], share),
                "{arg}"
            );
        }
        let config = WorkerConfig {
            attach: vec![Attach::parse(&url).expect("pinned")],
            ..Default::default()
        };
        assert!(config.validate().is_ok());
        // Plain HTTP off loopback needs --insecure-plaintext.
        let mut config = WorkerConfig {
            coordinator: "http://10.0.0.1:7070".into(),
            ..Default::default()
        };
        let err = config.validate().expect_err("plaintext").to_string();
        assert!(err.contains("--insecure-plaintext"), "{err}");
        config.insecure_plaintext = true;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn accounts_and_teams_are_validated_and_default_from_the_key() {
        let with = |account: Option<&str>, team: &str| WorkerConfig {
            account: account.map(str::to_string),
            team: team.to_string(),
            ..Default::default()
        };
        for (account, team) in [
            (None, ""),
            (Some("alice"), ""),
            (Some("Ünïcode Lab ☃"), "team 7"),
            (Some(&*"a".repeat(64)), &*"t".repeat(64)),
        ] {
            assert!(
                with(account, team).validate().is_ok(),
                "{account:?} {team:?}"
            );
        }
        for (account, team, flag) in [
            (Some(""), "", "--account"),
            (Some("   "), "", "--account"),
            (Some(&*"a".repeat(65)), "", "--account"),
            (Some("bad\nline"), "", "--account"),
            (Some("tab\there"), "", "--account"),
            (Some("ok"), "\u{7}", "--team"),
            (Some("ok"), &*"t".repeat(65), "--team"),
        ] {
            let err = with(account, team)
                .validate()
                .expect_err("accepted")
                .to_string();
            assert!(err.contains(flag) && err.contains("printable"), "{err}");
        }
        let id = Identity::from_seed([5; 32]).id();
        let account = default_account(id);
        assert_eq!(account, format!("anon-{}", &hex::encode(id.0)[..8]));
        assert!(with(Some(&account), "").validate().is_ok());
    }

    #[test]
    fn each_attachment_gets_its_share_and_only_the_first_the_peer_address_asked_for() {
        let listen: SocketAddr = "0.0.0.0:9000".parse().expect("addr");
        let advertise: SocketAddr = "192.0.2.1:9000".parse().expect("addr");
        let config = WorkerConfig {
            attach: vec![
                Attach::parse("http://127.0.0.1:7070=300").expect("attach"),
                Attach::parse("http://127.0.0.1:7071").expect("attach"),
            ],
            peer_listen: listen,
            peer_advertise: Some(advertise),
            ..Default::default()
        };
        let got = config.attachment_configs();
        let any_port = SocketAddr::from(([0, 0, 0, 0], 0));
        assert_eq!(
            got,
            vec![
                AttachmentConfig {
                    urls: vec!["http://127.0.0.1:7070".into()],
                    share_fraction: 0.75,
                    peer_listen: listen,
                    peer_advertise: Some(advertise),
                },
                AttachmentConfig {
                    urls: vec!["http://127.0.0.1:7071".into()],
                    share_fraction: 0.25,
                    peer_listen: any_port,
                    peer_advertise: None,
                },
            ]
        );
        // Without --attach: `coordinator` alone, with all of the cores.
        let alone = WorkerConfig::default().attachment_configs();
        assert_eq!(alone.len(), 1);
        assert_eq!(
            (alone[0].deployment().as_str(), alone[0].share_fraction),
            ("http://127.0.0.1:7070", 1.0)
        );
    }

    #[test]
    fn a_comma_list_is_one_deployment_and_repeated_attaches_are_several() {
        let pin = format!("#sha256={}", "ab".repeat(32));
        let (a, b) = (
            format!("https://a.example:7070{pin}"),
            format!("https://b.example:7070{pin}"),
        );
        // --coordinator A,B: one deployment, all of the cores, A first.
        let config = WorkerConfig {
            coordinator: format!("{a}, {b}"),
            ..Default::default()
        };
        assert!(config.validate().is_ok());
        let got = config.attachment_configs();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].urls, vec![a.clone(), b.clone()]);
        assert_eq!(got[0].deployment(), format!("{a},{b}"));
        // --attach A,B=300 --attach C: two deployments sharing the cores 3:1.
        let c = "http://127.0.0.1:7071";
        let config = WorkerConfig {
            attach: vec![
                Attach::parse(&format!("{a},{b}=300")).expect("list with share"),
                Attach::parse(c).expect("lone"),
            ],
            ..Default::default()
        };
        assert!(config.validate().is_ok());
        let got = config.attachment_configs();
        assert_eq!(
            got.iter()
                .map(|g| (g.urls.len(), g.share_fraction))
                .collect::<Vec<_>>(),
            [(2, 0.75), (1, 0.25)]
        );
        // A coordinator named twice, within a list or across deployments, is refused.
        let config = WorkerConfig {
            coordinator: format!("{a},{a}"),
            ..Default::default()
        };
        let err = config.validate().expect_err("twice").to_string();
        assert!(err.contains("given twice"), "{err}");
        let config = WorkerConfig {
            attach: vec![
                Attach::parse(&format!("{a},{b}")).expect("list"),
                Attach::parse(&b).expect("lone"),
            ],
            ..Default::default()
        };
        assert!(config.validate().is_err());
        let config = WorkerConfig {
            coordinator: format!("{a},not-a-url"),
            ..Default::default()
        };
        let err = config.validate().expect_err("bad").to_string();
        assert!(err.contains("--coordinator"), "{err}");
    }
}
