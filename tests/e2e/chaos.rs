//! Fault injection over a longer run: the coordinator is killed with SIGKILL 20 times at
//! random points (seeded, so a failure can be replayed with the same schedule) and workers
//! are killed and replaced along the way. The run must complete with every result right,
//! none lost, none counted twice and no credit granted twice.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, after_kill, assert_chaos_done, n, primes_below_two_billion};

/// Coordinator kills in the run.
const KILLS: u32 = 20;

#[test]
fn twenty_coordinator_kills_and_worker_crashes_lose_nothing_and_double_nothing() {
    let seed = std::env::var("FALLOW_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25_482_469_648);
    println!("chaos seed {seed} (replay with FALLOW_CHAOS_SEED={seed})");
    let mut rng = SplitMix(protocol::rng::SplitMix64::new(seed));

    let mut c = Cluster::start(10);
    for _ in 0..3 {
        c.start_worker(&[]);
    }
    // 200 units of 10 million numbers: primes below two billion (98,222,287 of them). Fixed replication (adaptive
    // off) so every verified unit is credited to exactly `quorum` = 2 accounts.
    let manifest = primes_below_two_billion(c.dir.path(), "primes-chaos", 200, false);
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(id, Duration::from_secs(120), "first units verified", |s| {
        n(s, "verified") >= 3
    });

    let mut verified_seen = 0;
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(rng.between(200, 1_200)));
        c.kill_coordinator();
        if kill % 7 == 0 {
            // A worker dies with the coordinator; a fresh one (new identity) replaces it.
            let doomed = (kill / 7) as usize - 1;
            c.kill_worker(doomed);
            c.start_worker(&[]);
        }
        std::thread::sleep(Duration::from_millis(rng.between(50, 400)));
        c.start_coordinator();
        verified_seen = after_kill(&c, id, kill, KILLS, verified_seen);
    }

    // Results and credit: nothing lost, nothing doubled, no unit credited twice.
    assert_chaos_done(&c, id, 200);
    let accounts = c.accounts();
    // One more crash after the end changes nothing.
    c.kill_coordinator();
    c.start_coordinator();
    let again = Instant::now();
    let status_again = c.status(id).expect("status");
    assert_eq!(n(&status_again, "verified"), 200);
    assert_eq!(c.accounts(), accounts, "a restart re-granted credit");
    println!("restart after the run answered in {:?}", again.elapsed());
}

/// A seeded schedule, so a failing run can be replayed.
struct SplitMix(protocol::rng::SplitMix64);

impl SplitMix {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.0.next_u64() % (hi - lo)
    }
}
