//! The cores' side of an attachment: which unit a core runs next (resumed, buffered or
//! leased now, with prefetch), running it in the sandbox with its checkpoints, and
//! handing units back or reporting their failure. The decisions are the lifecycle's
//! ([`crate::lifecycle::Lifecycle`]); this side awaits the I/O and carries them out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{Claim, Digest, Failure, UnitId};
use sandbox::{Finished, Proceed};
use tokio_util::sync::CancellationToken;

use super::coordinator::Coordinator;
use super::exchange::GOSSIP_TICK;
use super::{Shared, backoff, pause};
use crate::checkpoints::{Key, Throttle};
use crate::config::Fault;
use crate::lifecycle::{self, Effect, HandBack, Ran};
use crate::rpc::Assignment;
use crate::shares::Shares;
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

/// How long a core waits after handing a unit back for its own trouble.
pub(super) const LOCAL_RETRY: Duration = Duration::from_secs(1);

impl Shared {
    /// The next unit for a core working for this coordinator: a unit to resume, a
    /// buffered one, or one asked for now (together with enough to refill the buffer).
    async fn next_unit(self: &Arc<Self>, slot: usize) -> Next {
        if self.cancel.is_cancelled() {
            return Next::Stop;
        }
        let (next, effects) = lock(&self.life).next_to_run(self.now());
        self.carry_out(effects);
        let more = match next {
            lifecycle::Next::Run(a) => return Next::Unit(a),
            lifecycle::Next::Ask { more } => more,
        };
        let asked = Instant::now();
        let work = tokio::select! {
            _ = self.cancel.cancelled() => return Next::Stop,
            w = self.coordinator.request_work(
                1 + more as u32,
                self.policy.accepted(),
                self.policy.allow_unsigned(),
            ) => w,
        };
        self.metrics.idle(asked.elapsed());
        match work {
            Ok((units, _, _)) if !units.is_empty() => {
                match lock(&self.life).leased(units, self.now()) {
                    Some(a) => Next::Unit(Box::new(a)),
                    None => Next::Wait(Duration::ZERO),
                }
            }
            Ok((_, wait, reason)) => {
                // Logged when it changes, and at most once a minute otherwise, so a capped
                // worker is not silently idle.
                if lock(&self.life).no_work(reason.clone(), self.now()) {
                    tracing::info!(coordinator = %self.coordinator.url(), "no work for now: {reason}");
                }
                Next::Wait(wait)
            }
            Err(e) => {
                let failures = lock(&self.life).work_failed();
                if failures % 8 == 1 {
                    tracing::warn!(slot, coordinator = %self.coordinator.url(), "cannot get work: {e}");
                }
                Next::Wait(backoff(failures))
            }
        }
    }

    /// The units whose checkpoint files are on disk (read without holding the lock).
    fn checkpoints_on_disk(&self) -> HashSet<UnitId> {
        let keys = lock(&self.life).checkpoint_keys();
        keys.into_iter()
            .filter(|(_, key)| self.checkpoints.load(key).is_some())
            .map(|(unit, _)| unit)
            .collect()
    }

    /// After the drain: units with a checkpoint on disk keep their lease (a restart within
    /// the coordinator's lease time resumes them here; otherwise the lease expires and
    /// another worker runs them); everything else goes back now.
    pub(crate) async fn settle_held_units(self: &Arc<Self>, overran: bool) {
        let on_disk = self.checkpoints_on_disk();
        let (kept, effects) = lock(&self.life).drain(&on_disk);
        for unit in &kept {
            tracing::info!(%unit, "kept unit with its checkpoint; restart this worker before its lease expires to resume it");
        }
        let handed_back: usize = effects
            .iter()
            .map(|e| match e {
                Effect::HandBack { units, .. } => units.len(),
                _ => 0,
            })
            .sum();
        self.perform(effects).await;
        if overran {
            tracing::warn!(
                kept = kept.len(),
                handed_back,
                "drain deadline passed with executions still running; their units are accounted for above"
            );
        }
    }

    async fn execute(self: &Arc<Self>, a: Assignment) {
        // The submitter's signature first: nothing unsigned by a key this worker accepts,
        // or changed since it was signed, is fetched, compiled or run.
        let refused = match self.policy.check(self.coordinator.url(), &a) {
            Ok(()) => None,
            Err(provenance::Refusal::BadSignature(e)) => {
                tracing::warn!(unit = %a.unit, project = %a.project, "refusing to run a unit: {e}");
                Some(Some(Failure::new(protocol::FailureKind::BadSignature, e)))
            }
            Err(provenance::Refusal::NotAccepted(e)) => {
                tracing::warn!(unit = %a.unit, "handing a unit back unrun: {e}");
                Some(None)
            }
        };
        if let Some(bad_signature) = refused {
            let effects = lock(&self.life).refused(&a, bad_signature);
            self.perform(effects).await;
            return;
        }
        lock(&self.life).started(&a);
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
                .get(self.client(), a.module, a.limits.nan_canonicalization)
                .await
        };
        let compiled = match prepared {
            Ok(c) => c,
            // Only the module's own fault fails the unit (`bad_module`).
            Err(e @ Error::Module(_)) => {
                tracing::warn!(unit = %a.unit, "module does not compile: {e}");
                let failure = Failure::new(protocol::FailureKind::BadModule, e.to_string());
                let effects = lock(&self.life).bad_module(a.unit, failure);
                self.perform(effects).await;
                return;
            }
            Err(e) => {
                self.local_trouble(a.unit, &e).await;
                return;
            }
        };
        // The project's data files, fetched once per worker and mounted for this unit; the
        // mount (and its hold on the files) lasts until this function returns.
        let mounted = match self.data.mount(self.client(), &a.data).await {
            Ok(m) => m,
            Err(e @ Error::DataTooLarge(_)) => {
                tracing::warn!(unit = %a.unit, "cannot run a unit: {e}");
                let failure = Failure::new(protocol::FailureKind::BadModule, e.to_string());
                let effects = lock(&self.life).bad_module(a.unit, failure);
                self.perform(effects).await;
                return;
            }
            Err(e) => {
                self.local_trouble(a.unit, &e).await;
                return;
            }
        };
        let seed = protocol::unit_seed(&a.name, &a.input);
        let key = compiled
            .checkpoints()
            .then(|| Key::new(&self.attachment.deployment(), &a));
        let resume = key.as_ref().and_then(|k| self.checkpoints.load(k));
        lock(&self.life).checkpointing(a.unit, key.clone());
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
                mounted.as_ref().map(|m| m.mount.clone()),
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
                self.local_trouble(a.unit, &e).await;
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
                lock(&self.life).ran(a.unit, Ran::Stopped, self.now());
                return;
            }
            Ok(Finished::Done(exec)) => {
                if exec.resumed_from == 0 {
                    lock(&self.life).measured(started.elapsed(), a.lease);
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
        // A unit settled by others (or handed back) while it ran drops its result.
        let outcome = match result {
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
                Ran::Done {
                    claim,
                    output: exec.output,
                }
            }
            Err(failure) => {
                tracing::info!(unit = %a.unit, name = %a.name, reason = %failure, "unit failed");
                Ran::Failed(failure)
            }
        };
        let effects = lock(&self.life).ran(a.unit, outcome, self.now());
        self.perform(effects).await;
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
        let coordinator = self.attachment.deployment();
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
    pub(crate) async fn take_back_checkpointed_units(self: &Arc<Self>) {
        let pending = self.checkpoints.pending(&self.attachment.deployment());
        if pending.is_empty() {
            return;
        }
        let units: Vec<UnitId> = pending.iter().map(|a| a.unit).collect();
        let version = lock(&self.peers).version;
        let settled: HashSet<UnitId> = match self
            .coordinator
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
        let pending: Vec<(Assignment, Key)> = pending
            .into_iter()
            .map(|a| {
                if !settled.contains(&a.unit) {
                    tracing::info!(unit = %a.unit, name = %a.name, "taking back a checkpointed unit");
                }
                let key = Key::new(&self.attachment.deployment(), &a);
                (a, key)
            })
            .collect();
        let effects = lock(&self.life).take_back(pending, &settled);
        self.carry_out(effects);
    }

    /// This worker's own trouble (`e`: its disk, its cache, its guest threads, the
    /// network) stopped `unit`: hand it back rather than fail it. A handed-back replica
    /// does not count against the unit, and this worker stays eligible for it, so a small
    /// fleet whose every account must run the unit still completes it. The core waits a
    /// little before asking for work again, so a persistent local fault does not spin.
    pub(super) async fn local_trouble(self: &Arc<Self>, unit: UnitId, e: &Error) {
        tracing::warn!(%unit, "handing the unit back: this worker's own trouble, not the unit's: {e}");
        let effects = lock(&self.life).local_trouble(unit);
        self.perform(effects).await;
    }

    /// Before a heartbeat: the units whose leases to renew. Suspended for
    /// `suspend_hand_back_seconds`, the units held without a result or a checkpoint on
    /// disk go back to the coordinator first ([`Lifecycle::heartbeat`]).
    pub(super) async fn units_to_renew(self: &Arc<Self>) -> Vec<UnitId> {
        let suspended = self.control.decision().hand_back;
        let on_disk = if suspended {
            self.checkpoints_on_disk()
        } else {
            HashSet::new()
        };
        let (renew, effects) = lock(&self.life).heartbeat(suspended, &on_disk);
        self.perform(effects).await;
        renew
    }

    /// Carries out the lifecycle's effects, awaiting hand-backs and failure reports (the
    /// caller goes on only once they are done, as a core waits before its next unit) and
    /// starting the rest in the background.
    pub(super) async fn perform(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::HandBack { units, why } => self.hand_back(&units, why).await,
                Effect::ReportFailure { unit, failure } => self.report_failure(unit, failure).await,
                other => self.carry_out(vec![other]),
            }
        }
    }

    /// Returns `units` to the coordinator (the lifecycle released them already).
    pub(super) async fn hand_back(&self, units: &[UnitId], why: HandBack) {
        if why == HandBack::Overdue {
            tracing::info!(
                units = units.len(),
                "handing buffered units back early: they could not start before their deadline"
            );
        }
        let returned = self.coordinator.return_units(units).await;
        match (why, returned) {
            (HandBack::Suspended, Ok(())) => {
                let reason = self.control.decision().reason_text().unwrap_or_default();
                tracing::info!(
                    units = units.len(),
                    "suspended ({reason}) past suspend_hand_back_seconds: handed the units without a result or checkpoint back"
                )
            }
            (HandBack::Suspended, Err(e)) => tracing::warn!(
                units = units.len(),
                "suspended past suspend_hand_back_seconds, but could not hand units back ({e}); their leases will expire"
            ),
            (HandBack::Drained, Ok(())) => {
                tracing::info!(units = units.len(), "handed unfinished units back")
            }
            (HandBack::Drained, Err(e)) => tracing::warn!(
                "could not hand {} units back ({e}); their leases will expire",
                units.len()
            ),
            (HandBack::Overdue, Err(e)) => {
                tracing::warn!("could not hand buffered units back ({e}); their leases will expire")
            }
            (HandBack::Local | HandBack::NotAccepted, Err(e)) => {
                tracing::warn!(units = ?units, "could not hand it back ({e}); its lease will expire")
            }
            (_, Ok(())) => {}
        }
        if why == HandBack::Local {
            pause(&self.cancel, LOCAL_RETRY).await;
        }
    }

    /// Reports a failed unit (retrying while the coordinator is unreachable), then
    /// forgets it.
    pub(super) async fn report_failure(&self, unit: UnitId, failure: Failure) {
        let mut attempt = 0u32;
        loop {
            match self.coordinator.report_failure(unit, &failure).await {
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
        lock(&self.life).failure_reported(unit);
    }
}
