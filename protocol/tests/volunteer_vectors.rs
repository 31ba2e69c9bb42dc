//! Vectors for the browser worker (`coordinator/assets/volunteer/claim.js`): claim seals
//! and signatures, rendezvous boards, submit ranks and the submitter's unit signatures,
//! computed here by `protocol`'s own functions and kept in
//! `coordinator/assets/volunteer/test/fixtures/protocol-vectors.json`, which the node tests
//! (`test/claim.test.mjs`) check the JavaScript against byte for byte.
//!
//! ed25519 signatures are deterministic, so a JavaScript signature equal to the one here
//! (made from the same seed over the bytes it lays out itself) is one `protocol` verifies.
//!
//! This test fails when the fixture is stale. Regenerate it with
//! `FALLOW_WRITE_VECTORS=1 cargo test -p protocol --test volunteer_vectors` and review the
//! diff.

use std::fmt::Write as _;
use std::path::PathBuf;

use protocol::provenance::UnitTerms;
use protocol::rendezvous;
use protocol::{Claim, Digest, Identity, Limits, ProjectId, UnitId, WorkerId};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../coordinator/assets/volunteer/test/fixtures/protocol-vectors.json")
}

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

fn key(n: u8) -> WorkerId {
    Identity::from_seed(seed(n)).id()
}

/// `worker::gossip::submit_rank`: our position among the claimants as rendezvous hashing
/// ranks them for the unit (the worker crate defines it over `rendezvous::boards`).
fn submit_rank(project: ProjectId, unit: UnitId, me: WorkerId, workers: &[WorkerId]) -> usize {
    rendezvous::boards(project, unit, workers, workers.len())
        .iter()
        .position(|w| *w == me)
        .unwrap_or(workers.len())
}

/// (seed, project, unit, output, fuel, first salt byte).
type ClaimCase = (u8, u64, u64, &'static [u8], u64, u8);

fn hexes(keys: &[WorkerId]) -> String {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", hex::encode(k.0)))
        .collect();
    format!("[{}]", list.join(", "))
}

fn vectors() -> String {
    let mut out = String::from("{\n");

    // Seeds 0..=11 and their public keys (WebCrypto imports the seed as a PKCS#8 key).
    out.push_str("  \"keys\": [\n");
    let keys: Vec<String> = (0..12u8)
        .map(|n| {
            format!(
                "    {{ \"seed\": {n}, \"public\": \"{}\" }}",
                hex::encode(key(n).0)
            )
        })
        .collect();
    out.push_str(&keys.join(",\n"));
    out.push_str("\n  ],\n");

    // Claims: seal and signature for fixed salts, across u64 edge values.
    out.push_str("  \"claims\": [\n");
    let cases: [ClaimCase; 5] = [
        (1, 3, 9, b"42\n", 1000, 7),
        (2, 1, 0, b"", 0, 0),
        (
            3,
            u64::MAX,
            (1 << 63) + 5,
            b"many bytes of output\n",
            u64::MAX,
            255,
        ),
        (
            4,
            1 << 53,
            (1 << 53) + 1,
            &[0, 1, 2, 3],
            123_456_789_012,
            42,
        ),
        (11, 77, 12345, b"x", 1, 1),
    ];
    let mut lines = Vec::new();
    for (s, project, unit, output, fuel, salt_byte) in cases {
        let salt: [u8; 32] = std::array::from_fn(|i| salt_byte.wrapping_add(i as u8));
        let claim = Claim::sign_with_salt(
            &Identity::from_seed(seed(s)),
            ProjectId(project),
            UnitId(unit),
            Digest::of(output),
            fuel,
            salt,
        );
        assert!(claim.verify().is_ok());
        lines.push(format!(
            "    {{ \"seed\": {s}, \"project\": \"{project}\", \"unit\": \"{unit}\", \"output\": \"{}\", \
             \"digest\": \"{}\", \"fuel\": \"{fuel}\", \"worker\": \"{}\", \"salt\": \"{}\", \
             \"seal\": \"{}\", \"signature\": \"{}\" }}",
            hex::encode(output),
            hex::encode(claim.digest.0),
            hex::encode(claim.worker.0),
            hex::encode(salt),
            hex::encode(claim.seal()),
            hex::encode(claim.signature),
        ));
    }
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ],\n");

    // Rendezvous boards over members 0..10 (and a duplicate), and submit ranks.
    out.push_str("  \"boards\": [\n");
    let mut members: Vec<WorkerId> = (0..10u8).map(key).collect();
    members.push(key(3)); // a duplicate is counted once
    let mut lines = Vec::new();
    for (project, unit, k, n) in [
        (1u64, 1u64, 2usize, 11usize),
        (1, 2, 2, 11),
        (7, 1 << 40, 3, 11),
        (u64::MAX, u64::MAX, 2, 11),
        (2, 5, 2, 1),
        (2, 5, 2, 0),
        (3, 8, 20, 11),
    ] {
        let chosen = rendezvous::boards(ProjectId(project), UnitId(unit), &members[..n], k);
        let mut line = String::new();
        let _ = write!(
            line,
            "    {{ \"project\": \"{project}\", \"unit\": \"{unit}\", \"k\": {k}, \"members\": {}, \"boards\": {} }}",
            hexes(&members[..n]),
            hexes(&chosen)
        );
        lines.push(line);
    }
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ],\n");

    out.push_str("  \"ranks\": [\n");
    let claimants: Vec<WorkerId> = [4u8, 1, 9, 6].into_iter().map(key).collect();
    let mut lines = Vec::new();
    for (project, unit) in [(1u64, 2u64), (5, 77), (9, 1 << 50)] {
        let ranks: Vec<String> = claimants
            .iter()
            .chain([key(11)].iter())
            .map(|me| submit_rank(ProjectId(project), UnitId(unit), *me, &claimants).to_string())
            .collect();
        lines.push(format!(
            "    {{ \"project\": \"{project}\", \"unit\": \"{unit}\", \"claimants\": {}, \"stranger\": \"{}\", \"ranks\": [{}] }}",
            hexes(&claimants),
            hex::encode(key(11).0),
            ranks.join(", ")
        ));
    }
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ],\n");

    // The submitter's unit signatures (protocol::provenance::UnitTerms), by seed 9.
    out.push_str("  \"units\": [\n");
    let submitter = Identity::from_seed(seed(9));
    let mut lines = Vec::new();
    let limits = [
        Limits::default(),
        Limits {
            fuel: 1_000_000_000_000_000,
            memory_mb: 4096,
            wall_seconds: 86_400,
            max_output_bytes: 64 << 20,
            nan_canonicalization: true,
            max_checkpoint_bytes: 1 << 30,
        },
        Limits {
            fuel: 1000,
            memory_mb: 1,
            wall_seconds: 1,
            max_output_bytes: 1,
            nan_canonicalization: false,
            max_checkpoint_bytes: 1 << 10,
        },
    ];
    let names = ["primes-0001", "ünïcode ✓", ""];
    let inputs: [&[u8]; 3] = [b"1000 2000\n", b"", &[0xff; 300]];
    for i in 0..3 {
        let l = limits[i];
        let terms = UnitTerms {
            terms: Digest::of(format!("terms {i}").as_bytes()),
            module: Digest::of(format!("module {i}").as_bytes()),
            limits: l,
            quorum: [2u32, 1, 7][i],
            name: names[i],
            input: inputs[i],
            data: None,
        };
        let signature = terms.sign(&submitter);
        assert!(
            terms
                .verify(
                    protocol::provenance::SubmitterKey::of(&submitter),
                    &signature
                )
                .is_ok()
        );
        lines.push(format!(
            "    {{ \"terms\": \"{}\", \"module\": \"{}\", \"limits\": {{ \"fuel\": \"{}\", \"memory_mb\": {}, \
             \"wall_seconds\": {}, \"max_output_bytes\": \"{}\", \"nan_canonicalization\": {}, \
             \"max_checkpoint_bytes\": \"{}\" }}, \"quorum\": {}, \"name\": \"{}\", \"input\": \"{}\", \
             \"submitter\": \"{}\", \"signature\": \"{}\" }}",
            hex::encode(terms.terms.0),
            hex::encode(terms.module.0),
            l.fuel,
            l.memory_mb,
            l.wall_seconds,
            l.max_output_bytes,
            l.nan_canonicalization,
            l.max_checkpoint_bytes,
            terms.quorum,
            names[i],
            hex::encode(inputs[i]),
            hex::encode(submitter.id().0),
            hex::encode(signature),
        ));
    }
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[test]
fn the_browser_workers_vectors_are_current() {
    let fresh = vectors();
    let path = fixture();
    if std::env::var_os("FALLOW_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &fresh).expect("write the vectors");
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        kept == fresh,
        "{} is stale: `protocol` computes other claims, boards or unit signatures than the \
         browser worker was checked against. Regenerate it with FALLOW_WRITE_VECTORS=1 cargo \
         test -p protocol --test volunteer_vectors, review the diff and run node --test \
         coordinator/assets/volunteer/test/",
        path.display()
    );
}
