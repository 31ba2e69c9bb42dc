//! Scheduler behaviour with time as an input: no clock, no sockets.

use super::*;
use protocol::{FailureKind, Identity};

const LEASE: u64 = 1_000;
const P: ProjectId = ProjectId(1);

fn worker(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

fn id(n: u8) -> WorkerId {
    worker(n).id()
}

fn project(units: u64, replication: u32, quorum: u32, max_replicas: u32) -> Project {
    Project {
        id: P,
        name: "p".into(),
        replication,
        quorum,
        max_replicas,
        limits: Limits::default(),
        module: Digest::of(b"m"),
        reducer: None,
        stats: ProjectStats {
            total: units,
            ..Default::default()
        },
        aggregate: Aggregate::Pending,
    }
}

/// A scheduler with one project of `units` units.
fn setup(units: u64, replication: u32, quorum: u32, max_replicas: u32) -> Scheduler {
    let mut s = Scheduler::new(LEASE);
    s.add_project(project(units, replication, quorum, max_replicas));
    for u in 0..units {
        s.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            replication,
            Vec::new(),
            0,
        );
    }
    s
}

fn claim(n: u8, unit: u64, output: &[u8]) -> Claim {
    Claim::sign(&worker(n), P, UnitId(unit), Digest::of(output), 42)
}

fn certify(
    s: &mut Scheduler,
    unit: u64,
    signers: &[u8],
    output: &[u8],
) -> Result<Option<Verified>, Error> {
    let cert = Certificate {
        unit: UnitId(unit),
        claims: signers.iter().map(|&n| claim(n, unit, output)).collect(),
    };
    let v = s.check_certificate(&cert, output)?;
    if let Some(v) = &v {
        s.mark_verified(UnitId(unit), v);
    }
    Ok(v)
}

#[test]
fn replicas_go_to_distinct_workers() {
    let mut s = setup(3, 2, 2, 5);
    let a = s.assign(id(1), 10, 0);
    assert_eq!(a.len(), 3, "one replica of each unit");
    assert!(
        s.assign(id(1), 10, 0).is_empty(),
        "never two replicas of a unit to one worker"
    );
    assert_eq!(s.assign(id(2), 10, 0).len(), 3);
    assert!(s.assign(id(3), 10, 0).is_empty(), "replication reached");
}

#[test]
fn an_expired_lease_is_reassigned_and_heartbeats_keep_leases_alive() {
    let mut s = setup(2, 1, 1, 5);
    let a = s.assign(id(1), 2, 0);
    assert_eq!(a.len(), 2);
    // Worker 1 keeps unit 0 alive but not unit 1.
    assert!(s.heartbeat(id(1), &[UnitId(0)], 900).is_empty());
    let changes = s.expire(1_500);
    assert_eq!(changes.len(), 1);
    let again = s.assign(id(2), 5, 1_500);
    assert_eq!(
        again.iter().map(|l| l.unit).collect::<Vec<_>>(),
        [UnitId(1)]
    );
    assert_eq!(
        s.heartbeat(id(1), &[UnitId(0), UnitId(1)], 1_600),
        [UnitId(1)],
        "unit 1 is no longer worker 1's"
    );
}

#[test]
fn a_certificate_verifies_once_and_credits_the_signers() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let v = certify(&mut s, 0, &[1, 2], b"out")
        .expect("valid")
        .expect("first");
    assert_eq!(v.signers.len(), 2);
    assert!(
        certify(&mut s, 0, &[2, 1], b"out")
            .expect("duplicate is fine")
            .is_none()
    );
    let p = s.project(P).expect("project");
    assert_eq!((p.stats.verified, p.stats.credit), (1, 84));
    assert!(p.finished());
}

#[test]
fn a_worker_that_never_held_the_unit_cannot_sign_for_it() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    assert!(certify(&mut s, 0, &[1, 3], b"out").is_err());
}

#[test]
fn a_dispute_adds_a_replica_and_the_honest_pair_wins() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let changes = s
        .dispute(UnitId(0), &[claim(1, 0, b"right"), claim(2, 0, b"wrong")])
        .expect("valid");
    assert!(changes.contains(&Change::Target {
        unit: UnitId(0),
        target: 3
    }));
    assert_eq!(s.assign(id(3), 1, 0).len(), 1, "third replica issued");
    let liar_and_honest = Certificate {
        unit: UnitId(0),
        claims: vec![claim(2, 0, b"wrong"), claim(3, 0, b"right")],
    };
    assert!(
        s.check_certificate(&liar_and_honest, b"right").is_err(),
        "the liar's claim does not match the output"
    );
    assert!(
        certify(&mut s, 0, &[1, 3], b"right")
            .expect("valid")
            .is_some()
    );
}

#[test]
fn endless_disagreement_fails_the_unit_at_max_replicas() {
    let mut s = setup(1, 2, 2, 3);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    s.dispute(UnitId(0), &[claim(1, 0, b"a"), claim(2, 0, b"b")])
        .expect("valid");
    s.assign(id(3), 1, 0);
    let claims = [claim(1, 0, b"a"), claim(2, 0, b"b"), claim(3, 0, b"c")];
    let changes = s.dispute(UnitId(0), &claims).expect("valid");
    assert!(
        changes.iter().any(
            |c| matches!(c, Change::UnitFailed { reason, .. } if reason.contains("no quorum"))
        )
    );
}

#[test]
fn forged_or_foreign_dispute_claims_are_rejected() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let mut forged = claim(2, 0, b"b");
    forged.fuel += 1;
    assert!(s.dispute(UnitId(0), &[claim(1, 0, b"a"), forged]).is_err());
    assert!(
        s.dispute(UnitId(0), &[claim(1, 0, b"a"), claim(9, 0, b"b")])
            .is_err()
    );
}

#[test]
fn a_quorum_of_identical_failures_fails_the_unit_with_the_reason() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let fuel = Failure::new(FailureKind::FuelExhausted, "used all fuel");
    let first = s
        .report_failure(id(1), UnitId(0), fuel.clone())
        .expect("leased");
    assert!(
        first
            .iter()
            .all(|c| !matches!(c, Change::UnitFailed { .. }))
    );
    let changes = s.report_failure(id(2), UnitId(0), fuel).expect("leased");
    assert!(changes.iter().any(
        |c| matches!(c, Change::UnitFailed { reason, .. } if reason.contains("fuel_exhausted"))
    ));
    assert_eq!(s.project(P).map(|p| p.stats.failed), Some(1));
    assert!(
        s.report_failure(id(3), UnitId(0), Failure::new(FailureKind::Trap, ""))
            .is_err(),
        "not leased"
    );
}

#[test]
fn a_returned_unit_goes_to_another_worker_without_counting_an_execution() {
    let mut s = setup(1, 1, 1, 1);
    s.assign(id(1), 1, 0);
    s.give_back(id(1), UnitId(0));
    assert_eq!(
        s.assign(id(2), 1, 0).len(),
        1,
        "max_replicas = 1 still allows the real execution"
    );
}

#[test]
fn leases_loaded_after_a_restart_get_a_fresh_deadline() {
    let mut s = Scheduler::new(LEASE);
    s.add_project(project(1, 1, 1, 3));
    s.add_unit(
        UnitId(0),
        P,
        UnitStatus::Pending,
        1,
        vec![(id(1), AssignmentState::Active, None)],
        10_000,
    );
    assert!(
        s.expire(10_500).is_empty(),
        "worker gets a full lease to check in"
    );
    assert_eq!(s.expire(11_001).len(), 1);
}
