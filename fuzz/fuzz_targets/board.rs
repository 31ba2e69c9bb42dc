//! The commit–reveal state machines under arbitrary message sequences: a rendezvous
//! `Board` (what a peer's `Exchange` RPC drives) and a holder's `QuorumBook` (fed board
//! views, honest or not), with messages drawn from a pool of genuinely signed claims,
//! optionally tampered with, for two projects and two units, in any order and at any time.
//!
//! Nothing may panic, and the rules of commit–reveal must hold throughout: a board shows
//! reveals only to a worker whose own reveal it holds, every reveal it holds opens a filed
//! commitment, and a holder certifies only claims that agree with its own.

#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use protocol::board::{Board, BoardLimits, View};
use protocol::certificate::MAX_CLAIMS;
use protocol::claim::Commitment;
use protocol::quorum::{Action, QuorumBook, Timing};
use protocol::ticket::Ticket;
use protocol::{Claim, Digest, Identity, ProjectId, UnitId, WorkerId};

const WORKERS: u8 = 4;
/// (project, unit): unit 5 exists in both projects, to reach `WrongProject`.
const UNITS: [(u64, u64); 3] = [(1, 5), (1, 6), (2, 5)];
const OUTPUTS: [&[u8]; 2] = [b"x", b"y"];
const SALTS: [u8; 2] = [0, 1];

/// Every combination, signed once: signing per execution would dominate the run time.
static POOL: LazyLock<Vec<Claim>> = LazyLock::new(|| {
    let mut pool = Vec::new();
    for w in 1..=WORKERS {
        let id = Identity::from_seed([w; 32]);
        for (p, u) in UNITS {
            for out in OUTPUTS {
                for salt in SALTS {
                    pool.push(Claim::sign_with_salt(
                        &id,
                        ProjectId(p),
                        UnitId(u),
                        Digest::of(out),
                        10,
                        [salt; 32],
                    ));
                }
            }
        }
    }
    pool
});

/// The coordinator the board takes tickets from, and a ticket for each pool claim.
static COORDINATOR: LazyLock<Identity> = LazyLock::new(|| Identity::from_seed([200; 32]));
static TICKETS: LazyLock<Vec<Ticket>> = LazyLock::new(|| {
    POOL.iter()
        .map(|c| COORDINATOR.sign_ticket(c.worker, c.project, c.unit, u64::MAX))
        .collect()
});

/// The pool's workers (plus one that never signs anything), as board askers.
static ASKERS: LazyLock<Vec<WorkerId>> = LazyLock::new(|| {
    (1..=WORKERS + 1)
        .map(|w| Identity::from_seed([w; 32]).id())
        .collect()
});

#[derive(Debug, Arbitrary, Clone, Copy)]
struct Msg {
    index: u8,
    tamper: Option<Tamper>,
    /// The lease ticket sent with a commitment.
    ticket: TicketChoice,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum TicketChoice {
    /// The coordinator's ticket for the untampered claim's worker, project and unit.
    Valid,
    None,
    /// The ticket of another pool claim (another worker, unit or project).
    Other(u8),
    /// A ticket with this expiry, signed by a key the board does not know.
    Stranger(u16),
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Tamper {
    Project(u8),
    Unit(u8),
    Fuel(u8),
    Salt(u8),
    Signature(u8, u8),
    Worker(u8),
}

#[derive(Debug, Arbitrary)]
enum Op {
    Commit(Msg, u16),
    Reveal(Msg, u16),
    Exchange {
        commitments: Vec<Msg>,
        reveals: Vec<Msg>,
        want: Vec<u8>,
        now: u16,
    },
    Expire(u16),
    Hold { unit: u8, quorum: u32 },
    AddOwn(Msg, u16),
    /// The holder observes what the board shows worker `asker`.
    ObserveBoard { unit: u8, asker: u8, now: u16 },
    /// The holder observes a made-up view (a lying board).
    ObserveForged {
        unit: u8,
        commitments: u32,
        reveals: Vec<Msg>,
        now: u16,
    },
    Tick(u16),
    Release(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    max_units: u8,
    ttl_ms: u16,
    reveal_after_ms: u16,
    submit_after_ms: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut board = Board::new(BoardLimits {
        max_units: usize::from(input.max_units % 4),
        ttl_ms: u64::from(input.ttl_ms),
    })
    .vouched_by(COORDINATOR.id());
    let mut book = QuorumBook::new(Timing {
        reveal_after_ms: u64::from(input.reveal_after_ms),
        submit_after_ms: u64::from(input.submit_after_ms),
    });
    let mut rejected = 0u64;
    // Time only moves forward, as in the shells.
    let mut clock = 0u64;
    let mut at = |dt: u16| {
        clock += u64::from(dt);
        clock
    };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Commit(m, dt) => {
                let c = commitment(m);
                match board.commit(c.clone(), at(dt)) {
                    Ok(n) => {
                        assert!(n >= 1 && n as usize <= MAX_CLAIMS);
                        // Filed only with the coordinator's ticket for exactly this lease,
                        // and kept without it.
                        let ticket = c.ticket.expect("filed only with a ticket");
                        assert!(
                            ticket
                                .verify(COORDINATOR.id(), c.worker, c.project, c.unit, 0)
                                .is_ok()
                        );
                        let filed = board.commitment(c.unit, c.worker).expect("filed");
                        assert_eq!(*filed, c.clone().with_ticket(None));
                    }
                    Err(_) => rejected += 1,
                }
            }
            Op::Reveal(m, dt) => {
                let c = claim(m);
                match board.reveal(c.clone(), at(dt)) {
                    Ok(()) => {
                        let filed = board.commitment(c.unit, c.worker).expect("committed");
                        assert!(c.opens(filed) && c.verify().is_ok());
                    }
                    Err(_) => rejected += 1,
                }
            }
            Op::Exchange {
                commitments,
                reveals,
                want,
                now,
            } => {
                let commitments: Vec<Commitment> =
                    commitments.into_iter().take(16).map(commitment).collect();
                let reveals: Vec<Claim> = reveals.into_iter().take(16).map(claim).collect();
                let want: Vec<UnitId> = want.into_iter().take(8).map(unit).collect();
                let (views, refused) = board.exchange(commitments, reveals.clone(), &want, at(now));
                rejected += refused.len() as u64;
                assert_eq!(views.len(), want.len());
                for (u, view) in views {
                    check_view(&view);
                    if !view.reveals.is_empty() {
                        // Shown only to an asker that presented its own filed reveal.
                        assert!(reveals.iter().any(|r| r.unit == u && view.reveals.contains(r)));
                    }
                }
            }
            Op::Expire(dt) => board.expire(at(dt)),
            Op::Hold { unit: u, quorum } => book.hold(unit(u), quorum),
            Op::AddOwn(m, dt) => {
                // The shell adds its own result once per held unit.
                let own = claim(m);
                if book.own(own.unit).is_none() {
                    let acts = book.add_own(own, at(dt));
                    check_actions(&book, &acts);
                }
            }
            Op::ObserveBoard {
                unit: u,
                asker,
                now,
            } => {
                let asker = ASKERS[usize::from(asker) % ASKERS.len()];
                let view = board.view(unit(u), asker);
                check_view(&view);
                if !view.reveals.is_empty() {
                    assert!(view.reveals.iter().any(|r| r.worker == asker));
                }
                if let Ok(acts) = book.observe(unit(u), view, at(now)) {
                    check_actions(&book, &acts);
                }
            }
            Op::ObserveForged {
                unit: u,
                commitments,
                reveals,
                now,
            } => {
                let view = View {
                    commitments,
                    reveals: reveals.into_iter().take(16).map(claim).collect(),
                    committed: Vec::new(),
                };
                if let Ok(acts) = book.observe(unit(u), view, at(now)) {
                    check_actions(&book, &acts);
                }
            }
            Op::Tick(dt) => {
                let acts = book.tick(at(dt));
                check_actions(&book, &acts);
            }
            Op::Release(u) => book.release(unit(u)),
        }
    }
    let counted: u64 = board.rejections().values().sum();
    assert_eq!(counted, rejected, "every refusal is counted once");
});

fn unit(u: u8) -> UnitId {
    UnitId(if u % 2 == 0 { 5 } else { 6 })
}

/// `m`'s commitment with the ticket it chose.
fn commitment(m: Msg) -> Commitment {
    let ticket = match m.ticket {
        TicketChoice::Valid => Some(TICKETS[usize::from(m.index) % POOL.len()]),
        TicketChoice::None => None,
        TicketChoice::Other(i) => Some(TICKETS[usize::from(i) % POOL.len()]),
        TicketChoice::Stranger(expires) => Some(Ticket {
            expires_ms: u64::from(expires),
            signature: [7; 64],
        }),
    };
    claim(m).commitment().with_ticket(ticket)
}

fn claim(m: Msg) -> Claim {
    let mut c = POOL[usize::from(m.index) % POOL.len()].clone();
    match m.tamper {
        None => {}
        Some(Tamper::Project(p)) => c.project = ProjectId(u64::from(p % 3)),
        Some(Tamper::Unit(u)) => c.unit = unit(u),
        Some(Tamper::Fuel(f)) => c.fuel = u64::from(f),
        Some(Tamper::Salt(s)) => c.salt[usize::from(s) % 32] ^= 1,
        Some(Tamper::Signature(i, x)) => c.signature[usize::from(i) % 64] ^= x,
        Some(Tamper::Worker(w)) => c.worker = POOL[usize::from(w) % POOL.len()].worker,
    }
    c
}

/// Every reveal a board shows verifies and opens a commitment it shows.
fn check_view(view: &View) {
    assert!(view.reveals.len() as u32 <= view.commitments);
    for r in &view.reveals {
        assert!(r.verify().is_ok(), "a board shows a reveal that does not verify");
        assert!(view.committed.iter().any(|c| r.opens(c)));
    }
}

/// A holder reveals only its own claim and certifies only claims that agree with it.
fn check_actions(book: &QuorumBook, actions: &[Action]) {
    for a in actions {
        match a {
            Action::Commit { unit, commitment } => {
                assert_eq!(*unit, commitment.unit);
                let own = book.own(*unit).expect("commits only its own result");
                assert!(own.opens(commitment));
            }
            Action::Reveal { unit, claim } => {
                assert_eq!(Some(claim), book.own(*unit));
            }
            Action::SubmitCertificate { unit, claims, .. } => {
                let own = book.own(*unit).expect("certifies only with its own result");
                assert!(!claims.is_empty() && claims.len() <= MAX_CLAIMS);
                let mut workers: Vec<_> = claims.iter().map(|c| c.worker).collect();
                workers.sort();
                workers.dedup();
                assert_eq!(workers.len(), claims.len(), "one worker counted twice");
                for c in claims {
                    assert_eq!((c.unit, c.digest, c.fuel), (*unit, own.digest, own.fuel));
                }
            }
            Action::ReportDispute { unit, claims } => {
                assert!(claims.iter().all(|c| c.unit == *unit));
            }
        }
    }
}
