//! Who the workers are and what they may do: the worker registry, the request and
//! registration limiters, call freshness, and the peers each worker is told about (sampled,
//! and proven reachable before the coordinator vouches for them).

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use proto::v1 as pb;
use protocol::WorkerId;
use protocol::call::CallStamp;
use tonic::{Response, Status};

use super::{CoordinatorService, State, now_us, to_status};
use crate::Error;
use crate::fleet::Reported;
use crate::store::Store;

/// Peers sent to a worker that accepts connections: a sample that seeds its SWIM
/// membership (SWIM finds the rest), so registering a fleet costs O(N), not O(N²).
pub(super) const PEER_SAMPLE: usize = 32;

/// Most worker keys the rate limiter tracks at once (see [`CoordinatorService::admit`]):
/// about 100 bytes each.
pub(super) const MAX_LIMITED_KEYS: usize = 200_000;
/// Registrations one network may burst to before [`RegistrationLimiter`] holds it to its
/// rate: a lab of this many machines behind one address can all start at once.
pub(super) const REGISTRATION_BURST: u32 = 600;

/// Registrations per network (the /24 or /48 a worker connects from, as for replica
/// placement; loopback is exempt): keys are free to make, so without it one host could
/// register workers without end. `registrations_per_minute` sustained, bursts of
/// [`REGISTRATION_BURST`]; it tracks at most [`MAX_LIMITED_KEYS`] networks.
pub(crate) struct RegistrationLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    per_minute: u32,
}

impl RegistrationLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        RegistrationLimiter {
            limiter: NonZeroU32::new(per_minute).map(|rate| {
                let burst = NonZeroU32::new(REGISTRATION_BURST.max(per_minute)).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_minute(rate).allow_burst(burst))
            }),
            per_minute,
        }
    }

    /// Admits or refuses one registration from `network` (`None`: loopback, exempt).
    pub(crate) fn admit(&self, network: Option<&str>) -> Result<(), Status> {
        let (Some(limiter), Some(network)) = (&self.limiter, network) else {
            return Ok(());
        };
        if limiter.len() >= MAX_LIMITED_KEYS {
            return Ok(());
        }
        limiter.check_key(&network.to_string()).map_err(|_| {
            to_status(Error::RegistrationsLimited {
                network: network.to_string(),
                per_minute: self.per_minute,
            })
        })
    }

    /// Forgets networks quiet long enough to have a full bucket again.
    pub(super) fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

pub(super) struct WorkerEntry {
    pub(super) peer_addr: String,
    pub(super) last_seen: u64,
    pub(super) account: String,
    pub(super) team: String,
    /// Calls this worker may make beyond its request rate, earned by the work leased to it
    /// ([`BACKED_CALLS_PER_LEASE`] a unit): see [`CoordinatorService::admit_backed`].
    pub(super) backed: u32,
    /// What its last heartbeat said it is doing.
    pub(super) reported: Reported,
    /// Expiry of the last membership credential sent (0: none yet; after a restart the
    /// next heartbeat brings one).
    pub(super) vouched_until: u64,
}

/// How long the coordinator waits for a registering worker to prove its peer address
/// (`Peer.Prove`): connect and answer. A worker that does not answer in time registers
/// without inbound connections.
pub(super) const PROVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Calls a leased unit entitles its worker to beyond the request rate: waiting its turn
/// (a heartbeat), the certificate, a failure report or a dispute, asking for the next
/// unit, and retries. An honest
/// fleet on tiny units makes calls in proportion to the units it runs, so a rate alone
/// would refuse it; work is leased only as fast as the scheduler hands it out.
pub(super) const BACKED_CALLS_PER_LEASE: u32 = 8;
/// Most backed calls a worker may hold (a thousand units' worth).
pub(super) const MAX_BACKED_CALLS: u32 = BACKED_CALLS_PER_LEASE * 1024;

/// The network a worker connects from, for replica placement: the /24 of an IPv4 address
/// or the /48 of an IPv6 one; `None` on loopback (a developer's machine runs many workers).
pub(crate) fn subnet_of(addr: Option<std::net::SocketAddr>) -> Option<String> {
    let ip = addr?.ip();
    match ip {
        _ if ip.is_loopback() => None,
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => None,
            Some(v4) => {
                let o = v4.octets();
                Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
            }
            None => {
                let s = v6.segments();
                Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
            }
        },
    }
}

impl<S: Store> CoordinatorService<S> {
    /// Refuses a worker over its request rate (`worker_requests_per_second`).
    ///
    /// The limiter holds one entry per key it has seen lately (dropped after a quiet
    /// minute). Keys are free to make, so once it tracks [`MAX_LIMITED_KEYS`] it stops
    /// limiting until the next prune rather than grow without bound under a flood of
    /// fresh keys (which the handlers refuse right after as unregistered anyway).
    pub(super) fn admit(&self, worker: WorkerId) -> Result<(), Status> {
        let Some(limiter) = &self.inner.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_LIMITED_KEYS {
            return Ok(());
        }
        match limiter.check_key(&worker) {
            Err(_) => Err(to_status(Error::RateLimited {
                worker,
                rate: self.inner.worker_rate,
            })),
            Ok(()) => Ok(()),
        }
    }

    /// Admits a call that follows from leased work (heartbeat, asking for more work,
    /// certificate, failure, dispute, misbehaviour report): it spends one of the calls the worker's leases earned
    /// ([`BACKED_CALLS_PER_LEASE`]) if it has any, and only otherwise counts against the
    /// request rate ([`CoordinatorService::admit`]). So an honest worker on tiny units is
    /// never refused, while a key flooding without work is.
    pub(super) fn admit_backed(&self, state: &mut State, worker: WorkerId) -> Result<(), Status> {
        if let Some(entry) = state.workers.get_mut(&worker)
            && entry.backed > 0
        {
            entry.backed -= 1;
            return Ok(());
        }
        self.admit(worker)
    }

    /// Checks that `worker` answers at `peer_addr`: calls its `Peer.Prove` with a fresh
    /// nonce and verifies the signature (`protocol::membership`). The error says why not.
    pub(super) async fn prove_peer(&self, worker: WorkerId, peer_addr: &str) -> Result<(), String> {
        let addr: std::net::SocketAddr = peer_addr
            .parse()
            .map_err(|_| format!("{peer_addr:?} is not host:port"))?;
        let mut nonce = [0u8; protocol::membership::NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no OS random source: {e}"))?;
        let coordinator = self.inner.key.id();
        let call = async {
            // Over peer TLS, accepting only a certificate bound to the registering worker's
            // key: whoever else answers at the address gets no further than the handshake.
            let channel = connections::peer_tls::endpoint(addr, worker)
                .map_err(|e| e.to_string())?
                .connect_timeout(PROVE_TIMEOUT)
                .timeout(PROVE_TIMEOUT)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to its peer service at {addr}: {e}"))?;
            pb::peer_client::PeerClient::new(channel)
                .prove(pb::ProveRequest {
                    nonce: nonce.to_vec(),
                    peer_addr: peer_addr.to_string(),
                    coordinator_key: coordinator.0.to_vec(),
                })
                .await
                .map(Response::into_inner)
                .map_err(|s| format!("its peer service at {addr} refused Prove: {}", s.message()))
        };
        let answer = tokio::time::timeout(PROVE_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer from {addr} within {PROVE_TIMEOUT:?}"))??;
        if answer.public_key != worker.0 {
            return Err(format!("another worker answers at {addr}"));
        }
        protocol::membership::verify_peer_proof(
            worker,
            coordinator,
            &nonce,
            peer_addr,
            &answer.signature,
        )
        .map_err(|e| format!("proof from {addr}: {e}"))
    }

    /// What a worker is told about its peers: a worker that accepts connections gets a
    /// random sample to seed SWIM with; one behind NAT (no peer address) takes every live
    /// reachable worker, because it chooses a unit's boards from that list itself.
    pub(super) fn peers_for(
        &self,
        state: &mut State,
        worker: WorkerId,
        now: u64,
    ) -> Vec<pb::PeerInfo> {
        let inbound = state
            .workers
            .get(&worker)
            .is_some_and(|w| !w.peer_addr.is_empty());
        if inbound {
            self.peer_sample(state, worker, now)
        } else {
            self.peers(state, worker, now)
        }
    }

    /// Up to [`PEER_SAMPLE`] distinct live workers with a peer address, other than `except`.
    pub(super) fn peer_sample(
        &self,
        state: &mut State,
        except: WorkerId,
        now: u64,
    ) -> Vec<pb::PeerInfo> {
        let n = state.listed.len();
        let mut picked: HashSet<WorkerId> = HashSet::new();
        let mut out = Vec::new();
        // Few draws: a large fleet gives a sample quickly; a small one is taken whole.
        let draws = if n <= PEER_SAMPLE * 2 {
            0
        } else {
            PEER_SAMPLE * 4
        };
        for _ in 0..draws {
            if out.len() >= PEER_SAMPLE {
                break;
            }
            let id = state.listed[(state.rng.next_u64() % n as u64) as usize];
            self.offer_peer(state, id, except, now, &mut picked, &mut out);
        }
        if draws == 0 {
            for i in 0..n {
                let id = state.listed[i];
                self.offer_peer(state, id, except, now, &mut picked, &mut out);
            }
        }
        out
    }

    pub(super) fn offer_peer(
        &self,
        state: &State,
        id: WorkerId,
        except: WorkerId,
        now: u64,
        picked: &mut HashSet<WorkerId>,
        out: &mut Vec<pb::PeerInfo>,
    ) {
        if id == except || out.len() >= PEER_SAMPLE || picked.contains(&id) {
            return;
        }
        if let Some(w) = state.workers.get(&id)
            && !w.peer_addr.is_empty()
            && now.saturating_sub(w.last_seen) <= self.inner.lease_ms
        {
            picked.insert(id);
            out.push(pb::PeerInfo {
                public_key: id.0.to_vec(),
                addr: w.peer_addr.clone(),
            });
        }
    }

    pub(super) fn peers(&self, state: &State, except: WorkerId, now: u64) -> Vec<pb::PeerInfo> {
        state
            .workers
            .iter()
            .filter(|(id, w)| {
                // Workers behind NAT (no peer address) are never anyone's board.
                **id != except
                    && !w.peer_addr.is_empty()
                    && now.saturating_sub(w.last_seen) <= self.inner.lease_ms
            })
            .map(|(id, w)| pb::PeerInfo {
                public_key: id.0.to_vec(),
                addr: w.peer_addr.clone(),
            })
            .collect()
    }

    /// Admits an authenticated call's stamp once ([`ReplayGuard`]); a stamp off the
    /// coordinator's clock is refused with the clock in the `fallow-now` header, so the
    /// worker can correct itself and retry.
    pub(super) fn fresh(
        state: &mut State,
        worker: WorkerId,
        stamp: &CallStamp,
    ) -> Result<(), Status> {
        let now = now_us();
        state
            .calls
            .admit(worker, stamp.timestamp_us, now)
            .map_err(|refusal| {
                to_status(Error::StaleCall {
                    worker,
                    refusal: refusal.to_string(),
                    now_ms: now / 1000,
                })
            })
    }

    pub(super) fn known_worker(
        state: &mut State,
        worker: WorkerId,
        now: u64,
    ) -> Result<(), Status> {
        match state.workers.get_mut(&worker) {
            Some(w) => {
                w.last_seen = now;
                Ok(())
            }
            None => Err(to_status(Error::UnknownWorker(worker.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_limited_per_network_and_loopback_is_exempt() {
        let limiter = RegistrationLimiter::new(60);
        for _ in 0..REGISTRATION_BURST {
            assert!(limiter.admit(Some("203.0.113.0/24")).is_ok());
        }
        let refused = limiter
            .admit(Some("203.0.113.0/24"))
            .expect_err("over the burst");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("203.0.113.0/24"),
            "{}",
            refused.message()
        );
        // Another network, and loopback, are not held back by it.
        assert!(limiter.admit(Some("198.51.100.0/24")).is_ok());
        for _ in 0..2 * REGISTRATION_BURST {
            assert!(limiter.admit(None).is_ok());
        }
        // 0 turns it off.
        let off = RegistrationLimiter::new(0);
        for _ in 0..2 * REGISTRATION_BURST {
            assert!(off.admit(Some("203.0.113.0/24")).is_ok());
        }
    }
}
