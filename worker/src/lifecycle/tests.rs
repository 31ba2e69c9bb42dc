//! Each test is a table of events fed to one [`Lifecycle`] with synthetic time, and what
//! each must give back, written the way a person would summarise it. The worker's own
//! board is a real [`Board`] (the worker is the only member), and a second worker commits
//! and reveals on it directly: no sockets, no clocks.

use super::*;
use protocol::board::Board;
use protocol::{Digest, FailureKind, Identity, Limits};

const P: ProjectId = ProjectId(1);
/// The lease units come with in these tests.
const LEASE: Duration = Duration::from_secs(60);

fn me() -> Identity {
    Identity::from_seed([1; 32])
}

fn peer() -> Identity {
    Identity::from_seed([2; 32])
}

fn coordinator() -> Identity {
    Identity::from_seed([200; 32])
}

fn assignment(unit: u64) -> Assignment {
    Assignment {
        project: P,
        unit: UnitId(unit),
        name: format!("u{unit}"),
        input: Vec::new(),
        module: Digest::of(b"module"),
        limits: Limits::default(),
        quorum: 2,
        lease: LEASE,
        signed: None,
        ticket: Some(coordinator().sign_ticket(me().id(), P, UnitId(unit), u64::MAX)),
        data: Vec::new(),
    }
}

fn key(unit: u64) -> Key {
    Key::new("http://127.0.0.1:7070", &assignment(unit))
}

fn units(us: &[u64]) -> Vec<UnitId> {
    us.iter().copied().map(UnitId).collect()
}

/// One event, or a look at the state.
enum Ev {
    /// The clock moves to this many seconds since start.
    At(u64),
    /// A core asks what to run: `run U` or `ask N` (more to buffer), then effects.
    Next,
    /// The coordinator leases these units: `run U` (the first), the rest are buffered.
    Lease(&'static [u64]),
    /// A work request failed: the count in a row.
    WorkFailed,
    /// The coordinator gave no work for this reason: `log` or `quiet`.
    NoWork(&'static str),
    /// The provenance policy refused the unit: with a bad signature (true) or a project
    /// this worker does not run.
    Refused(u64, bool),
    /// A core starts the unit.
    Start(u64),
    /// Its module checkpoints.
    Checkpointing(u64),
    /// Its module does not compile.
    BadModule(u64),
    /// A fresh run took this many seconds.
    Measured(u64),
    /// The run ended with this output.
    Done(u64, &'static [u8]),
    /// The run failed.
    Failed(u64),
    /// The run stopped at a checkpoint for shutdown.
    Stopped(u64),
    /// This worker's own trouble stopped the unit.
    Local(u64),
    /// The failure report is done.
    FailureReported(u64),
    /// A gossip tick: the exchanges due go to our board, its answers come back.
    Tick,
    /// The other worker commits to this output on our board, and reveals it.
    PeerClaims(u64, &'static [u8]),
    /// A certificate straight from the holder's side: complete (true) or partial.
    Certificate(u64, bool),
    /// An upload ended: refused (`None`), or (recorded, accepted).
    Uploaded(u64, Option<(bool, bool)>),
    /// The coordinator says these are settled.
    Settled(&'static [u64]),
    /// Before a heartbeat: suspended past the grace or not, and the units with a
    /// checkpoint on disk. `renew [..]`, then effects.
    Heartbeat(bool, &'static [u64]),
    /// After a restart: checkpointed units found on disk, and those the coordinator says
    /// are settled.
    TakeBack(&'static [u64], &'static [u64]),
    /// Shutdown, with these units' checkpoints on disk: `keep [..]`, then effects.
    Drain(&'static [u64]),
    /// The held units and their phases, and whether the worker is busy.
    State,
}

struct World {
    lc: Lifecycle,
    board: Board,
    now: Duration,
}

impl World {
    fn new() -> Self {
        World {
            lc: Lifecycle::new(Settings {
                me: me().id(),
                cores: 2.0,
                prefetch: 2,
            }),
            board: Board::default().vouched_by(coordinator().id()),
            now: Duration::ZERO,
        }
    }

    fn step(&mut self, ev: &Ev) -> String {
        let now = self.now;
        match *ev {
            Ev::At(s) => {
                self.now = Duration::from_secs(s);
                String::new()
            }
            Ev::Next => {
                let (next, effects) = self.lc.next_to_run(now);
                let next = match next {
                    Next::Run(a) => format!("run {}", a.unit),
                    Next::Ask { more } => format!("ask {more}"),
                };
                join([next, summary(&effects)])
            }
            Ev::Lease(us) => {
                let first = self
                    .lc
                    .leased(us.iter().map(|u| assignment(*u)).collect(), now);
                first.map_or(String::new(), |a| format!("run {}", a.unit))
            }
            Ev::WorkFailed => self.lc.work_failed().to_string(),
            Ev::NoWork(reason) => {
                if self.lc.no_work(reason.to_string(), now) {
                    "log".into()
                } else {
                    "quiet".into()
                }
            }
            Ev::Refused(u, bad) => {
                let failure = bad.then(|| Failure::new(FailureKind::BadSignature, "bad"));
                summary(&self.lc.refused(&assignment(u), failure))
            }
            Ev::Start(u) => {
                self.lc.started(&assignment(u));
                String::new()
            }
            Ev::Checkpointing(u) => {
                self.lc.checkpointing(UnitId(u), Some(key(u)));
                String::new()
            }
            Ev::BadModule(u) => summary(
                &self
                    .lc
                    .bad_module(UnitId(u), Failure::new(FailureKind::BadModule, "bad")),
            ),
            Ev::Measured(s) => {
                self.lc.measured(Duration::from_secs(s), LEASE);
                String::new()
            }
            Ev::Done(u, output) => {
                let claim = Claim::sign(&me(), P, UnitId(u), Digest::of(output), 100);
                let outcome = Ran::Done {
                    claim,
                    output: output.to_vec(),
                };
                summary(&self.lc.ran(UnitId(u), outcome, now))
            }
            Ev::Failed(u) => {
                let failure = Failure::new(FailureKind::Trap, "unreachable");
                summary(&self.lc.ran(UnitId(u), Ran::Failed(failure), now))
            }
            Ev::Stopped(u) => summary(&self.lc.ran(UnitId(u), Ran::Stopped, now)),
            Ev::Local(u) => summary(&self.lc.local_trouble(UnitId(u))),
            Ev::FailureReported(u) => {
                self.lc.failure_reported(UnitId(u));
                String::new()
            }
            Ev::Tick => {
                let (requests, mut effects) = self.lc.tick(&[me().id()], now);
                for request in requests {
                    let (views, rejected) = self.board.exchange(
                        request.commitments.clone(),
                        request.reveals.clone(),
                        &request.want,
                        ms(now),
                    );
                    let reply = Reply {
                        views,
                        rejected: rejected.into_iter().map(|r| (r.unit, r.reason)).collect(),
                    };
                    effects.extend(self.lc.on_reply(&request, reply, now));
                }
                summary(&effects)
            }
            Ev::PeerClaims(u, output) => {
                let peer = peer();
                let claim = Claim::sign(&peer, P, UnitId(u), Digest::of(output), 100);
                let ticket = coordinator().sign_ticket(peer.id(), P, UnitId(u), u64::MAX);
                let commitment = claim.commitment().with_ticket(Some(ticket));
                let (_, refused) = self.board.exchange(vec![commitment], Vec::new(), &[], 0);
                assert!(refused.is_empty(), "{refused:?}");
                let (_, refused) = self.board.exchange(Vec::new(), vec![claim], &[], 0);
                assert!(refused.is_empty(), "{refused:?}");
                String::new()
            }
            Ev::Certificate(u, complete) => {
                let claim = Claim::sign(&me(), P, UnitId(u), Digest::of(b"ok"), 100);
                let upload = self.lc.certify(UnitId(u), vec![claim], complete);
                summary(&upload.map(Effect::Upload).into_iter().collect::<Vec<_>>())
            }
            Ev::Uploaded(u, outcome) => {
                let outcome =
                    outcome.map(|(recorded, accepted)| CertificateOutcome { accepted, recorded });
                let next = self.lc.uploaded(UnitId(u), outcome);
                summary(&next.map(Effect::Upload).into_iter().collect::<Vec<_>>())
            }
            Ev::Settled(us) => {
                self.lc.settled(&units(us));
                String::new()
            }
            Ev::Heartbeat(suspended, on_disk) => {
                let on_disk: HashSet<UnitId> = units(on_disk).into_iter().collect();
                let (renew, effects) = self.lc.heartbeat(suspended, &on_disk);
                join([format!("renew {}", list(&renew)), summary(&effects)])
            }
            Ev::TakeBack(pending, settled) => {
                let pending = pending.iter().map(|u| (assignment(*u), key(*u))).collect();
                let settled: HashSet<UnitId> = units(settled).into_iter().collect();
                summary(&self.lc.take_back(pending, &settled))
            }
            Ev::Drain(on_disk) => {
                let on_disk: HashSet<UnitId> = units(on_disk).into_iter().collect();
                let (kept, effects) = self.lc.drain(&on_disk);
                join([format!("keep {}", list(&kept)), summary(&effects)])
            }
            Ev::State => {
                let mut parts: Vec<String> = self
                    .lc
                    .held()
                    .into_iter()
                    .map(|u| format!("{u} {:?}", self.lc.phase(u).expect("held")).to_lowercase())
                    .collect();
                parts.push(if self.lc.busy() { "busy" } else { "idle" }.into());
                parts.join(", ")
            }
        }
    }
}

/// Feeds the events in order to one lifecycle, checking what each gives back.
fn check(steps: &[(Ev, &str)]) {
    let mut world = World::new();
    for (i, (ev, want)) in steps.iter().enumerate() {
        let got = world.step(ev);
        assert_eq!(got, *want, "step {i} at {:?}", world.now);
    }
}

fn summary(effects: &[Effect]) -> String {
    let parts = effects.iter().map(|e| match e {
        Effect::HandBack { units, why } => {
            format!("hand back {} {why:?}", list(units)).to_lowercase()
        }
        Effect::ReportFailure { unit, failure } => {
            format!("report {unit} {}", failure.kind.as_str())
        }
        Effect::Upload(u) if u.complete => format!(
            "upload {} complete of {} rank {} ({})",
            u.unit,
            u.claims.len(),
            u.rank,
            String::from_utf8_lossy(&u.output)
        ),
        Effect::Upload(u) => format!("upload {} partial of {}", u.unit, u.claims.len()),
        Effect::Dispute { unit, claims } => format!("dispute {unit} of {}", claims.len()),
        Effect::Misbehaviour(_) => "misbehaviour".into(),
        Effect::BadBoard { .. } => "bad board".into(),
        Effect::DeleteCheckpoint { unit, .. } => format!("delete checkpoint {unit}"),
    });
    parts.collect::<Vec<_>>().join("; ")
}

fn list(units: &[UnitId]) -> String {
    let units: Vec<String> = units.iter().map(ToString::to_string).collect();
    format!("[{}]", units.join(", "))
}

fn join<const N: usize>(parts: [String; N]) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The claimant rank of this worker for unit `u` against the peer (the order rendezvous
/// hashing gives; either may be first).
fn rank(u: u64) -> usize {
    let claims = [
        Claim::sign(&me(), P, UnitId(u), Digest::of(b"ok"), 100),
        Claim::sign(&peer(), P, UnitId(u), Digest::of(b"ok"), 100),
    ];
    gossip::submit_rank(P, UnitId(u), me().id(), &claims)
}

#[test]
fn prefetch_follows_the_measured_unit_time_and_the_lease() {
    use Ev::*;
    check(&[
        // Nothing measured yet: ask for one unit, buffer none.
        (Next, "ask 0"),
        (Lease(&[1]), "run 1"),
        (Start(1), ""),
        // 10 s units, 60 s lease, 2 cores: 6 would start within half the lease; the cap is 2.
        (Measured(10), ""),
        (Next, "ask 2"),
        (Lease(&[2, 3, 4]), "run 2"),
        (State, "1 running, 3 buffered, 4 buffered, busy"),
        (Next, "run 3"),
        (Next, "run 4"),
        // 40 s units: the average moves a quarter of the way (17.5 s): 3 fit, cap 2.
        (Measured(40), ""),
        (Next, "ask 2"),
        // Then about 23, 27 and 30.5 s: one fits within half the lease.
        (Measured(40), ""),
        (Measured(40), ""),
        (Next, "ask 2"),
        (Measured(40), ""),
        (Next, "ask 1"),
    ]);
}

#[test]
fn buffered_units_that_could_not_finish_within_their_lease_go_back() {
    use Ev::*;
    check(&[
        // 40 s units, 60 s lease: a unit buffered for more than 20 s cannot make it.
        (Measured(40), ""),
        (Lease(&[1, 2, 3]), "run 1"),
        (At(15), ""),
        (Next, "run 2"),
        (At(25), ""),
        (Next, "ask 1; hand back [3] overdue"),
        // 2 is taken (held until its core starts it), 3 is gone.
        (State, "2 buffered, busy"),
    ]);
}

#[test]
fn a_buffered_unit_settled_meanwhile_is_skipped() {
    use Ev::*;
    check(&[
        (Lease(&[1, 2, 3]), "run 1"),
        (Settled(&[2]), ""),
        (Next, "run 3"),
        (Next, "ask 0"),
    ]);
}

#[test]
fn a_unit_runs_commits_certifies_uploads_and_is_released() {
    use Ev::*;
    let complete = format!("upload 1 complete of 2 rank {} (ok)", rank(1));
    check(&[
        (Lease(&[1]), "run 1"),
        (Start(1), ""),
        (State, "1 running, busy"),
        (At(1), ""),
        (Done(1, b"ok"), ""),
        (State, "1 committed, idle"),
        // Our commitment goes to the board; the other replica commits and reveals.
        (Tick, ""),
        (PeerClaims(1, b"ok"), ""),
        // Two commitments: we reveal; with our reveal on the board we see theirs.
        (At(2), ""),
        (Tick, ""),
        (State, "1 revealed, idle"),
        (At(3), ""),
        (Tick, &complete),
        (State, "1 uploading, idle"),
        // Nothing more to poll once the complete certificate is out.
        (At(4), ""),
        (Tick, ""),
        (Uploaded(1, Some((true, true))), ""),
        (State, "idle"),
    ]);
}

#[test]
fn a_lone_replica_uploads_a_partial_certificate_then_the_complete_one() {
    use Ev::*;
    let complete = format!("upload 1 complete of 2 rank {} (ok)", rank(1));
    check(&[
        (Start(1), ""),
        (Done(1, b"ok"), ""),
        (Tick, ""),
        // Alone at the reveal deadline: reveal, and let the coordinator combine.
        (At(2), ""),
        (Tick, "upload 1 partial of 1"),
        (State, "1 uploading, idle"),
        // Recorded, not verified: hold on, more may come.
        (Uploaded(1, Some((true, false))), ""),
        (State, "1 revealed, idle"),
        (PeerClaims(1, b"ok"), ""),
        (At(5), ""),
        (Tick, &complete),
        (Uploaded(1, Some((true, false))), ""),
        (State, "1 certifying, idle"),
        // Verified by another claimant's upload: the coordinator settles it.
        (Settled(&[1]), ""),
        (State, "idle"),
    ]);
}

#[test]
fn disagreeing_replicas_are_reported_as_a_dispute() {
    use Ev::*;
    check(&[
        (Start(1), ""),
        (Done(1, b"ok"), ""),
        (Tick, ""),
        (PeerClaims(1, b"other"), ""),
        (At(1), ""),
        (Tick, ""),
        (At(2), ""),
        (Tick, "dispute 1 of 2"),
    ]);
}

#[test]
fn one_upload_at_a_time_the_latest_wins_and_complete_is_never_replaced_by_partial() {
    use Ev::*;
    check(&[
        (Start(1), ""),
        (Done(1, b"ok"), ""),
        (Certificate(1, false), "upload 1 partial of 1"),
        // While it is out, a complete one queues; a later partial does not replace it.
        (Certificate(1, true), ""),
        (Certificate(1, false), ""),
        (
            Uploaded(1, Some((true, false))),
            "upload 1 complete of 1 rank 0 (ok)",
        ),
        // A partial queued behind a partial is replaced by the newer partial.
        (Certificate(1, false), ""),
        (Certificate(1, false), ""),
        (Uploaded(1, Some((true, false))), "upload 1 partial of 1"),
        (Uploaded(1, Some((true, false))), ""),
        (State, "1 committed, idle"),
        // Refused: nothing more to do for the unit.
        (Certificate(1, false), "upload 1 partial of 1"),
        (Uploaded(1, None), ""),
        (State, "idle"),
        // No certificate without our output.
        (Start(2), ""),
        (Certificate(2, true), ""),
    ]);
}

#[test]
fn a_unit_settled_while_running_drops_its_result() {
    use Ev::*;
    check(&[
        (Start(1), ""),
        (Settled(&[1]), ""),
        (Done(1, b"ok"), ""),
        (Tick, ""),
        (State, "idle"),
        (Start(2), ""),
        (Settled(&[2]), ""),
        (Failed(2), ""),
    ]);
}

#[test]
fn failures_are_reported_then_forgotten() {
    use Ev::*;
    check(&[
        (Start(1), ""),
        (Failed(1), "report 1 trap"),
        (State, "1 failing, busy"),
        (FailureReported(1), ""),
        (State, "idle"),
        // A module that does not compile fails the unit.
        (Start(2), ""),
        (BadModule(2), "report 2 bad_module"),
        (FailureReported(2), ""),
        // A bad signature fails it unrun; a project this worker does not run goes back.
        (Refused(3, true), "report 3 bad_signature"),
        (State, "3 failing, busy"),
        (FailureReported(3), ""),
        (Lease(&[4, 5]), "run 4"),
        (Refused(4, false), "hand back [4] notaccepted"),
        (State, "5 buffered, busy"),
    ]);
}

#[test]
fn local_trouble_hands_the_unit_back() {
    use Ev::*;
    check(&[
        (Start(1), ""),
        (Local(1), "hand back [1] local"),
        (State, "idle"),
        (Done(1, b"ok"), ""),
    ]);
}

#[test]
fn suspended_past_the_grace_hands_back_what_has_no_result_or_checkpoint() {
    use Ev::*;
    check(&[
        (Lease(&[1, 2, 3]), "run 1"),
        (Start(1), ""),
        (Done(1, b"ok"), ""),
        (Next, "run 2"),
        (Start(2), ""),
        (Checkpointing(2), ""),
        (Start(4), ""),
        (Checkpointing(4), ""),
        (Heartbeat(false, &[]), "renew [1, 2, 3, 4]"),
        // 4's checkpoint is on disk: kept, but its lease is not renewed; 2's is not
        // written yet, and 3 never started: both go back.
        (
            Heartbeat(true, &[4]),
            "renew [1]; hand back [2, 3] suspended",
        ),
        (State, "1 committed, 4 running, busy"),
        // The paused execution of 2 resumes and finds its unit released.
        (Done(2, b"late"), ""),
        (Next, "ask 0"),
        (Heartbeat(true, &[4]), "renew [1]"),
    ]);
}

#[test]
fn checkpointed_units_are_kept_on_drain_and_resumed_after_a_restart() {
    use Ev::*;
    check(&[
        (Lease(&[1, 2]), "run 1"),
        (Start(1), ""),
        (Checkpointing(1), ""),
        (Stopped(1), ""),
        (State, "1 checkpointed, 2 buffered, busy"),
        (Drain(&[1]), "keep [1]; hand back [2] drained"),
        (State, "1 checkpointed, busy"),
    ]);
    check(&[
        // After the restart: 5 went elsewhere meanwhile, 4 is still ours.
        (TakeBack(&[4, 5], &[5]), "delete checkpoint 5"),
        (State, "4 resuming, busy"),
        (Heartbeat(false, &[]), "renew [4]"),
        (Lease(&[6, 7]), "run 6"),
        // Resumed units go first, before buffered ones.
        (Next, "run 4"),
        (Next, "run 7"),
    ]);
}

#[test]
fn drain_hands_back_everything_without_a_checkpoint_on_disk() {
    use Ev::*;
    check(&[
        (Lease(&[1, 2, 3]), "run 1"),
        (Start(1), ""),
        (Done(1, b"ok"), ""),
        (Next, "run 2"),
        (Start(2), ""),
        // Checkpointing, but nothing written yet.
        (Checkpointing(2), ""),
        (Drain(&[]), "keep []; hand back [1, 2, 3] drained"),
        (State, "idle"),
    ]);
}

#[test]
fn work_requests_back_off_and_the_reason_for_no_work_is_logged_when_it_changes() {
    use Ev::*;
    check(&[
        (WorkFailed, "1"),
        (WorkFailed, "2"),
        (Lease(&[1]), "run 1"),
        (WorkFailed, "1"),
        (NoWork("daily cap"), "log"),
        (At(30), ""),
        (NoWork("daily cap"), "quiet"),
        (NoWork("account cap"), "log"),
        (At(90), ""),
        (NoWork("account cap"), "log"),
        (NoWork(""), "quiet"),
        (NoWork("account cap"), "log"),
    ]);
}
