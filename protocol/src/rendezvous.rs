//! Which peers a unit's claims travel to: the `k` members with the highest
//! rendezvous (highest-random-weight) score for the unit. Every worker computes the same
//! boards from the same membership, without coordination, and a membership change moves
//! only the units whose boards joined or left. Traffic per worker is proportional to the
//! units it holds plus the units that hash to it, not to the size of the network.

use crate::{ProjectId, UnitId, WorkerId};

/// How many boards each unit's claims go to: one can be down or lying and the quorum still
/// meets at the other; a holder that sees both can spot equivocation across them.
pub const BOARDS_PER_UNIT: usize = 2;

/// The `k` boards of a unit among `members` (deterministic; ties broken by id).
pub fn boards<'a>(
    project: ProjectId,
    unit: UnitId,
    members: impl IntoIterator<Item = &'a WorkerId>,
    k: usize,
) -> Vec<WorkerId> {
    let mut scored: Vec<([u8; 8], WorkerId)> = members
        .into_iter()
        .map(|m| (score(project, unit, m), *m))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, m)| m).collect()
}

fn score(project: ProjectId, unit: UnitId, member: &WorkerId) -> [u8; 8] {
    let mut h = blake3::Hasher::new_derive_key("fallow 2026 rendezvous v1");
    h.update(&project.0.to_le_bytes());
    h.update(&unit.0.to_le_bytes());
    h.update(&member.0);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn members(n: u8) -> Vec<WorkerId> {
        (0..n).map(|i| Identity::from_seed([i; 32]).id()).collect()
    }

    #[test]
    fn boards_are_stable_spread_and_move_little_on_churn() {
        let all = members(50);
        let mut load = std::collections::HashMap::<WorkerId, u32>::new();
        let mut moved = 0;
        let without_first: Vec<WorkerId> = all[1..].to_vec();
        for u in 0..2000 {
            let b = boards(ProjectId(1), UnitId(u), &all, 2);
            assert_eq!(b, boards(ProjectId(1), UnitId(u), all.iter().rev(), 2));
            assert_eq!(b.len(), 2);
            assert_ne!(b[0], b[1]);
            for m in &b {
                *load.entry(*m).or_default() += 1;
            }
            if boards(ProjectId(1), UnitId(u), &without_first, 2) != b {
                moved += 1;
            }
        }
        // 4000 slots over 50 members: 80 each on average.
        assert!(load.values().all(|&n| (30..=150).contains(&n)), "{load:?}");
        // Removing one member of 50 moves only the units it was a board of (~4 %).
        assert!(moved < 200, "{moved} units moved");
    }

    #[test]
    fn fewer_members_than_boards() {
        assert_eq!(boards(ProjectId(1), UnitId(1), &members(1), 2).len(), 1);
        assert!(boards(ProjectId(1), UnitId(1), &[], 2).is_empty());
    }
}
