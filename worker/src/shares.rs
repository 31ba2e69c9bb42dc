//! Resource shares: which attached coordinator the next free core works for.
//!
//! Each attachment has a share (BOINC's default: 100 each). A core that comes free asks
//! [`Shares::pick`], which names the attachment with the least *normalised use* — the
//! core-seconds it has used (finished units, plus the time running units have run so far)
//! divided by its share — among those not waiting out a "no work" answer. Over time each
//! busy attachment gets cores in proportion to its share (stride scheduling by
//! core-seconds). An attachment coming back from having no work is lifted to the least
//! normalised use of the busy ones, so it gets its share from then on, not a burst of
//! everything it "missed".
//!
//! [`prefetch`] is the work buffer's policy: how many units to hold ready beyond the
//! running ones, and when a buffered unit is overdue and goes back.
//!
//! Sans-IO: no clock, no I/O; time is an argument.

#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// The share state of every attachment.
#[derive(Debug, Clone)]
pub struct Shares {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    share: f64,
    /// Core-seconds of finished units, plus the lift after idling: what the choice uses.
    used: f64,
    /// Core-seconds of finished units really spent (reported).
    spent: f64,
    /// It answered "no work" since it last ran: lift it when it starts again.
    idled: bool,
    /// Start instants of the units running now.
    running: Vec<Instant>,
    /// No work until then (the coordinator said so).
    idle_until: Option<Instant>,
}

impl Entry {
    fn use_at(&self, now: Instant) -> f64 {
        self.used
            + self
                .running
                .iter()
                .map(|s| now.saturating_duration_since(*s).as_secs_f64())
                .sum::<f64>()
    }

    fn normalised(&self, now: Instant) -> f64 {
        self.use_at(now) / self.share
    }

    fn waiting(&self, now: Instant) -> bool {
        self.idle_until.is_some_and(|t| t > now)
    }
}

/// A running unit's ticket, returned by [`Shares::start`] and given back to
/// [`Shares::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    attachment: usize,
    started: Instant,
}

impl Shares {
    /// One entry per attachment, with its share (each at least 1).
    pub fn new(shares: &[u32]) -> Self {
        Shares {
            entries: shares
                .iter()
                .map(|&s| Entry {
                    share: f64::from(s.max(1)),
                    used: 0.0,
                    spent: 0.0,
                    idled: false,
                    running: Vec::new(),
                    idle_until: None,
                })
                .collect(),
        }
    }

    /// The attachment a free core should work for now; `None` while every one is waiting
    /// out a "no work" answer (see [`Shares::next_wake`]).
    pub fn pick(&self, now: Instant) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.waiting(now))
            .min_by(|(_, a), (_, b)| a.normalised(now).total_cmp(&b.normalised(now)))
            .map(|(i, _)| i)
    }

    /// A core starts working for `attachment` (asking it for a unit, then running it).
    pub fn start(&mut self, attachment: usize, now: Instant) -> Ticket {
        let floor = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != attachment && !e.running.is_empty())
            .map(|(_, e)| e.normalised(now))
            .min_by(f64::total_cmp);
        if let Some(e) = self.entries.get_mut(attachment) {
            if e.idled
                && e.running.is_empty()
                && let Some(floor) = floor
            {
                // Idle meanwhile: no credit for the time it had nothing to do.
                e.used = e.used.max(floor * e.share);
            }
            e.running.push(now);
            e.idle_until = None;
            e.idled = false;
        }
        Ticket {
            attachment,
            started: now,
        }
    }

    /// The core is free again: charge the time since [`Shares::start`].
    pub fn finish(&mut self, ticket: Ticket, now: Instant) {
        if let Some(e) = self.entries.get_mut(ticket.attachment) {
            if let Some(at) = e.running.iter().position(|s| *s == ticket.started) {
                e.running.swap_remove(at);
            }
            let took = now.saturating_duration_since(ticket.started).as_secs_f64();
            e.used += took;
            e.spent += took;
        }
    }

    /// The attachment had no work (or could not be reached): free the core without
    /// charging it, and skip the attachment until `until`.
    pub fn no_work(&mut self, ticket: Ticket, until: Instant) {
        if let Some(e) = self.entries.get_mut(ticket.attachment) {
            if let Some(at) = e.running.iter().position(|s| *s == ticket.started) {
                e.running.swap_remove(at);
            }
            e.idle_until = Some(until);
            e.idled = true;
        }
    }

    /// When the first waiting attachment may be asked again.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| e.idle_until.filter(|t| *t > now))
            .min()
    }

    /// Core-seconds each attachment really used so far (running units included).
    #[cfg(test)]
    pub fn used(&self, now: Instant) -> Vec<Duration> {
        self.entries
            .iter()
            .map(|e| Duration::from_secs_f64(e.use_at(now) - e.used + e.spent))
            .collect()
    }
}

/// The work buffer's policy. A buffered unit must start within the lease the coordinator
/// granted with it (its deadline): the buffer takes only as many units as this
/// attachment's cores can start within half that time at the measured unit duration, at
/// most `cap`; a unit still waiting when starting it could no longer finish within the
/// lease is handed back early.
pub mod prefetch {
    use std::time::Duration;

    /// Units to keep buffered for one attachment. `unit` is the measured wall time of one of
    /// its units (`None` before the first: buffer nothing yet), `cores` the cores its share
    /// gives it (fractional), `lease` its deadline for starting a unit.
    pub fn target(unit: Option<Duration>, cores: f64, lease: Duration, cap: usize) -> usize {
        let Some(unit) = unit else { return 0 };
        if cores <= 0.0 || unit.is_zero() {
            return cap.min(1);
        }
        // The k-th buffered unit (1-based) starts after about k * unit / cores.
        let fits = (lease.as_secs_f64() / 2.0 * cores / unit.as_secs_f64()).floor();
        (fits as usize).min(cap)
    }

    /// Whether a unit buffered for `waited` can no longer start and finish (taking `unit`)
    /// within `lease`: hand it back now, while someone else still can.
    pub fn overdue(waited: Duration, unit: Option<Duration>, lease: Duration) -> bool {
        waited + unit.unwrap_or_default() > lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_holds_only_what_can_start_before_the_deadline() {
        use prefetch::{overdue, target};
        let s = Duration::from_secs;
        let lease = s(120);
        // Nothing measured yet: no buffer.
        assert_eq!(target(None, 2.0, lease, 4), 0);
        // 10 s units on 2 cores: 12 would start within 60 s; capped at 4.
        assert_eq!(target(Some(s(10)), 2.0, lease, 4), 4);
        // 50 s units on a quarter of one core: none can start within 60 s.
        assert_eq!(target(Some(s(50)), 0.25, lease, 4), 0);
        // 40 s units on 2 cores: 3 fit.
        assert_eq!(target(Some(s(40)), 2.0, lease, 8), 3);
        // A unit that waited 100 s and takes 30 s cannot make a 120 s deadline.
        assert!(overdue(s(100), Some(s(30)), lease));
        assert!(!overdue(s(60), Some(s(30)), lease));
    }

    /// Simulates `cores` cores over `seconds` with units of `unit` seconds for every
    /// attachment that `has_work` says has work at that time; returns core-seconds each.
    fn simulate(
        shares: &[u32],
        cores: usize,
        unit: &[f64],
        seconds: f64,
        has_work: impl Fn(usize, f64) -> bool,
    ) -> Vec<f64> {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut s = Shares::new(shares);
        // (free at, ticket)
        let mut busy: Vec<(f64, Option<Ticket>)> = vec![(0.0, None); cores];
        loop {
            let (core, &(t, ticket)) = busy
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
                .expect("cores");
            if t >= seconds {
                break;
            }
            if let Some(ticket) = ticket {
                s.finish(ticket, at(t));
            }
            match s.pick(at(t)) {
                Some(i) => {
                    let ticket = s.start(i, at(t));
                    if has_work(i, t) {
                        busy[core] = (t + unit[i], Some(ticket));
                    } else {
                        s.no_work(ticket, at(t + 1.0));
                        busy[core] = (t, None);
                    }
                }
                None => {
                    let wake = s.next_wake(at(t)).expect("someone wakes");
                    busy[core] = ((wake - t0).as_secs_f64(), None);
                }
            }
        }
        s.used(at(seconds))
            .iter()
            .map(Duration::as_secs_f64)
            .collect()
    }

    fn ratio(used: &[f64]) -> f64 {
        used[0] / used[1]
    }

    #[test]
    fn busy_attachments_split_cores_by_share() {
        for (shares, cores, unit, want) in [
            (&[300, 100][..], 2, &[1.0, 1.0][..], 3.0),
            (&[300, 100], 1, &[1.0, 1.0], 3.0),
            (&[300, 100], 4, &[0.3, 2.0], 3.0),
            (&[100, 100], 2, &[5.0, 0.5], 1.0),
            (&[100, 300], 8, &[1.0, 1.0], 1.0 / 3.0),
        ] {
            let used = simulate(shares, cores, unit, 2000.0, |_, _| true);
            let got = ratio(&used);
            assert!(
                (got / want - 1.0).abs() < 0.05,
                "shares {shares:?} cores {cores} units {unit:?}: {used:?} (ratio {got})"
            );
        }
    }

    #[test]
    fn an_attachment_without_work_leaves_its_cores_to_the_others() {
        let used = simulate(&[300, 100], 2, &[1.0, 1.0], 1000.0, |i, _| i == 1);
        assert!(used[0] == 0.0 && used[1] > 1900.0, "{used:?}");
    }

    #[test]
    fn coming_back_from_idle_gets_the_share_not_a_burst() {
        // Attachment 0 has no work for the first 500 s, then plenty. Over the next 500 s it
        // gets its 3/4, not all cores until it "catches up".
        let used = simulate(&[300, 100], 2, &[1.0, 1.0], 1000.0, |i, t| {
            i == 1 || t >= 500.0
        });
        let late = simulate(&[300, 100], 2, &[1.0, 1.0], 500.0, |_, _| true);
        assert!(
            used[0] > 0.9 * late[0] && used[0] < 1.1 * late[0],
            "{used:?} vs {late:?}"
        );
        assert!(used[1] > 1000.0 + 0.9 * late[1], "{used:?}");
    }

    #[test]
    fn nobody_is_picked_while_all_wait_and_the_wake_is_known() {
        let t0 = Instant::now();
        let mut s = Shares::new(&[100, 100]);
        let a = s.start(0, t0);
        s.no_work(a, t0 + Duration::from_secs(5));
        let b = s.start(1, t0);
        s.no_work(b, t0 + Duration::from_secs(2));
        assert_eq!(s.pick(t0), None);
        assert_eq!(s.next_wake(t0), Some(t0 + Duration::from_secs(2)));
        assert_eq!(s.pick(t0 + Duration::from_secs(3)), Some(1));
        assert_eq!(
            s.used(t0),
            vec![Duration::ZERO, Duration::ZERO],
            "no work costs nothing"
        );
    }
}
