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
        adaptive: false,
        error_bound: protocol::manifest::DEFAULT_ERROR_BOUND,
        signer: None,
        data: Default::default(),
        control: Default::default(),
    }
}

/// A scheduler with one project of `units` units.
fn setup(units: u64, replication: u32, quorum: u32, max_replicas: u32) -> Scheduler {
    let mut s = Scheduler::new(LEASE, 7);
    s.add_project(project(units, replication, quorum, max_replicas));
    for u in 0..units {
        s.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            replication,
            quorum,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    s
}

/// Leases as a list of unit ids.
fn units(a: Assigned) -> Vec<UnitId> {
    a.leases.iter().map(|l| l.unit).collect()
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
    match s.submit(&cert, Some(output))?.verdict {
        Verdict::Verified(v) => {
            s.mark_verified(UnitId(unit), &v);
            Ok(Some(v))
        }
        Verdict::Recorded | Verdict::AlreadyVerified => Ok(None),
    }
}

fn dispute(s: &mut Scheduler, unit: u64, claims: &[Claim]) -> Result<Vec<Change>, Error> {
    let cert = Certificate {
        unit: UnitId(unit),
        claims: claims.to_vec(),
    };
    Ok(s.submit(&cert, None)?.changes)
}

#[test]
fn replicas_go_to_distinct_workers() {
    let mut s = setup(3, 2, 2, 5);
    let a = units(s.assign(id(1), 10, 0));
    assert_eq!(a.len(), 3, "one replica of each unit");
    assert!(
        units(s.assign(id(1), 10, 0)).is_empty(),
        "never two replicas of a unit to one worker"
    );
    assert_eq!(units(s.assign(id(2), 10, 0)).len(), 3);
    assert!(
        units(s.assign(id(3), 10, 0)).is_empty(),
        "replication reached"
    );
}

#[test]
fn an_expired_lease_is_reassigned_and_heartbeats_keep_leases_alive() {
    let mut s = setup(2, 1, 1, 5);
    let a = units(s.assign(id(1), 2, 0));
    assert_eq!(a.len(), 2);
    // Worker 1 keeps unit 0 alive but not unit 1.
    assert!(s.heartbeat(id(1), &[UnitId(0)], 900).is_empty());
    let changes = s.expire(1_500);
    assert_eq!(changes.len(), 1);
    let again = units(s.assign(id(2), 5, 1_500));
    assert_eq!(again, [UnitId(1)]);
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
fn a_late_certificate_for_a_verified_unit_is_still_checked() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    certify(&mut s, 0, &[1, 2], b"out")
        .expect("valid")
        .expect("first");
    // An honest replica holder submitting late is told "already verified"...
    assert!(
        certify(&mut s, 0, &[2], b"out")
            .expect("late but valid")
            .is_none()
    );
    // ...a claim for another unit, or a forged signature, is refused though the unit is
    // done (settled units keep no replica holders, so a stranger's valid claim is only
    // told "already verified").
    let moved = Certificate {
        unit: UnitId(0),
        claims: vec![claim(1, 1, b"out")],
    };
    assert!(s.submit(&moved, Some(b"out")).is_err());
    let mut forged = claim(1, 0, b"out");
    forged.fuel += 1;
    let cert = Certificate {
        unit: UnitId(0),
        claims: vec![forged],
    };
    assert!(s.submit(&cert, Some(b"out")).is_err());
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
    let changes =
        dispute(&mut s, 0, &[claim(1, 0, b"right"), claim(2, 0, b"wrong")]).expect("valid");
    assert!(changes.contains(&Change::Target {
        unit: UnitId(0),
        target: 3
    }));
    assert_eq!(
        units(s.assign(id(3), 1, 0)).len(),
        1,
        "third replica issued"
    );
    let v = certify(&mut s, 0, &[3], b"right")
        .expect("valid")
        .expect("worker 3 completes the honest pair with the vote already held");
    assert!(
        !v.signers.contains(&id(2)),
        "the liar's claim is not in the certificate"
    );
    assert_eq!(s.trust(id(2), P).map(|t| t.offences), Some(1));
}

#[test]
fn endless_disagreement_fails_the_unit_at_max_replicas() {
    let mut s = setup(1, 2, 2, 3);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let (a, b) = (claim(1, 0, b"a"), claim(2, 0, b"b"));
    dispute(&mut s, 0, &[a.clone(), b.clone()]).expect("valid");
    s.assign(id(3), 1, 0);
    let claims = [a, b, claim(3, 0, b"c")];
    let changes = dispute(&mut s, 0, &claims).expect("valid");
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
    assert!(dispute(&mut s, 0, &[claim(1, 0, b"a"), forged]).is_err());
    assert!(dispute(&mut s, 0, &[claim(1, 0, b"a"), claim(9, 0, b"b")]).is_err());
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
        units(s.assign(id(2), 1, 0)).len(),
        1,
        "max_replicas = 1 still allows the real execution"
    );
}

#[test]
fn handing_back_a_unit_verified_meanwhile_changes_nothing() {
    // A worker shutting down hands back what it still holds, including a unit it ran and
    // voted on that its peers' certificate has verified meanwhile: its replica stays as
    // it was and the execution still counts.
    let mut s = setup(1, 2, 2, 4);
    assert_eq!(units(s.assign(id(1), 1, 0)), vec![UnitId(0)]);
    assert_eq!(units(s.assign(id(2), 1, 0)), vec![UnitId(0)]);
    let cert = certify(&mut s, 0, &[1, 2], b"out");
    assert!(matches!(cert, Ok(Some(_))), "{cert:?}");
    assert_eq!(s.project(P).map(|p| p.stats.executions), Some(2));
    let changes = s.give_back(id(1), UnitId(0));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(
        s.project(P).map(|p| (p.stats.executions, p.stats.verified)),
        Some((2, 1))
    );
}

#[test]
fn workers_that_handed_a_unit_back_can_take_it_again() {
    // Two replicas wanted, and only two workers: both hand the unit back (a work buffer
    // that could not start it in time), and then both must still be able to run it.
    let mut s = setup(1, 2, 2, 4);
    assert_eq!(units(s.assign(id(1), 1, 0)), vec![UnitId(0)]);
    assert_eq!(units(s.assign(id(2), 1, 0)), vec![UnitId(0)]);
    s.give_back(id(1), UnitId(0));
    s.give_back(id(2), UnitId(0));
    assert_eq!(units(s.assign(id(1), 1, 10)), vec![UnitId(0)]);
    // Not twice at once.
    assert!(units(s.assign(id(1), 1, 10)).is_empty());
    assert_eq!(units(s.assign(id(2), 1, 10)), vec![UnitId(0)]);
    let cert = certify(&mut s, 0, &[1, 2], b"out");
    assert!(matches!(cert, Ok(Some(_))), "{cert:?}");
}

#[test]
fn a_small_fleet_says_which_units_wait_for_another_account_and_hand_backs_never_strand_one() {
    // Three workers of three accounts, replication = quorum = 3: every account must run
    // every unit.
    let accounts = ["a", "b", "c"];
    let online: HashSet<&str> = accounts.iter().copied().collect();
    let fleet = |s: &mut Scheduler| {
        for (n, a) in (1..=3).zip(accounts) {
            s.register(id(n), &info(a, None));
        }
    };
    // A worker-side failure reported as the unit's failure used up that account's turn:
    // the unit wants a third replica that no online account may take, and says so.
    let mut s = setup(1, 3, 3, 6);
    fleet(&mut s);
    for n in 1..=3 {
        assert_eq!(units(s.assign(id(n), 1, 0)), vec![UnitId(0)]);
    }
    assert!(s.waiting(&online).is_empty(), "every replica is running");
    let bad = Failure::new(FailureKind::BadModule, "No such file or directory");
    s.report_failure(id(3), UnitId(0), bad).expect("leased");
    for n in 1..=3 {
        assert!(units(s.assign(id(n), 1, 10)).is_empty());
    }
    assert_eq!(
        s.waiting(&online),
        vec![Waiting {
            unit: UnitId(0),
            project: P,
            accounts: 3
        }]
    );
    // With a fourth account online it no longer waits for ever.
    let four: HashSet<&str> = ["a", "b", "c", "d"].into_iter().collect();
    assert!(s.waiting(&four).is_empty());

    // The same trouble handed back instead: the worker stays eligible, takes the unit
    // again, and the three accounts verify it.
    let mut s = setup(1, 3, 3, 6);
    fleet(&mut s);
    for n in 1..=3 {
        assert_eq!(units(s.assign(id(n), 1, 0)), vec![UnitId(0)]);
    }
    s.give_back(id(3), UnitId(0));
    assert!(s.waiting(&online).is_empty());
    assert_eq!(units(s.assign(id(3), 1, 10)), vec![UnitId(0)]);
    let cert = certify(&mut s, 0, &[1, 2, 3], b"out");
    assert!(matches!(cert, Ok(Some(_))), "{cert:?}");
}

#[test]
fn a_worker_at_its_limit_of_unfinished_units_is_told_so() {
    let mut s = setup(10, 2, 2, 4);
    let first = s.assign(id(1), UNFINISHED_BASE, 0);
    assert_eq!(first.leases.len(), UNFINISHED_BASE);
    assert_eq!(first.capped, None);
    let next = s.assign(id(1), 1, 1);
    assert!(next.leases.is_empty());
    assert_eq!(next.capped, Some(UNFINISHED_BASE), "no work, and why");
    // Another worker has room.
    assert_eq!(s.assign(id(2), 1, 1).capped, None);
}

#[test]
fn leases_loaded_after_a_restart_get_a_fresh_deadline() {
    let mut s = Scheduler::new(LEASE, 7);
    s.add_project(project(1, 1, 1, 3));
    s.add_unit(
        UnitId(0),
        P,
        UnitStatus::Pending,
        1,
        1,
        vec![(id(1), AssignmentState::Active, None)],
        Vec::new(),
        10_000,
    );
    assert!(
        s.expire(10_500).is_empty(),
        "worker gets a full lease to check in"
    );
    assert_eq!(s.expire(11_001).len(), 1);
}

fn info(account: &str, subnet: Option<&str>) -> WorkerInfo {
    WorkerInfo {
        account: account.into(),
        team: String::new(),
        subnet: subnet.map(str::to_string),
    }
}

#[test]
fn never_two_replicas_to_one_account_or_one_network() {
    let mut s = setup(1, 2, 2, 5);
    s.register(id(1), &info("alice", Some("10.0.0.0/24")));
    s.register(id(2), &info("alice", Some("10.9.9.0/24")));
    s.register(id(3), &info("bob", Some("10.0.0.0/24")));
    s.register(id(4), &info("carol", Some("10.0.1.0/24")));
    assert_eq!(units(s.assign(id(1), 1, 0)).len(), 1);
    assert!(units(s.assign(id(2), 1, 0)).is_empty(), "same account");
    assert!(units(s.assign(id(3), 1, 0)).is_empty(), "same /24");
    assert_eq!(units(s.assign(id(4), 1, 0)).len(), 1);

    // The network rule can be switched off; the account rule cannot.
    let mut s = setup(1, 2, 2, 5);
    s.set_distinct_subnets(false);
    s.register(id(1), &info("alice", Some("10.0.0.0/24")));
    s.register(id(2), &info("alice", None));
    s.register(id(3), &info("bob", Some("10.0.0.0/24")));
    s.assign(id(1), 1, 0);
    assert!(units(s.assign(id(2), 1, 0)).is_empty());
    assert_eq!(units(s.assign(id(3), 1, 0)).len(), 1);
}

#[test]
fn partial_certificates_combine_at_the_coordinator() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    assert_eq!(
        certify(&mut s, 0, &[1], b"out").expect("valid"),
        None,
        "recorded"
    );
    let v = certify(&mut s, 0, &[2], b"out")
        .expect("valid")
        .expect("verified");
    assert_eq!(v.signers.len(), 2);
}

#[test]
fn an_inflated_fuel_claim_is_a_mismatch() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let honest = claim(1, 0, b"out");
    let greedy = Claim::sign(&worker(2), P, UnitId(0), Digest::of(b"out"), 4200);
    let cert = Certificate {
        unit: UnitId(0),
        claims: vec![honest, greedy],
    };
    let out = s.submit(&cert, Some(b"out")).expect("valid claims");
    assert_eq!(
        out.verdict,
        Verdict::Recorded,
        "no two accounts agree on digest and fuel"
    );
    assert!(
        out.changes
            .iter()
            .any(|c| matches!(c, Change::Target { target: 3, .. }))
    );
    s.assign(id(3), 1, 0);
    certify(&mut s, 0, &[3], b"out")
        .expect("valid")
        .expect("honest pair");
    assert_eq!(
        s.trust(id(2), P).map(|t| (t.consecutive, t.offences)),
        Some((0, 1))
    );
    assert_eq!(s.trust(id(1), P).map(|t| t.consecutive), Some(1));
}

#[test]
fn a_worker_that_changes_its_claim_is_caught() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    certify(&mut s, 0, &[1], b"guess").expect("recorded");
    // Later it signs the other result (e.g. copied once revealed): a different claim.
    certify(&mut s, 0, &[2], b"out").expect("recorded");
    let copy = Certificate {
        unit: UnitId(0),
        claims: vec![claim(1, 0, b"out")],
    };
    let out = s.submit(&copy, Some(b"out")).expect("valid signature");
    assert_eq!(
        out.verdict,
        Verdict::Recorded,
        "the first claim of worker 1 stands"
    );
    assert!(
        out.changes
            .iter()
            .any(|c| matches!(c, Change::Trust { offences: 1, .. }))
    );
}

#[test]
fn spot_check_probability_follows_the_error_bound() {
    assert_eq!(
        spot_check_probability(9, TRUST_AFTER, 0.02),
        1.0,
        "not trusted yet"
    );
    let at10 = spot_check_probability(10, TRUST_AFTER, 0.02);
    let at20 = spot_check_probability(20, TRUST_AFTER, 0.02);
    assert!(at10 < 1.0 && at10 > at20, "{at10} {at20}");
    assert_eq!(
        spot_check_probability(1000, TRUST_AFTER, 0.02),
        SPOT_CHECK_FLOOR
    );
    // The guarantee: worst-case r (1-r)^n (1-p) <= bound at every streak.
    for n in 10..200u32 {
        let p = spot_check_probability(n, TRUST_AFTER, 0.02);
        for k in 1..1000 {
            let r = f64::from(k) / 1000.0;
            let risk = r * (1.0 - r).powi(n as i32) * (1.0 - p);
            assert!(risk <= 0.02 + 1e-12, "n={n} r={r} risk={risk}");
        }
    }
    assert_eq!(
        spot_check_probability(10, TRUST_AFTER << 1, 0.02),
        1.0,
        "below the threshold a worker is always replicated"
    );
}

/// One adaptive project; `honest` pairs build trust for worker 1 over `n` units.
fn trusted(n: u64) -> Scheduler {
    let mut s = Scheduler::new(LEASE, 3);
    s.add_project(project(n + 200, 2, 2, 6));
    for u in 0..n + 200 {
        s.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            2,
            2,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    for u in 0..n {
        s.assign(id(1), 1, 0);
        s.assign(id(2), 1, 0);
        certify(&mut s, u, &[1, 2], b"ok")
            .expect("valid")
            .expect("verified");
    }
    // Switch adaptive replication on once worker 1 has its record.
    let mut p = s.project(P).cloned().expect("project");
    p.adaptive = true;
    p.stats.solo = 0;
    s.add_project(p);
    s
}

#[test]
fn trusted_workers_run_most_units_alone_and_cannot_tell() {
    let mut s = trusted(30);
    assert!(s.trust(id(1), P).is_some_and(|t| t.consecutive == 30));
    let (mut solo, mut checked) = (0, 0);
    for _ in 0..100 {
        let a = s.assign(id(1), 1, 0);
        let unit = a.leases[0].unit;
        let plan = a.changes.iter().find_map(|c| match c {
            Change::Plan { target, .. } => Some(*target),
            _ => None,
        });
        if plan == Some(1) {
            solo += 1;
            certify(&mut s, unit.0, &[1], b"ok")
                .expect("valid")
                .expect("solo verified");
        } else {
            // Worker 2, the only other worker, gets the spot check (the assignment to
            // worker 1 looked the same).
            let other = units(s.assign(id(2), 1, 0));
            checked += 1;
            assert_eq!(other, [unit], "a spot check goes to another worker");
            certify(&mut s, unit.0, &[1, 2], b"ok")
                .expect("valid")
                .expect("verified");
        }
    }
    assert!(solo > 70 && checked > 0, "solo {solo}, checked {checked}");
    let stats = s.project(P).map(|p| p.stats).unwrap_or_default();
    assert_eq!((stats.solo, stats.spot_checks), (solo, checked));
}

#[test]
fn a_caught_liar_loses_trust_and_its_unchecked_results_are_reverified() {
    let mut s = trusted(30);
    // Worker 1 runs units alone until a spot check catches a lie.
    let mut solo_units = Vec::new();
    let mut reopened = Vec::new();
    for _ in 0..200 {
        let a = s.assign(id(1), 1, 0);
        let unit = a.leases[0].unit;
        let solo = a
            .changes
            .iter()
            .any(|c| matches!(c, Change::Plan { target: 1, .. }));
        if solo {
            certify(&mut s, unit.0, &[1], b"lie")
                .expect("valid")
                .expect("accepted alone");
            solo_units.push(unit);
            continue;
        }
        // Worker 2, the only other worker, gets the spot check.
        let a2 = s.assign(id(2), 1, 0);
        assert_eq!(units(a2), [unit], "{:?}", a.changes);
        certify(&mut s, unit.0, &[1], b"lie").expect("recorded");
        let cert = Certificate {
            unit,
            claims: vec![claim(2, unit.0, b"ok")],
        };
        let out = s.submit(&cert, Some(b"ok")).expect("valid");
        assert_eq!(
            out.verdict,
            Verdict::Recorded,
            "disagreement needs a third opinion"
        );
        assert!(
            units(s.assign(id(4), 500, 0)).contains(&unit),
            "third opinion issued"
        );
        let v = certify(&mut s, unit.0, &[4], b"ok")
            .expect("valid")
            .expect("verified");
        assert!(!v.signers.contains(&id(1)));
        let changes = s.mark_verified(unit, &v);
        assert!(changes.is_empty(), "already marked by certify");
        reopened = solo_units.clone();
        break;
    }
    assert!(
        !reopened.is_empty(),
        "the liar ran some units alone before being caught"
    );
    let t = s.trust(id(1), P).cloned().unwrap_or_default();
    assert_eq!((t.consecutive, t.offences, t.unchecked.len()), (0, 1, 0));
    for unit in &reopened {
        assert_eq!(
            s.unit_status(*unit),
            Some(&UnitStatus::Pending),
            "{unit} re-opened"
        );
    }
    // The liar never gets a re-opened unit back; two others re-verify each.
    let again = units(s.assign(id(1), 500, 0));
    assert!(reopened.iter().all(|u| !again.contains(u)));
    let stats = s.project(P).map(|p| p.stats).unwrap_or_default();
    assert_eq!(stats.reopened as usize, reopened.len());
}

#[test]
fn repeat_offenders_are_throttled_to_one_unit_a_day() {
    let mut s = setup(6, 2, 2, 8);
    s.assign(id(1), 3, 0);
    s.assign(id(2), 3, 0);
    for u in 0..3 {
        dispute(&mut s, u, &[claim(1, u, b"lie"), claim(2, u, b"ok")]).expect("valid");
    }
    let third = units(s.assign(id(3), 6, 0));
    assert!((0..3).all(|u| third.contains(&UnitId(u))), "{third:?}");
    for u in 0..3 {
        certify(&mut s, u, &[3], b"ok")
            .expect("valid")
            .expect("verified");
    }
    assert!(s.standing(id(1)).throttled);
    assert_eq!(s.flagged(), vec![id(1)]);
    let now = 1_000;
    assert_eq!(
        units(s.assign(id(1), 10, now)).len(),
        0,
        "last unit was under a day ago"
    );
    let day = now + THROTTLE_PERIOD_MS;
    assert_eq!(units(s.assign(id(1), 10, day)).len(), 1, "one unit per day");
    assert_eq!(units(s.assign(id(1), 10, day + 1)).len(), 0);
}

#[test]
fn untouched_and_settled_units_are_kept_compact_and_behave_the_same() {
    let mut s = setup(3, 2, 2, 5);
    let compact = |s: &Scheduler, u: u64| !matches!(s.units.get(UnitId(u)), Some(Slot::Full(_)));
    assert!(
        (0..3).all(|u| compact(&s, u)),
        "fresh units take a compact slot"
    );
    assert_eq!(units(s.assign(id(1), 1, 0)), [UnitId(0)]);
    assert_eq!(units(s.assign(id(2), 1, 0)), [UnitId(0)]);
    assert!(!compact(&s, 0), "a leased unit is whole");
    assert!(compact(&s, 1), "the others stay compact");
    assert!(
        certify(&mut s, 0, &[1, 2], b"out")
            .expect("certify")
            .is_some()
    );
    assert!(
        compact(&s, 0),
        "a unit checked by two accounts is compact again"
    );
    assert_eq!(s.unit_status(UnitId(0)), Some(&UnitStatus::Verified));
    assert_eq!(
        certify(&mut s, 0, &[1, 2], b"out").expect("duplicate"),
        None,
        "a duplicate is still recognised"
    );
    assert_eq!(
        s.heartbeat(id(1), &[UnitId(0), UnitId(1)], 10),
        [UnitId(0), UnitId(1)],
        "settled and never-leased units are settled for the worker"
    );
    assert!(
        compact(&s, 0) && compact(&s, 1),
        "reading them does not expand them"
    );
    let views: HashMap<UnitId, UnitState> = s.unit_views().map(|v| (v.id, v.state)).collect();
    assert_eq!(views[&UnitId(0)], UnitState::Verified);
    assert_eq!(views[&UnitId(1)], UnitState::Pending);
    assert_eq!(s.in_progress(P), 0);
}

#[test]
fn a_solo_result_stays_whole_while_it_can_be_reopened() {
    let mut s = setup(2, 1, 1, 5);
    assert_eq!(units(s.assign(id(1), 1, 0)), [UnitId(0)]);
    assert!(certify(&mut s, 0, &[1], b"out").expect("certify").is_some());
    assert!(
        matches!(s.units.get(UnitId(0)), Some(Slot::Full(_))),
        "an unchecked result keeps its replicas, so its liar never gets it again"
    );
}

#[test]
fn a_worker_is_leased_only_units_of_projects_it_accepts() {
    let mut s = setup(4, 1, 1, 2);
    let mut other = project(3, 1, 1, 2);
    other.id = ProjectId(2);
    s.add_project(other);
    for u in 100..103 {
        s.add_unit(
            UnitId(u),
            ProjectId(2),
            UnitStatus::Pending,
            1,
            1,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    // Only project 2: its three units, though project 1's are ahead in the queue.
    let only_2 = s.assign_from(id(1), 10, 0, &|p| p.id == ProjectId(2));
    let mut got = units(only_2);
    got.sort();
    assert_eq!(got, vec![UnitId(100), UnitId(101), UnitId(102)]);
    // Project 1's units were kept in the queue for others.
    assert_eq!(units(s.assign(id(2), 10, 0)).len(), 4);
    assert!(units(s.assign_from(id(3), 10, 0, &|_| false)).is_empty());
}

/// Two colluding accounts that always ask right after each other, each time just after
/// two honest workers asked (the three honest workers take turns, so each asks less often
/// than a colluder). Returns, for `units` units with replication 2, the fraction of units
/// whose two replicas both went to the colluders and the fraction of the units a colluder
/// held whose other replica was the other colluder's.
fn back_to_back(units: u64, seed: u64) -> (f64, f64) {
    let mut s = Scheduler::new(LEASE, seed);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    s.add_project(project(units, 2, 2, 5));
    for u in 0..units {
        s.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            2,
            2,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    let (a, b, honest) = (1u8, 2u8, [3u8, 4, 5]);
    for n in [a, b].iter().chain(&honest) {
        s.register(id(*n), &info(&format!("account-{n}"), None));
    }
    let mut holders: HashMap<UnitId, Vec<u8>> = HashMap::new();
    let mut now = 0;
    for round in 0.. {
        now += 10;
        let mut leased = 0;
        for n in [honest[(2 * round) % 3], honest[(2 * round + 1) % 3], a, b] {
            for lease in s.assign(id(n), 1, now).leases {
                holders.entry(lease.unit).or_default().push(n);
                leased += 1;
            }
        }
        if leased == 0 {
            break;
        }
    }
    let colluder = |n: &u8| *n == a || *n == b;
    let both = holders
        .values()
        .filter(|h| h.len() == 2 && h.iter().all(colluder))
        .count();
    let touched = holders.values().filter(|h| h.iter().any(colluder)).count();
    assert_eq!(holders.len() as u64, units, "every unit placed");
    assert!(holders.values().all(|h| h.len() == 2), "two replicas each");
    (
        both as f64 / units as f64,
        both as f64 / touched.max(1) as f64,
    )
}

#[test]
fn colluders_asking_back_to_back_do_not_get_both_replicas() {
    // Each colluder takes a quarter of the replicas, each honest worker a sixth: by share
    // alone, a unit's two replicas are the two colluders' with probability about
    // 2 · 1/4 · 1/3 ≈ 17 %, and a unit a colluder holds has the other colluder on it with
    // probability about 1/3. Handing the next replica to whoever asks next gave the second
    // colluder every unit the first took: half of all units, and all of theirs.
    for seed in [7, 8, 9] {
        let (all, theirs) = back_to_back(2_000, seed);
        assert!(all < 0.25, "seed {seed}: {:.1} % of units", all * 100.0);
        assert!(
            theirs < 0.45,
            "seed {seed}: {:.1} % of the colluders' units",
            theirs * 100.0
        );
        println!(
            "seed {seed}: both replicas to the colluders: {:.1} % of units, {:.1} % of theirs",
            all * 100.0,
            theirs * 100.0
        );
    }
}

#[test]
fn a_unit_a_worker_opens_goes_to_a_random_next_asker() {
    // Five workers in turn, one unit each: a unit's second replica must not always go to
    // the worker asking right after the first (it goes to any of the next few askers).
    let mut s = setup(1_000, 2, 2, 5);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    let mut first: HashMap<UnitId, u8> = HashMap::new();
    let (mut next, mut later) = (0, 0);
    let mut previous = 0u8;
    for turn in 0..1_000u64 {
        let n = (turn % 5) as u8 + 1;
        for unit in units(s.assign(id(n), 1, turn)) {
            match first.get(&unit) {
                None => {
                    first.insert(unit, n);
                }
                Some(&by) if by == previous => next += 1,
                Some(_) => later += 1,
            }
        }
        previous = n;
    }
    assert!(next + later > 400, "{next} {later}");
    assert!(
        next * 2 < next + later,
        "the next asker got {next} of {} second replicas",
        next + later
    );
}

/// Workers 1 and 2 earn an established record in `P` together (with only two workers,
/// each unit's second replica goes to the other).
fn established_pair(units_total: u64) -> Scheduler {
    let mut s = setup(units_total, 2, 2, 5);
    for u in 0..u64::from(ESTABLISHED_AFTER) {
        assert_eq!(units(s.assign(id(1), 1, 0)), [UnitId(u)]);
        assert_eq!(units(s.assign(id(2), 1, 0)), [UnitId(u)]);
        certify(&mut s, u, &[1, 2], b"ok")
            .expect("valid")
            .expect("verified");
    }
    s
}

#[test]
fn brand_new_accounts_cannot_decide_a_unit_together_while_established_ones_are_active() {
    let mut s = established_pair(100);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    let now = 100;
    // The established workers ask for work (each takes a replica of one fresh unit).
    let mut by_established = units(s.assign(id(1), 1, now));
    by_established.extend(units(s.assign(id(2), 1, now)));
    // Two brand-new accounts: half the askers are established, so the rule applies. The
    // second replica of a unit a new account opened is for an established worker only.
    let a3 = units(s.assign(id(3), 5, now));
    let a4 = units(s.assign(id(4), 10, now));
    assert_eq!((a3.len(), a4.len()), (5, 10));
    assert!(a3.iter().all(|u| !a4.contains(u)), "{a3:?} {a4:?}");
    assert!(a3.iter().chain(&a4).all(|u| !by_established.contains(u)));
    // An established worker takes them all (among others).
    let a2 = units(s.assign(id(2), 100, now));
    assert!(a3.iter().chain(&a4).all(|u| a2.contains(u)), "{a2:?}");
    for (n, opened) in [(3, &a3), (4, &a4)] {
        for unit in opened {
            let v = certify(&mut s, unit.0, &[n, 2], b"ok")
                .expect("valid")
                .expect("verified");
            assert!(v.signers.contains(&id(2)));
        }
    }
    // Their results were confirmed by an established worker: they are on their way.
    assert_eq!(s.trust(id(3), P).map(|t| t.consecutive), Some(5));
    assert_eq!(s.trust(id(4), P).map(|t| t.consecutive), Some(10));
}

#[test]
fn a_dispute_a_new_account_could_settle_with_another_goes_to_an_established_worker() {
    let mut s = established_pair(100);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    let now = 100;
    s.assign(id(1), 1, now);
    s.assign(id(2), 1, now);
    let a3 = units(s.assign(id(3), 1, now));
    let unit = a3[0];
    assert!(!units(s.assign(id(4), 100, now)).contains(&unit));
    assert!(units(s.assign(id(2), 100, now)).contains(&unit));
    // The new account lies; the established worker disagrees: a third opinion is needed,
    // and another new account agreeing with the first would settle it.
    let changes = dispute(
        &mut s,
        unit.0,
        &[claim(3, unit.0, b"lie"), claim(2, unit.0, b"ok")],
    )
    .expect("valid");
    assert!(changes.contains(&Change::Target { unit, target: 3 }));
    assert!(!units(s.assign(id(4), 100, now)).contains(&unit));
    assert!(units(s.assign(id(1), 100, now)).contains(&unit));
    let v = certify(&mut s, unit.0, &[1], b"ok")
        .expect("valid")
        .expect("verified");
    assert_eq!(v.digest, Digest::of(b"ok"));
    assert_eq!(s.trust(id(3), P).map(|t| t.offences), Some(1));
}

#[test]
fn new_accounts_pair_up_as_before_when_the_rule_does_not_apply() {
    // Holds units 3 and 4 both took, having asked in that order at `now`.
    fn paired(s: &mut Scheduler, now: u64) -> Vec<UnitId> {
        let a3 = units(s.assign(id(3), 5, now));
        let a4 = units(s.assign(id(4), 10, now));
        a3.into_iter().filter(|u| a4.contains(u)).collect()
    }

    // A brand-new fleet: nobody is established.
    let mut s = setup(100, 2, 2, 5);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    let both = paired(&mut s, 0);
    assert!(!both.is_empty());
    assert!(
        certify(&mut s, both[0].0, &[3, 4], b"out")
            .expect("valid")
            .is_some()
    );

    // Established workers exist, but have not asked for work for two lease periods.
    let mut s = established_pair(100);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    s.assign(id(1), 1, 0);
    let both = paired(&mut s, 10 * LEASE);
    assert!(!both.is_empty());
    assert!(
        certify(&mut s, both[0].0, &[3, 4], b"out")
            .expect("valid")
            .is_some()
    );

    // Fewer than half the askers are established: they could not take a replica of every
    // unit the new ones open.
    let mut s = established_pair(100);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    s.assign(id(1), 1, 0);
    s.assign(id(5), 1, 0);
    assert!(!paired(&mut s, 0).is_empty());

    // The rule applies, but no established worker takes a reserved replica within a lease
    // period: then anyone may.
    let mut s = established_pair(100);
    // Simulated workers that never answer: placement alone, no limit of unfinished leases.
    s.set_unlimited(true);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let a3 = units(s.assign(id(3), 5, 0));
    assert!(
        units(s.assign(id(4), 10, 0))
            .iter()
            .all(|u| !a3.contains(u)),
        "reserved"
    );
    let later = units(s.assign(id(4), 10, LEASE + 1));
    let both: Vec<&UnitId> = a3.iter().filter(|u| later.contains(u)).collect();
    assert!(!both.is_empty(), "the reservation lapsed: {a3:?} {later:?}");
    assert!(
        certify(&mut s, both[0].0, &[3, 4], b"out")
            .expect("valid")
            .is_some()
    );
}

/// An account that takes units and never answers holds at most [`UNFINISHED_BASE`] of a
/// voting project's units: asking for more, asking faster, or handing units back to draw
/// again gets it no more within a lease; each result confirmed by another account raises
/// its limit by one; quorum-1 projects are not limited.
#[test]
fn unfinished_leases_follow_the_record_not_the_asking() {
    let mut s = setup(100, 2, 2, 5);
    let got = units(s.assign(id(1), 64, 0));
    assert_eq!(got.len(), UNFINISHED_BASE);
    assert!(
        units(s.assign(id(1), 64, 1)).is_empty(),
        "asked again at once"
    );
    for &u in &got {
        s.give_back(id(1), u);
    }
    assert!(
        units(s.assign(id(1), 64, 2)).is_empty(),
        "handed back to draw again"
    );
    // Its answers finish units: worker 2 confirms two of them.
    let mut s = setup(100, 2, 2, 5);
    let mine = units(s.assign(id(1), 64, 0));
    let theirs = units(s.assign(id(2), 64, 0));
    let shared: Vec<UnitId> = mine
        .iter()
        .filter(|u| theirs.contains(u))
        .copied()
        .collect();
    assert!(!shared.is_empty(), "{mine:?} {theirs:?}");
    for u in &shared {
        assert!(
            certify(&mut s, u.0, &[1, 2], b"out")
                .expect("certify")
                .is_some()
        );
    }
    // Its limit grew by one per confirmed result; the finished units freed their places.
    let more = units(s.assign(id(1), 64, 3));
    assert_eq!(more.len(), shared.len() + shared.len(), "{more:?}");
    // A quorum-1 project's units are not limited.
    let mut s = Scheduler::new(LEASE, 7);
    s.add_project(project(100, 1, 1, 3));
    for u in 0..100 {
        s.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            1,
            1,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    assert_eq!(units(s.assign(id(1), 64, 0)).len(), 64);
}

/// A lapsed lease is no longer unfinished: the worker may take units again.
#[test]
fn expired_leases_free_their_places() {
    let mut s = setup(100, 2, 2, 5);
    assert_eq!(units(s.assign(id(1), 1, 0)).len(), 1);
    assert_eq!(units(s.assign(id(1), 64, 0)).len(), 3);
    s.expire(LEASE + 1);
    assert_eq!(units(s.assign(id(1), 64, LEASE + 2)).len(), 4);
}

/// A claim over the project's fuel limit is refused, so colluders cannot agree on inflated
/// fuel (the credit unit) for a correct output; at the limit it is accepted.
#[test]
fn claims_over_the_fuel_limit_are_refused() {
    let mut s = setup(1, 2, 2, 5);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    let limit = project(1, 2, 2, 5).limits.fuel;
    let signed = |n: u8, fuel: u64| Claim::sign(&worker(n), P, UnitId(0), Digest::of(b"out"), fuel);
    for fuel in [limit + 1, u64::MAX] {
        let cert = Certificate {
            unit: UnitId(0),
            claims: vec![signed(1, fuel), signed(2, fuel)],
        };
        let e = s.submit(&cert, Some(b"out")).expect_err("over the limit");
        assert!(e.to_string().contains("limit"), "{e}");
    }
    let cert = Certificate {
        unit: UnitId(0),
        claims: vec![signed(1, limit), signed(2, limit)],
    };
    assert!(matches!(
        s.submit(&cert, Some(b"out")).expect("at the limit").verdict,
        Verdict::Verified(_)
    ));
}

/// A verified unit whose stored output changed on disk goes back for verification by
/// workers that have not run it (a worker that ran it would commit twice on the same
/// boards), and its project is no longer finished until it verifies again.
#[test]
fn a_unit_sent_back_for_reverification_is_verified_again_by_other_workers() {
    let mut s = setup(1, 2, 2, 2);
    s.assign(id(1), 1, 0);
    s.assign(id(2), 1, 0);
    certify(&mut s, 0, &[1, 2], b"out")
        .expect("valid")
        .expect("first");
    assert!(s.project(P).expect("project").finished());
    // The unit is compact by now: the store names who ran it.
    let changes = s.reverify(UnitId(0), &[id(1), id(2)], 10);
    assert_eq!(
        changes,
        [Change::Reverify {
            unit: UnitId(0),
            required: 2
        }]
    );
    assert!(
        s.reverify(UnitId(0), &[id(1), id(2)], 11).is_empty(),
        "sent back once"
    );
    let p = s.project(P).expect("project");
    assert!(!p.finished());
    assert_eq!(p.stats.verified, 0);
    assert!(units(s.assign(id(1), 1, 20)).is_empty(), "ran it before");
    assert!(units(s.assign(id(2), 1, 20)).is_empty(), "ran it before");
    assert_eq!(units(s.assign(id(3), 1, 20)), [UnitId(0)]);
    assert_eq!(
        units(s.assign(id(4), 1, 20)),
        [UnitId(0)],
        "superseded replicas do not count against max_replicas"
    );
    certify(&mut s, 0, &[3, 4], b"out")
        .expect("valid")
        .expect("verified again");
    let p = s.project(P).expect("project");
    assert!(p.finished());
    assert_eq!(p.stats.verified, 1);
}

/// Finished is not done: a project whose units or reducer all failed says so.
#[test]
fn a_projects_outcome_tells_done_from_failed() {
    // (total, verified, failed, finished, reducer failed) → outcome
    let check = |numbers: (u64, u64, u64, bool, bool), want: Outcome| {
        let (t, v, f, finished, reducer) = numbers;
        let active = protocol::control::State::Active;
        assert_eq!(
            Outcome::of(t, (v, f, 0), finished, reducer, active),
            want,
            "{numbers:?}"
        );
    };
    check((10, 3, 1, false, false), Outcome::Running);
    check((10, 9, 1, false, false), Outcome::Reducing);
    check((10, 10, 0, true, false), Outcome::Done);
    check((10, 9, 1, true, false), Outcome::Partial);
    check((10, 0, 10, true, false), Outcome::Failed);
    check((10, 10, 0, true, true), Outcome::Failed);
    assert_eq!(Outcome::Failed.as_str(), "failed");
    // The submitter's control comes first: paused while units are open, cancelled always.
    use protocol::control::State;
    assert_eq!(
        Outcome::of(10, (3, 1, 0), false, false, State::Paused),
        Outcome::Paused
    );
    assert_eq!(
        Outcome::of(10, (10, 0, 0), true, false, State::Paused),
        Outcome::Done
    );
    assert_eq!(
        Outcome::of(10, (3, 0, 7), true, false, State::Cancelled),
        Outcome::Cancelled
    );
}

/// Every unit giving the same output is said in words once enough have verified, and
/// not once one differs: the frozen-clock seeding pitfall, which quorums cannot see.
#[test]
fn units_that_all_give_the_same_output_are_warned_about() {
    let mut s = setup(8, 2, 2, 5);
    // Each unit leased to both workers (first in, first out) and verified with `output`.
    let verify = |s: &mut Scheduler, unit: u64, output: &[u8]| {
        assert_eq!(units(s.assign(id(1), 1, 0)), [UnitId(unit)]);
        assert_eq!(units(s.assign(id(2), 1, 0)), [UnitId(unit)]);
        certify(s, unit, &[1, 2], output)
            .expect("valid")
            .expect("first");
    };
    for unit in 0..SAME_OUTPUT_WARNING_AFTER - 1 {
        verify(&mut s, unit, b"42\n");
        assert!(s.warnings(P).is_empty(), "only {} so far", unit + 1);
    }
    verify(&mut s, SAME_OUTPUT_WARNING_AFTER - 1, b"42\n");
    let warned = s.warnings(P);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("same output") && warned[0].contains("getentropy"),
        "{warned:?}"
    );
    verify(&mut s, SAME_OUTPUT_WARNING_AFTER, b"43\n");
    assert!(s.warnings(P).is_empty(), "one unit differs");
    assert!(s.warnings(ProjectId(99)).is_empty());
}

// Project control (`protocol::control`): pause, resume, cancel, retry, extend, reduce.

/// Unit 0 fails on worker 1 (replication 1, quorum 1): the unit is failed for good.
fn failed_once(s: &mut Scheduler, worker: u8) -> UnitId {
    let leased = units(s.assign(id(worker), 1, 0));
    assert_eq!(leased.len(), 1);
    let unit = leased[0];
    s.report_failure(
        id(worker),
        unit,
        Failure::new(FailureKind::Trap, "unreachable"),
    )
    .expect("leased");
    assert!(matches!(s.unit_status(unit), Some(UnitStatus::Failed(_))));
    unit
}

#[test]
fn a_paused_project_leases_nothing_until_resumed_and_running_units_still_verify() {
    let mut s = setup(4, 1, 1, 3);
    let running = units(s.assign(id(1), 1, 0));
    let (done, changes) = s.pause(P).expect("pause");
    assert_eq!(done.state, State::Paused);
    assert_eq!((done.pending, done.in_progress), (3, 1));
    assert_eq!(
        changes,
        [Change::Control {
            project: P,
            state: State::Paused
        }]
    );
    assert!(
        units(s.assign(id(2), 10, 10)).is_empty(),
        "paused: no leases"
    );
    // The unit leased before the pause finishes and verifies.
    certify(&mut s, running[0].0, &[1], b"out")
        .expect("valid")
        .expect("verified while paused");
    assert!(s.pause(P).expect("again").1.is_empty(), "idempotent");
    let (done, _) = s.resume(P).expect("resume");
    assert_eq!((done.state, done.pending), (State::Active, 3));
    assert_eq!(
        units(s.assign(id(2), 10, 20)).len(),
        3,
        "resumed: all leasable"
    );
    assert!(s.resume(P).expect("again").1.is_empty(), "idempotent");
}

#[test]
fn pausing_keeps_units_of_open_pool_and_restart_out_of_reach() {
    // A unit with a replica out wants a second one (open pool): not leased while paused.
    let mut s = setup(1, 2, 2, 4);
    s.assign(id(1), 1, 0);
    s.pause(P).expect("pause");
    assert!(units(s.assign(id(2), 1, 0)).is_empty());
    // Units loaded for a paused project (a restart) wait outside the queue too.
    let mut t = Scheduler::new(LEASE, 7);
    let mut p = project(2, 1, 1, 3);
    p.control = State::Paused;
    t.add_project(p);
    for u in 0..2 {
        t.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            1,
            1,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    assert!(units(t.assign(id(1), 5, 0)).is_empty());
    t.resume(P).expect("resume");
    assert_eq!(units(t.assign(id(1), 5, 0)).len(), 2);
}

#[test]
fn cancel_ends_unsettled_units_keeps_verified_ones_and_is_final() {
    let mut s = setup(3, 1, 1, 3);
    let leased = units(s.assign(id(1), 2, 0));
    certify(&mut s, leased[0].0, &[1], b"out")
        .expect("valid")
        .expect("verified");
    let (done, changes) = s.cancel(P).expect("cancel");
    assert_eq!(done.state, State::Cancelled);
    assert_eq!((done.units, done.in_progress, done.pending), (2, 1, 0));
    assert!(changes.contains(&Change::CancelUnits { project: P }));
    let p = s.project(P).expect("project");
    assert_eq!((p.stats.verified, p.stats.cancelled), (1, 2));
    assert!(p.finished(), "a cancelled project is settled");
    assert_eq!(s.unit_status(leased[0]), Some(&UnitStatus::Verified));
    assert_eq!(s.unit_status(leased[1]), Some(&UnitStatus::Cancelled));
    // The worker holding the cancelled unit learns it from its heartbeat.
    assert_eq!(s.heartbeat(id(1), &[leased[1]], 10), [leased[1]]);
    // Its late result is refused, nothing is leased, and every other action is refused.
    assert!(matches!(
        certify(&mut s, leased[1].0, &[1], b"late"),
        Err(Error::UnitCancelled { .. })
    ));
    assert!(units(s.assign(id(2), 10, 10)).is_empty());
    for e in [
        s.pause(P).map(|_| ()),
        s.resume(P).map(|_| ()),
        s.retry(P).map(|_| ()),
        s.cancel(P).map(|_| ()),
        s.check_extend(P),
    ] {
        let e = e.expect_err("cancel is final").to_string();
        assert!(e.contains("cancelled, which is final"), "{e}");
    }
}

#[test]
fn retry_reruns_failed_units_with_their_history_cleared() {
    let mut s = setup(1, 1, 1, 1);
    let e = s.retry(P).expect_err("nothing failed").to_string();
    assert!(e.contains("nothing to retry"), "{e}");
    let unit = failed_once(&mut s, 1);
    assert!(s.project(P).expect("p").finished());
    let (done, changes) = s.retry(P).expect("retry");
    assert_eq!((done.units, done.pending), (1, 1));
    assert!(changes.contains(&Change::Retried {
        unit,
        target: 1,
        required: 1
    }));
    let p = s.project(P).expect("p");
    assert_eq!(p.stats.failed, 0);
    assert!(!p.finished());
    // The same worker may run it again (max_replicas 1 would otherwise fail it at once),
    // and a second failure counts alone: the history was cleared.
    assert_eq!(units(s.assign(id(1), 1, 10)), [unit]);
    certify(&mut s, unit.0, &[1], b"ok")
        .expect("valid")
        .expect("verified after retry");
    assert_eq!(s.project(P).expect("p").stats.verified, 1);
}

#[test]
fn retry_of_a_paused_project_waits_for_resume_and_drops_a_stale_aggregate() {
    let mut s = setup(1, 1, 1, 1);
    failed_once(&mut s, 1);
    s.set_aggregate(P, Aggregate::Failed("no outputs".into()));
    s.pause(P).expect("pause");
    let (_, changes) = s.retry(P).expect("retry");
    assert!(changes.contains(&Change::AggregateReset { project: P }));
    assert_eq!(s.project(P).expect("p").aggregate, Aggregate::Pending);
    assert!(units(s.assign(id(2), 1, 0)).is_empty(), "still paused");
    s.resume(P).expect("resume");
    assert_eq!(units(s.assign(id(2), 1, 0)).len(), 1);
}

#[test]
fn extend_adds_pending_units_and_reopens_a_finished_project() {
    let mut s = setup(1, 1, 1, 3);
    let first = units(s.assign(id(1), 1, 0));
    certify(&mut s, first[0].0, &[1], b"out")
        .expect("valid")
        .expect("verified");
    s.set_aggregate(P, Aggregate::Ready);
    assert!(s.project(P).expect("p").finished());
    s.check_extend(P).expect("may extend");
    let done = s.extend(P, &[UnitId(10), UnitId(11)], 5);
    assert_eq!((done.units, done.pending), (2, 2));
    let p = s.project(P).expect("p");
    assert_eq!(
        (p.stats.total, p.aggregate.clone()),
        (3, Aggregate::Pending)
    );
    assert!(!p.finished());
    assert_eq!(units(s.assign(id(2), 5, 10)), [UnitId(10), UnitId(11)]);
}

#[test]
fn reduce_is_refused_without_a_reducer_or_with_units_open() {
    let mut s = setup(2, 1, 1, 3);
    let e = s.rereduce(P).expect_err("no reducer").to_string();
    assert!(e.contains("no reducer"), "{e}");
    let mut t = Scheduler::new(LEASE, 7);
    let mut p = project(2, 1, 1, 3);
    p.reducer = Some(Digest::of(b"r"));
    t.add_project(p);
    for u in 0..2 {
        t.add_unit(
            UnitId(u),
            P,
            UnitStatus::Pending,
            1,
            1,
            Vec::new(),
            Vec::new(),
            0,
        );
    }
    let e = t.rereduce(P).expect_err("open units").to_string();
    assert!(e.contains("2 of its 2 units are not settled"), "{e}");
    for u in units(t.assign(id(1), 2, 0)) {
        certify(&mut t, u.0, &[1], b"o").expect("valid");
    }
    t.set_aggregate(P, Aggregate::Ready);
    let (reducer, _, changes) = t.rereduce(P).expect("reduce again");
    assert_eq!(reducer, Digest::of(b"r"));
    assert_eq!(changes, [Change::AggregateReset { project: P }]);
    assert_eq!(t.project(P).expect("p").aggregate, Aggregate::Pending);
}
