//! Manifest text → `Manifest` → `ProjectSpec::validate`, without touching files.
//!
//! `protocol::manifest::load` reads the manifest, its modules and its input directory from
//! disk, so it is not fuzzed directly. This target runs its pure half, `Manifest::parse`
//! and `Manifest::to_spec` (the same parsing and defaults `load` uses), and stands in
//! fixed bytes for the files: the parsing, the sweep arithmetic, the unit-name rules and
//! the structural validation all run on hostile input. Nothing may panic; accepted values
//! must keep the documented bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::Limits;
use protocol::manifest::{
    MAX_REPLICAS, MAX_UNITS, Manifest, ProjectSpec, Source, check_unit_name, linspace_units,
    sweep_units, table_units,
};

/// Sweeps that would produce more units than this are only checked for the "too many" path:
/// a valid sweep of up to a million units is correct but takes ~100 ms to build, which
/// would make the fuzzer spend its time allocating strings instead of exploring.
const SWEEP_BUILD_CAP: i128 = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Unit-name rules on the raw text too: names come from file names and sweeps.
    check_name(text);

    let Ok(manifest) = Manifest::parse(text) else {
        return;
    };
    let _ = manifest.limits.validate();

    let units = match manifest.inputs.source() {
        // A directory's files are read by `load`; stand in two well-formed units.
        Ok(Source::Dir(_)) => vec![("a".to_string(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
        Ok(Source::Sweep(sweep)) => {
            let count = if sweep.step > 0 {
                (sweep.to as i128 - sweep.from as i128 + sweep.step as i128 - 1)
                    / sweep.step as i128
            } else {
                0
            };
            if count > SWEEP_BUILD_CAP && count <= MAX_UNITS as i128 {
                return;
            }
            match sweep_units(sweep) {
                Ok(units) => {
                    check_sweep(sweep.from, sweep.to, &units);
                    units
                }
                Err(_) => return,
            }
        }
        Ok(Source::Linspace(l)) => {
            if l.count as i128 > SWEEP_BUILD_CAP {
                return;
            }
            match linspace_units(l) {
                Ok(units) => units,
                Err(_) => return,
            }
        }
        // The table's file is read by `load`: the fuzzer's own bytes stand in for it.
        Ok(Source::Table(_)) => match table_units(data) {
            Ok(units) => units,
            Err(_) => return,
        },
        Err(_) => return,
    };
    // Stand-in modules; the defaults are `manifest::load`'s own.
    let module = b"\0asm\x01\0\0\0".to_vec();
    let reducer = manifest.reduce.as_ref().map(|_| module.clone());
    let spec = manifest.to_spec(module, reducer, units, text.to_string());
    if spec.validate().is_ok() {
        check_accepted(&spec);
    }
});

/// An accepted unit name is a safe single file name.
fn check_name(name: &str) {
    if check_unit_name(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= 200, "{name:?}");
        assert!(!name.starts_with('.') && !name.contains(['/', '\\', '\0']), "{name:?}");
        assert!(name != "aggregate" && name != "failed.txt");
    }
}

/// A sweep covers [from, to) exactly, in order, with names that are valid unit names.
fn check_sweep(from: i64, to: i64, units: &[(String, Vec<u8>)]) {
    assert!(!units.is_empty() && units.len() <= MAX_UNITS);
    let mut expect = from;
    for (name, input) in units {
        assert!(check_unit_name(name).is_ok(), "sweep unit name {name:?} refused");
        assert_eq!(name, &expect.to_string());
        let text = std::str::from_utf8(input).expect("sweep input is ASCII");
        let (a, b) = text
            .trim_end()
            .split_once(' ')
            .expect("sweep input is \"a b\\n\"");
        assert_eq!(a.parse::<i64>().ok(), Some(expect));
        let b: i64 = b.parse().expect("b is an integer");
        assert!(b > expect && b <= to, "{from} {to}: {text:?}");
        expect = b;
    }
    assert_eq!(expect, to, "the last unit stops at `to`");
}

/// What `validate` accepted is within the documented bounds.
fn check_accepted(spec: &ProjectSpec) {
    // README: "name: required: 1-100 printable characters" (it is shown in status tables,
    // logs and the dashboard, so no control characters such as newlines).
    assert!(spec.name.len() <= 100, "accepted a {}-byte name", spec.name.len());
    assert!(!spec.name.chars().any(char::is_control), "accepted name {:?}", spec.name);
    assert!((1..=MAX_REPLICAS).contains(&spec.replication));
    assert!(spec.quorum >= 1 && spec.quorum <= spec.replication);
    assert!(spec.max_replicas >= spec.replication && spec.max_replicas <= MAX_REPLICAS);
    assert!(spec.error_bound > 0.0 && spec.error_bound <= 0.5);
    let Limits {
        fuel,
        memory_mb,
        wall_seconds,
        max_output_bytes,
        ..
    } = spec.limits;
    assert!((1_000..=1_000_000_000_000_000).contains(&fuel));
    assert!((1..=4096).contains(&memory_mb));
    assert!((1..=86_400).contains(&wall_seconds));
    assert!((1..=64 << 20).contains(&max_output_bytes));
    assert!(!spec.units.is_empty() && spec.units.len() <= MAX_UNITS);
}
