//! Lease tickets: the coordinator vouches that a unit is leased to a worker, so a board
//! (see [`crate::board`]) files commitments only from workers that really hold the unit.
//!
//! For every lease it hands out, the coordinator signs with its own key
//! (`DATA/coordinator.key`)
//!
//! ```text
//! "fallow/ticket/v1\0" ‖ worker key ‖ project ‖ unit ‖ expires_ms
//! ```
//!
//! and sends the [`Ticket`] (expiry and signature) with the assignment. The worker attaches
//! it to its commitment for that unit; a board checks it against the coordinator key its
//! own worker learnt at registration ([`Ticket::verify`]). Without tickets anyone could
//! file a commitment for any unit: one under a made-up project blocked the real project's
//! commitments (`wrong_project`), 64 filled the unit (`too_many_claims`), and unit ids are
//! sequential, so targets were predictable.
//!
//! **Expiry** (Unix ms on the coordinator's clock) is checked once, when a board *first
//! accepts* a worker's commitment for the unit; once filed it stays for the board's TTL.
//! The coordinator sets it to the lease's end plus [`GRACE_MS`] (or one lease period if
//! longer). Heartbeats renew leases but tickets are not re-issued, so the grace must cover
//! an honest unit's wait in the worker's buffer and its run, and clocks a little apart.
//! Expiry is not what stops junk — a ticket names the one worker whose signed commitment
//! it admits, so it is worthless to anyone else — it bounds how long a worker that lost
//! its lease can still file one. A unit committed later (say, resumed from a checkpoint
//! after a long outage) is refused by boards (`ticket_expired`) and still certified
//! through partial certificates at the coordinator.
//!
//! Sans-IO: time is an argument.

use crate::{Error, Identity, ProjectId, UnitId, WorkerId};

/// How long after its lease's end a ticket still admits a first commitment: an hour.
pub const GRACE_MS: u64 = 60 * 60 * 1000;

/// Domain separation for ticket signatures.
const TICKET_CONTEXT: &[u8] = b"fallow/ticket/v1\0";

/// The coordinator's voucher that `unit` of `project` is leased to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Unix ms (coordinator clock) after which a board no longer *first* accepts it.
    pub expires_ms: u64,
    /// The coordinator's ed25519 signature over [`message`].
    pub signature: [u8; 64],
}

/// Why a board refuses a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Not the coordinator's signature over this worker, project and unit (forged, or
    /// issued for another worker, unit or project, or by another coordinator).
    BadSignature,
    /// Past its expiry.
    Expired,
}

/// What a ticket's signature covers.
fn message(worker: WorkerId, project: ProjectId, unit: UnitId, expires_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(TICKET_CONTEXT.len() + 32 + 24);
    m.extend_from_slice(TICKET_CONTEXT);
    m.extend_from_slice(&worker.0);
    m.extend_from_slice(&project.0.to_le_bytes());
    m.extend_from_slice(&unit.0.to_le_bytes());
    m.extend_from_slice(&expires_ms.to_le_bytes());
    m
}

impl Identity {
    /// Signs a lease ticket (the coordinator's key): `unit` of `project` is leased to
    /// `worker`, and boards may first accept its commitment until `expires_ms`.
    pub fn sign_ticket(
        &self,
        worker: WorkerId,
        project: ProjectId,
        unit: UnitId,
        expires_ms: u64,
    ) -> Ticket {
        Ticket {
            expires_ms,
            signature: self.sign_raw(&message(worker, project, unit, expires_ms)),
        }
    }
}

impl Ticket {
    /// Checks that `coordinator` issued this ticket for exactly (`worker`, `project`,
    /// `unit`) and that it has not expired at `now_ms`.
    pub fn verify(
        &self,
        coordinator: WorkerId,
        worker: WorkerId,
        project: ProjectId,
        unit: UnitId,
        now_ms: u64,
    ) -> Result<(), TicketError> {
        crate::claim::verify_signature(
            coordinator,
            &message(worker, project, unit, self.expires_ms),
            &self.signature,
        )
        .map_err(|_| TicketError::BadSignature)?;
        if now_ms > self.expires_ms {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
}

impl From<TicketError> for Error {
    fn from(e: TicketError) -> Self {
        Error::malformed(
            "ticket",
            match e {
                TicketError::BadSignature => "not the coordinator's ticket for this lease",
                TicketError::Expired => "expired",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_vouches_for_exactly_one_lease_until_it_expires() {
        let coordinator = Identity::from_seed([9; 32]);
        let (w, other) = (
            Identity::from_seed([1; 32]).id(),
            Identity::from_seed([2; 32]).id(),
        );
        let t = coordinator.sign_ticket(w, ProjectId(1), UnitId(5), 1_000);
        let check = |key: WorkerId, worker, project, unit, now| {
            t.verify(key, worker, ProjectId(project), UnitId(unit), now)
        };
        let c = coordinator.id();
        assert_eq!(check(c, w, 1, 5, 1_000), Ok(()));
        assert_eq!(check(c, w, 1, 5, 1_001), Err(TicketError::Expired));
        assert_eq!(check(c, other, 1, 5, 0), Err(TicketError::BadSignature));
        assert_eq!(check(c, w, 2, 5, 0), Err(TicketError::BadSignature));
        assert_eq!(check(c, w, 1, 6, 0), Err(TicketError::BadSignature));
        assert_eq!(check(w, w, 1, 5, 0), Err(TicketError::BadSignature));
        let mut later = t;
        later.expires_ms += 1;
        assert_eq!(
            later.verify(c, w, ProjectId(1), UnitId(5), 0),
            Err(TicketError::BadSignature),
            "the expiry is signed"
        );
    }
}
