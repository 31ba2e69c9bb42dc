//! Hostile guests fail with the right reason while an honest project beside them completes;
//! modules and manifests outside the contract are refused at submit.

use std::time::Duration;

use crate::harness::{Cluster, n, project, sum_outputs};

#[test]
fn hostile_guests_fail_with_their_reason_and_an_honest_project_completes() {
    let mut c = Cluster::start(30);
    for _ in 0..3 {
        c.start_worker(&[]);
    }
    let root = c.dir.path().to_path_buf();
    let honest = c
        .submit(&project(
            &root,
            "honest",
            artifacts::PRIMES,
            None,
            "[inputs]\nsweep = { from = 0, to = 100_000, step = 10_000 }\n",
        ))
        .expect("honest project accepted");
    let limits = "[limits]\nfuel = 200_000_000\nmemory_mb = 16\nwall_seconds = 30\nmax_output_bytes = 4096\n";
    let cases: [(&str, &[u8], &str); 5] = [
        ("spin", artifacts::hostile::SPIN, "fuel_exhausted"),
        ("membomb", artifacts::hostile::MEMBOMB, "memory_exhausted"),
        ("recurse", artifacts::hostile::RECURSE, "stack_overflow"),
        ("flood", artifacts::hostile::FLOOD, "output_too_large"),
        ("openfile", artifacts::hostile::OPENFILE, "exit_code"),
    ];
    let mut ids = Vec::new();
    for (name, wasm, reason) in cases {
        let body = format!("{limits}[inputs]\nsweep = {{ from = 0, to = 1, step = 1 }}\n");
        let id = c
            .submit(&project(&root, name, wasm, None, &body))
            .expect("hostile project accepted");
        ids.push((name, id, reason));
    }
    let status = c.wait_finished(honest, Duration::from_secs(240));
    assert_eq!(n(&status, "verified"), 10);
    assert_eq!(sum_outputs(&c.results(honest)), (9_592, 10));
    for (name, id, reason) in ids {
        let status = c.wait_finished(id, Duration::from_secs(240));
        assert_eq!(
            (n(&status, "failed"), n(&status, "verified")),
            (1, 0),
            "{name}: {status}"
        );
        let failed = std::fs::read_to_string(c.results(id).join("failed.txt")).expect("failed.txt");
        assert!(failed.starts_with("0\t"), "{name}: {failed}");
        assert!(
            failed.contains(reason),
            "{name} should fail with {reason}: {failed}"
        );
    }
}

#[test]
fn modules_and_manifests_outside_the_contract_are_refused_at_submit() {
    let c = Cluster::start(30);
    let root = c.dir.path().to_path_buf();
    let sweep = "[inputs]\nsweep = { from = 0, to = 10, step = 1 }\n";
    let cases: [(&str, &[u8], &str, &str); 4] = [
        (
            "badimport",
            artifacts::hostile::BADIMPORT,
            sweep,
            "launch_missiles",
        ),
        (
            "notwasm",
            b"#!/bin/sh\necho hello\n",
            sweep,
            "not a WebAssembly module",
        ),
        (
            "badquorum",
            artifacts::PRIMES,
            "replication = 2\nquorum = 3\n[inputs]\nsweep = { from = 0, to = 10, step = 1 }\n",
            "quorum",
        ),
        (
            "typo",
            artifacts::PRIMES,
            "replicaton = 2\n[inputs]\nsweep = { from = 0, to = 10, step = 1 }\n",
            "replicaton",
        ),
    ];
    for (name, wasm, body, expected) in cases {
        let manifest = project(&root, name, wasm, None, body);
        let err = c
            .submit(&manifest)
            .expect_err(&format!("{name} was accepted"));
        assert!(
            err.contains(expected),
            "{name}: {err:?} does not name {expected:?}"
        );
    }
    let listed = c.cli(&["status", "--json"]);
    assert!(listed.status.success());
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "nothing half-created"
    );
}
