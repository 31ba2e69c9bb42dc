//! The guest-thread side of the policy: every running execution passes through the
//! [`Gate`] at every slice of its fuel (a [`sandbox::Pacer`], called every
//! [`sandbox::meter::SLICE_FUEL`] fuel: a few milliseconds of guest time), where it is held while the worker is
//! suspended, while more units run than `max_cores` allows, or while the running units'
//! declared memory exceeds the budget — and slowed to `cpu_limit_percent` by a duty cycle.
//! Holding parks the guest thread with the guest's whole state in place, so nothing is
//! lost: the unit continues where it stopped, with the same output and fuel.
//!
//! The gate also keeps what `fallow worker status` shows: each running unit's fuel
//! progress and the recent results.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use protocol::{Limits, ProjectId, UnitId};
use serde::{Deserialize, Serialize};

use crate::policy::Decision;

/// Length of one duty cycle of the CPU limit: at 50 % a guest computes 50 ms, then
/// pauses 50 ms. Short enough that an interactive program never waits long behind a
/// guest, long enough that pausing costs nothing measurable.
pub const DUTY_PERIOD: Duration = Duration::from_millis(100);

/// Results kept for `fallow worker status`.
const RECENT: usize = 20;

/// One unit running (or held) on a guest thread, for `fallow worker status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningUnit {
    /// The unit.
    pub unit: u64,
    /// Its project.
    pub project: u64,
    /// Its name.
    pub name: String,
    /// Fuel used so far.
    pub fuel_used: u64,
    /// The unit's fuel limit.
    pub fuel_limit: u64,
    /// Seconds since it started (held time included).
    pub seconds: f64,
    /// Whether it is held right now (suspended, over `max_cores` or over the memory
    /// budget).
    pub held: bool,
}

/// A finished execution, for `fallow worker status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// The unit.
    pub unit: u64,
    /// Its name.
    pub name: String,
    /// `ok` or the failure kind.
    pub result: String,
    /// Fuel used (0 for a failure).
    pub fuel: u64,
    /// Seconds from start to end (held time included).
    pub seconds: f64,
}

/// What the policy allows, shared with every guest thread.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    wake: Condvar,
}

#[derive(Debug)]
struct GateState {
    decision: Decision,
    next_id: u64,
    /// In start order: older units keep their cores when fewer are allowed.
    runs: Vec<Entry>,
    recent: VecDeque<Finished>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    unit: UnitId,
    project: ProjectId,
    name: String,
    fuel_limit: u64,
    memory: u64,
    fuel_used: u64,
    started: Instant,
    held: bool,
}

impl Gate {
    /// A gate applying `decision` until told otherwise.
    pub fn new(decision: Decision) -> Self {
        Gate {
            state: Mutex::new(GateState {
                decision,
                next_id: 0,
                runs: Vec::new(),
                recent: VecDeque::new(),
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // Every critical section is a few field updates that cannot panic midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new decision: held guests that may run now continue at once.
    pub fn apply(&self, decision: Decision) {
        self.lock().decision = decision;
        self.wake.notify_all();
    }

    /// The decision in force.
    pub fn decision(&self) -> Decision {
        self.lock().decision
    }

    /// Registers an execution about to start; the returned pacer holds and slows it and
    /// unregisters it when dropped (when the execution's store is dropped).
    pub fn pacer(
        self: &Arc<Self>,
        unit: UnitId,
        project: ProjectId,
        name: &str,
        limits: &Limits,
    ) -> UnitPacer {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.runs.push(Entry {
            id,
            unit,
            project,
            name: name.to_string(),
            fuel_limit: limits.fuel,
            memory: u64::from(limits.memory_mb) << 20,
            fuel_used: 0,
            started: Instant::now(),
            held: false,
        });
        UnitPacer {
            gate: self.clone(),
            id,
            busy: Duration::ZERO,
            resumed: Instant::now(),
        }
    }

    /// Records a finished execution for `fallow worker status`.
    pub fn finished(&self, f: Finished) {
        let mut s = self.lock();
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(f);
    }

    /// Running units (oldest first) and recent results (newest first).
    pub fn snapshot(&self) -> (Vec<RunningUnit>, Vec<Finished>) {
        let s = self.lock();
        let running = s
            .runs
            .iter()
            .map(|e| RunningUnit {
                unit: e.unit.0,
                project: e.project.0,
                name: e.name.clone(),
                fuel_used: e.fuel_used,
                fuel_limit: e.fuel_limit,
                seconds: e.started.elapsed().as_secs_f64(),
                held: e.held,
            })
            .collect();
        (running, s.recent.iter().rev().cloned().collect())
    }

    /// Blocks the calling guest thread while execution `id` may not run; returns the
    /// CPU limit in force.
    fn pass(&self, id: u64, fuel_used: u64) -> u32 {
        let mut s = self.lock();
        if let Some(e) = s.runs.iter_mut().find(|e| e.id == id) {
            e.fuel_used = fuel_used;
        }
        loop {
            let may = s.may_run(id);
            if let Some(e) = s.runs.iter_mut().find(|e| e.id == id) {
                e.held = !may;
            }
            if may {
                return s.decision.cpu_limit_percent;
            }
            // The timeout only guards against a missed wake-up; `apply` and a unit
            // leaving notify.
            s = match self.wake.wait_timeout(s, Duration::from_secs(1)) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn leave(&self, id: u64) {
        self.lock().runs.retain(|e| e.id != id);
        self.wake.notify_all();
    }
}

impl GateState {
    /// Running, among the first `cores` units, and the units up to this one fit the
    /// memory budget.
    fn may_run(&self, id: u64) -> bool {
        if !self.decision.running() {
            return false;
        }
        let mut memory = 0u64;
        for (i, e) in self.runs.iter().enumerate() {
            memory = memory.saturating_add(e.memory);
            if e.id == id {
                return i < self.decision.cores && memory <= self.decision.memory_budget;
            }
        }
        true // not registered: nothing to hold
    }
}

/// The [`sandbox::Pacer`] of one execution.
#[derive(Debug)]
pub struct UnitPacer {
    gate: Arc<Gate>,
    id: u64,
    /// Computing time in the current duty cycle.
    busy: Duration,
    /// When the guest last continued.
    resumed: Instant,
}

impl sandbox::Pacer for UnitPacer {
    fn pace(&mut self, fuel_used: u64) {
        self.busy += self.resumed.elapsed();
        let limit = self.gate.pass(self.id, fuel_used);
        if limit < 100 {
            // Compute `limit`% of each period: after busy ≥ limit·P, pause so that
            // busy / (busy + pause) = limit.
            let on = DUTY_PERIOD * limit / 100;
            if self.busy >= on {
                let pause = self.busy * (100 - limit) / limit.max(1);
                std::thread::sleep(pause.min(Duration::from_secs(1)));
                self.busy = Duration::ZERO;
            }
        } else {
            self.busy = Duration::ZERO;
        }
        self.resumed = Instant::now();
    }
}

impl Drop for UnitPacer {
    fn drop(&mut self) {
        self.gate.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::State;

    fn decision(running: bool, cores: usize, budget_mb: u64) -> Decision {
        Decision {
            state: if running {
                State::Running
            } else {
                State::Suspended(crate::policy::Reason::ByUser)
            },
            cores,
            cpu_limit_percent: 100,
            memory_budget: budget_mb << 20,
            user_active: false,
            other_cpu_percent: 0,
            hand_back: false,
        }
    }

    fn limits(memory_mb: u32) -> Limits {
        Limits {
            memory_mb,
            ..Limits::default()
        }
    }

    #[test]
    fn cores_and_memory_decide_which_units_run_oldest_first() {
        let gate = Arc::new(Gate::new(decision(true, 2, 1000)));
        let a = gate.pacer(UnitId(1), ProjectId(1), "a", &limits(400));
        let b = gate.pacer(UnitId(2), ProjectId(1), "b", &limits(400));
        let c = gate.pacer(UnitId(3), ProjectId(1), "c", &limits(100));
        let may = |p: &UnitPacer| gate.lock().may_run(p.id);
        assert!(may(&a) && may(&b) && !may(&c), "two cores");
        gate.apply(decision(true, 3, 1000));
        assert!(may(&c), "three cores, 900 MiB fit");
        gate.apply(decision(true, 3, 500));
        assert!(may(&a) && !may(&b) && !may(&c), "500 MiB: only the oldest");
        drop(a);
        assert!(may(&b) && may(&c), "a left: b and c fit");
        gate.apply(decision(false, 3, 1000));
        assert!(!may(&b) && !may(&c), "suspended");
    }
}
