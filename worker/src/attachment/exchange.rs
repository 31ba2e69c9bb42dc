//! The holder's side of an attachment: the gossip loop that polls the boards of held
//! units (driving the sans-IO [`Holder`](crate::gossip::Holder)), carrying out what it
//! decides, and uploading certificates to the coordinator in turn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{Claim, UnitId, WorkerId};

use super::coordinator::Coordinator;
use super::{Shared, backoff, pause, peers_as_members};
use crate::gossip::{Reply, Request};
use crate::lifecycle::{Effect, Upload};
use crate::membership::Member;
use crate::rpc::{self, PeerClient};
use crate::{Error, lock};

/// How often the gossip loop wakes; each unit is polled at its own pace
/// ([`PollConfig`]), this only bounds the added latency.
pub(super) const GOSSIP_TICK: Duration = Duration::from_millis(250);

/// Holders that reach the same quorum normally see it within one poll of each other. The
/// first-ranked claimant ([`gossip::submit_rank`]) uploads the output at once; each later
/// rank waits this much longer and uploads only if the unit is still not settled, so the
/// output normally travels once.
pub(super) const SUBMIT_GRACE: Duration = Duration::from_secs(2);

/// A board that failed an exchange is avoided this long (its units go to the next-ranked
/// members meanwhile); SWIM removes it for good if it is really gone.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How often our board drops the units untouched for `BoardLimits::ttl_ms`.
const BOARD_SWEEP: Duration = Duration::from_secs(10);

impl Shared {
    /// Polls the boards of held units until shutdown: one batched exchange per board.
    pub(crate) async fn gossip_loop(self: Arc<Self>) {
        let me = self.identity.id();
        let mut swept = Instant::now();
        loop {
            if !pause(&self.cancel, GOSSIP_TICK).await {
                return;
            }
            if swept.elapsed() >= BOARD_SWEEP {
                swept = Instant::now();
                lock(&self.board)
                    .board
                    .expire(self.client().coordinator_now_ms());
            }
            let members = self.members();
            let ids: Vec<WorkerId> = members.iter().map(|m| m.id).collect();
            let (requests, effects) = lock(&self.life).tick(&ids, self.now());
            self.carry_out(effects);
            let mut exchanges = tokio::task::JoinSet::new();
            for request in requests {
                self.stats.sent(rpc::request_len(&request));
                if request.board == me {
                    // Our own board: no RPC.
                    let reply = self.serve(
                        request.commitments.clone(),
                        request.reveals.clone(),
                        &request.want,
                    );
                    self.on_reply(&request, Ok(reply));
                    continue;
                }
                let client = members
                    .iter()
                    .find(|m| m.id == request.board)
                    .map(|m| self.peer_client(m.id, m.addr));
                match client {
                    Some(Ok(client)) => {
                        exchanges.spawn(async move {
                            let reply = client.exchange(&request).await;
                            (request, reply)
                        });
                    }
                    Some(Err(e)) => self.on_reply(&request, Err(e)),
                    None => {} // cannot happen: boards are drawn from `members`
                }
            }
            while let Some(done) = exchanges.join_next().await {
                if let Ok((request, reply)) = done {
                    self.on_reply(&request, reply);
                }
            }
        }
    }

    fn on_reply(self: &Arc<Self>, request: &Request, reply: Result<Reply, Error>) {
        match reply {
            Ok(reply) => {
                let effects = lock(&self.life).on_reply(request, reply, self.now());
                self.carry_out(effects);
            }
            Err(e) => {
                tracing::debug!(board = %request.board, "exchange failed: {e}");
                self.stats.failed();
                lock(&self.life).on_exchange_failed(request);
                self.suspect(request.board);
            }
        }
    }

    /// Carries out the lifecycle's effects in the background.
    pub(super) fn carry_out(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Upload(upload) => {
                    let me = self.clone();
                    self.tasks.spawn(async move { me.upload(upload).await });
                }
                Effect::Dispute { unit, claims } => {
                    self.stats.dispute();
                    let coordinator = self.coordinator.clone();
                    self.tasks.spawn(async move {
                        tracing::info!(%unit, claims = claims.len(), "claims disagree; reporting a dispute");
                        if let Err(e) = coordinator.dispute(unit, &claims).await {
                            tracing::warn!(%unit, "dispute not taken: {e}");
                        }
                    });
                }
                Effect::Misbehaviour(evidence) => self.report_misbehaviour(*evidence),
                Effect::BadBoard { board, problem } => {
                    tracing::warn!(%board, "board sent bad data ({problem}); avoiding it");
                    self.suspect(board);
                }
                Effect::DeleteCheckpoint { unit, key } => {
                    tracing::info!(%unit, "checkpointed unit is no longer ours; deleting its checkpoint");
                    self.checkpoints.remove(&key);
                }
                Effect::HandBack { units, why } => {
                    let me = self.clone();
                    self.tasks
                        .spawn(async move { me.hand_back(&units, why).await });
                }
                Effect::ReportFailure { unit, failure } => {
                    let me = self.clone();
                    self.tasks
                        .spawn(async move { me.report_failure(unit, failure).await });
                }
            }
        }
    }

    /// Uploads a certificate, and the ones queued behind it for the same unit, one at a
    /// time; certificates of different units share calls (`outbox`).
    pub(super) async fn upload(self: Arc<Self>, mut upload: Upload) {
        loop {
            let Upload {
                unit,
                claims,
                output,
                complete,
                rank,
            } = upload;
            if !self.wait_turn(unit, rank).await {
                return; // settled by another claimant (released), or shutting down
            }
            self.stats.certificate(complete);
            let (claims, output): (Arc<[Claim]>, Arc<[u8]>) = (claims.into(), output.into());
            let mut attempt = 0u32;
            let outcome = loop {
                match self
                    .outbox
                    .deliver(&*self.coordinator, unit, claims.clone(), output.clone())
                    .await
                {
                    Ok(outcome) => break Some(outcome),
                    Err(e) if e.is_transient() => {
                        attempt += 1;
                        if attempt % 8 == 1 {
                            tracing::warn!(%unit, "certificate not delivered yet: {e}");
                        }
                        if !pause(&self.cancel, backoff(attempt)).await {
                            return; // shutdown: the unit is handed back
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%unit, "certificate refused: {e}");
                        break None;
                    }
                }
            };
            tracing::debug!(%unit, complete, ?outcome, "certificate submitted");
            // Kept toward the quorum but not verified yet, the unit stays held and the next
            // queued certificate goes out; verified or refused, it is released.
            match lock(&self.life).uploaded(unit, outcome) {
                Some(next) => upload = next,
                None => return,
            }
        }
    }

    /// Waits our turn (`rank` grace periods) to upload a complete certificate; false if
    /// the unit got settled meanwhile (and is released) or we are shutting down.
    async fn wait_turn(&self, unit: UnitId, rank: usize) -> bool {
        if rank == 0 {
            return true;
        }
        if !pause(&self.cancel, SUBMIT_GRACE * rank as u32).await {
            return false;
        }
        let version = lock(&self.peers).version;
        match self
            .coordinator
            .heartbeat(&[unit], version, &self.run_report())
            .await
        {
            Ok(reply) if reply.settled.contains(&unit) => {
                lock(&self.life).settled(&[unit]);
                false
            }
            _ => true,
        }
    }

    /// The members a unit's boards are chosen from: SWIM's live members for a member, the
    /// coordinator's list of reachable workers for a worker without inbound connections
    /// (or whose peer address the coordinator does not vouch for: nobody admits it into
    /// the membership); minus boards that failed us recently.
    fn members(&self) -> Vec<Member> {
        let mut members = match &self.membership {
            Some(m) if m.credentialed() => m.members().to_vec(),
            _ => peers_as_members(&lock(&self.peers).list),
        };
        let now = Instant::now();
        let suspects = &mut lock(&self.peers).suspects;
        suspects.retain(|_, until| *until > now);
        let me = self.identity.id();
        members.retain(|m| m.id == me || !suspects.contains_key(&m.id));
        members
    }

    fn suspect(&self, board: WorkerId) {
        if board != self.identity.id() {
            lock(&self.peers)
                .suspects
                .insert(board, Instant::now() + SUSPECT_FOR);
        }
    }

    /// A client for `board`'s board at `addr`, connecting only to that worker (TLS bound
    /// to its key).
    fn peer_client(&self, board: WorkerId, addr: SocketAddr) -> Result<PeerClient, Error> {
        let clients = &mut lock(&self.peers).clients;
        if let Some(c) = clients.get(&(addr, board)) {
            return Ok(c.clone());
        }
        let c = PeerClient::new(addr, board)?;
        if clients.len() > 1024 {
            clients.clear(); // members come and go; reconnecting is cheap
        }
        clients.insert((addr, board), c.clone());
        Ok(c)
    }
}
