//! Project control: what the submitter of a project may do to it while it runs, and the
//! state a project is in because of it.
//!
//! Every control call (`ControlProject`, `ExtendProject`) is authenticated like a worker
//! call ([`crate::call`]), but by the project's **submitter key**: the request names the
//! key, its `fallow-call` header is that key's signature over the method and the encoded
//! request, and the coordinator refuses any key other than the one that signed the
//! project. Units added by `ExtendProject` are signed exactly like submitted ones
//! ([`crate::provenance::UnitTerms`], under the project's terms digest).

use std::fmt;

/// A project's control state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Units are leased as usual.
    #[default]
    Active,
    /// No new leases for its units; leases already out may still finish and verify.
    Paused,
    /// Final: no more leases, unsettled units ended as cancelled, verified results kept.
    Cancelled,
}

impl State {
    /// Stable number for the store.
    pub fn code(self) -> i64 {
        match self {
            State::Active => 0,
            State::Paused => 1,
            State::Cancelled => 2,
        }
    }

    /// Inverse of [`State::code`]; `None` for a code this version does not know.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(State::Active),
            1 => Some(State::Paused),
            2 => Some(State::Cancelled),
            _ => None,
        }
    }

    /// One word: `active`, `paused`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Paused => "paused",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses [`State::as_str`]; an empty string is `active` (a coordinator from before
    /// project control).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "active" => Some(State::Active),
            "paused" => Some(State::Paused),
            "cancelled" => Some(State::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `ControlProject` asks for (adding units is `ExtendProject`, which carries them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// End the project: unsettled units are cancelled, verified results stay.
    Cancel,
    /// Stop leasing its units until [`Action::Resume`].
    Pause,
    /// Lease its units again.
    Resume,
    /// Failed units go back to pending with their failure history cleared.
    Retry,
    /// Run the reducer again now.
    Reduce,
}

impl Action {
    /// The verb, as the CLI subcommand spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Retry => "retry",
            Action::Reduce => "reduce",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a control call did, in numbers (the CLI turns them into a sentence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    /// The project's state afterwards.
    pub state: State,
    /// Units the call changed: cancelled, sent back to pending (retry) or added (extend).
    pub units: u64,
    /// Units still pending (not leased) afterwards.
    pub pending: u64,
    /// Units leased when the call was made (they may still finish and verify).
    pub in_progress: u64,
}

/// Units a submitter adds to its project (`ExtendProject`), checked like submitted units.
#[derive(Clone, PartialEq, Eq)]
pub struct Extension {
    /// The project.
    pub project: crate::ProjectId,
    /// Who signed the units (must be the project's submitter).
    pub key: crate::SubmitterKey,
    /// `(name, input)` per unit.
    pub units: Vec<(String, Vec<u8>)>,
    /// `signatures[i]` signs `units[i]` ([`crate::provenance::UnitTerms`]).
    pub signatures: Vec<[u8; 64]>,
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Extension(project {}, {:?}, {} units)",
            self.project,
            self.key,
            self.units.len()
        )
    }
}

impl Extension {
    /// The submission rules for units, for a project that already has `existing` units:
    /// at least one unit, at most [`crate::manifest::MAX_UNITS`] in the project
    /// afterwards, valid names each given once, at most
    /// [`crate::manifest::MAX_INPUT_BYTES`] of input each, one signature per unit.
    pub fn validate(&self, existing: u64) -> Result<(), String> {
        use crate::manifest::{MAX_INPUT_BYTES, MAX_UNITS};
        if self.units.is_empty() {
            return Err("no units to add: the manifest produced none".into());
        }
        let after = existing.saturating_add(self.units.len() as u64);
        if after > MAX_UNITS as u64 {
            return Err(format!(
                "{} more units would make {after}, at most {MAX_UNITS} per project",
                self.units.len()
            ));
        }
        if self.signatures.len() != self.units.len() {
            return Err(format!(
                "{} unit signatures for {} units",
                self.signatures.len(),
                self.units.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (unit, input) in &self.units {
            crate::manifest::check_unit_name(unit)?;
            if !names.insert(unit.as_str()) {
                return Err(format!("unit name {unit:?} appears twice"));
            }
            if input.len() > MAX_INPUT_BYTES {
                return Err(format!(
                    "unit {unit:?} has {} bytes of input, at most {MAX_INPUT_BYTES}",
                    input.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extension(units: &[&str]) -> Extension {
        Extension {
            project: crate::ProjectId(1),
            key: crate::SubmitterKey::of(&crate::Identity::from_seed([3; 32])),
            units: units
                .iter()
                .map(|n| (n.to_string(), b"1\n".to_vec()))
                .collect(),
            signatures: units.iter().map(|_| [0; 64]).collect(),
        }
    }

    #[test]
    fn extensions_follow_the_submission_rules() {
        assert!(extension(&["a", "b"]).validate(10).is_ok());
        let e = extension(&[]).validate(0).expect_err("empty");
        assert!(e.contains("no units"), "{e}");
        let e = extension(&["a", "a"]).validate(0).expect_err("twice");
        assert!(e.contains("\"a\" appears twice"), "{e}");
        let e = extension(&["a"])
            .validate(crate::manifest::MAX_UNITS as u64)
            .expect_err("too many");
        assert!(e.contains("per project"), "{e}");
        let mut short = extension(&["a", "b"]);
        short.signatures.pop();
        assert!(short.validate(0).is_err());
    }

    #[test]
    fn states_round_trip_through_codes_and_words() {
        for s in [State::Active, State::Paused, State::Cancelled] {
            assert_eq!(State::from_code(s.code()), Some(s));
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse(""), Some(State::Active));
        assert_eq!(State::from_code(9), None);
    }
}
