//! Per-project sandbox limits: what one execution of one unit may use.

use serde::Deserialize;

/// Limits applied to every execution of a project's units. All are enforced by the worker's
/// sandbox; `fuel` is also the credit unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// wasmtime fuel per execution (roughly one unit per wasm instruction). Deterministic: the
    /// same module and input stop at the same point on every machine. Default 10^10
    /// (a few seconds of compute); at least 1,000, at most 10^15.
    #[serde(deserialize_with = "whole::u64")]
    pub fuel: u64,
    /// Linear memory cap in MiB. Default 64; 1 to 4096. Growing past it is a
    /// "memory exhausted" failure.
    #[serde(deserialize_with = "whole::u32")]
    pub memory_mb: u32,
    /// Wall-clock watchdog in seconds, a safety net behind fuel for slow machines. Default 60;
    /// 1 to 86,400. Not deterministic, so a timeout fails the execution but never counts as
    /// a result.
    #[serde(deserialize_with = "whole::u32")]
    pub wall_seconds: u32,
    /// Largest stdout in bytes. Default 1 MiB; 1 to 64 MiB. More is an
    /// "output too large" failure.
    #[serde(deserialize_with = "whole::u64")]
    pub max_output_bytes: u64,
    /// Canonicalize NaN bit patterns (deterministic float code whatever the CPU). Costs up to
    /// 4x on float-heavy code, so off by default; integer code and non-NaN floats are
    /// bit-exact without it.
    pub nan_canonicalization: bool,
    /// Largest checkpoint a guest may save with `fallow::checkpoint_save`, in bytes. Default
    /// 16 MiB; 1 KiB to 1 GiB. Saving more fails the execution with
    /// `checkpoint_too_large` (deterministic: every replica saves the same bytes). Only
    /// modules that import the checkpoint API use it; a worker keeps one checkpoint per
    /// running unit on disk.
    #[serde(deserialize_with = "whole::u64")]
    pub max_checkpoint_bytes: u64,
}

/// Whole-number limits that say how to write them when given a float (`fuel = 1e18` is a
/// TOML float, and serde's own "invalid type: floating point" names no fix).
mod whole {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("must not be negative (got {v})")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            let written = if v.fract() == 0.0 && (0.0..1e20).contains(&v) {
                // Exact: a whole f64 below 1e20 prints as its integer digits.
                format!(", e.g. {}", grouped(&format!("{v:.0}")))
            } else {
                String::new()
            };
            Err(E::custom(format!(
                "must be a whole number written as an integer, not the float {v:e}: TOML reads                  `1e18` and `1.5` as floats; write the digits{written} (`_` separators are allowed)"
            )))
        }
    }

    /// `1000000` as `1_000_000`.
    fn grouped(digits: &str) -> String {
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push('_');
            }
            out.push(c);
        }
        out
    }

    pub(super) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub(super) fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = d.deserialize_any(Whole)?;
        u32::try_from(v)
            .map_err(|_| D::Error::custom(format!("must be at most {} (got {v})", u32::MAX)))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            memory_mb: 64,
            wall_seconds: 60,
            max_output_bytes: 1 << 20,
            nan_canonicalization: false,
            max_checkpoint_bytes: 16 << 20,
        }
    }
}

/// Hard bounds, checked at submit and again when a worker receives an assignment.
pub const FUEL_RANGE: (u64, u64) = (1_000, 1_000_000_000_000_000);
/// Bounds of `memory_mb`.
pub const MEMORY_MB_RANGE: (u32, u32) = (1, 4096);
/// Bounds of `wall_seconds`.
pub const WALL_SECONDS_RANGE: (u32, u32) = (1, 86_400);
/// Bounds of `max_output_bytes`.
pub const MAX_OUTPUT_RANGE: (u64, u64) = (1, 64 << 20);
/// Bounds of `max_checkpoint_bytes`.
pub const MAX_CHECKPOINT_RANGE: (u64, u64) = (1 << 10, 1 << 30);

impl Limits {
    /// Checks every field against its bounds; the error names the key and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        fn within<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            (lo, hi): (T, T),
        ) -> Result<(), String> {
            if v < lo || v > hi {
                return Err(format!(
                    "[limits].{key} must be between {lo} and {hi} (got {v})"
                ));
            }
            Ok(())
        }
        within("fuel", self.fuel, FUEL_RANGE)?;
        within("memory_mb", self.memory_mb, MEMORY_MB_RANGE)?;
        within("wall_seconds", self.wall_seconds, WALL_SECONDS_RANGE)?;
        within("max_output_bytes", self.max_output_bytes, MAX_OUTPUT_RANGE)?;
        within(
            "max_checkpoint_bytes",
            self.max_checkpoint_bytes,
            MAX_CHECKPOINT_RANGE,
        )?;
        Ok(())
    }
}
