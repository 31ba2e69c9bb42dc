//! How often callers may use this worker's peer service (its rendezvous board).
//!
//! The peer service is open to anyone who can reach the port, and every `Exchange` costs
//! signature checks: well-formed junk once drove a worker from 13 % to 90 % of a core. So
//! each `Exchange` (and each `Prove`, which costs a signature; it names no keys) is charged, before it is parsed further than tonic's decoding, to
//!
//! - its **connection** (the caller's socket address): [`PER_CONNECTION_PER_SECOND`]
//!   sustained, bursts of [`PER_CONNECTION_BURST`] — loopback included;
//! - its **address** (an IPv4 address or IPv6 /64, as `connections` counts them):
//!   [`PER_ADDRESS_PER_SECOND`], bursts of [`PER_ADDRESS_BURST`] — loopback exempt (a
//!   test fleet on one host), as for the connection cap;
//! - and each distinct worker **key** its commitments and reveals name:
//!   [`PER_KEY_PER_SECOND`], bursts of [`PER_KEY_BURST`].
//!
//! A refused call gets `RESOURCE_EXHAUSTED` and is counted with the requests the board
//! refused whole. Honest gossip never comes near: a holder sends one batched exchange per
//! board per poll, every 500 ms at the most (2 a second to one board over its one
//! connection, naming only its own key), and a lab of 50 machines behind one NAT address
//! sends a board at most 100 a second. A flood spread over many connections is bounded
//! by the per-address cap on connections (256) times the per-connection rate, and by the
//! per-address rate off loopback.
//!
//! Memory: each limiter tracks at most [`MAX_TRACKED`] keys; once full, it forgets those
//! whose bucket is full again (at most once a second) and, if still full, stops limiting
//! on that key until then — the other two still apply (the coordinator's
//! `RegistrationLimiter` does the same).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connections::Address;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use protocol::WorkerId;

/// Exchanges per second one connection may sustain.
pub const PER_CONNECTION_PER_SECOND: u32 = 10;
/// Exchanges one connection may send at once.
pub const PER_CONNECTION_BURST: u32 = 40;
/// Exchanges per second one address (not loopback) may sustain.
pub const PER_ADDRESS_PER_SECOND: u32 = 200;
/// Exchanges one address may send at once.
pub const PER_ADDRESS_BURST: u32 = 800;
/// Exchanges per second that may name one worker key.
pub const PER_KEY_PER_SECOND: u32 = 10;
/// Exchanges naming one worker key at once.
pub const PER_KEY_BURST: u32 = 40;
/// Most keys one limiter tracks (about 100 bytes each).
pub const MAX_TRACKED: usize = 100_000;

/// Why a call was refused (the `RESOURCE_EXHAUSTED` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited(pub String);

/// The peer service's rate limits (see the module docs).
#[derive(Debug)]
pub struct PeerLimiter {
    connection: DefaultKeyedRateLimiter<SocketAddr>,
    address: DefaultKeyedRateLimiter<Address>,
    key: DefaultKeyedRateLimiter<WorkerId>,
    last_prune: Mutex<Instant>,
}

impl Default for PeerLimiter {
    fn default() -> Self {
        let quota = |rate: u32, burst: u32| {
            // Invariant: the constants above are non-zero.
            let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        };
        PeerLimiter {
            connection: RateLimiter::keyed(quota(PER_CONNECTION_PER_SECOND, PER_CONNECTION_BURST)),
            address: RateLimiter::keyed(quota(PER_ADDRESS_PER_SECOND, PER_ADDRESS_BURST)),
            key: RateLimiter::keyed(quota(PER_KEY_PER_SECOND, PER_KEY_BURST)),
            last_prune: Mutex::new(Instant::now()),
        }
    }
}

impl PeerLimiter {
    /// Admits or refuses one exchange from `remote` (unknown in in-process tests: only the
    /// keys are charged) naming `keys`.
    pub fn admit(
        &self,
        remote: Option<SocketAddr>,
        keys: impl IntoIterator<Item = WorkerId>,
    ) -> Result<(), Limited> {
        self.prune_if_full();
        if let Some(remote) = remote {
            if self.connection.len() < MAX_TRACKED && self.connection.check_key(&remote).is_err() {
                return Err(Limited(format!(
                    "more than {PER_CONNECTION_PER_SECOND} exchanges a second on this connection; poll less often"
                )));
            }
            let address = Address::of(remote.ip());
            if !address.is_loopback()
                && self.address.len() < MAX_TRACKED
                && self.address.check_key(&address).is_err()
            {
                return Err(Limited(format!(
                    "more than {PER_ADDRESS_PER_SECOND} exchanges a second from {address}; poll less often"
                )));
            }
        }
        let mut keys: Vec<WorkerId> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if self.key.len() < MAX_TRACKED && self.key.check_key(&key).is_err() {
                return Err(Limited(format!(
                    "more than {PER_KEY_PER_SECOND} exchanges a second name worker {key}; poll less often"
                )));
            }
        }
        Ok(())
    }

    fn prune_if_full(&self) {
        let full = self.connection.len() >= MAX_TRACKED
            || self.address.len() >= MAX_TRACKED
            || self.key.len() >= MAX_TRACKED;
        if !full {
            return;
        }
        let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        for limiter in [&self.connection as &dyn Prune, &self.address, &self.key] {
            limiter.prune();
        }
    }
}

/// A keyed limiter that forgets keys with a full bucket.
trait Prune {
    fn prune(&self);
}

impl<K: std::hash::Hash + Eq + Clone> Prune for DefaultKeyedRateLimiter<K> {
    fn prune(&self) {
        self.retain_recent();
        self.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Identity;

    #[test]
    fn a_flood_is_refused_and_honest_polling_is_not() {
        let limiter = PeerLimiter::default();
        let (honest, flood) = ("127.0.0.1:4000".parse().ok(), "127.0.0.1:5000".parse().ok());
        let (me, attacker) = (
            Identity::from_seed([1; 32]).id(),
            Identity::from_seed([2; 32]).id(),
        );
        let refused = (0..1000)
            .filter(|_| limiter.admit(flood, [attacker]).is_err())
            .count();
        assert!(
            refused >= 1000 - PER_CONNECTION_BURST as usize - 5,
            "{refused}"
        );
        // The honest holder on its own connection, polling, is untouched by the flood.
        for _ in 0..PER_CONNECTION_BURST {
            assert_eq!(limiter.admit(honest, [me]), Ok(()));
        }
        // One key named from many connections is limited too.
        let spread = (0..200u16)
            .filter(|p| {
                let remote = format!("127.0.0.1:{}", 6000 + p).parse().ok();
                limiter.admit(remote, [attacker]).is_err()
            })
            .count();
        assert!(spread >= 190, "{spread}");
        // Off loopback, one address over many connections is limited.
        let lab = (0..2000u16)
            .filter(|p| {
                let remote = format!("192.0.2.7:{}", 10_000 + p / 20).parse().ok();
                let key = Identity::from_seed([(p % 200) as u8 + 3; 32]).id();
                limiter.admit(remote, [key]).is_err()
            })
            .count();
        assert!(lab > 0, "{lab}");
    }
}
