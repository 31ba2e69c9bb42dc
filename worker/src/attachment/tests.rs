//! The shell against an in-memory twin of the coordinator, with paused time: what it sends,
//! when, and what the lifecycle holds afterwards. No sockets, no guest code.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use protocol::{Claim, Digest, Failure, Limits, ProjectId};

use super::coordinator::Call;
use super::failover::Failover;
use super::*;
use crate::lifecycle::{Effect, Ran, Upload};
use crate::rpc::{Assignment, CertificateOutcome, HeartbeatReply, RunReport};

/// What the twin was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Registered,
    Heartbeat(Vec<UnitId>),
    Returned(Vec<UnitId>),
    Failed(UnitId),
    Certificate(UnitId),
    Dispute(UnitId),
}

/// The coordinator in memory: records each call, and answers certificates from a script
/// (then accepts them) and heartbeats with the units it is told are settled. A twin that
/// is `down` answers nothing (as a dead coordinator, `UNAVAILABLE`) and records nothing;
/// one that is `refusing` answers every call with `PERMISSION_DENIED`.
#[derive(Default)]
struct Twin {
    down: std::sync::atomic::AtomicBool,
    refusing: std::sync::atomic::AtomicBool,
    asked: std::sync::Mutex<Vec<(Asked, tokio::time::Instant)>>,
    certificate_replies: std::sync::Mutex<VecDeque<Result<CertificateOutcome, tonic::Code>>>,
    settled: std::sync::Mutex<Vec<UnitId>>,
}

impl Twin {
    /// Records `asked`, unless down or refusing: then the error to answer with.
    fn note(&self, asked: Asked) -> Result<(), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.down.load(Relaxed) {
            return Err(refused("Twin", tonic::Code::Unavailable));
        }
        if self.refusing.load(Relaxed) {
            return Err(refused("Twin", tonic::Code::PermissionDenied));
        }
        lock(&self.asked).push((asked, tokio::time::Instant::now()));
        Ok(())
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
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
    fn register<'a>(
        &'a self,
        _identity: &'a Identity,
        _me: crate::rpc::Introduction<'a>,
    ) -> Call<'a, crate::rpc::Registration> {
        let answer = self
            .note(Asked::Registered)
            .map(|()| crate::rpc::Registration {
                heartbeat: Duration::from_secs(10),
                peers: Vec::new(),
                coordinator_key: Some(Identity::from_seed([9; 32]).id()),
                credential: None,
                peer_warning: String::new(),
            });
        Box::pin(async move { answer })
    }

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
        let answer = self.note(Asked::Heartbeat(held.to_vec()));
        let settled = lock(&self.settled).clone();
        Box::pin(async move {
            answer?;
            Ok(HeartbeatReply {
                settled,
                ..HeartbeatReply::default()
            })
        })
    }

    fn return_units<'a>(&'a self, units: &'a [UnitId]) -> Call<'a, ()> {
        let answer = self.note(Asked::Returned(units.to_vec()));
        Box::pin(async move { answer })
    }

    fn report_failure<'a>(&'a self, unit: UnitId, _failure: &'a Failure) -> Call<'a, ()> {
        let answer = self.note(Asked::Failed(unit));
        Box::pin(async move { answer })
    }

    fn submit_certificate<'a>(
        &'a self,
        unit: UnitId,
        _claims: &'a [Claim],
        _output: &'a [u8],
    ) -> Call<'a, CertificateOutcome> {
        if let Err(e) = self.note(Asked::Certificate(unit)) {
            return Box::pin(async move { Err(e) });
        }
        let reply = lock(&self.certificate_replies)
            .pop_front()
            .unwrap_or(Ok(CertificateOutcome {
                accepted: true,
                recorded: true,
            }));
        Box::pin(async move { reply.map_err(|code| refused("SubmitCertificate", code)) })
    }

    fn dispute<'a>(&'a self, unit: UnitId, _claims: &'a [Claim]) -> Call<'a, ()> {
        let answer = self.note(Asked::Dispute(unit));
        Box::pin(async move { answer })
    }
}

/// A shell for one attachment whose unit calls go to `twin`; the real client points at a
/// closed port and is never called.
fn shell(twin: Arc<Twin>, dir: &std::path::Path) -> Arc<Shared> {
    deployment(vec![twin], dir)
}

/// A shell for one deployment of the coordinators `twins`, the first current.
fn deployment(twins: Vec<Arc<Twin>>, dir: &std::path::Path) -> Arc<Shared> {
    let identity = Arc::new(Identity::from_seed([1; 32]));
    let config = Arc::new(WorkerConfig {
        data_dir: dir.to_path_buf(),
        cores: 1,
        ..WorkerConfig::default()
    });
    let url = "http://127.0.0.1:9".to_string();
    let client =
        CoordinatorClient::enrolled(&url, identity.clone(), &config.trust(), None).expect("client");
    let members = twins
        .into_iter()
        .enumerate()
        .map(|(i, twin)| (format!("twin-{i}"), twin as Arc<dyn Coordinator>))
        .collect();
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
        outbox: super::outbox::Outbox::default(),
        life: Mutex::new(Lifecycle::new(lifecycle::Settings {
            me: identity.id(),
            cores: 1.0,
            prefetch: 2,
        })),
        account: "test".into(),
        coordinator: Arc::new(Failover::new(members)),
        clients: vec![client],
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
            urls: vec![url],
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

/// Calls `heartbeat` on `f` `n` times, `every` apart (the first at once); what each got.
async fn beats(f: &Failover, n: usize, every: Duration) -> Vec<bool> {
    let mut got = Vec::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        let run = RunReport {
            state: "idle",
            reason: String::new(),
        };
        got.push(f.heartbeat(&[], 0, &run).await.is_ok());
    }
    got
}

fn members(twins: &[Arc<Twin>]) -> Vec<(String, Arc<dyn Coordinator>)> {
    twins
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("http://twin-{i}"),
                t.clone() as Arc<dyn Coordinator>,
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_deployment_moves_on_only_after_its_coordinator_stays_unreachable() {
    let second = Duration::from_secs(1);
    let (a, b) = (Arc::new(Twin::default()), Arc::new(Twin::default()));
    let f = Failover::new(members(&[a.clone(), b.clone()]));
    // A blip shorter than the failover time moves nothing: the answer resets the clock.
    a.set_down(true);
    assert_eq!(beats(&f, 3, second).await, [false, false, false]);
    a.set_down(false);
    assert_eq!(beats(&f, 1, second).await, [true]);
    assert_eq!((f.moves(), f.url()), (0, "http://twin-0"));
    // Down for the failover time: the call that finds it so moves to the next.
    a.set_down(true);
    let start = tokio::time::Instant::now();
    while f.moves() == 0 {
        assert!(!beats(&f, 1, Duration::ZERO).await[0]);
        tokio::time::sleep(second).await;
    }
    assert_eq!(start.elapsed(), failover::FAILOVER_AFTER + second);
    assert_eq!(f.url(), "http://twin-1");
    assert_eq!(beats(&f, 1, second).await, [true]);
    assert_eq!(b.asked(), vec![Asked::Heartbeat(Vec::new())]);
    // Round the list: b dies too, a is back.
    b.set_down(true);
    a.set_down(false);
    beats(&f, 5, second).await;
    assert_eq!((f.moves(), f.url()), (2, "http://twin-0"));
    // A coordinator that refuses is reachable: refusals never move the worker.
    a.refusing.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(beats(&f, 10, second).await, [false; 10]);
    assert_eq!((f.moves(), f.url()), (2, "http://twin-0"));
}

/// Certificates that cannot be delivered count against a coordinator as any call does, so
/// a worker whose only calls for a while are uploads still moves on. (CI caught the
/// outbox's batch of one answered as "the call went through, this certificate failed",
/// which the failover took for an answer: workers stayed with a dead coordinator.)
#[tokio::test(start_paused = true)]
async fn undeliverable_certificates_move_the_deployment_on_like_any_call() {
    let second = Duration::from_secs(1);
    let (a, b) = (Arc::new(Twin::default()), Arc::new(Twin::default()));
    let f = Failover::new(members(&[a.clone(), b.clone()]));
    let outbox = super::outbox::Outbox::default();
    let deliver = || outbox.deliver(&f, UnitId(7), Arc::from(vec![]), Arc::from(vec![1u8]));
    a.set_down(true);
    let start = tokio::time::Instant::now();
    for _ in 0..10 {
        if f.moves() > 0 {
            break;
        }
        let e = deliver().await.expect_err("a is down");
        assert!(e.is_transient(), "{e}");
        tokio::time::sleep(second).await;
    }
    assert_eq!((f.moves(), f.url()), (1, "http://twin-1"));
    assert_eq!(start.elapsed(), failover::FAILOVER_AFTER + second);
    assert!(deliver().await.expect("b takes it").accepted);
    assert_eq!(b.asked(), vec![Asked::Certificate(UnitId(7))]);
}

#[tokio::test(start_paused = true)]
async fn a_lone_coordinator_is_never_left() {
    let a = Arc::new(Twin::default());
    let f = Failover::new(members(std::slice::from_ref(&a)));
    a.set_down(true);
    assert_eq!(beats(&f, 30, Duration::from_secs(1)).await, [false; 30]);
    assert_eq!((f.moves(), f.url()), (0, "http://twin-0"));
    a.set_down(false);
    assert_eq!(beats(&f, 1, Duration::ZERO).await, [true]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_coordinator_dies_registers_with_the_next_and_keeps_its_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Arc::new(Twin::default()), Arc::new(Twin::default()));
    let shared = deployment(vec![a.clone(), b.clone()], dir.path());
    ran(&shared, 7);
    lock(&shared.life).started(&assignment(8));
    let mut held = lock(&shared.life).held();
    held.sort();
    assert_eq!(held, [UnitId(7), UnitId(8)]);
    let beat = tokio::spawn(
        shared
            .clone()
            .heartbeat_loop(Duration::from_secs(10), String::new()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.asked().iter().all(|x| matches!(x, Asked::Heartbeat(_))));
    assert!(!a.asked().is_empty());
    // The active coordinator dies; within a few seconds the worker is with the standby.
    a.set_down(true);
    let died = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    shared.cancel.cancel();
    beat.await.expect("heartbeat loop");
    let asked = b.asked();
    assert_eq!(asked.first(), Some(&Asked::Registered), "{asked:?}");
    let moved = b.times()[0] - died;
    assert!(
        moved <= failover::FAILOVER_AFTER + Duration::from_secs(3),
        "registered {moved:?} after the coordinator died"
    );
    // Every beat to the new coordinator names both units: nothing was dropped.
    let renewals: Vec<_> = asked[1..].to_vec();
    assert!(!renewals.is_empty());
    for beat in renewals {
        let Asked::Heartbeat(mut units) = beat else {
            panic!("{beat:?}");
        };
        units.sort();
        assert_eq!(units, held);
    }
    let mut still = lock(&shared.life).held();
    still.sort();
    assert_eq!(still, held, "the lifecycle keeps its units across the move");
}
