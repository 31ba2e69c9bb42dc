//! Compact unit storage: most units of a large project are either untouched (pending, never
//! leased) or settled, and need only their project and state. Those take one 16-byte slot;
//! a full [`Unit`] (replicas, votes) is kept only while a unit is in play. Unit ids are the
//! store's dense row ids, so slots live in pages of consecutive ids rather than a hash map
//! (which would cost a hash bucket with slack per unit).

use std::collections::HashMap;

use protocol::{ProjectId, UnitId};

use super::Unit;

/// Ids per page.
const PAGE: u64 = 1024;

/// One unit's state.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Pending, never leased, no votes, the project's default replication and quorum.
    Fresh(ProjectId),
    /// Verified and no longer needed for re-verification.
    Verified(ProjectId),
    /// In play, failed, or verified but still open to re-verification.
    Full(Box<Unit>),
}

impl Slot {
    pub(super) fn project(&self) -> ProjectId {
        match self {
            Slot::Fresh(p) | Slot::Verified(p) => *p,
            Slot::Full(u) => u.project,
        }
    }
}

/// Unit id → slot.
#[derive(Debug, Default)]
pub(super) struct UnitTable {
    pages: HashMap<u64, Box<[Option<Slot>]>>,
    len: usize,
}

impl UnitTable {
    pub(super) fn get(&self, id: UnitId) -> Option<&Slot> {
        self.pages
            .get(&(id.0 / PAGE))
            .and_then(|p| p[(id.0 % PAGE) as usize].as_ref())
    }

    pub(super) fn get_mut(&mut self, id: UnitId) -> Option<&mut Slot> {
        self.pages
            .get_mut(&(id.0 / PAGE))
            .and_then(|p| p[(id.0 % PAGE) as usize].as_mut())
    }

    pub(super) fn insert(&mut self, id: UnitId, slot: Slot) {
        let page = self
            .pages
            .entry(id.0 / PAGE)
            .or_insert_with(|| (0..PAGE).map(|_| None).collect());
        let cell = &mut page[(id.0 % PAGE) as usize];
        if cell.is_none() {
            self.len += 1;
        }
        *cell = Some(slot);
    }

    /// Units held.
    #[allow(dead_code)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every unit, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (UnitId, &Slot)> + '_ {
        self.pages.iter().flat_map(|(page, slots)| {
            slots
                .iter()
                .enumerate()
                .filter_map(move |(i, s)| s.as_ref().map(|s| (UnitId(page * PAGE + i as u64), s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_small_and_ids_round_trip() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 16);
        let mut t = UnitTable::default();
        for id in [0, 1, 1023, 1024, 5_000_000_007] {
            t.insert(UnitId(id), Slot::Fresh(ProjectId(id + 1)));
        }
        t.insert(UnitId(1), Slot::Verified(ProjectId(9)));
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(UnitId(1)).map(Slot::project), Some(ProjectId(9)));
        assert!(t.get(UnitId(2)).is_none());
        let mut ids: Vec<u64> = t.iter().map(|(id, _)| id.0).collect();
        ids.sort();
        assert_eq!(ids, [0, 1, 1023, 1024, 5_000_000_007]);
    }
}
