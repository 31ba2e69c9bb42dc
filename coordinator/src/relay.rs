//! `RelayExchange`: the coordinator forwards a worker's board exchange to one of its
//! units' boards, for a worker that cannot open peer TLS itself — the browser worker, whose
//! page may only call its own origin. The exchange stays what the worker made: commitments
//! and reveals signed by it, tickets signed by this coordinator, checked by the board as
//! if the worker had sent them. The coordinator adds nothing, and forwards only the
//! caller's own messages (so nobody can make it carry another worker's claims), to a
//! board it vouched for, over peer TLS bound to that board's key (`connections::peer_tls`).
//!
//! One lazily connected channel per (caller, board) is kept (at most [`MAX_CHANNELS`]; all
//! are dropped when that many are held, and reconnect on their next use). Per caller,
//! because a board limits exchanges per connection (`worker::peer_limiter`): one channel
//! shared by every browser would hold them all to one connection's rate. Relayed traffic
//! still counts against the board's limit per sending address, the coordinator's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use proto::v1 as pb;
use protocol::WorkerId;
use tonic::transport::Channel;

use crate::Error;

/// Boards whose channels are kept at once.
pub(crate) const MAX_CHANNELS: usize = 4096;
/// Commitments plus reveals one relayed exchange may carry (a board's own limit,
/// `worker::rpc::MAX_EXCHANGE_MESSAGES`).
pub(crate) const MAX_MESSAGES: usize = 512;
/// Units one relayed exchange may ask about (`worker::gossip::MAX_EXCHANGE_UNITS`).
pub(crate) const MAX_WANTED: usize = 256;
/// Largest views a board may answer with (as `worker::rpc`'s client takes).
const MAX_VIEWS_BYTES: usize = 16 << 20;
/// Connecting to a board, and one whole exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay's channels to boards.
#[derive(Default)]
pub(crate) struct Relay {
    channels: Mutex<HashMap<(WorkerId, WorkerId), (SocketAddr, Channel)>>,
}

/// Checks that `exchange` carries only `caller`'s own commitments and reveals, within a
/// board's limits; names the first that is not.
pub(crate) fn check_own(caller: WorkerId, exchange: &pb::BoardExchange) -> Result<(), Error> {
    let messages = exchange.commitments.len() + exchange.reveals.len();
    if messages > MAX_MESSAGES || exchange.want_units.len() > MAX_WANTED {
        return Err(Error::BadRelay(format!(
            "{messages} commitments and reveals and {} wanted units; a board takes at most \
             {MAX_MESSAGES} and {MAX_WANTED} per exchange",
            exchange.want_units.len()
        )));
    }
    let foreign = exchange
        .commitments
        .iter()
        .map(|c| (c.unit_id, &c.worker_key))
        .chain(exchange.reveals.iter().map(|r| (r.unit_id, &r.worker_key)))
        .find(|(_, key)| key.as_slice() != caller.0.as_slice());
    if let Some((unit, _)) = foreign {
        return Err(Error::BadRelay(format!(
            "the message for unit {unit} is not the caller's own: the relay carries only \
             commitments and reveals the calling worker signed"
        )));
    }
    Ok(())
}

impl Relay {
    /// Sends `exchange` to the board of worker `board` at `addr` and returns its views;
    /// the board's own refusals come back with its status code, named as the board's.
    pub(crate) async fn exchange(
        &self,
        caller: WorkerId,
        board: WorkerId,
        addr: SocketAddr,
        exchange: pb::BoardExchange,
    ) -> Result<pb::BoardViews, tonic::Status> {
        let channel = self.channel(caller, board, addr)?;
        let mut client =
            pb::peer_client::PeerClient::new(channel).max_decoding_message_size(MAX_VIEWS_BYTES);
        match tokio::time::timeout(CALL_TIMEOUT, client.exchange(exchange)).await {
            Ok(Ok(views)) => Ok(views.into_inner()),
            // The board answered: its refusal is the caller's to read, with its code.
            Ok(Err(s))
                if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::Unknown =>
            {
                Err(tonic::Status::new(
                    s.code(),
                    format!("board {board} refused the exchange: {}", s.message()),
                ))
            }
            Ok(Err(s)) => {
                // A broken channel is made afresh on the next call.
                lock(&self.channels).remove(&(caller, board));
                Err(crate::service::to_status(Error::BoardUnreachable {
                    board,
                    why: s.message().to_string(),
                }))
            }
            Err(_) => Err(crate::service::to_status(Error::BoardUnreachable {
                board,
                why: format!("no answer within {CALL_TIMEOUT:?}"),
            })),
        }
    }

    fn channel(
        &self,
        caller: WorkerId,
        board: WorkerId,
        addr: SocketAddr,
    ) -> Result<Channel, tonic::Status> {
        let mut channels = lock(&self.channels);
        if let Some((at, channel)) = channels.get(&(caller, board))
            && *at == addr
        {
            return Ok(channel.clone());
        }
        let endpoint = connections::peer_tls::endpoint(addr, board)
            .map_err(|e| {
                crate::service::to_status(Error::BoardUnreachable {
                    board,
                    why: e.to_string(),
                })
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect_lazy();
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert((caller, board), (addr, channel.clone()));
        Ok(channel)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under this lock is complete before it can panic.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(commit_by: [u8; 32], reveal_by: [u8; 32]) -> pb::BoardExchange {
        pb::BoardExchange {
            commitments: vec![pb::Commitment {
                unit_id: 7,
                worker_key: commit_by.to_vec(),
                ..Default::default()
            }],
            reveals: vec![pb::Claim {
                unit_id: 8,
                worker_key: reveal_by.to_vec(),
                ..Default::default()
            }],
            want_units: vec![7, 8],
        }
    }

    #[test]
    fn only_the_callers_own_messages_are_relayed() {
        let me = WorkerId([1; 32]);
        check_own(me, &exchange([1; 32], [1; 32])).expect("own messages pass");
        let e = check_own(me, &exchange([2; 32], [1; 32])).expect_err("a foreign commitment");
        assert!(e.to_string().contains("unit 7"), "{e}");
        let e = check_own(me, &exchange([1; 32], [2; 32])).expect_err("a foreign reveal");
        assert!(e.to_string().contains("unit 8"), "{e}");
        let mut big = exchange([1; 32], [1; 32]);
        big.want_units = vec![1; MAX_WANTED + 1];
        let e = check_own(me, &big).expect_err("too many wanted units");
        assert!(e.to_string().contains("at most 512 and 256"), "{e}");
    }
}
