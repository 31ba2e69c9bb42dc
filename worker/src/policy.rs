//! When and how much the worker computes: a sans-IO state machine. Readings of the machine
//! (user idle time, other programs' CPU load, battery, local time, memory) and the time
//! are inputs; [`Policy::step`] returns a [`Decision`]. It does no I/O and reads no clock;
//! `control` feeds it real readings, tests feed it fake ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::prefs::Prefs;

/// After other programs' load drops below `suspend_cpu_busy_percent`, it must stay below
/// this long before the worker runs again (so a flickering load does not flap it).
pub const CPU_CALM: Duration = Duration::from_secs(10);

/// One look at the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readings {
    /// Time since the user's last keyboard or mouse input; `None` where the platform
    /// cannot tell (no graphical session): counted as idle.
    pub user_idle: Option<Duration>,
    /// CPU used by programs other than this worker, in percent of all cores (0 to 100).
    pub other_cpu_percent: f32,
    /// Whether the machine runs on battery (false without a battery).
    pub on_battery: bool,
    /// Local time of day, minutes after midnight (0 to 1439).
    pub minute_of_day: u16,
    /// The machine's RAM in bytes.
    pub total_memory: u64,
}

impl Default for Readings {
    /// An idle desktop on AC at noon with 8 GiB.
    fn default() -> Self {
        Readings {
            user_idle: None,
            other_cpu_percent: 0.0,
            on_battery: false,
            minute_of_day: 12 * 60,
            total_memory: 8 << 30,
        }
    }
}

/// Why the worker is not computing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `fallow worker suspend`.
    ByUser,
    /// On battery and `run_on_battery` is false.
    OnBattery,
    /// Outside every `run_hours` window.
    OutsideHours,
    /// The user was active within `run_if_idle_minutes`.
    UserActive,
    /// Other programs use more than `suspend_cpu_busy_percent`.
    CpuBusy,
}

impl Reason {
    /// A sentence for `fallow worker status`.
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::ByUser => {
                "suspended by `fallow worker suspend` (resume with `fallow worker resume`)"
            }
            Reason::OnBattery => "on battery (run_on_battery = false)",
            Reason::OutsideHours => "outside the run_hours windows",
            Reason::UserActive => "the user is active (run_if_idle_minutes)",
            Reason::CpuBusy => "other programs are using the CPU (suspend_cpu_busy_percent)",
        }
    }
}

/// Run, or not and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum State {
    /// Compute.
    Running,
    /// Hold every guest where it is and lease nothing new.
    Suspended(Reason),
}

/// What the worker should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Run or suspend.
    pub state: State,
    /// Units that may run at once (≥ 1).
    pub cores: usize,
    /// Percentage of the time each guest thread may compute (1 to 100).
    pub cpu_limit_percent: u32,
    /// Declared memory (`memory_mb`) running units may add up to, in bytes.
    pub memory_budget: u64,
    /// Whether the user counts as active (the in-use memory limit applies).
    pub user_active: bool,
    /// Other programs' CPU load at this decision, whole percent of all cores (for the
    /// reason shown to others).
    #[serde(default)]
    pub other_cpu_percent: u32,
    /// Suspended for at least `suspend_hand_back_seconds`: the worker hands back the units
    /// it holds that have no result and no checkpoint, and stops renewing the leases of
    /// the checkpointed ones (kept only within their lease).
    #[serde(default)]
    pub hand_back: bool,
}

impl Decision {
    /// Whether guests may compute.
    pub fn running(&self) -> bool {
        self.state == State::Running
    }

    /// Why the worker is suspended, in words for the coordinator's operators and
    /// submitters (e.g. "other programs use 47 % of the CPUs"); `None` while running.
    pub fn reason_text(&self) -> Option<String> {
        let State::Suspended(reason) = self.state else {
            return None;
        };
        Some(match reason {
            Reason::ByUser => "suspended by its owner (`fallow worker suspend`)".to_string(),
            Reason::OnBattery => "on battery".to_string(),
            Reason::OutsideHours => "outside its run_hours".to_string(),
            Reason::UserActive => "its user is active".to_string(),
            Reason::CpuBusy => format!(
                "other programs use {} % of the CPUs",
                self.other_cpu_percent
            ),
        })
    }
}

/// The policy's memory of the past: the manual switch and the CPU-load hysteresis.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Guest threads the worker started (`--cores`).
    threads: usize,
    by_user: bool,
    /// Since when (ms) other programs' load has been below the threshold while we were
    /// suspended for it; `None` while it is above.
    cpu_calm_since: Option<u64>,
    cpu_busy: bool,
    /// Since when (ms) the worker has been suspended, for any reason; `None` while running.
    suspended_since: Option<u64>,
}

impl Policy {
    /// A policy for a worker with `threads` guest threads, not suspended.
    pub fn new(threads: usize) -> Self {
        Policy {
            threads: threads.max(1),
            by_user: false,
            cpu_calm_since: None,
            cpu_busy: false,
            suspended_since: None,
        }
    }

    /// `fallow worker suspend`: suspended until [`Policy::resume`], whatever the readings.
    pub fn suspend(&mut self) {
        self.by_user = true;
    }

    /// `fallow worker resume`: back to the automatic rules (which may still suspend).
    pub fn resume(&mut self) {
        self.by_user = false;
    }

    /// Whether `fallow worker suspend` is in force.
    pub fn suspended_by_user(&self) -> bool {
        self.by_user
    }

    /// The decision for the readings taken at `now_ms` (any monotonic milliseconds).
    pub fn step(&mut self, now_ms: u64, r: &Readings, prefs: &Prefs) -> Decision {
        // With run_if_idle_minutes = 0 the user still counts as active (for the memory
        // limit) within the default 3 minutes of their last input.
        let minutes = match prefs.run_if_idle_minutes {
            0 => 3,
            n => n,
        };
        let idle_needed = Duration::from_secs(u64::from(minutes) * 60);
        // Unknown idle time (headless) counts as idle.
        let user_active = r.user_idle.is_some_and(|idle| idle < idle_needed);
        self.track_cpu(now_ms, r.other_cpu_percent, prefs.suspend_cpu_busy_percent);
        let state = if self.by_user {
            State::Suspended(Reason::ByUser)
        } else if r.on_battery && !prefs.run_on_battery {
            State::Suspended(Reason::OnBattery)
        } else if !prefs.run_hours.is_empty()
            && !prefs.run_hours.iter().any(|w| w.contains(r.minute_of_day))
        {
            State::Suspended(Reason::OutsideHours)
        } else if prefs.run_if_idle_minutes > 0 && user_active {
            State::Suspended(Reason::UserActive)
        } else if self.cpu_busy {
            State::Suspended(Reason::CpuBusy)
        } else {
            State::Running
        };
        let hand_back = match state {
            State::Running => {
                self.suspended_since = None;
                false
            }
            State::Suspended(_) => {
                let since = *self.suspended_since.get_or_insert(now_ms);
                now_ms.saturating_sub(since)
                    >= u64::from(prefs.suspend_hand_back_seconds).saturating_mul(1000)
            }
        };
        let cores = match prefs.max_cores {
            0 => self.threads,
            n => (n as usize).min(self.threads),
        };
        let percent = if user_active {
            prefs.memory_in_use_percent
        } else {
            prefs.memory_idle_percent
        };
        Decision {
            state,
            cores,
            cpu_limit_percent: prefs.cpu_limit_percent.clamp(1, 100),
            memory_budget: (u128::from(r.total_memory) * u128::from(percent) / 100) as u64,
            user_active,
            other_cpu_percent: r.other_cpu_percent.clamp(0.0, 100.0).round() as u32,
            hand_back,
        }
    }

    /// Busy as soon as the load passes the threshold; calm again only after it stayed
    /// below for [`CPU_CALM`].
    fn track_cpu(&mut self, now_ms: u64, load: f32, threshold: u32) {
        if threshold == 0 {
            self.cpu_busy = false;
            self.cpu_calm_since = None;
            return;
        }
        if load > threshold as f32 {
            self.cpu_busy = true;
            self.cpu_calm_since = None;
        } else if self.cpu_busy {
            let since = *self.cpu_calm_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= CPU_CALM.as_millis() as u64 {
                self.cpu_busy = false;
                self.cpu_calm_since = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn idle_for(ms: u64) -> Readings {
        Readings {
            user_idle: Some(Duration::from_millis(ms)),
            ..Readings::default()
        }
    }

    /// Runs `steps` of (time, readings) through one policy, checking each state.
    fn check(prefs: &Prefs, steps: &[(u64, Readings, State)]) {
        let mut p = Policy::new(4);
        for (i, (now, r, want)) in steps.iter().enumerate() {
            let got = p.step(*now, r, prefs).state;
            assert_eq!(got, *want, "step {i} at {now} ms with {r:?}");
        }
    }

    #[test]
    fn it_waits_for_the_user_to_be_idle_three_minutes_and_stops_when_they_come_back() {
        use State::*;
        check(
            &Prefs::default(),
            &[
                (0, idle_for(0), Suspended(Reason::UserActive)),
                (MIN, idle_for(MIN), Suspended(Reason::UserActive)),
                (
                    3 * MIN - 1,
                    idle_for(3 * MIN - 1),
                    Suspended(Reason::UserActive),
                ),
                (3 * MIN, idle_for(3 * MIN), Running),
                (10 * MIN, idle_for(10 * MIN), Running),
                (10 * MIN + 1, idle_for(0), Suspended(Reason::UserActive)),
            ],
        );
    }

    #[test]
    fn a_headless_machine_counts_as_idle_and_zero_minutes_ignores_the_user() {
        let mut p = Policy::new(2);
        let d = p.step(0, &Readings::default(), &Prefs::default());
        assert_eq!(d.state, State::Running);
        assert!(!d.user_active);
        let prefs = Prefs {
            run_if_idle_minutes: 0,
            ..Prefs::default()
        };
        let d = p.step(1, &idle_for(0), &prefs);
        assert_eq!(d.state, State::Running);
        // The user is still active for the memory limit.
        assert!(d.user_active);
        assert_eq!(d.memory_budget, (8u64 << 30) / 2);
    }

    #[test]
    fn other_programs_load_suspends_at_once_and_resumes_after_ten_calm_seconds() {
        use State::*;
        let load = |pct: f32| Readings {
            other_cpu_percent: pct,
            ..Readings::default()
        };
        check(
            &Prefs::default(),
            &[
                (0, load(10.0), Running),
                (1_000, load(25.0), Running),
                (2_000, load(60.0), Suspended(Reason::CpuBusy)),
                (3_000, load(5.0), Suspended(Reason::CpuBusy)),
                (8_000, load(30.0), Suspended(Reason::CpuBusy)), // calm broken
                (9_000, load(5.0), Suspended(Reason::CpuBusy)),
                (18_999, load(5.0), Suspended(Reason::CpuBusy)),
                (19_000, load(5.0), Running),
            ],
        );
        let never = Prefs {
            suspend_cpu_busy_percent: 0,
            ..Prefs::default()
        };
        check(&never, &[(0, load(100.0), Running)]);
    }

    #[test]
    fn battery_hours_and_the_user_switch_suspend_with_their_own_reason() {
        use State::*;
        let battery = Readings {
            on_battery: true,
            ..Readings::default()
        };
        check(
            &Prefs::default(),
            &[(0, battery, Suspended(Reason::OnBattery))],
        );
        let allowed = Prefs {
            run_on_battery: true,
            ..Prefs::default()
        };
        check(&allowed, &[(0, battery, Running)]);

        let mut night = Prefs::default();
        night.set("run_hours", "22:00-06:00").expect("window");
        let at = |h: u16, m: u16| Readings {
            minute_of_day: h * 60 + m,
            ..Readings::default()
        };
        check(
            &night,
            &[
                (0, at(21, 59), Suspended(Reason::OutsideHours)),
                (1, at(22, 0), Running),
                (2, at(3, 0), Running),
                (3, at(6, 0), Suspended(Reason::OutsideHours)),
            ],
        );

        let mut p = Policy::new(1);
        p.suspend();
        assert_eq!(
            p.step(0, &battery, &Prefs::default()).state,
            Suspended(Reason::ByUser),
            "the user's switch wins over every other reason"
        );
        p.resume();
        assert_eq!(
            p.step(1, &Readings::default(), &Prefs::default()).state,
            Running
        );
    }

    #[test]
    fn a_worker_suspended_past_the_grace_hands_back_and_says_why() {
        let prefs = Prefs {
            suspend_hand_back_seconds: 60,
            ..Prefs::default()
        };
        let load = |pct: f32| Readings {
            other_cpu_percent: pct,
            ..Readings::default()
        };
        let mut p = Policy::new(2);
        let d = p.step(0, &load(5.0), &prefs);
        assert!(d.running() && !d.hand_back && d.reason_text().is_none());
        let d = p.step(1_000, &load(47.2), &prefs);
        assert_eq!(d.state, State::Suspended(Reason::CpuBusy));
        assert!(!d.hand_back, "not within the grace");
        assert_eq!(
            d.reason_text().as_deref(),
            Some("other programs use 47 % of the CPUs")
        );
        assert!(!p.step(60_999, &load(47.0), &prefs).hand_back);
        assert!(p.step(61_000, &load(47.0), &prefs).hand_back);
        // Still suspended during the calm period; running again starts the grace anew
        // next time.
        assert!(p.step(62_000, &load(1.0), &prefs).hand_back);
        let d = p.step(72_000, &load(1.0), &prefs);
        assert!(d.running() && !d.hand_back);
        p.suspend();
        let d = p.step(73_000, &load(1.0), &prefs);
        assert!(!d.hand_back);
        assert!(
            d.reason_text()
                .is_some_and(|r| r.contains("fallow worker suspend"))
        );
        assert!(p.step(133_000, &load(1.0), &prefs).hand_back);
        // 0: at once.
        let now = Prefs {
            suspend_hand_back_seconds: 0,
            ..Prefs::default()
        };
        let mut p = Policy::new(1);
        p.suspend();
        assert!(p.step(0, &Readings::default(), &now).hand_back);
    }

    #[test]
    fn throttles_cores_cpu_and_memory_from_the_prefs() {
        let mut p = Policy::new(4);
        let prefs = Prefs {
            max_cores: 2,
            cpu_limit_percent: 50,
            ..Prefs::default()
        };
        let d = p.step(0, &Readings::default(), &prefs);
        assert_eq!((d.cores, d.cpu_limit_percent), (2, 50));
        assert_eq!(d.memory_budget, (8u64 << 30) * 9 / 10);
        let more = Prefs {
            max_cores: 64,
            ..Prefs::default()
        };
        assert_eq!(
            p.step(1, &Readings::default(), &more).cores,
            4,
            "never more than --cores"
        );
    }
}
