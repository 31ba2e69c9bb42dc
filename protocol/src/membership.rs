//! Who may be a SWIM member, and what a member's datagram proves.
//!
//! SWIM (foca, `worker::membership`) replies to the address an identity names, so an open
//! membership makes every worker a UDP reflector for whoever can name an address. Three
//! signed messages close it:
//!
//! - **Peer proof.** Before vouching for a worker's `peer_addr`, the coordinator calls the
//!   worker's peer service there (`Peer.Prove`) with a fresh nonce; the worker answers with
//!   its key's signature over
//!
//!   ```text
//!   "fallow/peer-proof/v1\0" ‖ coordinator key ‖ nonce ‖ len(peer_addr) ‖ peer_addr
//!   ```
//!
//!   ([`proof_message`]). Only a process holding the worker key and answering at that
//!   address can make it, so an address the worker does not serve is never vouched for.
//! - **Membership credential** ([`Credential`]). The coordinator signs, with its own key,
//!
//!   ```text
//!   "fallow/member/v1\0" ‖ worker key ‖ expires_ms ‖ len(addr) ‖ addr
//!   ```
//!
//!   for a proven address; it is renewed with heartbeats well before `expires_ms`
//!   ([`CREDENTIAL_TTL_MS`], [`RENEW_BEFORE_MS`]). A worker's SWIM identity carries it, and
//!   a member admits an identity only if its credential verifies under the coordinator key
//!   and has not expired.
//! - **Signed datagram** ([`sign_datagram`], [`verify_datagram`]). Every SWIM datagram is
//!   the sender's worker-key signature over `"fallow/swim/v1\0" ‖ payload`, followed by the
//!   payload; the receiver also requires the UDP source address to equal the sender's
//!   credentialed address. A spoofed source therefore cannot make a worker answer to an
//!   address the coordinator has not verified for the signing key.
//!
//! Sans-IO: time is an argument.

use std::net::SocketAddr;

use crate::{Error, Identity, WorkerId};

const PROOF_CONTEXT: &[u8] = b"fallow/peer-proof/v1\0";
const MEMBER_CONTEXT: &[u8] = b"fallow/member/v1\0";
const DATAGRAM_CONTEXT: &[u8] = b"fallow/swim/v1\0";

/// How long a credential is valid: 10 minutes. Long enough that a coordinator outage of a
/// few minutes does not dissolve the membership, short enough that a worker the coordinator
/// no longer vouches for (its address changed, it was removed) drops out soon.
pub const CREDENTIAL_TTL_MS: u64 = 10 * 60 * 1000;

/// The coordinator renews a credential in a heartbeat answer once less than this is left
/// (5 minutes): many heartbeats fall in that window, so one lost beat costs nothing.
pub const RENEW_BEFORE_MS: u64 = 5 * 60 * 1000;

/// Length of the nonce in a peer proof.
pub const NONCE_LEN: usize = 32;

/// Length of a datagram signature, which prefixes every SWIM datagram.
pub const DATAGRAM_SIGNATURE_LEN: usize = 64;

/// What a worker signs to prove it answers at `peer_addr` ([`Identity::sign_peer_proof`]).
pub fn proof_message(coordinator: WorkerId, nonce: &[u8; NONCE_LEN], peer_addr: &str) -> Vec<u8> {
    let mut m = PROOF_CONTEXT.to_vec();
    m.extend_from_slice(&coordinator.0);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&(peer_addr.len() as u64).to_le_bytes());
    m.extend_from_slice(peer_addr.as_bytes());
    m
}

impl Identity {
    /// Signs a peer proof: this worker answers at `peer_addr`, asked by `coordinator` with
    /// `nonce`.
    pub fn sign_peer_proof(
        &self,
        coordinator: WorkerId,
        nonce: &[u8; NONCE_LEN],
        peer_addr: &str,
    ) -> [u8; 64] {
        self.sign_raw(&proof_message(coordinator, nonce, peer_addr))
    }
}

/// Checks a peer proof made by [`Identity::sign_peer_proof`] by `worker`.
pub fn verify_peer_proof(
    worker: WorkerId,
    coordinator: WorkerId,
    nonce: &[u8; NONCE_LEN],
    peer_addr: &str,
    signature: &[u8],
) -> Result<(), Error> {
    crate::claim::verify_signature(
        worker,
        &proof_message(coordinator, nonce, peer_addr),
        signature,
    )
    .map_err(|_| Error::malformed("ProveResponse.signature", "does not verify"))
}

/// The coordinator's statement that `worker` answers at `addr`, valid until `expires_ms`
/// (Unix ms, coordinator clock).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Credential {
    /// The worker vouched for.
    pub worker: WorkerId,
    /// Its proven peer address (SWIM on UDP at the same port).
    pub addr: SocketAddr,
    /// End of validity, Unix ms.
    pub expires_ms: u64,
    /// The coordinator's signature.
    pub signature: [u8; 64],
}

/// Why a credential is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signature does not verify under the coordinator key (forged, or another
    /// coordinator's).
    #[error("credential signature does not verify")]
    Signature,
    /// Valid once, but past `expires_ms`.
    #[error("credential expired")]
    Expired,
}

impl Credential {
    fn message(worker: WorkerId, addr: SocketAddr, expires_ms: u64) -> Vec<u8> {
        let addr = addr.to_string();
        let mut m = MEMBER_CONTEXT.to_vec();
        m.extend_from_slice(&worker.0);
        m.extend_from_slice(&expires_ms.to_le_bytes());
        m.extend_from_slice(&(addr.len() as u64).to_le_bytes());
        m.extend_from_slice(addr.as_bytes());
        m
    }

    /// The coordinator vouches for `worker` at `addr` from `now_ms` for [`CREDENTIAL_TTL_MS`].
    pub fn issue(coordinator: &Identity, worker: WorkerId, addr: SocketAddr, now_ms: u64) -> Self {
        let expires_ms = now_ms.saturating_add(CREDENTIAL_TTL_MS);
        Credential {
            worker,
            addr,
            expires_ms,
            signature: coordinator.sign_raw(&Self::message(worker, addr, expires_ms)),
        }
    }

    /// Checks the signature under `coordinator` and that it is valid at `now_ms`.
    pub fn verify(&self, coordinator: WorkerId, now_ms: u64) -> Result<(), Refusal> {
        crate::claim::verify_signature(
            coordinator,
            &Self::message(self.worker, self.addr, self.expires_ms),
            &self.signature,
        )
        .map_err(|_| Refusal::Signature)?;
        if now_ms >= self.expires_ms {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// Whether the coordinator should send a fresh one at `now_ms`.
    pub fn due_for_renewal(&self, now_ms: u64) -> bool {
        self.expires_ms.saturating_sub(now_ms) < RENEW_BEFORE_MS
    }

    /// The wire form: worker key (32) ‖ expires_ms (8, LE) ‖ signature (64) ‖ addr (UTF-8).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(104 + 48);
        out.extend_from_slice(&self.worker.0);
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(self.addr.to_string().as_bytes());
        out
    }

    /// Parses [`Credential::to_bytes`]; `field` names the message field in errors. Does not
    /// verify: call [`Credential::verify`].
    pub fn from_bytes(field: &'static str, bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < 104 || bytes.len() > 104 + 64 {
            return Err(Error::malformed(field, "wrong length"));
        }
        let mut worker = [0u8; 32];
        worker.copy_from_slice(&bytes[..32]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&bytes[32..40]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[40..104]);
        let addr = std::str::from_utf8(&bytes[104..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::malformed(field, "address is not host:port"))?;
        Ok(Credential {
            worker: WorkerId(worker),
            addr,
            expires_ms: u64::from_le_bytes(expires),
            signature,
        })
    }
}

/// A SWIM datagram as sent: `sender`'s signature, then `payload`.
pub fn sign_datagram(sender: &Identity, payload: &[u8]) -> Vec<u8> {
    let mut m = DATAGRAM_CONTEXT.to_vec();
    m.extend_from_slice(payload);
    let signature = sender.sign_raw(&m);
    let mut out = Vec::with_capacity(DATAGRAM_SIGNATURE_LEN + payload.len());
    out.extend_from_slice(&signature);
    out.extend_from_slice(payload);
    out
}

/// Splits a datagram into signature and payload (without verifying: the signer's key is
/// inside the payload). `None` if too short.
pub fn split_datagram(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    (datagram.len() > DATAGRAM_SIGNATURE_LEN).then(|| datagram.split_at(DATAGRAM_SIGNATURE_LEN))
}

/// Checks that `signature` over `payload` was made by `sender`.
pub fn verify_datagram(sender: WorkerId, signature: &[u8], payload: &[u8]) -> bool {
    let mut m = DATAGRAM_CONTEXT.to_vec();
    m.extend_from_slice(payload);
    crate::claim::verify_signature(sender, &m, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_credential_verifies_only_under_its_coordinator_until_it_expires() {
        let coordinator = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let worker = Identity::from_seed([3; 32]).id();
        let c = Credential::issue(&coordinator, worker, addr("127.0.0.1:7000"), 1_000);
        assert_eq!(c.verify(coordinator.id(), 1_000), Ok(()));
        assert_eq!(c.verify(other.id(), 1_000), Err(Refusal::Signature));
        assert_eq!(
            c.verify(coordinator.id(), 1_000 + CREDENTIAL_TTL_MS),
            Err(Refusal::Expired)
        );
        let mut moved = c.clone();
        moved.addr = addr("10.0.0.9:7000");
        assert_eq!(
            moved.verify(coordinator.id(), 1_000),
            Err(Refusal::Signature)
        );
        let mut longer = c.clone();
        longer.expires_ms += 1;
        assert_eq!(
            longer.verify(coordinator.id(), 1_000),
            Err(Refusal::Signature)
        );
        let back = Credential::from_bytes("c", &c.to_bytes()).expect("parse");
        assert_eq!(back, c);
        assert!(Credential::from_bytes("c", &c.to_bytes()[..50]).is_err());
        assert!(!c.due_for_renewal(1_000));
        assert!(c.due_for_renewal(1_000 + CREDENTIAL_TTL_MS - RENEW_BEFORE_MS + 1));
    }

    #[test]
    fn a_peer_proof_binds_key_coordinator_nonce_and_address() {
        let w = Identity::from_seed([4; 32]);
        let coordinator = Identity::from_seed([5; 32]).id();
        let nonce = [9u8; NONCE_LEN];
        let sig = w.sign_peer_proof(coordinator, &nonce, "127.0.0.1:1");
        assert!(verify_peer_proof(w.id(), coordinator, &nonce, "127.0.0.1:1", &sig).is_ok());
        assert!(verify_peer_proof(w.id(), coordinator, &nonce, "127.0.0.1:2", &sig).is_err());
        assert!(
            verify_peer_proof(w.id(), coordinator, &[8; NONCE_LEN], "127.0.0.1:1", &sig).is_err()
        );
        assert!(verify_peer_proof(coordinator, coordinator, &nonce, "127.0.0.1:1", &sig).is_err());
    }

    #[test]
    fn a_datagram_verifies_only_for_its_signer_and_bytes() {
        let w = Identity::from_seed([6; 32]);
        let d = sign_datagram(&w, b"hello");
        let (sig, payload) = split_datagram(&d).expect("split");
        assert_eq!(payload, b"hello");
        assert!(verify_datagram(w.id(), sig, payload));
        assert!(!verify_datagram(
            Identity::from_seed([7; 32]).id(),
            sig,
            payload
        ));
        assert!(!verify_datagram(w.id(), sig, b"hellO"));
        assert!(split_datagram(&d[..64]).is_none());
    }
}
