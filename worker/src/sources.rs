//! Where the policy's readings come from on a real machine, and the lowest OS priority for
//! guest threads. Tests use their own [`Sources`] instead.
//!
//! - User idle time: `system-idle-time` (X11 screensaver extension on Linux, the native
//!   calls on macOS and Windows). Where it cannot tell — no X display, a headless server, a
//!   Wayland session — the machine counts as idle, and the log says so once.
//! - Other programs' CPU load: sysinfo's total CPU use minus this process's, refreshed
//!   once per reading (readings are at least [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`]
//!   apart, as sysinfo needs).
//! - Battery: `starship-battery`; no battery means on AC.
//! - Local time of day: jiff, with the system's time zone.

use std::time::Duration;

use crate::policy::Readings;

/// Something that reads the machine.
pub trait Sources: Send {
    /// One reading. Called about once a second, never more often than every 200 ms.
    fn read(&mut self) -> Readings;
}

/// The real machine.
pub struct SystemSources {
    system: Option<sysinfo::System>,
    pid: Option<sysinfo::Pid>,
    battery: Option<starship_battery::Manager>,
    said_no_idle: bool,
    said_no_battery: bool,
}

impl std::fmt::Debug for SystemSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSources").finish_non_exhaustive()
    }
}

impl SystemSources {
    /// Opens the system's sources; those that cannot be opened read as "idle, on AC, no
    /// load" (logged).
    pub fn new() -> Self {
        let system = match sysinfo::System::new() {
            Ok(mut s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                Some(s)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read CPU load and memory ({e}); suspend_cpu_busy_percent is not applied"
                );
                None
            }
        };
        SystemSources {
            system,
            pid: sysinfo::get_current_pid().ok(),
            battery: starship_battery::Manager::new().ok(),
            said_no_idle: false,
            said_no_battery: false,
        }
    }

    fn idle(&mut self) -> Option<Duration> {
        match system_idle_time::get_idle_time() {
            Ok(d) => Some(d),
            Err(e) => {
                if !self.said_no_idle {
                    self.said_no_idle = true;
                    tracing::info!(
                        "cannot tell when the user was last active ({e}): no graphical session \
                         (e.g. a headless server), so this machine counts as idle and \
                         run_if_idle_minutes does not apply"
                    );
                }
                None
            }
        }
    }

    fn on_battery(&mut self) -> bool {
        let Some(manager) = &self.battery else {
            return false;
        };
        match manager.batteries() {
            Ok(batteries) => batteries.flatten().any(|b| {
                matches!(
                    b.state(),
                    starship_battery::State::Discharging | starship_battery::State::Empty
                )
            }),
            Err(e) => {
                if !self.said_no_battery {
                    self.said_no_battery = true;
                    tracing::info!("cannot read the battery ({e}); counting as on AC");
                }
                false
            }
        }
    }
}

impl Default for SystemSources {
    fn default() -> Self {
        Self::new()
    }
}

impl Sources for SystemSources {
    fn read(&mut self) -> Readings {
        let user_idle = self.idle();
        let on_battery = self.on_battery();
        let (other_cpu_percent, total_memory) = match &mut self.system {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                let total = s.global_cpu_usage();
                let own = match self.pid {
                    Some(pid) => {
                        s.refresh_processes_specifics(
                            sysinfo::ProcessesToUpdate::Some(&[pid]),
                            false,
                            sysinfo::ProcessRefreshKind::nothing().with_cpu(),
                        );
                        // Percent of one core; the global figure is of all cores.
                        let cores = s.cpus().len().max(1) as f32;
                        s.process(pid).map_or(0.0, |p| p.cpu_usage() / cores)
                    }
                    None => 0.0,
                };
                ((total - own).clamp(0.0, 100.0), s.total_memory())
            }
            None => (0.0, Readings::default().total_memory),
        };
        let minute_of_day = {
            let now = jiff::Zoned::now();
            (now.hour() as u16) * 60 + now.minute() as u16
        };
        Readings {
            user_idle,
            other_cpu_percent,
            on_battery,
            minute_of_day,
            total_memory,
        }
    }
}

/// Puts the calling (guest) thread at the lowest OS priority: `SCHED_IDLE` on Linux (it
/// runs only when nothing else wants the CPU), the lowest priority elsewhere (nice 19 on
/// other Unixes, `THREAD_PRIORITY_LOWEST` on Windows). Failure is logged, not fatal.
pub fn lowest_priority() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let result = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Idle,
        ),
    );
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let result = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
    if let Err(e) = result {
        tracing::warn!("cannot lower the guest thread's priority: {e:?}");
    }
}
