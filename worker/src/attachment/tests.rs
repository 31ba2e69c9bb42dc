//! The shell against an in-memory twin of the coordinator, with paused time: what it sends,
//! when, and what the lifecycle holds afterwards. No sockets, no guest code.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use protocol::{Claim, Digest, Failure, Limits, ProjectId};

use super::coordinator::Call;
use super::*;
use crate::lifecycle::{Effect, Ran, Upload};
use crate::rpc::{Assignment, CertificateOutcome, HeartbeatReply, RunReport};

/// What the twin was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Heartbeat(Vec<UnitId>),
    Returned(Vec<UnitId>),
    Failed(UnitId),
    Certificate(UnitId),
    Dispute(UnitId),
}

/// The coordinator in memory: records each call, and answers certificates from a script
/// (then accepts them) and heartbeats with the units it is told are settled.
#[derive(Default)]
struct Twin {
    asked: std::sync::Mutex<Vec<(Asked, tokio::time::Instant)>>,
    certificate_replies: std::sync::Mutex<VecDeque<Result<CertificateOutcome, tonic::Code>>>,
    settled: std::sync::Mutex<Vec<UnitId>>,
}

impl Twin {
    fn note(&self, asked: Asked) {
        lock(&self.asked).push((asked, tokio::time::Instant::now()));
    }

    fn asked(&self) -> Vec<Asked> {
        lock(&self.asked).iter().map(|(a, _)| a.clone()).collect()
    }

    fn times(&self) -> Vec<tokio::time::Instant> {
        lock(&self.asked).iter().map(|(_, t)| *t).collect()
    }
}

fn refused(call: &'static str, code: tonic::Code) -> Error {
    Error::Rpc {
        call,
        status: tonic::Status::new(code, "the twin says no"),
    }
}

impl Coordinator for Twin {
    fn request_work<'a>(
        &'a self,
        _max: u32,
        _accept: &'a [protocol::SubmitterKey],
        _allow_unsigned: bool,
    ) -> Call<'a, (Vec<Assignment>, Duration, String)> {
        Box::pin(async { Ok((Vec::new(), Duration::from_secs(1), String::new())) })
    }

    fn heartbeat<'a>(
        &'a self,
        held: &'a [UnitId],
        _peers_version: u64,
        _run: &'a RunReport,
    ) -> Call<'a, HeartbeatReply> {
        self.note(Asked::Heartbeat(held.to_vec()));
        let settled = lock(&self.settled).clone();
        Box::pin(async move {
            Ok(HeartbeatReply {
                settled,
                ..HeartbeatReply::default()
            })
        })
    }

    fn return_units<'a>(&'a self, units: &'a [UnitId]) -> Call<'a, ()> {
        self.note(Asked::Returned(units.to_vec()));
        Box::pin(async { Ok(()) })
    }

    fn report_failure<'a>(&'a self, unit: UnitId, _failure: &'a Failure) -> Call<'a, ()> {
        self.note(Asked::Failed(unit));
        Box::pin(async { Ok(()) })
    }

    fn submit_certificate<'a>(
        &'a self,
        unit: UnitId,
        _claims: &'a [Claim],
        _output: &'a [u8],
    ) -> Call<'a, CertificateOutcome> {
        self.note(Asked::Certificate(unit));
        let reply = lock(&self.certificate_replies)
            .pop_front()
            .unwrap_or(Ok(CertificateOutcome {
                accepted: true,
                recorded: true,
            }));
        Box::pin(async move { reply.map_err(|code| refused("SubmitCertificate", code)) })
    }

    fn dispute<'a>(&'a self, unit: UnitId, _claims: &'a [Claim]) -> Call<'a, ()> {
        self.note(Asked::Dispute(unit));
        Box::pin(async { Ok(()) })
    }
}

/// A shell for one attachment whose unit calls go to `twin`; the real client points at a
/// closed port and is never called.
fn shell(twin: Arc<Twin>, dir: &std::path::Path) -> Arc<Shared> {
    let identity = Arc::new(Identity::from_seed([1; 32]));
    let config = Arc::new(WorkerConfig {
        data_dir: dir.to_path_buf(),
        cores: 1,
        ..WorkerConfig::default()
    });
    let url = "http://127.0.0.1:9".to_string();
    let client =
        CoordinatorClient::enrolled(&url, identity.clone(), &config.trust(), None).expect("client");
    let sandbox = Arc::new(
        Sandbox::new(sandbox::SandboxConfig {
            slots: 1,
            max_memory_mb: 64,
            ..Default::default()
        })
        .expect("sandbox"),
    );
    let control =
        control::Control::new(dir, 1, BTreeMap::new(), Default::default()).expect("control");
    let stats = Arc::new(Stats::default());
    Arc::new(Shared {
        modules: Modules::new(dir.join("modules"), sandbox.clone(), control.disk_cap()),
        data: Arc::new(crate::data::DataCache::new(
            &dir.join("data"),
            control.disk_cap(),
        )),
        control,
        policy: Arc::new(provenance::Policy::load(dir, &[], true).expect("policy")),
        checkpoints: Arc::new(Checkpoints::open(dir.join("checkpoints")).expect("checkpoints")),
        fault_fired: std::sync::atomic::AtomicBool::new(false),
        life: Mutex::new(Lifecycle::new(lifecycle::Settings {
            me: identity.id(),
            cores: 1.0,
            prefetch: 2,
        })),
        account: "test".into(),
        coordinator: twin,
        client,
        board: Mutex::new(OwnBoard {
            board: Board::new(BoardLimits::default()),
            reported: HashSet::new(),
        }),
        membership: None,
        peers: Mutex::new(Peers::default()),
        metrics: Arc::new(metrics::Metrics::new(
            stats.clone(),
            Arc::new(membership::Counters::default()),
        )),
        stats,
        executor: Arc::new(Executor::new(sandbox, 1).expect("executor")),
        started: Instant::now(),
        tasks: TaskTracker::new(),
        cancel: CancellationToken::new(),
        attachment: AttachmentConfig {
            url,
            share_fraction: 1.0,
            peer_listen: config.peer_listen,
            peer_advertise: None,
        },
        config,
        identity,
    })
}

fn assignment(unit: u64) -> Assignment {
    Assignment {
        project: ProjectId(1),
        unit: UnitId(unit),
        name: format!("u{unit}"),
        input: Vec::new(),
        module: Digest::of(b"module"),
        limits: Limits::default(),
        quorum: 1,
        lease: Duration::from_secs(60),
        signed: None,
        ticket: None,
        data: Vec::new(),
    }
}

/// `unit` ran here with output "ok": the lifecycle holds it with our claim.
fn ran(shared: &Shared, unit: u64) -> Claim {
    let claim = Claim::sign(
        &shared.identity,
        ProjectId(1),
        UnitId(unit),
        Digest::of(b"ok"),
        1,
    );
    let mut life = lock(&shared.life);
    life.started(&assignment(unit));
    let outcome = Ran::Done {
        claim: claim.clone(),
        output: b"ok".to_vec(),
    };
    life.ran(UnitId(unit), outcome, Duration::ZERO);
    claim
}

#[tokio::test(start_paused = true)]
async fn an_upload_the_coordinator_cannot_take_yet_is_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let twin = Arc::new(Twin::default());
    lock(&twin.certificate_replies)
        .extend([Err(tonic::Code::Unavailable), Err(tonic::Code::Unavailable)]);
    let shared = shell(twin.clone(), dir.path());
    let claim = ran(&shared, 7);
    let upload = Upload {
        unit: UnitId(7),
        claims: vec![claim],
        output: b"ok".to_vec(),
        complete: true,
        rank: 0,
    };
    shared.clone().upload(upload).await;
    assert_eq!(
        twin.asked(),
        vec![Asked::Certificate(UnitId(7)); 3],
        "delivered on the third try"
    );
    let times = twin.times();
    let waits: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(waits, [super::backoff(1), super::backoff(2)]);
    assert!(lock(&shared.life).held().is_empty(), "verified: released");
}

#[tokio::test(start_paused = true)]
async fn a_later_ranked_claimant_does_not_upload_a_unit_settled_during_its_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let twin = Arc::new(Twin::default());
    lock(&twin.settled).push(UnitId(7));
    let shared = shell(twin.clone(), dir.path());
    let claim = ran(&shared, 7);
    let start = tokio::time::Instant::now();
    let upload = Upload {
        unit: UnitId(7),
        claims: vec![claim],
        output: b"ok".to_vec(),
        complete: true,
        rank: 2,
    };
    shared.clone().upload(upload).await;
    assert_eq!(twin.asked(), vec![Asked::Heartbeat(vec![UnitId(7)])]);
    assert_eq!(twin.times()[0] - start, exchange::SUBMIT_GRACE * 2);
    assert!(lock(&shared.life).held().is_empty(), "settled: released");
}

#[tokio::test(start_paused = true)]
async fn local_trouble_hands_the_unit_back_and_the_core_waits_before_more_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let twin = Arc::new(Twin::default());
    let shared = shell(twin.clone(), dir.path());
    lock(&shared.life).started(&assignment(3));
    let start = tokio::time::Instant::now();
    shared
        .local_trouble(UnitId(3), &Error::Local("disk full".into()))
        .await;
    assert_eq!(twin.asked(), vec![Asked::Returned(vec![UnitId(3)])]);
    assert_eq!(start.elapsed(), work::LOCAL_RETRY);
    assert!(lock(&shared.life).held().is_empty());
    // Effects the shell starts in the background go to the twin too.
    shared.carry_out(vec![Effect::Dispute {
        unit: UnitId(4),
        claims: Vec::new(),
    }]);
    shared.tasks.close();
    shared.tasks.wait().await;
    assert_eq!(twin.asked().last(), Some(&Asked::Dispute(UnitId(4))));
}
