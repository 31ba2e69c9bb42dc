//! Each cheating behaviour is caught, at a scale a debug test run can afford. The full-size
//! figures come from `cargo run --release -p sim` (TRUST.md).

use super::*;

fn check(s: &Scenario) -> Report {
    let r = run(s);
    assert!(r.settled, "{}: did not settle: {r:?}", s.name);
    assert_eq!(r.verified + r.failed, s.units, "{}: {r:?}", s.name);
    assert_eq!(
        r.wrong_accepted, 0,
        "{}: wrong results accepted: {r:?}",
        s.name
    );
    assert_eq!(
        r.honest_penalised, 0,
        "{}: honest workers penalised: {r:?}",
        s.name
    );
    r
}

fn scenario(name: &str) -> Scenario {
    Scenario::table(30, 600)
        .into_iter()
        .find(|s| s.name.contains(name))
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

#[test]
fn honest_fleet_is_cheap_and_fully_verified() {
    let r = check(&scenario("honest"));
    assert_eq!(r.failed, 0);
    assert!(r.solo > 0, "trusted workers ran units alone: {r:?}");
    assert!(r.spot_checks > 0, "and some were secretly checked: {r:?}");
    // 30 workers need 300 confirmed results before trust: this small run pays more than
    // the 1.15 of the full-size run, but far less than the 2.0 of plain replication.
    assert!(r.executions_per_verified() < 1.6, "{r:?}");
}

#[test]
fn independent_liars_never_get_a_wrong_result_accepted_and_are_caught() {
    for name in ["10% independent", "30% independent"] {
        let r = check(&scenario(name));
        assert_eq!(r.caught, r.cheaters, "{name}: every liar caught: {r:?}");
    }
}

#[test]
fn colluders_and_sybils_are_caught() {
    // Colluders can out-vote an honest worker on a unit (the Sybil bound in
    // docs/protocol.md); what must hold is that they are caught and the run completes.
    for name in ["colluding pair", "Sybil"] {
        let r = run(&scenario(name));
        assert!(r.settled, "{r:?}");
        assert!(r.caught > 0, "{name}: {r:?}");
    }
}

#[test]
fn colluders_asking_back_to_back_do_not_steer_their_units_together() {
    // Handing a unit's next replica to whoever asked next gave the second of two accounts
    // asking right after each other every unit the first had just taken: here 14 of the
    // 600 units were held wholly by a colluding pair and 16 accepted wrong, 21 and 27 with
    // three Sybil accounts. Drawn at random, their share of the 30 workers decides (about
    // 1 unit for the pair, 5 for the three), and once half the fleet is established their
    // units' second replicas go to established workers.
    for name in ["colluding pair asking", "Sybil, 10%, asking"] {
        let r = run(&scenario(name));
        assert!(r.settled, "{name}: {r:?}");
        assert!(r.held_by_colluders <= 6, "{name}: {r:?}");
        assert!(r.wrong_accepted <= 6, "{name}: {r:?}");
        assert_eq!(r.caught, r.cheaters, "{name}: {r:?}");
    }
}

#[test]
fn lazy_copiers_are_caught_every_time() {
    let r = check(&scenario("copiers"));
    assert!(r.cheaters > 0);
    assert_eq!(r.caught, r.cheaters, "{r:?}");
    assert!(
        r.board_rejections
            .get("reveal_mismatch")
            .copied()
            .unwrap_or(0)
            > 0,
        "the copied reveal was refused by a board: {r:?}"
    );
}

#[test]
fn crashes_and_a_healing_partition_lose_nothing() {
    check(&scenario("crash"));
    check(&scenario("partition"));
}

#[test]
fn forged_and_replayed_messages_are_refused_and_counted() {
    let r = check(&scenario("forgers"));
    let bad = r
        .board_rejections
        .get("bad_signature")
        .copied()
        .unwrap_or(0);
    let replayed = r.board_rejections.get("replayed").copied().unwrap_or(0);
    assert!(bad > 0 && replayed > 0, "{r:?}");
    assert!(r.coordinator_rejections > 0, "{r:?}");
    // Failure reports in a holder's name, signed with the forger's own key: all refused.
    let (refused, accepted) = r.forged_failures;
    assert!(refused > 0 && accepted == 0, "{r:?}");
    // Commitments squatting a unit under a made-up project, with a ticket the forger
    // signed itself: refused, and the real project's units all verified (`check`).
    let squats = r.board_rejections.get("bad_ticket").copied().unwrap_or(0);
    assert!(squats > 0, "{r:?}");
}

#[test]
fn runs_are_reproducible() {
    let s = Scenario::table(20, 200).remove(1);
    let (a, b) = (run(&s), run(&s));
    assert_eq!(
        (a.executions, a.gossip_bytes, a.wrong_accepted, a.sim_ms),
        (b.executions, b.gossip_bytes, b.wrong_accepted, b.sim_ms)
    );
}
