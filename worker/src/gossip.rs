//! The holder side of commit–reveal over rendezvous boards: a sans-IO state machine around
//! [`QuorumBook`] that decides which boards to talk to, what to send them and what the
//! replies mean. The shell (`attachment::exchange`) owns the clock, the membership and the transport; it
//! calls [`Holder::plan`] every poll, sends each [`Request`] (over gRPC, or straight to its
//! own board when the board is itself), feeds the answers to [`Holder::on_reply`] and
//! carries out the returned [`Effect`]s.
//!
//! Traffic follows the worker's own work: a held unit goes to the
//! [`BOARDS_PER_UNIT`] members that rendezvous hashing picks for it, requests are batched
//! per board (all our commitments not yet on that board, our reveals, and the units we want
//! to hear about), and a unit stops being polled once its complete certificate is out. The
//! number of members only decides *which* boards, never how many.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use protocol::board::{Reason, View};
use protocol::claim::Commitment;
use protocol::evidence::Evidence;
use protocol::quorum::{Action, QuorumBook, Timing};
use protocol::rendezvous::{self, BOARDS_PER_UNIT};
use protocol::ticket::Ticket;
use protocol::{Claim, ProjectId, UnitId, WorkerId};

/// Most units one exchange may ask about: holders split bigger batches, and the board
/// service (`rpc`) refuses bigger requests. A board's answer holds up to
/// [`protocol::certificate::MAX_CLAIMS`] reveals and commitments per unit, so this bounds it to a few MiB.
pub const MAX_EXCHANGE_UNITS: usize = 256;

/// Polling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    /// Poll a unit's boards this often (ms) while its quorum forms. Default 500.
    pub every_ms: u64,
    /// Once the partial-certificate deadline has passed, poll only this often (ms): the
    /// coordinator may be combining claims, or we are the only replica. Default 3000.
    pub slow_every_ms: u64,
    /// Most units in one request to one board (bigger batches are split). Default
    /// [`MAX_EXCHANGE_UNITS`], the board service's limit.
    pub max_units_per_request: usize,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            every_ms: 500,
            slow_every_ms: 3_000,
            max_units_per_request: MAX_EXCHANGE_UNITS,
        }
    }
}

/// One Exchange to send to one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The board.
    pub board: WorkerId,
    /// Our commitments the board has not confirmed yet.
    pub commitments: Vec<Commitment>,
    /// Our reveals (re-sent on every poll: presenting them is how we are allowed to see
    /// the others').
    pub reveals: Vec<Claim>,
    /// Units to report on.
    pub want: Vec<UnitId>,
}

impl Request {
    /// An empty request to `board`.
    pub fn to(board: WorkerId) -> Self {
        Request {
            board,
            commitments: Vec::new(),
            reveals: Vec::new(),
            want: Vec::new(),
        }
    }
}

/// A board's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// What we may see of each wanted unit.
    pub views: Vec<(UnitId, View)>,
    /// Which of our messages it refused, and why.
    pub rejected: Vec<(UnitId, Reason)>,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Submit agreeing claims and our output to the coordinator (`complete = false`: a
    /// partial certificate the coordinator may combine with claims it holds).
    Certificate {
        /// The unit.
        unit: UnitId,
        /// Agreeing claims, ours included.
        claims: Vec<Claim>,
        /// Whether they reach the quorum.
        complete: bool,
    },
    /// Report disagreeing revealed claims.
    Dispute {
        /// The unit.
        unit: UnitId,
        /// All claims seen.
        claims: Vec<Claim>,
    },
    /// Report proof that a worker changed its answer (boxed: two signed messages).
    Misbehaviour(Box<Evidence>),
    /// A board sent something that does not verify: avoid it for a while.
    BadBoard {
        /// The board.
        board: WorkerId,
        /// What was wrong.
        problem: String,
    },
}

#[derive(Debug)]
struct Pending {
    project: ProjectId,
    /// The coordinator's lease ticket, sent with our commitment (boards need it).
    ticket: Option<Ticket>,
    commitment: Option<Commitment>,
    reveal: Option<Claim>,
    /// Boards that have our commitment on file.
    delivered: BTreeSet<WorkerId>,
    /// Our complete certificate is out: nothing more to learn from the boards.
    done: bool,
    committed_at: u64,
    next_poll: u64,
}

/// The commitments seen per unit are bounded like a board's.
const MAX_SEEN_PER_UNIT: usize = protocol::certificate::MAX_CLAIMS * 2;

/// A worker's commit–reveal exchanges for the units it holds.
#[derive(Debug)]
pub struct Holder {
    book: QuorumBook,
    timing: Timing,
    poll: PollConfig,
    units: HashMap<UnitId, Pending>,
    /// Verified commitments seen on boards, to catch one worker showing different ones to
    /// different boards.
    seen: HashMap<UnitId, BTreeMap<WorkerId, Commitment>>,
    reported: HashSet<(UnitId, WorkerId)>,
}

impl Holder {
    /// No units yet.
    pub fn new(timing: Timing, poll: PollConfig) -> Self {
        Holder {
            book: QuorumBook::new(timing),
            timing,
            poll,
            units: HashMap::new(),
            seen: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// A unit was leased to us, vouched for by `ticket` (`None` from a coordinator that
    /// issues none: boards then refuse our commitment and the unit ends in a partial
    /// certificate).
    pub fn hold(&mut self, unit: UnitId, project: ProjectId, quorum: u32, ticket: Option<Ticket>) {
        self.book.hold(unit, quorum);
        self.units.entry(unit).or_insert(Pending {
            project,
            ticket,
            commitment: None,
            reveal: None,
            delivered: BTreeSet::new(),
            done: false,
            committed_at: 0,
            next_poll: 0,
        });
    }

    /// The unit is settled, handed back or failed: forget it.
    pub fn release(&mut self, unit: UnitId) {
        self.book.release(unit);
        self.units.remove(&unit);
        self.seen.remove(&unit);
        self.reported.retain(|(u, _)| *u != unit);
    }

    /// Units held.
    pub fn held(&self) -> Vec<UnitId> {
        self.units.keys().copied().collect()
    }

    /// How far `unit` got: whether our claim is revealed, and whether its complete
    /// certificate is out (`None` before our own claim).
    pub fn progress(&self, unit: UnitId) -> Option<(bool, bool)> {
        let p = self.units.get(&unit)?;
        p.commitment.as_ref()?;
        Some((p.reveal.is_some(), p.done))
    }

    /// Whether any unit still needs its boards.
    pub fn polling(&self) -> bool {
        self.units
            .values()
            .any(|p| p.commitment.is_some() && !p.done)
    }

    /// Our execution finished with `claim`: commit (the next plan sends it).
    pub fn add_own(&mut self, claim: Claim, now: u64) -> Vec<Effect> {
        let unit = claim.unit;
        let actions = self.book.add_own(claim, now);
        if let Some(p) = self.units.get_mut(&unit) {
            p.committed_at = now;
            p.next_poll = now;
        }
        self.apply(unit, actions, now)
    }

    /// Deadlines (reveal alone, partial certificate): call every poll.
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut by_unit: BTreeMap<UnitId, Vec<Action>> = BTreeMap::new();
        for action in self.book.tick(now) {
            by_unit
                .entry(action_unit(&action))
                .or_default()
                .push(action);
        }
        by_unit
            .into_iter()
            .flat_map(|(unit, actions)| self.apply(unit, actions, now))
            .collect()
    }

    /// The requests due now, batched per board, given the live `members` (this worker
    /// included if it is a member).
    pub fn plan(&mut self, members: &[WorkerId], now: u64) -> Vec<Request> {
        let mut per_board: BTreeMap<WorkerId, Vec<Request>> = BTreeMap::new();
        let mut units: Vec<UnitId> = self.units.keys().copied().collect();
        units.sort_unstable();
        let max = self.poll.max_units_per_request.max(1);
        for unit in units {
            let Some(p) = self.units.get_mut(&unit) else {
                continue;
            };
            let Some(commitment) = p.commitment.clone() else {
                continue; // not executed yet: nothing to say
            };
            if p.done || p.next_poll > now {
                continue;
            }
            let slow = now.saturating_sub(p.committed_at) >= self.timing.submit_after_ms;
            p.next_poll = now
                + if slow {
                    self.poll.slow_every_ms
                } else {
                    self.poll.every_ms
                };
            for board in rendezvous::boards(p.project, unit, members, BOARDS_PER_UNIT) {
                let batches = per_board.entry(board).or_default();
                if batches.last().is_none_or(|r| r.want.len() >= max) {
                    batches.push(Request::to(board));
                }
                let Some(request) = batches.last_mut() else {
                    continue; // just pushed
                };
                if !p.delivered.contains(&board) {
                    request.commitments.push(commitment.clone());
                }
                if let Some(reveal) = &p.reveal {
                    request.reveals.push(reveal.clone());
                }
                request.want.push(unit);
            }
        }
        per_board.into_values().flatten().collect()
    }

    /// A board answered `request`.
    pub fn on_reply(&mut self, request: &Request, reply: Reply, now: u64) -> Vec<Effect> {
        let board = request.board;
        let mut effects = Vec::new();
        let mut refused: HashSet<UnitId> = HashSet::new();
        for (unit, reason) in &reply.rejected {
            match reason {
                // Already on file (an answer of ours got lost): as good as delivered.
                Reason::Replayed => {}
                Reason::BadSignature
                | Reason::RevealWithoutCommitment
                | Reason::RevealMismatch
                | Reason::Equivocation
                | Reason::WrongProject
                | Reason::BadTicket => {
                    // Our own messages are signed correctly and consistent: the board is
                    // broken or lying.
                    tracing::warn!(board = %board, unit = %unit, reason = reason.as_str(), "board refused our message");
                    refused.insert(*unit);
                }
                Reason::TooManyClaims | Reason::BoardFull => {
                    tracing::debug!(board = %board, unit = %unit, reason = reason.as_str(), "board is full");
                    refused.insert(*unit);
                }
                // No ticket from our coordinator, a late commit, or a board that has not
                // registered yet: retried at the next poll; the partial-certificate
                // deadline covers a unit no board takes.
                Reason::NoTicket | Reason::TicketExpired | Reason::NoCoordinatorKey => {
                    tracing::debug!(board = %board, unit = %unit, reason = reason.as_str(), "board did not take our commitment");
                    refused.insert(*unit);
                }
            }
        }
        for c in &request.commitments {
            if !refused.contains(&c.unit)
                && let Some(p) = self.units.get_mut(&c.unit)
            {
                p.delivered.insert(board);
            }
        }
        let wanted: HashSet<UnitId> = request.want.iter().copied().collect();
        for (unit, view) in reply.views {
            if !wanted.contains(&unit) || !self.units.contains_key(&unit) {
                continue; // unasked-for or settled meanwhile
            }
            effects.extend(self.check_committed(unit, &view.committed));
            match self.book.observe(unit, view, now) {
                Ok(actions) => effects.extend(self.apply(unit, actions, now)),
                Err(e) => effects.push(Effect::BadBoard {
                    board,
                    problem: format!("view of unit {unit}: {e}"),
                }),
            }
        }
        effects
    }

    /// The exchange with `request.board` failed (unreachable, refused): nothing was
    /// delivered; the boards are planned again at the next poll.
    pub fn on_failure(&mut self, request: &Request) {
        for c in &request.commitments {
            if let Some(p) = self.units.get_mut(&c.unit) {
                p.delivered.remove(&request.board);
            }
        }
    }

    /// Commitments a board showed us: a worker whose commitment differs from one another
    /// board showed is equivocating, and both signed commitments prove it.
    fn check_committed(&mut self, unit: UnitId, committed: &[Commitment]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let seen = self.seen.entry(unit).or_default();
        for c in committed {
            if c.unit != unit {
                continue;
            }
            match seen.get(&c.worker) {
                Some(first) if first.seal == c.seal => {}
                Some(first) => {
                    let evidence = Evidence::Equivocation(first.clone(), c.clone());
                    if evidence.offender().is_ok() && self.reported.insert((unit, c.worker)) {
                        effects.push(Effect::Misbehaviour(Box::new(evidence)));
                    }
                }
                None if seen.len() < MAX_SEEN_PER_UNIT && c.verify().is_ok() => {
                    seen.insert(c.worker, c.clone());
                }
                None => {}
            }
        }
        effects
    }

    fn apply(&mut self, unit: UnitId, actions: Vec<Action>, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for action in actions {
            match action {
                Action::Commit { commitment, .. } => {
                    if let Some(p) = self.units.get_mut(&unit) {
                        p.commitment = Some(commitment.with_ticket(p.ticket));
                        p.delivered.clear();
                        p.next_poll = now;
                    }
                }
                Action::Reveal { claim, .. } => {
                    if let Some(p) = self.units.get_mut(&unit) {
                        p.reveal = Some(claim);
                        p.next_poll = now; // present it at once
                    }
                }
                Action::SubmitCertificate {
                    claims, complete, ..
                } => {
                    if complete && let Some(p) = self.units.get_mut(&unit) {
                        p.done = true;
                    }
                    effects.push(Effect::Certificate {
                        unit,
                        claims,
                        complete,
                    });
                }
                Action::ReportDispute { claims, .. } => {
                    effects.push(Effect::Dispute { unit, claims })
                }
            }
        }
        effects
    }
}

fn action_unit(action: &Action) -> UnitId {
    match action {
        Action::Commit { unit, .. }
        | Action::Reveal { unit, .. }
        | Action::SubmitCertificate { unit, .. }
        | Action::ReportDispute { unit, .. } => *unit,
    }
}

/// Who uploads the output when several holders reach the same quorum: the claimant that
/// rendezvous hashing ranks first submits at once, the others wait `rank × grace` and
/// submit only if the unit is still not settled. Returns our rank among `claims`.
pub fn submit_rank(project: ProjectId, unit: UnitId, me: WorkerId, claims: &[Claim]) -> usize {
    let workers: Vec<WorkerId> = claims.iter().map(|c| c.worker).collect();
    rendezvous::boards(project, unit, &workers, workers.len())
        .iter()
        .position(|w| *w == me)
        .unwrap_or(workers.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::board::Board;
    use protocol::{Digest, Identity};

    const P: ProjectId = ProjectId(1);

    /// The coordinator whose tickets the test boards accept.
    fn coordinator() -> Identity {
        Identity::from_seed([200; 32])
    }

    fn ticket(worker: &Identity, unit: u64) -> Option<Ticket> {
        Some(coordinator().sign_ticket(worker.id(), P, UnitId(unit), u64::MAX))
    }

    /// In-memory twin of the network: one board per member, and holders that exchange with
    /// them directly. Counts what each holder sends.
    struct Net {
        members: Vec<WorkerId>,
        boards: HashMap<WorkerId, Board>,
        holders: Vec<(Identity, Holder)>,
        sent: Vec<Traffic>,
        effects: Vec<Vec<Effect>>,
    }

    /// Roughly the encoded size of `request`: the exact size is the wire boundary's
    /// (`rpc::request_len`), and this module does not know the wire. Commitments (with
    /// their ticket) and reveals are fixed-size signed messages; each message and the
    /// request carry a few bytes of framing.
    fn approx_len(request: &Request) -> u64 {
        const COMMITMENT: u64 = 2 * 8 + 32 + 32 + 64 + (8 + 64) + 12;
        const REVEAL: u64 = 2 * 8 + 32 + 8 + 32 + 64 + 32 + 12;
        const FRAMING: u64 = 6;
        FRAMING
            + COMMITMENT * request.commitments.len() as u64
            + REVEAL * request.reveals.len() as u64
            + 8 * request.want.len() as u64
    }

    #[derive(Debug, Default, Clone, Copy)]
    struct Traffic {
        calls: u64,
        bytes: u64,
    }

    impl Net {
        /// `members` boards; holders are the first `holders` of them.
        fn new(members: u8, holders: u8) -> Self {
            let ids: Vec<Identity> = (0..members).map(|i| Identity::from_seed([i; 32])).collect();
            let members: Vec<WorkerId> = ids.iter().map(Identity::id).collect();
            let key = coordinator().id();
            let boards = members
                .iter()
                .map(|m| (*m, Board::default().vouched_by(key)))
                .collect();
            let holders = ids
                .into_iter()
                .take(holders as usize)
                .map(|id| (id, Holder::new(Timing::default(), PollConfig::default())))
                .collect::<Vec<_>>();
            let n = holders.len();
            Net {
                members,
                boards,
                holders,
                sent: vec![Traffic::default(); n],
                effects: vec![Vec::new(); n],
            }
        }

        /// Holder `h` ran `unit` and got `output`.
        fn run(&mut self, h: usize, unit: u64, output: &[u8], now: u64) {
            let (id, holder) = &mut self.holders[h];
            let claim = Claim::sign(id, P, UnitId(unit), Digest::of(output), 100);
            holder.hold(UnitId(unit), P, 2, ticket(id, unit));
            let effects = holder.add_own(claim, now);
            self.effects[h].extend(effects);
        }

        /// One poll of every holder at `now`.
        fn poll(&mut self, now: u64) {
            for h in 0..self.holders.len() {
                let (_, holder) = &mut self.holders[h];
                let mut effects = holder.tick(now);
                for request in holder.plan(&self.members, now) {
                    self.sent[h].calls += 1;
                    self.sent[h].bytes += approx_len(&request);
                    let board = self.boards.get_mut(&request.board).expect("a member");
                    let (views, rejected) = board.exchange(
                        request.commitments.clone(),
                        request.reveals.clone(),
                        &request.want,
                        now,
                    );
                    let reply = Reply {
                        views,
                        rejected: rejected.into_iter().map(|r| (r.unit, r.reason)).collect(),
                    };
                    effects.extend(holder.on_reply(&request, reply, now));
                }
                self.effects[h].extend(effects);
            }
        }

        fn certificates(&self, h: usize, complete: bool) -> BTreeSet<UnitId> {
            self.effects[h]
                .iter()
                .filter_map(|e| match e {
                    Effect::Certificate {
                        unit,
                        complete: c,
                        claims,
                    } if *c == complete && (!complete || claims.len() == 2) => Some(*unit),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn two_holders_meet_on_the_boards_and_certify_every_unit() {
        let mut net = Net::new(10, 2);
        for u in 0..20 {
            net.run(0, u, b"ok", 0);
            net.run(1, u, b"ok", 0);
        }
        for step in 0..6 {
            net.poll(step * 500);
        }
        let all: BTreeSet<UnitId> = (0..20).map(UnitId).collect();
        assert_eq!(net.certificates(0, true), all);
        assert_eq!(net.certificates(1, true), all);
        assert!(net.certificates(0, false).is_empty(), "no partials needed");
        // Done units are not polled any more.
        let before = net.sent[0].calls;
        net.poll(10_000);
        assert_eq!(net.sent[0].calls, before);
        assert!(!net.holders[0].1.polling());
    }

    #[test]
    fn a_late_replica_still_meets_the_early_one() {
        let mut net = Net::new(6, 2);
        net.run(0, 7, b"ok", 0);
        for step in 0..12 {
            net.poll(step * 500); // alone: reveals at 2 s and sends a partial
        }
        assert_eq!(net.certificates(0, false), BTreeSet::from([UnitId(7)]));
        net.run(1, 7, b"ok", 6_000);
        for step in 12..30 {
            net.poll(step * 500);
        }
        assert_eq!(net.certificates(1, true), BTreeSet::from([UnitId(7)]));
        assert_eq!(net.certificates(0, true), BTreeSet::from([UnitId(7)]));
    }

    #[test]
    fn disagreement_becomes_a_dispute_not_a_certificate() {
        let mut net = Net::new(6, 2);
        net.run(0, 3, b"ok", 0);
        net.run(1, 3, b"lie", 0);
        for step in 0..6 {
            net.poll(step * 500);
        }
        for h in 0..2 {
            assert!(net.certificates(h, true).is_empty());
            assert!(
                net.effects[h]
                    .iter()
                    .any(|e| matches!(e, Effect::Dispute { claims, .. } if claims.len() == 2)),
                "{:?}",
                net.effects[h]
            );
        }
    }

    #[test]
    fn commitments_follow_the_boards_when_membership_changes() {
        let mut net = Net::new(8, 2);
        net.run(0, 1, b"ok", 0);
        net.poll(0);
        let first = rendezvous::boards(P, UnitId(1), &net.members, BOARDS_PER_UNIT);
        assert!(first.iter().all(|b| {
            net.boards[b]
                .commitment(UnitId(1), net.holders[0].0.id())
                .is_some()
        }));
        // Both boards leave (but not the holders): the unit's boards move, and our
        // commitment is sent to the new ones without being asked.
        net.members.retain(|m| !first.contains(m));
        net.poll(500);
        let moved = rendezvous::boards(P, UnitId(1), &net.members, BOARDS_PER_UNIT);
        assert!(moved.iter().all(|b| !first.contains(b)));
        for b in &moved {
            assert!(
                net.boards[b]
                    .commitment(UnitId(1), net.holders[0].0.id())
                    .is_some()
            );
        }
        // Re-sent commitments are not replays: every board saw each commitment once.
        assert!(net.boards.values().all(|b| b.rejections().is_empty()));
    }

    #[test]
    fn one_commitment_per_board_then_only_reveals_and_wants() {
        let mut net = Net::new(4, 2);
        net.run(0, 1, b"ok", 0);
        net.poll(0);
        let (_, holder) = &mut net.holders[0];
        let again = holder.plan(&net.members, 500);
        assert!(!again.is_empty());
        assert!(
            again
                .iter()
                .all(|r| r.commitments.is_empty() && r.want == vec![UnitId(1)])
        );
    }

    #[test]
    fn equivocation_across_boards_is_reported_with_both_signatures() {
        let cheat = Identity::from_seed([9; 32]);
        let honest = Identity::from_seed([1; 32]);
        let mut holder = Holder::new(Timing::default(), PollConfig::default());
        holder.hold(UnitId(4), P, 2, ticket(&honest, 4));
        let mine = Claim::sign(&honest, P, UnitId(4), Digest::of(b"ok"), 5);
        holder.add_own(mine, 0);
        let a = Claim::sign(&cheat, P, UnitId(4), Digest::of(b"ok"), 5).commitment();
        let b = Claim::sign(&cheat, P, UnitId(4), Digest::of(b"other"), 5).commitment();
        let view = |c: &Commitment| Reply {
            views: vec![(
                UnitId(4),
                View {
                    commitments: 2,
                    reveals: Vec::new(),
                    committed: vec![c.clone()],
                },
            )],
            rejected: Vec::new(),
        };
        let request = Request {
            want: vec![UnitId(4)],
            ..Request::to(honest.id())
        };
        assert!(
            holder
                .on_reply(&request, view(&a), 1)
                .iter()
                .all(|e| !matches!(e, Effect::Misbehaviour(_)))
        );
        let effects = holder.on_reply(&request, view(&b), 2);
        let evidence: Vec<&Evidence> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Misbehaviour(ev) => Some(&**ev),
                _ => None,
            })
            .collect();
        assert_eq!(evidence.len(), 1, "{effects:?}");
        assert_eq!(
            evidence[0].offender().expect("proves it"),
            (cheat.id(), UnitId(4))
        );
        // Reported once, however often it is seen again.
        assert!(
            holder
                .on_reply(&request, view(&b), 3)
                .iter()
                .all(|e| !matches!(e, Effect::Misbehaviour(_)))
        );
        // A forged "commitment" (bad signature) is never used to accuse anyone.
        let other = Identity::from_seed([8; 32]);
        let mut framed = Claim::sign(&other, P, UnitId(4), Digest::of(b"ok"), 5).commitment();
        holder.on_reply(&request, view(&framed), 4);
        framed.seal[0] ^= 1;
        assert!(
            holder
                .on_reply(&request, view(&framed), 5)
                .iter()
                .all(|e| !matches!(e, Effect::Misbehaviour(_)))
        );
    }

    #[test]
    fn a_board_showing_a_forged_reveal_is_flagged() {
        let me = Identity::from_seed([1; 32]);
        let mut holder = Holder::new(Timing::default(), PollConfig::default());
        holder.hold(UnitId(4), P, 2, ticket(&me, 4));
        holder.add_own(Claim::sign(&me, P, UnitId(4), Digest::of(b"ok"), 5), 0);
        let mut forged = Claim::sign(
            &Identity::from_seed([2; 32]),
            P,
            UnitId(4),
            Digest::of(b"ok"),
            5,
        );
        forged.fuel += 1;
        let request = Request {
            want: vec![UnitId(4)],
            ..Request::to(Identity::from_seed([3; 32]).id())
        };
        let reply = Reply {
            views: vec![(
                UnitId(4),
                View {
                    commitments: 2,
                    reveals: vec![forged],
                    committed: Vec::new(),
                },
            )],
            rejected: Vec::new(),
        };
        let effects = holder.on_reply(&request, reply, 1);
        assert!(
            matches!(&effects[..], [Effect::BadBoard { board, .. }] if *board == request.board),
            "{effects:?}"
        );
    }

    /// Gossip per worker follows its own work: for the same 16 units held, a worker sends
    /// the same bytes whether the network has 5, 50 or 200 members, and its calls stay
    /// within units × boards per unit × the few polls a unit needs (full-mesh push would
    /// have sent every claim to every member: 16 × 200 messages for the largest network).
    #[test]
    fn traffic_per_worker_does_not_grow_with_the_network() {
        let traffic = |members: u8| {
            let mut net = Net::new(members, 2);
            for u in 0..16 {
                net.run(0, u, b"ok", 0);
                net.run(1, u, b"ok", 0);
            }
            for step in 0..20 {
                net.poll(step * 500);
            }
            assert_eq!(net.certificates(0, true).len(), 16, "{members} members");
            net.sent[0]
        };
        let (small, mid, large) = (traffic(5), traffic(50), traffic(200));
        const POLLS_PER_UNIT: u64 = 4; // commit, see the count, reveal, see the reveals
        for t in [small, mid, large] {
            assert!(
                t.calls <= 16 * BOARDS_PER_UNIT as u64 * POLLS_PER_UNIT,
                "{t:?}"
            );
        }
        // Same payload everywhere; only per-request framing differs (more, smaller batches
        // when the units' boards are spread over more members).
        assert!(mid.bytes <= small.bytes * 11 / 10, "{small:?} vs {mid:?}");
        assert!(
            large.bytes <= small.bytes * 11 / 10,
            "{small:?} vs {large:?}"
        );
    }

    #[test]
    fn the_first_ranked_claimant_submits_and_ranks_are_a_permutation() {
        let ids: Vec<Identity> = (1..=3).map(|i| Identity::from_seed([i; 32])).collect();
        let claims: Vec<Claim> = ids
            .iter()
            .map(|id| Claim::sign(id, P, UnitId(2), Digest::of(b"ok"), 1))
            .collect();
        let mut ranks: Vec<usize> = ids
            .iter()
            .map(|id| submit_rank(P, UnitId(2), id.id(), &claims))
            .collect();
        ranks.sort_unstable();
        assert_eq!(ranks, vec![0, 1, 2]);
        let stranger = Identity::from_seed([7; 32]).id();
        assert_eq!(submit_rank(P, UnitId(2), stranger, &claims), 3);
    }
}
