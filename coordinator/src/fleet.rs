//! What the fleet is doing, in numbers and words: each worker's run state as its
//! heartbeats report it (running, suspended and why, idle) or offline, the counts that
//! `fallow status` and the dashboard show ("2 running, 1 suspended: other programs use
//! 47 % of the CPUs"), and the sentences for units no online worker may take. Sans-IO:
//! plain values in, plain values out; `service` feeds it the worker table and the time.

use std::collections::BTreeMap;

use protocol::UnitId;

use crate::scheduler::Waiting;

/// Longest suspension reason kept from a worker (longer ones are cut).
pub const MAX_REASON_CHARS: usize = 160;

/// A worker's state as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunState {
    /// Online and computing units.
    Running,
    /// Online, held by its owner's preferences (the reason says which).
    Suspended,
    /// Online with nothing to compute (or an older worker that does not say).
    #[default]
    Idle,
    /// Not heard from within a lease.
    Offline,
}

impl RunState {
    /// `running`, `suspended`, `idle` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Suspended => "suspended",
            RunState::Idle => "idle",
            RunState::Offline => "offline",
        }
    }
}

/// What a worker's last heartbeat said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// Running, suspended or idle (never offline: that is the coordinator's call).
    pub state: RunState,
    /// Why it is suspended, in words; empty otherwise.
    pub reason: String,
}

impl Reported {
    /// Parses a heartbeat's `run_state` and `state_reason` (untrusted: an unknown state
    /// reads as idle, the reason is kept only for a suspended worker, without control
    /// characters and cut to [`MAX_REASON_CHARS`]).
    pub fn from_wire(state: &str, reason: &str) -> Reported {
        let state = match state {
            "running" => RunState::Running,
            "suspended" => RunState::Suspended,
            _ => RunState::Idle,
        };
        let reason = if state == RunState::Suspended {
            let clean: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_CHARS)
                .collect();
            if clean.trim().is_empty() {
                "no reason given".to_string()
            } else {
                clean
            }
        } else {
            String::new()
        };
        Reported { state, reason }
    }

    /// The state shown for a worker last heard from at `last_seen`: offline when silent
    /// for longer than `lease_ms`, otherwise what it reported.
    pub fn at(&self, last_seen: u64, now: u64, lease_ms: u64) -> RunState {
        if now.saturating_sub(last_seen) > lease_ms {
            RunState::Offline
        } else {
            self.state
        }
    }
}

/// Online workers by state, with the suspension reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Online and computing.
    pub running: u32,
    /// Online and suspended.
    pub suspended: u32,
    /// Online with nothing to do.
    pub idle: u32,
    /// Suspension reasons with how many workers gave each, most common first.
    pub reasons: Vec<(String, u32)>,
}

impl Fleet {
    /// Counts `workers` (their state now and their report).
    pub fn count<'a>(workers: impl Iterator<Item = (RunState, &'a Reported)>) -> Fleet {
        let mut fleet = Fleet::default();
        let mut reasons: BTreeMap<&str, u32> = BTreeMap::new();
        for (state, reported) in workers {
            match state {
                RunState::Running => fleet.running += 1,
                RunState::Idle => fleet.idle += 1,
                RunState::Offline => {}
                RunState::Suspended => {
                    fleet.suspended += 1;
                    *reasons.entry(reported.reason.as_str()).or_default() += 1;
                }
            }
        }
        let mut reasons: Vec<(String, u32)> = reasons
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        fleet.reasons = reasons;
        fleet
    }

    /// Whether any online worker computes.
    pub fn computing(&self) -> bool {
        self.running > 0
    }

    /// "2 running, 1 suspended: other programs use 47 % of the CPUs"; "no workers online"
    /// when there are none.
    pub fn sentence(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.running, "running"),
            (self.suspended, "suspended"),
            (self.idle, "idle"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            return "no workers online".to_string();
        }
        let mut out = parts.join(", ");
        if !self.reasons.is_empty() {
            let reasons: Vec<String> = self
                .reasons
                .iter()
                .map(|(r, n)| {
                    if self.reasons.len() > 1 || self.suspended > 1 && *n < self.suspended {
                        format!("{r} ({n})")
                    } else {
                        r.clone()
                    }
                })
                .collect();
            out.push_str(": ");
            out.push_str(&reasons.join("; "));
        }
        out
    }
}

/// At most this many units are named per project; one more sentence counts the rest.
pub const WAITING_NAMED: usize = 3;

/// The sentences for one project's units that wait for a worker of another account.
pub fn waiting_sentences(units: &[&Waiting]) -> Vec<String> {
    let mut out: Vec<String> = units
        .iter()
        .take(WAITING_NAMED)
        .map(|w| waiting_sentence(w.unit, w.accounts))
        .collect();
    if units.len() > WAITING_NAMED {
        out.push(format!(
            "and {} more units wait for the same reason",
            units.len() - WAITING_NAMED
        ));
    }
    out
}

/// "unit 7 needs a worker of another account: all 3 online accounts have run it".
pub fn waiting_sentence(unit: UnitId, accounts: usize) -> String {
    let all = match accounts {
        1 => "the only online account has run it".to_string(),
        n => format!("all {n} online accounts have run it"),
    };
    format!("unit {} needs a worker of another account: {all}", unit.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_untrusted_input_and_go_offline_after_a_lease() {
        let r = Reported::from_wire("suspended", "other programs use 47 % of the CPUs\n");
        assert_eq!(r.state, RunState::Suspended);
        assert_eq!(r.reason, "other programs use 47 % of the CPUs");
        assert_eq!(Reported::from_wire("running", "ignored").reason, "");
        assert_eq!(Reported::from_wire("bogus", "").state, RunState::Idle);
        assert_eq!(Reported::from_wire("", "").state, RunState::Idle);
        let long = Reported::from_wire("suspended", &"x".repeat(1000));
        assert_eq!(long.reason.chars().count(), MAX_REASON_CHARS);
        assert_eq!(
            Reported::from_wire("suspended", " ").reason,
            "no reason given"
        );
        assert_eq!(r.at(1_000, 11_000, 10_000), RunState::Suspended);
        assert_eq!(r.at(1_000, 11_001, 10_000), RunState::Offline);
    }

    #[test]
    fn the_fleet_is_counted_and_said_in_words() {
        let check = |workers: &[(RunState, &str)], want: &str| {
            let reports: Vec<(RunState, Reported)> = workers
                .iter()
                .map(|(s, r)| {
                    (
                        *s,
                        Reported {
                            state: *s,
                            reason: r.to_string(),
                        },
                    )
                })
                .collect();
            let fleet = Fleet::count(reports.iter().map(|(s, r)| (*s, r)));
            assert_eq!(fleet.sentence(), want, "{workers:?}");
        };
        let cpu = "other programs use 47 % of the CPUs";
        check(&[], "no workers online");
        check(&[(RunState::Offline, "")], "no workers online");
        check(
            &[
                (RunState::Running, ""),
                (RunState::Running, ""),
                (RunState::Suspended, cpu),
            ],
            "2 running, 1 suspended: other programs use 47 % of the CPUs",
        );
        check(
            &[(RunState::Suspended, cpu), (RunState::Suspended, cpu)],
            "2 suspended: other programs use 47 % of the CPUs",
        );
        check(
            &[
                (RunState::Suspended, cpu),
                (RunState::Suspended, "on battery"),
                (RunState::Idle, ""),
            ],
            "2 suspended, 1 idle: on battery (1); other programs use 47 % of the CPUs (1)",
        );
    }

    #[test]
    fn waiting_units_are_named_a_few_at_a_time() {
        let w = |u: u64| Waiting {
            unit: UnitId(u),
            project: protocol::ProjectId(1),
            accounts: 3,
        };
        let all: Vec<Waiting> = (1..=5).map(w).collect();
        let refs: Vec<&Waiting> = all.iter().collect();
        let s = waiting_sentences(&refs);
        assert_eq!(
            s[0],
            "unit 1 needs a worker of another account: all 3 online accounts have run it"
        );
        assert_eq!(s.len(), WAITING_NAMED + 1);
        assert_eq!(s[3], "and 2 more units wait for the same reason");
        assert_eq!(
            waiting_sentence(UnitId(7), 1),
            "unit 7 needs a worker of another account: the only online account has run it"
        );
    }
}
