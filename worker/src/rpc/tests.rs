//! The peer service and client over real sockets on loopback: counts then reveals,
//! refusals with a clear status, and TLS bound to the board's worker key.

use super::*;
use protocol::ProjectId;
use protocol::board::Board;
use std::sync::Mutex;

/// A board behind the real service, over a real socket on 127.0.0.1.
struct Host {
    board: Mutex<Board>,
    refused: Mutex<Vec<&'static str>>,
}

impl BoardHost for Host {
    fn exchange(
        &self,
        commitments: Vec<Commitment>,
        reveals: Vec<Claim>,
        want: &[UnitId],
    ) -> Reply {
        let mut board = self.board.lock().expect("lock");
        let (views, rejected) = board.exchange(commitments, reveals, want, 0);
        Reply {
            views,
            rejected: rejected.into_iter().map(|r| (r.unit, r.reason)).collect(),
        }
    }
    fn refused(&self, why: &'static str) {
        self.refused.lock().expect("lock").push(why);
    }
}

async fn serve() -> (
    Arc<Host>,
    PeerClient,
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
) {
    let host = Arc::new(Host {
        board: Mutex::new(Board::default().vouched_by(coordinator().id())),
        refused: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let tls = connections::peer_tls::PeerTls::new(&board()).expect("peer tls");
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .expect("tls")
            .add_service(PeerService::new(host.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            ),
    );
    let client = PeerClient::new(addr, board().id()).expect("client");
    (host, client, addr, stop)
}

/// The worker whose board the test serves.
fn board() -> Identity {
    Identity::from_seed([100; 32])
}

/// The coordinator whose lease tickets the test board accepts.
fn coordinator() -> Identity {
    Identity::from_seed([200; 32])
}

trait Ticketed {
    fn ticketed(&self) -> Commitment;
}

impl Ticketed for Claim {
    /// The commitment with the coordinator's lease ticket, as a holder sends it.
    fn ticketed(&self) -> Commitment {
        let t = coordinator().sign_ticket(self.worker, self.project, self.unit, u64::MAX);
        self.commitment().with_ticket(Some(t))
    }
}

fn claim(n: u8, output: &[u8]) -> Claim {
    Claim::sign(
        &Identity::from_seed([n; 32]),
        ProjectId(1),
        UnitId(5),
        Digest::of(output),
        10,
    )
}

#[tokio::test]
async fn the_board_service_answers_counts_then_reveals_and_names_refusals() {
    let (host, client, _, stop) = serve().await;
    let (a, b) = (claim(1, b"x"), claim(2, b"x"));
    let reply = client
        .exchange(&Request {
            board: a.worker,
            commitments: vec![a.ticketed(), b.ticketed()],
            reveals: Vec::new(),
            want: vec![UnitId(5)],
        })
        .await
        .expect("exchange");
    assert_eq!(reply.views[0].1.commitments, 2);
    assert!(reply.views[0].1.reveals.is_empty());
    let reply = client
        .exchange(&Request {
            board: a.worker,
            commitments: vec![a.ticketed()],
            reveals: vec![a.clone(), b.clone()],
            want: vec![UnitId(5)],
        })
        .await
        .expect("exchange");
    assert_eq!(reply.views[0].1.reveals.len(), 2);
    assert_eq!(reply.rejected, vec![(UnitId(5), Reason::Replayed)]);
    // A copier's reveal that does not open its commitment is refused and named.
    let c = claim(3, b"guess");
    let copied = Claim::sign(
        &Identity::from_seed([3; 32]),
        ProjectId(1),
        UnitId(5),
        a.digest,
        10,
    );
    let reply = client
        .exchange(&Request {
            board: a.worker,
            commitments: vec![c.ticketed()],
            reveals: vec![copied],
            want: vec![UnitId(5)],
        })
        .await
        .expect("exchange");
    assert_eq!(reply.rejected, vec![(UnitId(5), Reason::RevealMismatch)]);
    assert!(
        reply.views[0].1.reveals.is_empty(),
        "the copier sees nothing"
    );
    let counts = host.board.lock().expect("lock").rejections().clone();
    assert_eq!(counts[&Reason::RevealMismatch], 1);
    stop.cancel();
}

#[tokio::test]
async fn oversized_and_malformed_exchanges_are_refused_with_a_clear_status() {
    let (host, client, addr, stop) = serve().await;
    // A raw client without our own encoding limit, to see the board's.
    let raw = pb::peer_client::PeerClient::new(
        connections::peer_tls::endpoint(addr, board().id())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    let too_many = Request {
        want: (0..MAX_EXCHANGE_UNITS as u64 + 1).map(UnitId).collect(),
        ..Request::to(WorkerId([0; 32]))
    };
    let err = client
        .exchange(&too_many)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("at most 256"), "{err}");
    let a = claim(1, b"x");
    let flood = Request {
        commitments: vec![a.commitment(); MAX_EXCHANGE_MESSAGES + 1],
        ..Request::to(a.worker)
    };
    let err = client
        .exchange(&flood)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("split the batch"), "{err}");
    // Over the byte limit: refused by the decoder before anything is parsed.
    let huge = pb::BoardExchange {
        commitments: vec![pb::Commitment {
            seal: vec![0; MAX_EXCHANGE_BYTES + 1],
            ..pb::Commitment::default()
        }],
        ..pb::BoardExchange::default()
    };
    let status = raw.clone().exchange(huge).await.expect_err("too big");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    let bad = pb::BoardExchange {
        commitments: vec![pb::Commitment {
            seal: vec![0; 3],
            ..pb::Commitment::from(&a.commitment())
        }],
        ..pb::BoardExchange::default()
    };
    let status = raw.clone().exchange(bad).await.expect_err("malformed");
    assert!(status.message().contains("Commitment.seal"), "{status:?}");
    assert_eq!(
        *host.refused.lock().expect("lock"),
        vec!["too_many_units", "too_many_messages", "malformed"]
    );
    assert!(host.board.lock().expect("lock").is_empty());
    stop.cancel();
}

#[tokio::test]
async fn a_board_is_reached_only_over_tls_and_only_as_the_worker_named() {
    let (host, client, addr, stop) = serve().await;
    let a = claim(1, b"x");
    let request = Request {
        board: board().id(),
        commitments: vec![a.ticketed()],
        reveals: Vec::new(),
        want: vec![UnitId(5)],
    };
    client
        .exchange(&request)
        .await
        .expect("the named board answers");
    // A client that expects another worker at this address refuses the certificate
    // and sends nothing.
    let wrong = PeerClient::new(addr, a.worker).expect("client");
    let err = wrong.exchange(&request).await.expect_err("not that worker");
    assert!(err.to_string().contains("Exchange"), "{err}");
    // Plain HTTP/2 gets no gRPC answer at all.
    let plain = pb::peer_client::PeerClient::connect(format!("http://{addr}")).await;
    if let Ok(mut plain) = plain {
        plain
            .exchange(pb::BoardExchange::default())
            .await
            .expect_err("plaintext is not served");
    }
    assert_eq!(
        host.board
            .lock()
            .expect("lock")
            .rejections()
            .values()
            .sum::<u64>(),
        0
    );
    stop.cancel();
}
