//! One deployment's coordinators behind one [`Coordinator`] (`--coordinator URL1,URL2,…`):
//! every call goes to the current one; when it has been unreachable for [`FAILOVER_AFTER`]
//! (every call in that time failed in transport, none answered), the next URL in the list
//! becomes current, round the list. The shell notices the move ([`Failover::moves`]) and
//! registers with the new coordinator under the same key; it keeps every unit it holds, and
//! its next heartbeat names them (a coordinator on the same database has the same leases).
//!
//! Only unreachability moves: a coordinator that answers, even with a refusal
//! (`PERMISSION_DENIED`, `NOT_FOUND`, a certificate that is not the pinned one) is
//! reachable, and another coordinator of the same deployment would answer the same. With
//! one URL nothing ever moves, as before lists existed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Claim, Failure, Identity, SubmitterKey, UnitId};
use tokio::time::Instant;

use super::coordinator::{Call, Coordinator};
use crate::rpc::{
    Assignment, CertificateOutcome, HeartbeatReply, Introduction, Outgoing, Registration, RunReport,
};
use crate::{Error, lock};

/// How long the current coordinator must stay unreachable before the worker moves on: long
/// enough that a blip (a coordinator restarting in place, a dropped connection) does not
/// move it, short against a lease (two minutes by default), so held units stay leased.
pub(crate) const FAILOVER_AFTER: Duration = Duration::from_secs(3);

/// The coordinators of one deployment, the current one first to be asked.
pub(crate) struct Failover {
    /// Each coordinator's URL and client, in the order given.
    members: Vec<(String, Arc<dyn Coordinator>)>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The index of the coordinator calls go to.
    current: usize,
    /// Since when every call to the current one failed in transport (`None`: the last
    /// one answered, or none was made since the move).
    down_since: Option<Instant>,
    /// How many times the worker moved.
    moves: u64,
}

/// How a call to a member went, for [`Failover::note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// It answered (whatever it answered).
    Answered,
    /// It could not be reached, or did not answer in time.
    Unreachable,
}

impl Reach {
    /// How a call that returned `r` went.
    pub(crate) fn of<T>(r: &Result<T, Error>) -> Reach {
        match r {
            Err(e) if unreachable(e) => Reach::Unreachable,
            _ => Reach::Answered,
        }
    }
}

/// Whether `e` says the coordinator could not be reached (rather than that it refused):
/// tonic reports a connection that fails or drops as `UNAVAILABLE`, a call that takes too
/// long as `DEADLINE_EXCEEDED`.
fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Rpc { status, .. }
        if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded))
}

impl Failover {
    /// The deployment of `members` (URL and client each), the first current. The list is
    /// not empty: `WorkerConfig::validate` refuses an empty one.
    pub(crate) fn new(members: Vec<(String, Arc<dyn Coordinator>)>) -> Failover {
        assert!(!members.is_empty(), "a deployment has a coordinator");
        Failover {
            members,
            state: Mutex::new(State::default()),
        }
    }

    /// The index of the current coordinator and its client.
    pub(crate) fn current(&self) -> (usize, &dyn Coordinator) {
        let i = lock(&self.state).current;
        (i, &*self.members[i].1)
    }

    /// The current coordinator's URL.
    pub(crate) fn url(&self) -> &str {
        &self.members[lock(&self.state).current].0
    }

    /// How many coordinators the deployment has.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// How many times the worker has moved so far.
    pub(crate) fn moves(&self) -> u64 {
        lock(&self.state).moves
    }

    /// Notes how a call to member `i` went at `now`; moves to the next member when `i` is
    /// still current and has been unreachable for [`FAILOVER_AFTER`]. A call that went to
    /// a member no longer current (it started before a move) changes nothing.
    pub(crate) fn note(&self, i: usize, reach: Reach) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if i != state.current || self.members.len() < 2 {
            return;
        }
        match reach {
            Reach::Answered => state.down_since = None,
            Reach::Unreachable => {
                let since = *state.down_since.get_or_insert(now);
                let down = now.duration_since(since);
                if down >= FAILOVER_AFTER {
                    let next = (i + 1) % self.members.len();
                    state.current = next;
                    state.down_since = None;
                    state.moves += 1;
                    tracing::warn!(
                        "coordinator {} unreachable for {down:.1?}: moving to {}, the next \
                         coordinator of this deployment (keeping this worker's key and units)",
                        self.members[i].0,
                        self.members[next].0
                    );
                }
            }
        }
    }

    /// Makes `call` on the current coordinator and notes how it went.
    pub(crate) async fn call<'a, T>(
        &'a self,
        call: impl FnOnce(&'a dyn Coordinator) -> Call<'a, T>,
    ) -> Result<T, Error> {
        let (i, member) = self.current();
        let r = call(member).await;
        self.note(i, Reach::of(&r));
        r
    }
}

impl Coordinator for Failover {
    fn register<'a>(
        &'a self,
        identity: &'a Identity,
        me: Introduction<'a>,
    ) -> Call<'a, Registration> {
        Box::pin(self.call(move |c| c.register(identity, me)))
    }

    fn request_work<'a>(
        &'a self,
        max: u32,
        accept_submitters: &'a [SubmitterKey],
        allow_unsigned: bool,
    ) -> Call<'a, (Vec<Assignment>, Duration, String)> {
        Box::pin(self.call(move |c| c.request_work(max, accept_submitters, allow_unsigned)))
    }

    fn heartbeat<'a>(
        &'a self,
        held: &'a [UnitId],
        peers_version: u64,
        run: &'a RunReport,
    ) -> Call<'a, HeartbeatReply> {
        Box::pin(self.call(move |c| c.heartbeat(held, peers_version, run)))
    }

    fn return_units<'a>(&'a self, units: &'a [UnitId]) -> Call<'a, ()> {
        Box::pin(self.call(move |c| c.return_units(units)))
    }

    fn report_failure<'a>(&'a self, unit: UnitId, failure: &'a Failure) -> Call<'a, ()> {
        Box::pin(self.call(move |c| c.report_failure(unit, failure)))
    }

    fn submit_certificate<'a>(
        &'a self,
        unit: UnitId,
        claims: &'a [Claim],
        output: &'a [u8],
    ) -> Call<'a, CertificateOutcome> {
        Box::pin(self.call(move |c| c.submit_certificate(unit, claims, output)))
    }

    fn submit_certificates<'a>(
        &'a self,
        batch: &'a [Outgoing<'a>],
    ) -> Call<'a, Vec<Result<CertificateOutcome, Error>>> {
        Box::pin(self.call(move |c| c.submit_certificates(batch)))
    }

    fn dispute<'a>(&'a self, unit: UnitId, claims: &'a [Claim]) -> Call<'a, ()> {
        Box::pin(self.call(move |c| c.dispute(unit, claims)))
    }
}
