//! The life of the units one attachment holds, as a sans-IO state machine: leased and
//! buffered (prefetched), running, committed on its boards (then revealed and certified,
//! which [`Holder`] tracks), uploading its certificate, and then released — settled,
//! failed, handed back, or kept with a checkpoint on disk for a restart, which takes it
//! back into the resume queue.
//!
//! [`Lifecycle`] reads no clock and does no I/O. The shell (`attachment` and its `work`
//! and `exchange` modules) passes `now` (the time since the attachment started) and what
//! it learnt (a lease, a finished run, a board's answer, an upload's outcome, the coordinator's settled units, which
//! checkpoint files are on disk) and carries out the returned [`Effect`]s: hand units
//! back, report a failure, upload a certificate, report a dispute or misbehaviour,
//! avoid a board, delete a checkpoint. One value of it, under one lock, is all the state
//! an attachment keeps about its units.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use protocol::evidence::Evidence;
use protocol::quorum::Timing;
use protocol::{Claim, Failure, ProjectId, UnitId, WorkerId};

use crate::checkpoints::Key;
use crate::gossip::{self, Holder, PollConfig, Reply, Request};
use crate::rpc::{Assignment, CertificateOutcome};
use crate::shares::prefetch;

/// Least time between two logs of the same reason for no work.
pub const NO_WORK_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the lifecycle of one attachment needs to know about it.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// This worker's key (its rank among claimants decides who uploads first).
    pub me: WorkerId,
    /// The cores this attachment's resource share gives it (fractional).
    pub cores: f64,
    /// Most units buffered beyond the running ones (`--prefetch`).
    pub prefetch: usize,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Return these units to the coordinator (already released here).
    HandBack {
        /// The units.
        units: Vec<UnitId>,
        /// Why, for the log and for what the shell does next.
        why: HandBack,
    },
    /// Report that the unit failed, then call [`Lifecycle::failure_reported`].
    ReportFailure {
        /// The unit.
        unit: UnitId,
        /// What went wrong.
        failure: Failure,
    },
    /// Upload a certificate with our output, then call [`Lifecycle::uploaded`] (which may
    /// give the next one). At most one upload per unit is out at a time.
    Upload(Upload),
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
    /// Delete the checkpoint of a unit that is no longer ours.
    DeleteCheckpoint {
        /// The unit.
        unit: UnitId,
        /// Its checkpoint files.
        key: Key,
    },
}

/// One certificate to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The unit.
    pub unit: UnitId,
    /// Agreeing claims, ours included.
    pub claims: Vec<Claim>,
    /// Our output.
    pub output: Vec<u8>,
    /// Whether the claims reach the quorum (false: a partial certificate).
    pub complete: bool,
    /// Our rank among the claimants ([`gossip::submit_rank`]; 0 for a partial
    /// certificate): at rank `r` the shell waits `r` grace periods and uploads only if the
    /// unit is still not settled (else it calls [`Lifecycle::settled`]).
    pub rank: usize,
}

/// Why units go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandBack {
    /// Buffered too long to start and finish within their lease.
    Overdue,
    /// This worker's own trouble stopped the unit (the shell waits a little before asking
    /// for work again, so a persistent local fault does not spin).
    Local,
    /// Its project is not one this worker runs; never started.
    NotAccepted,
    /// Suspended past `suspend_hand_back_seconds` without a result or a checkpoint.
    Suspended,
    /// Shutting down without a result or a checkpoint on disk.
    Drained,
}

/// What a core does next for this attachment.
#[derive(Debug)]
pub enum Next {
    /// Run this unit (a resumed or a buffered one): call [`Lifecycle::started`].
    Run(Box<Assignment>),
    /// Ask the coordinator for one unit and this many more to buffer, then call
    /// [`Lifecycle::leased`].
    Ask {
        /// Units to buffer beyond the one to run.
        more: usize,
    },
}

/// How a run ended.
#[derive(Debug)]
pub enum Ran {
    /// With our signed claim and the output.
    Done {
        /// Our claim.
        claim: Claim,
        /// The output it is a claim on.
        output: Vec<u8>,
    },
    /// The unit failed (the unit's fault: a trap, a timeout, a bad exit).
    Failed(Failure),
    /// Stopped at a checkpoint for shutdown (written to disk): kept for a restart.
    Stopped,
}

/// Where a held unit is; a unit not held is gone (settled, failed, handed back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Leased and buffered, not started.
    Buffered,
    /// Taken back after a restart with a checkpoint on disk; resumes before new work.
    Resuming,
    /// Running.
    Running,
    /// Stopped at a checkpoint on disk for shutdown; kept while its lease lasts.
    Checkpointed,
    /// Its failure is being reported.
    Failing,
    /// Our result is in and our claim is committed on the unit's boards ([`Holder`]).
    Committed,
    /// Our claim is revealed (the quorum's commitments are in, or the reveal deadline
    /// passed); partial certificates may go out.
    Revealed,
    /// Our complete certificate is made: waiting for the coordinator to verify the unit.
    Certifying,
    /// A certificate upload is out.
    Uploading,
}

impl Phase {
    /// Whether our result is in (the run report says "running" while a unit has none).
    pub fn has_result(self) -> bool {
        matches!(
            self,
            Phase::Committed | Phase::Revealed | Phase::Certifying | Phase::Uploading
        )
    }
}

/// One held unit.
#[derive(Debug)]
struct Unit {
    project: ProjectId,
    /// Before a result; with one the phase is committed or uploading.
    phase: Phase,
    /// Its checkpoint files, for a module that checkpoints.
    checkpoint: Option<Key>,
    output: Option<Vec<u8>>,
    /// A certificate upload is out; the next one waits here (the latest wins).
    uploading: bool,
    next_certificate: Option<(Vec<Claim>, bool)>,
}

impl Unit {
    fn new(project: ProjectId, phase: Phase, checkpoint: Option<Key>) -> Unit {
        Unit {
            project,
            phase,
            checkpoint,
            output: None,
            uploading: false,
            next_certificate: None,
        }
    }
}

/// The units one attachment holds, from lease to release.
#[derive(Debug)]
pub struct Lifecycle {
    settings: Settings,
    units: HashMap<UnitId, Unit>,
    /// The commit–reveal side of the same units.
    holder: Holder,
    /// Units with a checkpoint on disk from before a restart, run before asking for more.
    resume: VecDeque<Assignment>,
    /// Prefetched units (leased, held, not started) and when they came.
    buffer: VecDeque<(Assignment, Duration)>,
    /// Wall time of a unit here (moving average) and the lease units come with.
    unit_time: Option<(Duration, Duration)>,
    /// Work requests failed in a row.
    failures: u32,
    /// The coordinator's last reason for no work, and when it was logged.
    no_work_said: Option<(String, Duration)>,
}

impl Lifecycle {
    /// No units yet.
    pub fn new(settings: Settings) -> Self {
        Lifecycle {
            settings,
            units: HashMap::new(),
            holder: Holder::new(Timing::default(), PollConfig::default()),
            resume: VecDeque::new(),
            buffer: VecDeque::new(),
            unit_time: None,
            failures: 0,
            no_work_said: None,
        }
    }

    /// The next unit for a core: one to resume, else a buffered one still held. Buffered
    /// units that could no longer start and finish within their lease are handed back
    /// first, while another worker still can.
    pub fn next_to_run(&mut self, now: Duration) -> (Next, Vec<Effect>) {
        if let Some(a) = self.resume.pop_front() {
            return (Next::Run(Box::new(a)), Vec::new());
        }
        let effects = self.hand_back_overdue(now);
        while let Some((a, _)) = self.buffer.pop_front() {
            if self.units.contains_key(&a.unit) {
                return (Next::Run(Box::new(a)), effects); // still ours (not settled meanwhile)
            }
        }
        let more = self.prefetch_target().saturating_sub(self.buffer.len());
        (Next::Ask { more }, effects)
    }

    /// The coordinator leased `units`: the first is to run now, the others are held at
    /// once (so heartbeats keep their leases and a shutdown hands them back) and buffered.
    pub fn leased(&mut self, units: Vec<Assignment>, now: Duration) -> Option<Assignment> {
        self.failures = 0;
        let mut units = units.into_iter();
        let first = units.next();
        for a in units {
            self.units
                .insert(a.unit, Unit::new(a.project, Phase::Buffered, None));
            self.buffer.push_back((a, now));
        }
        first
    }

    /// A work request failed; returns how many have failed in a row (for the backoff).
    pub fn work_failed(&mut self) -> u32 {
        self.failures += 1;
        self.failures
    }

    /// The coordinator gave no work, for `reason` (empty: none given). Whether to log it:
    /// when it changes, and at most once per [`NO_WORK_LOG_EVERY`] otherwise.
    pub fn no_work(&mut self, reason: String, now: Duration) -> bool {
        if reason.is_empty() {
            self.no_work_said = None;
            return false;
        }
        let due = match &self.no_work_said {
            Some((said, at)) => *said != reason || now.saturating_sub(*at) >= NO_WORK_LOG_EVERY,
            None => true,
        };
        if due {
            self.no_work_said = Some((reason, now));
        }
        due
    }

    /// A unit the provenance policy refused: with a bad signature it is failed (reported,
    /// held until then); from a project this worker does not run it goes back unrun.
    pub fn refused(&mut self, a: &Assignment, bad_signature: Option<Failure>) -> Vec<Effect> {
        match bad_signature {
            Some(failure) => {
                self.units
                    .insert(a.unit, Unit::new(a.project, Phase::Failing, None));
                vec![Effect::ReportFailure {
                    unit: a.unit,
                    failure,
                }]
            }
            None => {
                self.release(a.unit);
                vec![Effect::HandBack {
                    units: vec![a.unit],
                    why: HandBack::NotAccepted,
                }]
            }
        }
    }

    /// A core starts `a` (its module is fetched next): held afresh, and on the boards'
    /// side.
    pub fn started(&mut self, a: &Assignment) {
        self.units
            .insert(a.unit, Unit::new(a.project, Phase::Running, None));
        self.holder.hold(a.unit, a.project, a.quorum, a.ticket);
    }

    /// The unit's module checkpoints (`key`: its files) or not (`None`).
    pub fn checkpointing(&mut self, unit: UnitId, key: Option<Key>) {
        if let Some(u) = self.units.get_mut(&unit) {
            u.checkpoint = key;
        }
    }

    /// The module does not compile: the unit fails (`bad_module`), held or not.
    pub fn bad_module(&mut self, unit: UnitId, failure: Failure) -> Vec<Effect> {
        if let Some(u) = self.units.get_mut(&unit) {
            u.phase = Phase::Failing;
        }
        vec![Effect::ReportFailure { unit, failure }]
    }

    /// This worker's own trouble (its disk, its cache, its guest threads, the network)
    /// stopped `unit`: hand it back rather than fail it. A handed-back replica does not
    /// count against the unit, and this worker stays eligible for it.
    pub fn local_trouble(&mut self, unit: UnitId) -> Vec<Effect> {
        self.release(unit);
        vec![Effect::HandBack {
            units: vec![unit],
            why: HandBack::Local,
        }]
    }

    /// A fresh (not resumed) run took `took`, for units leased for `lease`: the moving
    /// average the prefetch target and the overdue check use.
    pub fn measured(&mut self, took: Duration, lease: Duration) {
        let avg = self.unit_time.map_or(took, |(avg, _)| (avg * 3 + took) / 4);
        self.unit_time = Some((avg, lease));
    }

    /// A run of `unit` ended. A unit settled (or handed back) while it ran drops its
    /// result; our result is committed on the unit's boards; a failure is reported.
    pub fn ran(&mut self, unit: UnitId, outcome: Ran, now: Duration) -> Vec<Effect> {
        let Some(u) = self.units.get_mut(&unit) else {
            return Vec::new(); // settled by others while we ran
        };
        match outcome {
            // Stays held: the drain keeps its lease for a restart.
            Ran::Stopped => {
                u.phase = Phase::Checkpointed;
                Vec::new()
            }
            Ran::Failed(failure) => {
                u.phase = Phase::Failing;
                vec![Effect::ReportFailure { unit, failure }]
            }
            Ran::Done { claim, output } => {
                u.output = Some(output);
                u.phase = Phase::Committed;
                let effects = self.holder.add_own(claim, ms(now));
                self.follow(effects)
            }
        }
    }

    /// The failure report of `unit` is done (taken or not): forget the unit.
    pub fn failure_reported(&mut self, unit: UnitId) {
        self.release(unit);
    }

    /// Every gossip tick: the holder's deadlines (reveal alone, partial certificate), and
    /// the exchanges due now with the live `members`' boards.
    pub fn tick(&mut self, members: &[WorkerId], now: Duration) -> (Vec<Request>, Vec<Effect>) {
        let effects = self.holder.tick(ms(now));
        let effects = self.follow(effects);
        (self.holder.plan(members, ms(now)), effects)
    }

    /// A board answered `request`.
    pub fn on_reply(&mut self, request: &Request, reply: Reply, now: Duration) -> Vec<Effect> {
        let effects = self.holder.on_reply(request, reply, ms(now));
        self.follow(effects)
    }

    /// The exchange of `request` failed: nothing was delivered.
    pub fn on_exchange_failed(&mut self, request: &Request) {
        self.holder.on_failure(request);
    }

    /// An upload of `unit` ended: `None` if the certificate was refused. Kept toward the
    /// quorum but not verified yet, the unit stays held (more claims may come, and the next
    /// queued certificate goes out); verified or refused, it is released.
    pub fn uploaded(
        &mut self,
        unit: UnitId,
        outcome: Option<CertificateOutcome>,
    ) -> Option<Upload> {
        match outcome {
            Some(o) if o.recorded && !o.accepted => self.next_upload(unit),
            _ => {
                self.release(unit);
                None
            }
        }
    }

    /// The coordinator says these units are settled (verified, or no longer ours).
    pub fn settled(&mut self, units: &[UnitId]) {
        for unit in units {
            self.release(*unit);
        }
    }

    /// The held units with checkpoint files: the shell checks which are on disk for
    /// [`Lifecycle::heartbeat`] and [`Lifecycle::drain`].
    pub fn checkpoint_keys(&self) -> Vec<(UnitId, Key)> {
        self.units
            .iter()
            .filter_map(|(unit, u)| Some((*unit, u.checkpoint.clone()?)))
            .collect()
    }

    /// Before a heartbeat: the units whose leases to renew. Suspended past the grace
    /// (`suspended_past_grace`), the units without a result or a checkpoint on disk
    /// (`with_checkpoint`) go back now (a paused execution of one of them, if it ever
    /// resumes, finds its unit released and drops its result), so the fleet runs them
    /// instead of waiting for this machine; checkpointed units are kept, but only within
    /// their current lease; only units whose result is in are renewed.
    pub fn heartbeat(
        &mut self,
        suspended_past_grace: bool,
        with_checkpoint: &HashSet<UnitId>,
    ) -> (Vec<UnitId>, Vec<Effect>) {
        if !suspended_past_grace {
            return (self.held(), Vec::new());
        }
        let mut renew = Vec::new();
        let mut back = Vec::new();
        for (unit, u) in &self.units {
            if u.output.is_some() {
                renew.push(*unit);
            } else if !with_checkpoint.contains(unit) {
                back.push(*unit);
            }
        }
        renew.sort_unstable();
        back.sort_unstable();
        if back.is_empty() {
            return (renew, Vec::new());
        }
        for unit in &back {
            self.release(*unit);
        }
        self.buffer.retain(|(a, _)| !back.contains(&a.unit));
        let effects = vec![Effect::HandBack {
            units: back,
            why: HandBack::Suspended,
        }];
        (renew, effects)
    }

    /// After (re)registering: units with a checkpoint on disk (`pending`, with their
    /// files) that the coordinator did not say are `settled` are held again (so heartbeats
    /// renew their leases even while suspended before they start) and queued to resume
    /// first; the others went elsewhere meanwhile, and their checkpoints are deleted.
    pub fn take_back(
        &mut self,
        pending: Vec<(Assignment, Key)>,
        settled: &HashSet<UnitId>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (a, key) in pending {
            if settled.contains(&a.unit) {
                effects.push(Effect::DeleteCheckpoint { unit: a.unit, key });
            } else {
                self.units
                    .insert(a.unit, Unit::new(a.project, Phase::Resuming, Some(key)));
                self.resume.push_back(a);
            }
        }
        effects
    }

    /// After the drain: units with a checkpoint on disk (`with_checkpoint`) keep their
    /// lease (a restart within the coordinator's lease time resumes them; otherwise the
    /// lease expires and another worker runs them); everything else goes back now.
    /// Returns the kept units.
    pub fn drain(&mut self, with_checkpoint: &HashSet<UnitId>) -> (Vec<UnitId>, Vec<Effect>) {
        let (mut kept, mut back) = (Vec::new(), Vec::new());
        for (unit, u) in &self.units {
            if u.checkpoint.is_some() && with_checkpoint.contains(unit) {
                kept.push(*unit);
            } else {
                back.push(*unit);
            }
        }
        kept.sort_unstable();
        back.sort_unstable();
        for unit in &kept {
            if let Some(u) = self.units.get_mut(unit) {
                u.phase = Phase::Checkpointed;
            }
        }
        for unit in &back {
            self.release(*unit);
        }
        let effects = if back.is_empty() {
            Vec::new()
        } else {
            vec![Effect::HandBack {
                units: back,
                why: HandBack::Drained,
            }]
        };
        (kept, effects)
    }

    /// How many units to keep buffered: what this attachment's share of the cores can
    /// start within half the units' lease at the measured unit time, at most `prefetch`
    /// (none before the first unit is measured).
    pub fn prefetch_target(&self) -> usize {
        let Some((unit, lease)) = self.unit_time else {
            return 0;
        };
        prefetch::target(
            Some(unit),
            self.settings.cores,
            lease,
            self.settings.prefetch,
        )
    }

    /// Whether a held unit has no result yet (the run report says "running").
    pub fn busy(&self) -> bool {
        self.units
            .keys()
            .any(|unit| self.phase(*unit).is_some_and(|p| !p.has_result()))
    }

    /// The held units, in order.
    pub fn held(&self) -> Vec<UnitId> {
        let mut held: Vec<UnitId> = self.units.keys().copied().collect();
        held.sort_unstable();
        held
    }

    /// Where `unit` is; `None` once it is released.
    pub fn phase(&self, unit: UnitId) -> Option<Phase> {
        let u = self.units.get(&unit)?;
        if u.output.is_none() {
            return Some(u.phase);
        }
        Some(match (u.uploading, self.holder.progress(unit)) {
            (true, _) => Phase::Uploading,
            (false, Some((_, true))) => Phase::Certifying,
            (false, Some((true, false))) => Phase::Revealed,
            (false, _) => Phase::Committed,
        })
    }

    /// Buffered units that could no longer start and finish within their lease go back.
    fn hand_back_overdue(&mut self, now: Duration) -> Vec<Effect> {
        let unit = self.unit_time.map(|(u, _)| u);
        let (late, keep): (Vec<_>, Vec<_>) = self
            .buffer
            .drain(..)
            .partition(|(a, at)| prefetch::overdue(now.saturating_sub(*at), unit, a.lease));
        self.buffer = keep.into();
        if late.is_empty() {
            return Vec::new();
        }
        let units: Vec<UnitId> = late.into_iter().map(|(a, _)| a.unit).collect();
        for u in &units {
            self.release(*u);
        }
        vec![Effect::HandBack {
            units,
            why: HandBack::Overdue,
        }]
    }

    /// What the holder decided, with certificates queued for upload.
    fn follow(&mut self, effects: Vec<gossip::Effect>) -> Vec<Effect> {
        let mut out = Vec::new();
        for effect in effects {
            match effect {
                gossip::Effect::Certificate {
                    unit,
                    claims,
                    complete,
                } => out.extend(self.certify(unit, claims, complete).map(Effect::Upload)),
                gossip::Effect::Dispute { unit, claims } => {
                    out.push(Effect::Dispute { unit, claims })
                }
                gossip::Effect::Misbehaviour(e) => out.push(Effect::Misbehaviour(e)),
                gossip::Effect::BadBoard { board, problem } => {
                    out.push(Effect::BadBoard { board, problem })
                }
            }
        }
        out
    }

    /// Queues a certificate for `unit`; one upload per unit is out at a time, and a newer
    /// certificate replaces a queued one (a complete one is never replaced by a partial).
    fn certify(&mut self, unit: UnitId, claims: Vec<Claim>, complete: bool) -> Option<Upload> {
        let u = self.units.get_mut(&unit)?;
        u.output.as_ref()?;
        if !u
            .next_certificate
            .as_ref()
            .is_some_and(|(_, c)| *c && !complete)
        {
            u.next_certificate = Some((claims, complete));
        }
        if u.uploading {
            return None;
        }
        u.uploading = true;
        self.next_upload(unit)
    }

    /// The queued certificate of `unit` goes out, or its uploads are over for now.
    fn next_upload(&mut self, unit: UnitId) -> Option<Upload> {
        let me = self.settings.me;
        let u = self.units.get_mut(&unit)?;
        match (u.next_certificate.take(), &u.output) {
            (Some((claims, complete)), Some(output)) => {
                let rank = if complete {
                    gossip::submit_rank(u.project, unit, me, &claims)
                } else {
                    0
                };
                Some(Upload {
                    unit,
                    output: output.clone(),
                    claims,
                    complete,
                    rank,
                })
            }
            _ => {
                u.uploading = false;
                None
            }
        }
    }

    /// Settled, failed or handed back: forget the unit (a buffered or queued copy is
    /// skipped when its turn comes).
    fn release(&mut self, unit: UnitId) {
        self.units.remove(&unit);
        self.holder.release(unit);
    }
}

/// The holder counts milliseconds.
fn ms(now: Duration) -> u64 {
    now.as_millis() as u64
}

#[cfg(test)]
mod tests;
