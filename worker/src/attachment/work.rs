//! The cores' side of an attachment: which unit a core runs next (resumed, buffered or
//! leased now, with prefetch), running it in the sandbox with its checkpoints, and
//! handing units back or reporting their failure.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{Claim, Digest, Failure, UnitId};
use sandbox::{Finished, Proceed};
use tokio_util::sync::CancellationToken;

use super::exchange::GOSSIP_TICK;
use super::{Held, Shared, backoff, pause};
use crate::checkpoints::{Key, Throttle};
use crate::config::Fault;
use crate::rpc::Assignment;
use crate::shares::{Shares, prefetch};
use crate::{Error, control, gate, lock, provenance};

/// One core: works for the attachment [`Shares::pick`] names, one unit at a time, until
/// shutdown. Its time is charged to that attachment; an attachment without work is
/// skipped until it said to ask again.
pub(crate) async fn core_loop(
    slot: usize,
    attached: Arc<Vec<Arc<Shared>>>,
    shares: Arc<Mutex<Shares>>,
    control: Arc<control::Control>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        // Suspended, or this core is over `max_cores`: lease nothing until allowed.
        if !control.wait_to_lease(slot, &cancel).await {
            return;
        }
        let now = Instant::now();
        let pick = lock(&shares).pick(now);
        let Some(i) = pick else {
            let wake = lock(&shares).next_wake(now);
            let wait = wake.map_or(GOSSIP_TICK, |w| w.saturating_duration_since(now));
            let waited = pause(&cancel, wait).await;
            if let Some(first) = attached.first() {
                first.metrics.idle(now.elapsed());
            }
            if !waited {
                return;
            }
            continue;
        };
        let ticket = lock(&shares).start(i, now);
        let shared = &attached[i];
        match shared.next_unit(slot).await {
            Next::Unit(a) => {
                shared.execute(*a).await;
                lock(&shares).finish(ticket, Instant::now());
            }
            Next::Wait(d) => lock(&shares).no_work(ticket, Instant::now() + d),
            Next::Stop => {
                lock(&shares).no_work(ticket, Instant::now());
                return;
            }
        }
    }
}

/// What a core gets from an attachment.
enum Next {
    /// A unit to run.
    Unit(Box<Assignment>),
    /// Nothing now: ask again after this long.
    Wait(Duration),
    /// Shutting down.
    Stop,
}

/// Least time between two logs of the same reason for no work.
const NO_WORK_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a core waits after handing a unit back for its own trouble.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

impl Shared {
    /// The next unit for a core working for this coordinator: a unit to resume, a
    /// buffered one, or one asked for now (together with enough to refill the buffer).
    async fn next_unit(self: &Arc<Self>, slot: usize) -> Next {
        if self.cancel.is_cancelled() {
            return Next::Stop;
        }
        if let Some(a) = lock(&self.resume).pop_front() {
            return Next::Unit(Box::new(a));
        }
        self.hand_back_overdue();
        loop {
            let Some((a, _)) = lock(&self.buffer).pop_front() else {
                break;
            };
            if lock(&self.held).contains_key(&a.unit) {
                return Next::Unit(Box::new(a)); // still ours (not settled meanwhile)
            }
        }
        let want = self
            .prefetch_target()
            .saturating_sub(lock(&self.buffer).len());
        let asked = Instant::now();
        let work = tokio::select! {
            _ = self.cancel.cancelled() => return Next::Stop,
            w = self.client.request_work_why(
                1 + want as u32,
                self.policy.accepted(),
                self.policy.allow_unsigned(),
            ) => w,
        };
        self.metrics.idle(asked.elapsed());
        match work {
            Ok((units, _, _)) if !units.is_empty() => {
                *lock(&self.failures) = 0;
                let mut units = units.into_iter();
                let first = units.next();
                let now = Instant::now();
                for a in units {
                    // Held at once, so heartbeats keep its lease and a shutdown hands it back.
                    lock(&self.held).insert(a.unit, Held::new(a.project, None));
                    lock(&self.buffer).push_back((a, now));
                }
                match first {
                    Some(a) => Next::Unit(Box::new(a)),
                    None => Next::Wait(Duration::ZERO),
                }
            }
            Ok((_, wait, reason)) => {
                self.say_why_no_work(reason);
                Next::Wait(wait)
            }
            Err(e) => {
                let failures = {
                    let mut failures = lock(&self.failures);
                    *failures += 1;
                    *failures
                };
                if failures % 8 == 1 {
                    tracing::warn!(slot, coordinator = %self.attachment.url, "cannot get work: {e}");
                }
                Next::Wait(backoff(failures))
            }
        }
    }

    /// Logs the coordinator's reason for giving no work (at most once a minute, and when
    /// it changes), so a capped worker is not silently idle.
    fn say_why_no_work(&self, reason: String) {
        let mut last = lock(&self.no_work_said);
        if reason.is_empty() {
            *last = None;
            return;
        }
        let due = match &*last {
            Some((said, at)) => *said != reason || at.elapsed() >= NO_WORK_LOG_EVERY,
            None => true,
        };
        if due {
            tracing::info!(coordinator = %self.attachment.url, "no work for now: {reason}");
            *last = Some((reason, Instant::now()));
        }
    }

    /// How many units to keep buffered: what this coordinator's share of the cores can
    /// start within half the units' lease at the measured unit time, at most `prefetch`.
    fn prefetch_target(&self) -> usize {
        let Some((unit, lease)) = *lock(&self.unit_time) else {
            return 0;
        };
        let cores = self.config.cores as f64 * self.attachment.share_fraction;
        prefetch::target(Some(unit), cores, lease, self.config.prefetch)
    }

    /// Hands back buffered units that could no longer start and finish within their
    /// lease, while another worker still can.
    fn hand_back_overdue(self: &Arc<Self>) {
        let unit = lock(&self.unit_time).map(|(u, _)| u);
        let now = Instant::now();
        let overdue: Vec<UnitId> = {
            let mut buffer = lock(&self.buffer);
            let (late, keep): (Vec<_>, Vec<_>) = buffer
                .drain(..)
                .partition(|(a, at)| prefetch::overdue(now - *at, unit, a.lease));
            *buffer = keep.into();
            late.into_iter().map(|(a, _)| a.unit).collect()
        };
        if overdue.is_empty() {
            return;
        }
        for u in &overdue {
            self.release(*u);
        }
        tracing::info!(
            units = overdue.len(),
            "handing buffered units back early: they could not start before their deadline"
        );
        let client = self.client.clone();
        self.tasks.spawn(async move {
            if let Err(e) = client.return_units(&overdue).await {
                tracing::warn!(
                    "could not hand buffered units back ({e}); their leases will expire"
                );
            }
        });
    }

    /// After the drain: units with a checkpoint on disk keep their lease (a restart within
    /// the coordinator's lease time resumes them here; otherwise the lease expires and
    /// another worker runs them); everything else goes back now.
    pub(crate) async fn settle_held_units(&self, overran: bool) {
        let (kept, unfinished): (Vec<_>, Vec<_>) = lock(&self.held)
            .iter()
            .map(|(unit, h)| (*unit, h.checkpoint.clone()))
            .partition(|(_, key)| {
                key.as_ref()
                    .is_some_and(|k| self.checkpoints.load(k).is_some())
            });
        for (unit, _) in &kept {
            tracing::info!(%unit, "kept unit with its checkpoint; restart this worker before its lease expires to resume it");
        }
        let unfinished: Vec<UnitId> = unfinished.into_iter().map(|(u, _)| u).collect();
        if !unfinished.is_empty() {
            match self.client.return_units(&unfinished).await {
                Ok(()) => tracing::info!(units = unfinished.len(), "handed unfinished units back"),
                Err(e) => tracing::warn!(
                    "could not hand {} units back ({e}); their leases will expire",
                    unfinished.len()
                ),
            }
        }
        if overran {
            tracing::warn!(
                kept = kept.len(),
                handed_back = unfinished.len(),
                "drain deadline passed with executions still running; their units are accounted for above"
            );
        }
    }

    async fn execute(self: &Arc<Self>, a: Assignment) {
        // The submitter's signature first: nothing unsigned by a key this worker accepts,
        // or changed since it was signed, is fetched, compiled or run.
        match self.policy.check(&self.attachment.url, &a) {
            Ok(()) => {}
            Err(provenance::Refusal::BadSignature(e)) => {
                tracing::warn!(unit = %a.unit, project = %a.project, "refusing to run a unit: {e}");
                lock(&self.held).insert(a.unit, Held::new(a.project, None));
                let failure = Failure::new(protocol::FailureKind::BadSignature, e);
                self.report_failure(a.unit, failure).await;
                return;
            }
            Err(provenance::Refusal::NotAccepted(e)) => {
                tracing::warn!(unit = %a.unit, "handing a unit back unrun: {e}");
                self.release(a.unit);
                if let Err(e) = self.client.return_units(&[a.unit]).await {
                    tracing::warn!(unit = %a.unit, "could not hand it back ({e}); its lease will expire");
                }
                return;
            }
        }
        lock(&self.held).insert(a.unit, Held::new(a.project, None));
        lock(&self.holder).hold(a.unit, a.project, a.quorum, a.ticket);
        let prepared = if self.config.fault == Some(Fault::LocalFailureOnce)
            && !self
                .fault_fired
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            Err(Error::io(
                &self.config.data_dir.join("modules"),
                std::io::Error::other("injected by --fault local-failure-once"),
            ))
        } else {
            self.modules
                .get(&self.client, a.module, a.limits.nan_canonicalization)
                .await
        };
        let compiled = match prepared {
            Ok(c) => c,
            // Only the module's own fault fails the unit (`bad_module`).
            Err(e @ Error::Module(_)) => {
                tracing::warn!(unit = %a.unit, "module does not compile: {e}");
                let failure = Failure::new(protocol::FailureKind::BadModule, e.to_string());
                self.report_failure(a.unit, failure).await;
                return;
            }
            Err(e) => {
                self.hand_back_local(a.unit, &e).await;
                return;
            }
        };
        let seed = protocol::unit_seed(&a.name, &a.input);
        let key = compiled
            .checkpoints()
            .then(|| Key::new(&self.attachment.url, &a));
        let resume = key.as_ref().and_then(|k| self.checkpoints.load(k));
        if let Some(h) = lock(&self.held).get_mut(&a.unit) {
            h.checkpoint = key.clone();
        }
        if let Some(c) = &resume {
            tracing::info!(unit = %a.unit, name = %a.name, checkpoint = c.segment, fuel = c.fuel, "resuming unit from its checkpoint");
        }
        let on_checkpoint = self.checkpoint_sink(key.clone(), &a);
        let started = Instant::now();
        let pacer = self
            .control
            .gate()
            .pacer(a.unit, a.project, &a.name, &a.limits);
        let result = self
            .executor
            .run_resumable(
                compiled,
                a.input.clone(),
                seed,
                a.limits,
                resume,
                Box::new(pacer),
                on_checkpoint,
            )
            .await;
        let result = match result {
            Err(e) => {
                self.control.gate().finished(gate::Finished {
                    unit: a.unit.0,
                    name: a.name.clone(),
                    result: "handed back".to_string(),
                    fuel: 0,
                    seconds: started.elapsed().as_secs_f64(),
                });
                self.hand_back_local(a.unit, &e).await;
                return;
            }
            Ok(r) => r,
        };
        let result = match result {
            Ok(Finished::Stopped(c)) => {
                // Shutting down: the checkpoint is on disk; the unit stays held so the
                // drain keeps its lease for a restart.
                tracing::info!(unit = %a.unit, checkpoint = c.segment, "stopped unit at its checkpoint for shutdown");
                self.metrics.ran("stopped", 0, started.elapsed());
                self.control.gate().finished(gate::Finished {
                    unit: a.unit.0,
                    name: a.name.clone(),
                    result: "stopped".to_string(),
                    fuel: c.fuel,
                    seconds: started.elapsed().as_secs_f64(),
                });
                return;
            }
            Ok(Finished::Done(exec)) => {
                if exec.resumed_from == 0 {
                    let took = started.elapsed();
                    let mut t = lock(&self.unit_time);
                    let avg = t.map_or(took, |(avg, _)| (avg * 3 + took) / 4);
                    *t = Some((avg, a.lease));
                }
                Ok(exec)
            }
            Err(f) => Err(f),
        };
        if let Some(k) = &key {
            self.checkpoints.remove(k);
        }
        let (kind, fuel, fuel_here) = match &result {
            Ok(exec) => ("ok", exec.fuel, exec.fuel_here),
            Err(failure) => (failure.kind.as_str(), 0, 0),
        };
        self.metrics.ran(kind, fuel_here, started.elapsed());
        self.control.gate().finished(gate::Finished {
            unit: a.unit.0,
            name: a.name.clone(),
            result: kind.to_string(),
            fuel,
            seconds: started.elapsed().as_secs_f64(),
        });
        if !lock(&self.held).contains_key(&a.unit) {
            return; // settled by others while we ran
        }
        match result {
            Ok(mut exec) => {
                if self.config.fault == Some(Fault::CorruptOutput) {
                    exec.output
                        .extend_from_slice(b"\n(corrupted by fault injection)\n");
                    exec.digest = Digest::of(&exec.output);
                }
                tracing::info!(
                    unit = %a.unit,
                    name = %a.name,
                    fuel = exec.fuel,
                    fuel_here = exec.fuel_here,
                    resumed_from = exec.resumed_from,
                    checkpoints = exec.checkpoints,
                    ms = started.elapsed().as_millis() as u64,
                    "unit ran"
                );
                let claim = Claim::sign(&self.identity, a.project, a.unit, exec.digest, exec.fuel);
                if let Some(h) = lock(&self.held).get_mut(&a.unit) {
                    h.output = Some(exec.output);
                }
                let now = self.now_ms();
                let effects = lock(&self.holder).add_own(claim, now);
                self.carry_out(effects);
            }
            Err(failure) => {
                tracing::info!(unit = %a.unit, name = %a.name, reason = %failure, "unit failed");
                self.report_failure(a.unit, failure).await;
            }
        }
    }

    /// What the guest thread does with each checkpoint of a unit: write it to disk (at
    /// most once per `checkpoint_every`, always when stopping), and stop there if the
    /// worker is shutting down — unless it could not be written, then carry on.
    fn checkpoint_sink(
        &self,
        key: Option<Key>,
        a: &Assignment,
    ) -> Box<dyn FnMut(&sandbox::Checkpoint) -> Proceed + Send> {
        let Some(key) = key else {
            return Box::new(|_| Proceed::Continue);
        };
        let store = self.checkpoints.clone();
        let cancel = self.cancel.clone();
        let coordinator = self.attachment.url.clone();
        let mut throttle = Throttle::new(self.config.checkpoint_every);
        // The input can be large: the record is built from this copy once, at the first write.
        let assignment = a.clone();
        Box::new(move |c| {
            let stop = cancel.is_cancelled();
            if !throttle.due(Instant::now(), stop) {
                return Proceed::Continue;
            }
            match store.save(&key, &coordinator, &assignment, c) {
                Ok(()) => {
                    tracing::info!(unit = %assignment.unit, checkpoint = c.segment, fuel = c.fuel, "checkpoint written");
                    if stop {
                        Proceed::Stop
                    } else {
                        Proceed::Continue
                    }
                }
                Err(e) => {
                    tracing::warn!(unit = %assignment.unit, "cannot write checkpoint: {e}");
                    Proceed::Continue
                }
            }
        })
    }

    /// After (re)registering: units with a checkpoint on disk whose lease this worker
    /// still holds are queued to resume first; the others went elsewhere meanwhile, and
    /// their checkpoints are deleted.
    pub(crate) async fn take_back_checkpointed_units(&self) {
        let pending = self.checkpoints.pending(&self.attachment.url);
        if pending.is_empty() {
            return;
        }
        let units: Vec<UnitId> = pending.iter().map(|a| a.unit).collect();
        let version = lock(&self.peers).0;
        let settled: HashSet<UnitId> = match self
            .client
            .heartbeat(&units, version, &self.run_report())
            .await
        {
            Ok(reply) => reply.settled.into_iter().collect(),
            Err(e) => {
                // Leases are renewed by the next heartbeat if the coordinator comes back;
                // running them meanwhile risks nothing but duplicated effort.
                tracing::warn!(
                    "cannot check checkpointed units with the coordinator ({e}); resuming them"
                );
                HashSet::new()
            }
        };
        let mut queue = lock(&self.resume);
        for a in pending {
            if settled.contains(&a.unit) {
                tracing::info!(unit = %a.unit, "checkpointed unit is no longer ours; deleting its checkpoint");
                self.checkpoints.remove(&Key::new(&self.attachment.url, &a));
            } else {
                tracing::info!(unit = %a.unit, name = %a.name, "taking back a checkpointed unit");
                // Held from now on, so heartbeats renew its lease even while this worker is
                // suspended before the unit starts again.
                lock(&self.held).insert(
                    a.unit,
                    Held::new(a.project, Some(Key::new(&self.attachment.url, &a))),
                );
                queue.push_back(a);
            }
        }
    }

    /// This worker's own trouble (`e`: its disk, its cache, its guest threads, the
    /// network) stopped `unit`: hand it back rather than fail it. A handed-back replica
    /// does not count against the unit, and this worker stays eligible for it, so a small
    /// fleet whose every account must run the unit still completes it. The core waits a
    /// little before asking for work again, so a persistent local fault does not spin.
    async fn hand_back_local(&self, unit: UnitId, e: &Error) {
        tracing::warn!(%unit, "handing the unit back: this worker's own trouble, not the unit's: {e}");
        self.release(unit);
        if let Err(e) = self.client.return_units(&[unit]).await {
            tracing::warn!(%unit, "could not hand it back ({e}); its lease will expire");
        }
        pause(&self.cancel, LOCAL_RETRY).await;
    }

    /// Suspended for `suspend_hand_back_seconds`: the units held without a result or a
    /// checkpoint on disk go back to the coordinator now (a paused execution of one of
    /// them, if it ever resumes, finds its unit released and drops its result), so the
    /// fleet runs them instead of waiting for this machine. Checkpointed units are kept,
    /// but only within their current lease. Returns the units whose leases to renew:
    /// those whose result is in.
    pub(super) async fn hand_back_while_suspended(&self) -> Vec<UnitId> {
        // Copied out first: the checkpoint files are read without holding the lock.
        let held: Vec<(UnitId, bool, Option<Key>)> = lock(&self.held)
            .iter()
            .map(|(unit, h)| (*unit, h.output.is_some(), h.checkpoint.clone()))
            .collect();
        let mut renew = Vec::new();
        let mut back = Vec::new();
        for (unit, done, key) in held {
            if done {
                renew.push(unit);
            } else if key.is_none_or(|k| self.checkpoints.load(&k).is_none()) {
                back.push(unit);
            }
        }
        if !back.is_empty() {
            for unit in &back {
                self.release(*unit);
            }
            lock(&self.buffer).retain(|(a, _)| !back.contains(&a.unit));
            let reason = self.control.decision().reason_text().unwrap_or_default();
            match self.client.return_units(&back).await {
                Ok(()) => tracing::info!(
                    units = back.len(),
                    "suspended ({reason}) past suspend_hand_back_seconds: handed the units without a result or checkpoint back"
                ),
                Err(e) => tracing::warn!(
                    units = back.len(),
                    "suspended past suspend_hand_back_seconds, but could not hand units back ({e}); their leases will expire"
                ),
            }
        }
        renew
    }

    async fn report_failure(&self, unit: UnitId, failure: Failure) {
        let mut attempt = 0u32;
        loop {
            match self.client.report_failure(unit, &failure).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && !self.cancel.is_cancelled() => {
                    attempt += 1;
                    if !pause(&self.cancel, backoff(attempt)).await {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(%unit, "failure report not taken: {e}");
                    break;
                }
            }
        }
        self.release(unit);
    }

    pub(super) fn release(&self, unit: UnitId) {
        lock(&self.held).remove(&unit);
        lock(&self.holder).release(unit);
    }
}
