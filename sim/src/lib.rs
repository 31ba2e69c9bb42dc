//! A deterministic, in-process simulation of a Fallow fleet: thousands of simulated workers,
//! honest or not, drive the **real** scheduler ([`coordinator::scheduler::Scheduler`]), the
//! real rendezvous boards ([`protocol::board::Board`]), the real commit–reveal tallies
//! ([`protocol::quorum::QuorumBook`]) and real ed25519 claims. No sockets and no clock: time
//! is a number advanced in ticks, and every random choice comes from the scenario's seed, so
//! a run is reproducible bit for bit.
//!
//! What is simplified: messages between a holder and a board arrive within the tick they
//! are sent (or are dropped across a partition); membership is the set of live workers (what
//! foca converges to), split in two during a partition; unit run times are random.
//!
//! # Layout
//! - [`Scenario`]: who is in the fleet and what goes wrong; [`Scenario::table`] lists the
//!   standard ones.
//! - [`run`]: runs one scenario to the end and returns a [`Report`].

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use coordinator::scheduler::{
    Aggregate, Change, Project, ProjectStats, Scheduler, UnitStatus, Verdict, WorkerInfo,
};
use prost::Message;
use proto::v1 as pb;
use protocol::board::{Board, BoardLimits, Reason, View};
use protocol::claim::Commitment;
use protocol::quorum::{Action, QuorumBook, Timing};
use protocol::rendezvous::{BOARDS_PER_UNIT, boards};
use protocol::rng::SplitMix64;
use protocol::ticket::Ticket;
use protocol::{
    Certificate, Claim, Digest, Failure, FailureKind, Identity, Limits, ProjectId, UnitId, WorkerId,
};

const PROJECT: ProjectId = ProjectId(1);
/// Simulated time per step.
const TICK_MS: u64 = 250;
/// How often holders poll their boards.
const POLL_MS: u64 = 500;
/// How often workers heartbeat.
const HEARTBEAT_MS: u64 = 1_000;
/// Lease length.
const LEASE_MS: u64 = 30_000;
/// A run that has not settled by then is stopped (and says so).
const MAX_SIM_MS: u64 = 2 * 3600 * 1000;

/// How a simulated worker behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Computes and reports honestly.
    Honest,
    /// Returns its own wrong result every time (independent liar).
    Liar,
    /// Returns the wrong result it agreed on with the others of its group (colluders and
    /// Sybil accounts of one adversary).
    Colluder,
    /// Does not compute: commits to a guess, then tries to copy a revealed result.
    Copier,
    /// Honest, but crashes mid-unit now and then and comes back later.
    Crasher,
    /// Honest results, plus forged, replayed and misrouted messages to boards and to the
    /// coordinator.
    Forger,
}

/// A fleet and what goes wrong in it.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name in the table.
    pub name: &'static str,
    /// Workers.
    pub workers: usize,
    /// Work units.
    pub units: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Fraction of independent liars.
    pub liars: f64,
    /// Workers of one adversary returning the same wrong result, each under its own
    /// account.
    pub colluders: usize,
    /// Fraction of lazy copiers.
    pub copiers: f64,
    /// Fraction of workers that crash mid-unit (each unit with probability 0.2).
    pub crashers: f64,
    /// Fraction of forgers.
    pub forgers: f64,
    /// A network partition between even and odd workers over this window (ms).
    pub partition: Option<(u64, u64)>,
    /// The colluders steer placement by request timing: they run every unit for the same
    /// time, so they are idle together, and then ask for work one right after the other
    /// (an instant after the first, before any honest worker), hoping the second gets the
    /// unit whose first replica the first just took.
    pub back_to_back: bool,
}

impl Scenario {
    /// An honest fleet of `workers` working through `units`.
    pub fn honest(workers: usize, units: u64) -> Self {
        Scenario {
            name: "honest fleet",
            workers,
            units,
            seed: 1,
            liars: 0.0,
            colluders: 0,
            copiers: 0.0,
            crashers: 0.0,
            forgers: 0.0,
            partition: None,
            back_to_back: false,
        }
    }

    /// The standard scenarios at the given scale.
    pub fn table(workers: usize, units: u64) -> Vec<Scenario> {
        let base = Scenario::honest(workers, units);
        vec![
            base.clone(),
            Scenario {
                name: "10% independent liars",
                liars: 0.10,
                ..base.clone()
            },
            Scenario {
                name: "30% independent liars",
                liars: 0.30,
                ..base.clone()
            },
            Scenario {
                name: "colluding pair",
                colluders: 2,
                ..base.clone()
            },
            Scenario {
                name: "colluding pair asking back-to-back",
                colluders: 2,
                back_to_back: true,
                ..base.clone()
            },
            Scenario {
                name: "Sybil: one adversary, 10% of accounts",
                colluders: workers / 10,
                ..base.clone()
            },
            Scenario {
                name: "Sybil, 10%, asking back-to-back",
                colluders: workers / 10,
                back_to_back: true,
                ..base.clone()
            },
            Scenario {
                name: "5% lazy copiers",
                copiers: 0.05,
                ..base.clone()
            },
            Scenario {
                name: "10% crash mid-unit",
                crashers: 0.10,
                ..base.clone()
            },
            Scenario {
                name: "partition that heals",
                partition: Some((5_000, 40_000)),
                ..base.clone()
            },
            Scenario {
                name: "5% forgers and replayers",
                forgers: 0.05,
                ..base
            },
        ]
    }
}

/// What one scenario produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Units in the project.
    pub units: u64,
    /// Units verified at the end.
    pub verified: u64,
    /// Units failed at the end.
    pub failed: u64,
    /// Executions handed out.
    pub executions: u64,
    /// Verified units whose accepted result is wrong (the number that must be 0).
    pub wrong_accepted: u64,
    /// Wrong results that were accepted at some point and later re-opened and corrected.
    pub corrected: u64,
    /// Units at least two of whose replicas were leased, all to colluders: the units
    /// whose every vote the adversary cast.
    pub held_by_colluders: u64,
    /// Cheating workers (liars, colluders, copiers).
    pub cheaters: u64,
    /// Of those, caught (trust reset or throttled).
    pub caught: u64,
    /// Honest workers wrongly penalised.
    pub honest_penalised: u64,
    /// Mean simulated ms from a unit's first lease to its verification.
    pub mean_verify_ms: f64,
    /// 95th percentile of the same.
    pub p95_verify_ms: u64,
    /// Protobuf-encoded bytes of all holder↔board messages.
    pub gossip_bytes: u64,
    /// Units run alone by trusted workers.
    pub solo: u64,
    /// Secret spot checks.
    pub spot_checks: u64,
    /// Board refusals by reason.
    pub board_rejections: BTreeMap<&'static str, u64>,
    /// Certificates, disputes and forged failure reports the coordinator refused.
    pub coordinator_rejections: u64,
    /// Failure reports forged in another worker's name: refused, and accepted (must stay 0).
    pub forged_failures: (u64, u64),
    /// Simulated time at the end (ms).
    pub sim_ms: u64,
    /// Whether the run settled every unit before the time limit.
    pub settled: bool,
}

impl Report {
    /// Executions per verified unit.
    pub fn executions_per_verified(&self) -> f64 {
        self.executions as f64 / self.verified.max(1) as f64
    }

    /// Gossip bytes per verified unit.
    pub fn gossip_per_unit(&self) -> f64 {
        self.gossip_bytes as f64 / self.verified.max(1) as f64
    }

    /// Gossip bytes per execution (per replica).
    pub fn gossip_per_replica(&self) -> f64 {
        self.gossip_bytes as f64 / self.executions.max(1) as f64
    }
}

/// Thirty-two bytes from four draws of `rng` (salts and guesses).
fn random_bytes(rng: &mut SplitMix64) -> [u8; 32] {
    let mut b = [0u8; 32];
    for chunk in b.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    b
}

struct SimWorker {
    identity: Identity,
    id: WorkerId,
    kind: Kind,
    half: usize,
    book: QuorumBook,
    board: Board,
    running: Option<(UnitId, u64)>,
    down_until: u64,
    outputs: HashMap<UnitId, Vec<u8>>,
    /// Boards each held unit's commitment / reveal went to.
    sent_commit: HashMap<UnitId, BTreeSet<WorkerId>>,
    sent_reveal: HashMap<UnitId, BTreeSet<WorkerId>>,
    copied: BTreeSet<UnitId>,
    last_claim: Option<Claim>,
    /// The coordinator's lease tickets for the units it holds, sent with commitments.
    tickets: HashMap<UnitId, Ticket>,
    /// Units whose certificate (complete or partial) is out: no more polling, like the
    /// real worker; the coordinator combines whatever else arrives.
    submitted: BTreeSet<UnitId>,
}

fn honest_output(unit: UnitId) -> Vec<u8> {
    format!("result of unit {}\n", unit.0).into_bytes()
}

fn fuel_of(unit: UnitId) -> u64 {
    1_000_000 + (unit.0 * 7919) % 100_000
}

struct Sim {
    /// Signs lease tickets like the real coordinator (`protocol::ticket`).
    coordinator: Identity,
    sched: Scheduler,
    workers: Vec<SimWorker>,
    index: HashMap<WorkerId, usize>,
    rng: SplitMix64,
    report: Report,
    verified: BTreeMap<UnitId, Digest>,
    first_lease: HashMap<UnitId, u64>,
    /// Per unit: replicas leased, and how many of them to colluders.
    holders: HashMap<UnitId, (u32, u32)>,
    /// The order in which workers ask for work each tick (colluders asking back-to-back
    /// are consecutive in it).
    order: Vec<usize>,
    verify_times: Vec<u64>,
    ever_wrong: BTreeSet<UnitId>,
    partition: Option<(u64, u64)>,
    /// Bumped whenever the live membership changes (a crash or a return).
    epoch: u64,
    /// Boards per (unit, view half) for the current epoch and partition state: real
    /// workers compute them once per unit too.
    board_cache: HashMap<(UnitId, usize), Vec<WorkerId>>,
    cache_key: (u64, bool),
}

/// Runs a scenario to the end.
pub fn run(s: &Scenario) -> Report {
    let mut rng = SplitMix64::new(s.seed);
    let mut sched = Scheduler::new(LEASE_MS, rng.next_u64());
    sched.add_project(Project {
        id: PROJECT,
        name: s.name.into(),
        replication: 2,
        quorum: 2,
        max_replicas: 8,
        limits: Limits::default(),
        module: Digest::of(b"sim"),
        reducer: None,
        stats: ProjectStats {
            total: s.units,
            ..ProjectStats::default()
        },
        aggregate: Aggregate::Pending,
        adaptive: true,
        error_bound: protocol::manifest::DEFAULT_ERROR_BOUND,
        signer: None,
        control: Default::default(),
        data: Default::default(),
    });
    for u in 0..s.units {
        sched.add_unit(
            UnitId(u),
            PROJECT,
            UnitStatus::Pending,
            2,
            2,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    // Assign kinds to a shuffled order of worker slots.
    let n = s.workers;
    let mut kinds = vec![Kind::Honest; n];
    let mut slot = 0;
    let mut take = |count: usize, kind: Kind, kinds: &mut Vec<Kind>| {
        for _ in 0..count {
            if slot < n {
                kinds[slot] = kind;
                slot += 1;
            }
        }
    };
    let frac = |f: f64| (f * n as f64).round() as usize;
    take(frac(s.liars), Kind::Liar, &mut kinds);
    take(s.colluders, Kind::Colluder, &mut kinds);
    take(frac(s.copiers), Kind::Copier, &mut kinds);
    take(frac(s.crashers), Kind::Crasher, &mut kinds);
    take(frac(s.forgers), Kind::Forger, &mut kinds);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        kinds.swap(i, j);
    }
    let mut workers = Vec::with_capacity(n);
    let mut index = HashMap::new();
    // The coordinator's key: it signs lease tickets, without which boards file nothing.
    let mut coordinator_seed = [0xc0; 32];
    coordinator_seed[..8].copy_from_slice(&s.seed.to_le_bytes());
    let coordinator = Identity::from_seed(coordinator_seed);
    for (i, kind) in kinds.into_iter().enumerate() {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        seed[8..16].copy_from_slice(&s.seed.to_le_bytes());
        let identity = Identity::from_seed(seed);
        let id = identity.id();
        sched.register(
            id,
            &WorkerInfo {
                account: format!("account-{i}"),
                team: String::new(),
                subnet: None,
            },
        );
        index.insert(id, i);
        workers.push(SimWorker {
            identity,
            id,
            kind,
            half: i % 2,
            book: QuorumBook::new(Timing::default()),
            board: Board::new(BoardLimits::default()).vouched_by(coordinator.id()),
            running: None,
            down_until: 0,
            outputs: HashMap::new(),
            sent_commit: HashMap::new(),
            sent_reveal: HashMap::new(),
            copied: BTreeSet::new(),
            last_claim: None,
            tickets: HashMap::new(),
            submitted: BTreeSet::new(),
        });
    }
    // Everyone asks in slot order; colluders asking back-to-back ask together, where the
    // first of them stands.
    let colluder = |i: &usize| workers[*i].kind == Kind::Colluder;
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        if !s.back_to_back || !colluder(&i) {
            order.push(i);
        } else if !(0..i).any(|j| colluder(&j)) {
            order.extend((i..n).filter(colluder));
        }
    }
    let mut sim = Sim {
        coordinator,
        sched,
        workers,
        index,
        rng,
        report: Report {
            name: s.name.into(),
            units: s.units,
            ..Report::default()
        },
        verified: BTreeMap::new(),
        first_lease: HashMap::new(),
        holders: HashMap::new(),
        order,
        verify_times: Vec::new(),
        ever_wrong: BTreeSet::new(),
        partition: s.partition,
        epoch: 0,
        board_cache: HashMap::new(),
        cache_key: (0, false),
    };
    sim.run(s);
    sim.finish()
}

impl Sim {
    fn partitioned(&self, now: u64) -> bool {
        self.partition.is_some_and(|(a, b)| now >= a && now < b)
    }

    fn run(&mut self, s: &Scenario) {
        let mut now = 0;
        loop {
            let settled = self.sched.project(PROJECT).is_some_and(|p| p.finished());
            if settled || now > MAX_SIM_MS {
                self.report.settled = settled;
                self.report.sim_ms = now;
                return;
            }
            let changes = self.sched.expire(now);
            self.after(changes);
            let crash_p = if s.crashers > 0.0 { 0.2 } else { 0.0 };
            for k in 0..self.order.len() {
                let i = self.order[k];
                self.step_worker(i, now, crash_p, s.back_to_back);
            }
            if now % POLL_MS == 0 {
                for i in 0..self.workers.len() {
                    self.poll(i, now);
                }
            }
            for i in 0..self.workers.len() {
                let actions = self.workers[i].book.tick(now);
                self.act(i, actions, now);
            }
            if now % HEARTBEAT_MS == 0 {
                for i in 0..self.workers.len() {
                    self.heartbeat(i, now);
                }
            }
            now += TICK_MS;
        }
    }

    fn step_worker(&mut self, i: usize, now: u64, crash_p: f64, back_to_back: bool) {
        let w = &self.workers[i];
        if w.down_until > now {
            return;
        }
        if w.down_until > 0 && w.down_until + TICK_MS > now {
            self.epoch += 1; // back from a crash this tick
        }
        if let Some((unit, done_at)) = w.running {
            if done_at > now {
                return;
            }
            if w.kind == Kind::Crasher && self.rng.unit() < crash_p {
                // Crash mid-unit: everything in memory is gone; back after two leases.
                self.epoch += 1;
                let w = &mut self.workers[i];
                w.running = None;
                w.down_until = now + 2 * LEASE_MS;
                w.book = QuorumBook::new(Timing::default());
                w.board = Board::new(BoardLimits::default()).vouched_by(self.coordinator.id());
                w.tickets.clear();
                w.sent_commit.clear();
                w.sent_reveal.clear();
                w.submitted.clear();
                return;
            }
            self.finish_unit(i, unit, now);
        }
        let a = self.sched.assign(self.workers[i].id, 1, now);
        for lease in a.leases {
            self.first_lease.entry(lease.unit).or_insert(now);
            let kind = self.workers[i].kind;
            let held = self.holders.entry(lease.unit).or_default();
            held.0 += 1;
            held.1 += u32::from(kind == Kind::Colluder);
            let speed = match kind {
                Kind::Copier => 100, // does no work
                // The honest mean, the same for all of them: idle together, ask together.
                Kind::Colluder if back_to_back => 1_250,
                _ => 500 + self.rng.next_u64() % 1500,
            };
            let ticket = self.coordinator.sign_ticket(
                self.workers[i].id,
                lease.project,
                lease.unit,
                lease.until + protocol::ticket::GRACE_MS.max(LEASE_MS),
            );
            let w = &mut self.workers[i];
            w.tickets.insert(lease.unit, ticket);
            w.book.hold(lease.unit, 2);
            w.running = Some((lease.unit, now + speed));
        }
    }

    fn finish_unit(&mut self, i: usize, unit: UnitId, now: u64) {
        let salt = random_bytes(&mut self.rng);
        let guess = random_bytes(&mut self.rng);
        let w = &mut self.workers[i];
        w.running = None;
        let output = match w.kind {
            Kind::Honest | Kind::Crasher | Kind::Forger => honest_output(unit),
            Kind::Liar => format!("wrong {} by {}\n", unit.0, w.id).into_bytes(),
            Kind::Colluder => format!("agreed wrong answer for {}\n", unit.0).into_bytes(),
            Kind::Copier => guess.to_vec(),
        };
        let claim = Claim::sign_with_salt(
            &w.identity,
            PROJECT,
            unit,
            Digest::of(&output),
            fuel_of(unit),
            salt,
        );
        w.outputs.insert(unit, output);
        w.last_claim = Some(claim.clone());
        let actions = w.book.add_own(claim, now);
        self.act(i, actions, now);
        if self.workers[i].kind == Kind::Forger {
            self.forge(i, unit, now);
        }
    }

    /// The unit's boards as worker `i` sees the membership.
    fn boards_of(&mut self, i: usize, unit: UnitId, now: u64) -> Vec<WorkerId> {
        let split = self.partitioned(now);
        if self.cache_key != (self.epoch, split) {
            self.cache_key = (self.epoch, split);
            self.board_cache.clear();
        }
        let half = if split { self.workers[i].half } else { 2 };
        if let Some(b) = self.board_cache.get(&(unit, half)) {
            return b.clone();
        }
        let members: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|w| w.down_until <= now && (!split || w.half == half))
            .map(|w| w.id)
            .collect();
        let b = boards(PROJECT, unit, &members, BOARDS_PER_UNIT);
        self.board_cache.insert((unit, half), b.clone());
        b
    }

    fn reachable(&self, i: usize, j: usize, now: u64) -> bool {
        self.workers[j].down_until <= now
            && (!self.partitioned(now) || self.workers[i].half == self.workers[j].half)
    }

    /// One poll: for each board, one exchange with our pending commitments and reveals.
    fn poll(&mut self, i: usize, now: u64) {
        if self.workers[i].down_until > now {
            return;
        }
        let mut held = self.workers[i].book.held();
        held.sort_unstable();
        // Per board: commitments, reveals and wanted units of one batched exchange.
        type Batch = (Vec<Commitment>, Vec<Claim>, Vec<UnitId>);
        let mut per_board: BTreeMap<WorkerId, Batch> = BTreeMap::new();
        for unit in held {
            if self.workers[i].submitted.contains(&unit) {
                continue;
            }
            let Some(own) = self.workers[i].book.own(unit).cloned() else {
                continue;
            };
            let revealed = self.workers[i].book.revealed(unit);
            for b in self.boards_of(i, unit, now) {
                let w = &mut self.workers[i];
                let entry = per_board.entry(b).or_default();
                if w.sent_commit.entry(unit).or_default().insert(b) {
                    let ticket = w.tickets.get(&unit).copied();
                    entry.0.push(own.commitment().with_ticket(ticket));
                }
                if revealed {
                    // Presenting our reveal is what entitles us to the others'.
                    w.sent_reveal.entry(unit).or_default().insert(b);
                    entry.1.push(own.clone());
                }
                entry.2.push(unit);
            }
        }
        for (b, (commitments, reveals, want)) in per_board {
            let Some(&j) = self.index.get(&b) else {
                continue;
            };
            if !self.reachable(i, j, now) {
                continue;
            }
            let request = pb::BoardExchange {
                commitments: commitments.iter().map(Into::into).collect(),
                reveals: reveals.iter().map(Into::into).collect(),
                want_units: want.iter().map(|u| u.0).collect(),
            };
            self.report.gossip_bytes += request.encoded_len() as u64;
            let (views, rejected) =
                self.workers[j]
                    .board
                    .exchange(commitments, reveals, &want, now);
            let reply = pb::BoardViews {
                views: views
                    .iter()
                    .map(|(u, v)| pb::UnitView {
                        unit_id: u.0,
                        commitments: v.commitments,
                        reveals: v.reveals.iter().map(Into::into).collect(),
                        committed: v.committed.iter().map(Into::into).collect(),
                    })
                    .collect(),
                rejected: rejected
                    .iter()
                    .map(|r| pb::BoardRejection {
                        unit_id: r.unit.0,
                        reason: r.reason.as_str().into(),
                    })
                    .collect(),
            };
            self.report.gossip_bytes += reply.encoded_len() as u64;
            for r in rejected {
                if let Some(offender) = r.offender {
                    // Signed proof of a changed answer goes to the coordinator.
                    let changes = self.sched.misbehaviour(offender, r.unit);
                    if let Ok(changes) = changes {
                        self.after(changes);
                    }
                }
            }
            for (unit, view) in views {
                self.copy_if_lazy(i, unit, &view, now);
                // A board that shows bad reveals is ignored for this poll.
                if let Ok(actions) = self.workers[i].book.observe(unit, view, now) {
                    self.act(i, actions, now);
                }
            }
        }
    }

    /// A copier that has seen someone else's reveal re-signs their digest and tries to pass
    /// it off, to the board and to the coordinator.
    fn copy_if_lazy(&mut self, i: usize, unit: UnitId, view: &View, now: u64) {
        let w = &self.workers[i];
        if w.kind != Kind::Copier || w.copied.contains(&unit) {
            return;
        }
        let Some(other) = view.reveals.iter().find(|c| c.worker != w.id).cloned() else {
            return;
        };
        let salt = random_bytes(&mut self.rng);
        let w = &mut self.workers[i];
        w.copied.insert(unit);
        let copy =
            Claim::sign_with_salt(&w.identity, PROJECT, unit, other.digest, other.fuel, salt);
        for b in self.boards_of(i, unit, now) {
            if let Some(&j) = self.index.get(&b)
                && self.reachable(i, j, now)
                && let Err(r) = self.workers[j].board.reveal(copy.clone(), now)
                && let Some(offender) = r.offender
                && let Ok(changes) = self.sched.misbehaviour(offender, unit)
            {
                self.after(changes);
            }
        }
        let cert = Certificate {
            unit,
            claims: vec![copy, other],
        };
        let output = honest_output(unit);
        self.submit(&cert, Some(&output));
    }

    fn forge(&mut self, i: usize, unit: UnitId, now: u64) {
        let Some(own) = self.workers[i].last_claim.clone() else {
            return;
        };
        let boards = self.boards_of(i, unit, now);
        let Some(&j) = boards.first().and_then(|b| self.index.get(b)) else {
            return;
        };
        // A forged commitment in someone else's name, a claim replayed under another unit,
        // and a duplicate of our own commitment.
        let mut forged = own.commitment();
        forged.worker = self.workers[j].id;
        let mut replayed = own.clone();
        replayed.unit = UnitId(unit.0 + 1);
        // The board counts each refusal by reason; the report reads the counts at the end.
        let ticket = self.workers[i].tickets.get(&own.unit).copied();
        let own_commitment = own.commitment().with_ticket(ticket);
        self.workers[j].board.exchange(
            vec![forged, own_commitment.clone(), own_commitment],
            vec![replayed.clone()],
            &[],
            now,
        );
        // Board squatting: a commitment for the unit under a made-up project (on the wire
        // it once made a board refuse the real project's commitment for that unit), with
        // a lease ticket the forger signed itself.
        let squat = Claim::sign(
            &self.workers[i].identity,
            ProjectId(own.project.0 ^ 0x5151),
            unit,
            own.digest,
            own.fuel,
        );
        let own_ticket =
            self.workers[i]
                .identity
                .sign_ticket(squat.worker, squat.project, unit, u64::MAX);
        self.workers[j].board.exchange(
            vec![squat.commitment().with_ticket(Some(own_ticket))],
            Vec::new(),
            &[],
            now,
        );
        // And a certificate for a unit it never held.
        let cert = Certificate {
            unit: replayed.unit,
            claims: vec![replayed],
        };
        self.submit(&cert, Some(b"forged"));
        self.forge_failure(i, j, unit, now);
    }

    /// A failure report in the name of board `j`'s worker for `unit` (on the wire, before
    /// calls were signed, such reports failed 40 of 40 units of an honest project). The
    /// forger can sign only with its own key; the coordinator checks the call against the
    /// key it names, as `coordinator::service` does, and only a call that verifies reaches
    /// the scheduler.
    fn forge_failure(&mut self, i: usize, j: usize, unit: UnitId, now: u64) {
        if i == j {
            return; // its own board: a report in its own name is no forgery
        }
        let victim = self.workers[j].id;
        let body = format!("ReportFailure {victim} {} trap", unit.0);
        let stamp =
            self.workers[i]
                .identity
                .sign_call("ReportFailure", now * 1000, body.as_bytes());
        if protocol::call::verify(victim, "ReportFailure", &stamp, body.as_bytes()).is_err() {
            self.report.coordinator_rejections += 1;
            self.report.forged_failures.0 += 1;
            return;
        }
        // Reached only if the call check let a forgery through: the scenario measures the
        // attack, not an assumption about it.
        match self
            .sched
            .report_failure(victim, unit, Failure::new(FailureKind::Trap, "forged"))
        {
            Ok(changes) => {
                self.report.forged_failures.1 += 1;
                self.after(changes);
            }
            Err(_) => self.report.coordinator_rejections += 1,
        }
    }

    fn act(&mut self, i: usize, actions: Vec<Action>, _now: u64) {
        for action in actions {
            match action {
                Action::Commit { .. } | Action::Reveal { .. } => {} // sent at the next poll
                Action::SubmitCertificate { unit, claims, .. } => {
                    self.workers[i].submitted.insert(unit);
                    let output = self.workers[i].outputs.get(&unit).cloned();
                    self.submit(&Certificate { unit, claims }, output.as_deref());
                }
                Action::ReportDispute { unit, claims } => {
                    self.submit(&Certificate { unit, claims }, None);
                }
            }
        }
    }

    fn submit(&mut self, cert: &Certificate, output: Option<&[u8]>) {
        match self.sched.submit(cert, output) {
            Ok(s) => {
                self.after(s.changes);
                if let Verdict::Verified(v) = s.verdict {
                    let changes = self.sched.mark_verified(cert.unit, &v);
                    self.verified.insert(cert.unit, v.digest);
                    if v.digest != Digest::of(&honest_output(cert.unit)) {
                        self.ever_wrong.insert(cert.unit);
                    }
                    self.after(changes);
                }
            }
            Err(_) => self.report.coordinator_rejections += 1,
        }
    }

    fn after(&mut self, changes: Vec<Change>) {
        for c in changes {
            if let Change::Reopen { unit, .. } = c {
                self.verified.remove(&unit);
            }
        }
    }

    fn heartbeat(&mut self, i: usize, now: u64) {
        if self.workers[i].down_until > now {
            return;
        }
        let held = self.workers[i].book.held();
        if held.is_empty() {
            return;
        }
        let id = self.workers[i].id;
        for unit in self.sched.heartbeat(id, &held, now) {
            if self.sched.unit_status(unit) == Some(&UnitStatus::Verified)
                && let Some(first) = self.first_lease.get(&unit)
                && self.verified.contains_key(&unit)
            {
                self.verify_times.push(now.saturating_sub(*first));
            }
            let w = &mut self.workers[i];
            w.book.release(unit);
            w.tickets.remove(&unit);
            w.outputs.remove(&unit);
            w.sent_commit.remove(&unit);
            w.sent_reveal.remove(&unit);
            w.submitted.remove(&unit);
        }
    }

    fn finish(mut self) -> Report {
        let mut r = self.report;
        if let Some(p) = self.sched.project(PROJECT) {
            r.verified = p.stats.verified;
            r.failed = p.stats.failed;
            r.executions = p.stats.executions;
            r.solo = p.stats.solo;
            r.spot_checks = p.stats.spot_checks;
        }
        for (unit, digest) in &self.verified {
            if *digest != Digest::of(&honest_output(*unit)) {
                r.wrong_accepted += 1;
            }
        }
        r.held_by_colluders = self
            .holders
            .values()
            .filter(|(all, colluders)| *all >= 2 && colluders == all)
            .count() as u64;
        r.corrected = self
            .ever_wrong
            .iter()
            .filter(|u| {
                self.verified
                    .get(u)
                    .is_none_or(|d| *d == Digest::of(&honest_output(**u)))
            })
            .count() as u64;
        for w in &self.workers {
            let penalised = self
                .sched
                .trust(w.id, PROJECT)
                .is_some_and(|t| t.offences > 0)
                || self.sched.standing(w.id).throttled;
            match w.kind {
                Kind::Liar | Kind::Colluder | Kind::Copier => {
                    r.cheaters += 1;
                    r.caught += u64::from(penalised);
                }
                _ => r.honest_penalised += u64::from(penalised),
            }
            for (reason, n) in w.board.rejections() {
                *r.board_rejections.entry(reason_name(*reason)).or_default() += n;
            }
        }
        self.verify_times.sort_unstable();
        if !self.verify_times.is_empty() {
            r.mean_verify_ms =
                self.verify_times.iter().sum::<u64>() as f64 / self.verify_times.len() as f64;
            r.p95_verify_ms = self.verify_times[self.verify_times.len() * 95 / 100];
        }
        r
    }
}

fn reason_name(r: Reason) -> &'static str {
    r.as_str()
}

/// Formats reports as a Markdown table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| scenario | units | verified | executions / verified | wrong accepted | corrected later | held wholly by colluders | cheaters caught | honest penalised | mean / p95 time to verify (sim s) | gossip bytes / unit | board rejections | coordinator rejections |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let rejections: Vec<String> = r
            .board_rejections
            .iter()
            .filter(|(k, _)| **k != "replayed" || r.name.contains("forg"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {}{} | {:.3} | {} | {} | {} | {}/{} | {} | {:.1} / {:.1} | {:.0} | {} | {} |\n",
            r.name,
            r.units,
            r.verified,
            if r.settled { "" } else { " (time limit)" },
            r.executions_per_verified(),
            r.wrong_accepted,
            r.corrected,
            r.held_by_colluders,
            r.caught,
            r.cheaters,
            r.honest_penalised,
            r.mean_verify_ms / 1000.0,
            r.p95_verify_ms as f64 / 1000.0,
            r.gossip_per_unit(),
            if rejections.is_empty() {
                "-".into()
            } else {
                rejections.join(", ")
            },
            r.coordinator_rejections,
        ));
    }
    out
}

#[cfg(test)]
mod tests;
