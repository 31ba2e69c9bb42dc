//! Our own rendezvous board, as the peer service ([`BoardHost`]) and the gossip loop
//! (for units whose board is this worker) reach it: refusals counted by reason, and those
//! that prove misbehaviour turned into [`Evidence`] and reported once.

use protocol::board::{Board, Reason, Rejection};
use protocol::claim::Commitment;
use protocol::evidence::Evidence;
use protocol::{Claim, UnitId, WorkerId};

use super::Shared;
use crate::gossip::Reply;
use crate::lock;
use crate::rpc::BoardHost;

impl BoardHost for Shared {
    fn exchange(
        &self,
        commitments: Vec<Commitment>,
        reveals: Vec<Claim>,
        want: &[UnitId],
    ) -> Reply {
        self.serve(commitments, reveals, want)
    }

    fn refused(&self, why: &'static str) {
        tracing::debug!(why, "refused a board exchange");
        self.stats.refused();
    }

    fn prove(
        &self,
        coordinator: WorkerId,
        nonce: &[u8; protocol::membership::NONCE_LEN],
        peer_addr: &str,
    ) -> Option<(WorkerId, [u8; 64])> {
        // Only the address we advertise: we vouch for nothing else.
        let me = self.membership.as_ref()?.me();
        (me.addr.to_string() == peer_addr).then(|| {
            (
                self.identity.id(),
                self.identity.sign_peer_proof(coordinator, nonce, peer_addr),
            )
        })
    }
}

impl Shared {
    /// Our board answers one exchange (from a peer, or from ourselves without RPC).
    /// Refusals are counted by reason; those that prove misbehaviour are reported.
    pub(super) fn serve(
        &self,
        commitments: Vec<Commitment>,
        reveals: Vec<Claim>,
        want: &[UnitId],
    ) -> Reply {
        // The board runs on the coordinator's clock: lease tickets expire on it.
        let now = self.client().coordinator_now_ms();
        // Kept to pair an offender's message with its filed commitment; bounded by the
        // request limits.
        let (sent_commitments, sent_reveals) = (commitments.clone(), reveals.clone());
        let (views, rejected, evidence) = {
            let board = &mut lock(&self.board).board;
            let (views, rejected) = board.exchange(commitments, reveals, want, now);
            let evidence = evidence(board, &rejected, &sent_commitments, &sent_reveals);
            (views, rejected, evidence)
        };
        self.stats.served();
        for r in &rejected {
            self.stats.rejected(r.reason);
            match r.offender {
                Some(w) => {
                    tracing::warn!(unit = %r.unit, worker = %w, reason = r.reason.as_str(), "board caught a worker changing its answer")
                }
                None => {
                    tracing::debug!(unit = %r.unit, reason = r.reason.as_str(), "board refused a message")
                }
            }
        }
        for e in evidence {
            self.report_misbehaviour(e);
        }
        Reply {
            views,
            rejected: rejected.into_iter().map(|r| (r.unit, r.reason)).collect(),
        }
    }

    pub(super) fn report_misbehaviour(&self, evidence: Evidence) {
        let Ok((worker, unit)) = evidence.offender() else {
            return; // proves nothing: never accuse on it
        };
        {
            let reported = &mut lock(&self.board).reported;
            if reported.len() > 10_000 {
                reported.clear();
            }
            if !reported.insert((unit, worker)) {
                return;
            }
        }
        self.stats.misbehaviour();
        let client = self.client().clone();
        self.tasks.spawn(async move {
            tracing::warn!(%unit, %worker, "reporting misbehaviour to the coordinator");
            if let Err(e) = client.report_misbehaviour(&evidence).await {
                tracing::warn!(%unit, %worker, "misbehaviour report not taken: {e}");
            }
        });
    }
}

/// Proof for each refusal of our board that names an offender: the commitment on file
/// paired with the offending message from the request (a second commitment, or a reveal
/// that does not open the first).
fn evidence(
    board: &Board,
    rejected: &[Rejection],
    commitments: &[Commitment],
    reveals: &[Claim],
) -> Vec<Evidence> {
    rejected
        .iter()
        .filter_map(|r| {
            let offender = r.offender?;
            let filed = board.commitment(r.unit, offender)?.clone();
            match r.reason {
                Reason::Equivocation => commitments
                    .iter()
                    .find(|c| c.unit == r.unit && c.worker == offender && c.seal != filed.seal)
                    .map(|c| Evidence::Equivocation(filed, c.clone())),
                Reason::RevealMismatch => reveals
                    .iter()
                    .find(|c| c.unit == r.unit && c.worker == offender && !c.opens(&filed))
                    .map(|c| Evidence::Mismatch(filed, c.clone())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Digest, Identity, ProjectId};

    #[test]
    fn a_board_turns_a_copier_and_an_equivocator_into_evidence_the_coordinator_accepts() {
        let coordinator = Identity::from_seed([200; 32]);
        let mut board = Board::default().vouched_by(coordinator.id());
        // Commitments as holders send them: with their lease tickets.
        let c = |claim: &Claim| {
            let t = coordinator.sign_ticket(claim.worker, claim.project, claim.unit, u64::MAX);
            claim.commitment().with_ticket(Some(t))
        };
        let honest = Claim::sign(
            &Identity::from_seed([1; 32]),
            ProjectId(1),
            UnitId(5),
            Digest::of(b"x"),
            10,
        );
        let copier = Identity::from_seed([2; 32]);
        let guess = Claim::sign(&copier, ProjectId(1), UnitId(5), Digest::of(b"?"), 10);
        let cheat = Identity::from_seed([3; 32]);
        let first = Claim::sign(&cheat, ProjectId(1), UnitId(5), Digest::of(b"a"), 10);
        let second = Claim::sign(&cheat, ProjectId(1), UnitId(5), Digest::of(b"b"), 10);
        board.exchange(
            vec![c(&honest), c(&guess), c(&first)],
            vec![honest.clone()],
            &[],
            0,
        );
        // The copier reveals the honest digest; the cheat commits again differently.
        let copied = Claim::sign(&copier, ProjectId(1), UnitId(5), honest.digest, 10);
        let commitments = vec![c(&second)];
        let reveals = vec![copied.clone()];
        let (_, rejected) = board.exchange(commitments.clone(), reveals.clone(), &[], 1);
        let found = evidence(&board, &rejected, &commitments, &reveals);
        let offenders: Vec<(WorkerId, UnitId)> = found
            .iter()
            .map(|e| e.offender().expect("valid proof"))
            .collect();
        assert_eq!(
            offenders,
            vec![(cheat.id(), UnitId(5)), (copier.id(), UnitId(5))],
            "{found:?}"
        );
        // A harmless refusal (a replay) accuses nobody.
        let (_, rejected) = board.exchange(vec![c(&honest)], Vec::new(), &[], 2);
        assert!(evidence(&board, &rejected, &[c(&honest)], &[]).is_empty());
    }
}
