//! Signed projects: the submitter's key signs every unit with the module, limits and
//! manifest; the coordinator refuses a project that is not signed as sent, workers run only
//! what verifies and only signers they accept, and a coordinator that changes an input
//! gets no result out of any worker.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;
use protocol::manifest::ProjectSpec;

use crate::harness::{Cluster, fallow, n, project, sum_outputs};

/// `fallow key --key PATH`: the public key, made on first use.
fn public_key(path: &Path) -> String {
    let out = fallow()
        .args(["key", "--key"])
        .arg(path)
        .output()
        .expect("fallow key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64, "{key:?}");
    key
}

/// Primes below 200,000 in 10 units: 17,984.
fn primes(c: &Cluster, name: &str) -> std::path::PathBuf {
    project(
        c.dir.path(),
        name,
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[inputs]\nsweep = { from = 0, to = 200_000, step = 20_000 }\n",
    )
}

#[test]
fn workers_run_only_projects_signed_by_keys_they_accept() {
    let mut c = Cluster::start(30);
    let alice_file = c.dir.path().join("alice.key");
    let alice = public_key(&alice_file);
    // Made once, read back the same.
    assert_eq!(public_key(&alice_file), alice);
    let bob = public_key(&c.dir.path().join("bob.key"));
    assert_ne!(alice, bob);

    let manifest = primes(&c, "primes-by-alice");
    let id = c.submit_signed(&manifest, &alice_file).expect("accepted");
    assert_eq!(
        c.status(id).expect("status")["submitter"].as_str(),
        Some(alice.as_str())
    );

    // A worker that runs only Bob's projects is not even leased Alice's units.
    c.start_worker(&["--account", "carol", "--submitter-key", &bob]);
    std::thread::sleep(Duration::from_secs(4));
    let status = c.status(id).expect("status");
    assert_eq!(n(&status, "executions"), 0, "{status}");

    // One worker pinned to Alice, one that takes any signed project: both run it.
    c.start_worker(&["--account", "dave", "--submitter-key", &alice]);
    c.start_worker(&["--account", "erin"]);
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (10, 0),
        "{status}"
    );
    assert_eq!(sum_outputs(&c.results(id)), (17_984, 10));
    let accounts = c.accounts();
    assert!(
        accounts
            .iter()
            .all(|a| a.0 != "carol" || (a.1, a.2) == (0, 0)),
        "the worker pinned to Bob ran Alice's units: {accounts:?}"
    );
    // The unpinned worker recorded the new signer; the pinned one had nothing to record.
    let known = std::fs::read_to_string(c.worker_dir(2).join("known_submitters"))
        .expect("known_submitters");
    assert_eq!(known.lines().count(), 1, "{known}");
    assert!(
        known.starts_with(&format!("{alice} http://127.0.0.1:")),
        "{known}"
    );
    assert!(c.worker_log(2).contains("submitter key not seen before"));
    assert!(!c.worker_dir(1).join("known_submitters").exists());

    // Straight to the API: an unsigned project, and a signed one with an input changed
    // after signing, are refused whole, naming what is wrong.
    let mut spec = protocol::manifest::load(&manifest).expect("manifest");
    spec.name = "raw".into();
    let unsigned = raw_submit(&c, spec.clone()).expect_err("unsigned");
    assert!(unsigned.contains("not signed"), "{unsigned}");
    spec.sign(&protocol::Identity::from_seed([3; 32]));
    spec.units[7].1.push(b'0');
    let tampered = raw_submit(&c, spec).expect_err("tampered");
    assert!(
        tampered.contains("does not verify") && tampered.contains(&format!("{:?}", "140000")),
        "{tampered}"
    );
    let all = c.cli(&["status", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).lines().count(),
        1,
        "nothing half-created"
    );
}

#[test]
fn a_coordinator_that_changes_an_input_gets_no_result() {
    let mut c = Cluster::start_with(30, &["--fault", "tamper-input"], |_| {});
    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob"]);
    let id = c.submit(&primes(&c, "primes-tampered")).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (0, 10),
        "{status}"
    );
    let failed = std::fs::read_to_string(c.results(id).join("failed.txt")).expect("failed.txt");
    assert_eq!(failed.lines().count(), 10, "{failed}");
    assert!(
        failed.lines().all(|l| l.contains("bad_signature")),
        "{failed}"
    );
    for w in 0..2 {
        let log = c.worker_log(w);
        assert!(log.contains("refusing to run a unit"), "worker {w}: {log}");
    }
    assert!(
        c.accounts().iter().all(|a| a.2 == 0),
        "credit for tampered units"
    );
}

/// SubmitProject without the CLI; the refusal's message on error.
fn raw_submit(c: &Cluster, spec: ProjectSpec) -> Result<u64, String> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = pb::coordinator_client::CoordinatorClient::connect(c.url.clone())
            .await
            .map_err(|e| e.to_string())?
            .max_encoding_message_size(64 << 20);
        let mut request = tonic::Request::new(pb::SubmitProjectRequest::from(spec));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", c.token).parse().expect("header"),
        );
        client
            .submit_project(request)
            .await
            .map(|r| r.into_inner().project_id)
            .map_err(|s| s.message().to_string())
    })
}
