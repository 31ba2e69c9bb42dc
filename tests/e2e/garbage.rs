//! A rogue worker speaks garbage to the coordinator and to its peers while honest workers
//! run a project: raw bytes that are not HTTP/2, malformed and forged protobuf messages,
//! oversized requests, and messages out of order (work before registering, certificates for
//! units it never leased, reveals without commitments). The honest run completes with the
//! right answer, and both the coordinator and the peers count what they refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use proto::v1 as pb;
use protocol::Identity;
use worker::rpc::{CoordinatorClient, Introduction};

use crate::dashboard::{free_port, http_get};
use crate::harness::{Cluster, PRIMES_BELOW_TWO_BILLION, n, primes_below_two_billion, sum_outputs};

#[test]
fn a_worker_speaking_garbage_is_refused_and_counted_while_the_others_finish() {
    let mut c = Cluster::start(10);
    let metrics = free_port();
    c.start_worker(&["--metrics", &metrics.to_string()]);
    c.start_worker(&[]);
    c.start_worker(&[]);
    // 100 units of 20 million numbers: primes below two billion (98,222,287 of them).
    let manifest = primes_below_two_billion(c.dir.path(), "primes-beside-garbage", 100, true);
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(id, Duration::from_secs(120), "first units verified", |s| {
        n(s, "verified") >= 1
    });

    let coordinator: SocketAddr = c.addr.parse().expect("coordinator address");
    let url = c.url.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let refused = runtime.block_on(rogue(url, coordinator));

    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (100, 0),
        "{status}"
    );
    assert_eq!(sum_outputs(&c.results(id)), (PRIMES_BELOW_TWO_BILLION, 100));

    // The coordinator counted every refusal the rogue got back.
    let text = http_get(coordinator, "/metrics");
    let counted: u64 = samples(&text, "fallow_rejected_requests_total").sum();
    assert!(
        counted >= refused,
        "the coordinator refused {refused} requests but counted {counted}:\n{text}"
    );
    // The peer counted the bad board messages it refused.
    let text = http_get(metrics, "/metrics");
    let board: u64 = samples(&text, "fallow_worker_board_rejections_total").sum::<u64>()
        + samples(&text, "fallow_worker_gossip_requests_refused_total").sum::<u64>();
    println!(
        "coordinator refused {refused} requests and counted {counted}; the peer counted {board}"
    );
    assert!(
        board >= 1,
        "the peer's board should count the rogue's forged and out-of-order messages:\n{text}"
    );
}

/// Sends the garbage; returns how many gRPC requests the coordinator answered with an
/// error status (each must be an error, never a panic or a hang).
async fn rogue(url: String, coordinator: SocketAddr) -> u64 {
    let mut refused = 0;

    // 1. Bytes that are not HTTP/2 at all: the connection is closed, nothing else happens.
    raw_garbage(coordinator);

    let mut raw = pb::coordinator_client::CoordinatorClient::connect(url.clone())
        .await
        .expect("connect");
    let mut expect_error = async |what: &str, result: Result<(), tonic::Status>| match result {
        Err(status) => {
            assert!(
                !status.message().is_empty(),
                "{what}: refused without saying why"
            );
            refused += 1;
        }
        Ok(()) => panic!("{what}: accepted"),
    };

    // 2. Malformed: a 5-byte key; a forged registration signature.
    let bad_key = raw
        .register_worker(pb::RegisterWorkerRequest {
            public_key: vec![1, 2, 3, 4, 5],
            name: "rogue".into(),
            account: "rogue".into(),
            signature: vec![0; 64],
            ..Default::default()
        })
        .await
        .map(drop);
    expect_error("a 5-byte worker key", bad_key).await;
    let rogue = std::sync::Arc::new(Identity::generate().expect("identity"));
    let forged = raw
        .register_worker(pb::RegisterWorkerRequest {
            public_key: rogue.id().0.to_vec(),
            name: "rogue".into(),
            account: "rogue".into(),
            signature: vec![7; 64],
            ..Default::default()
        })
        .await
        .map(drop);
    expect_error("a forged registration signature", forged).await;

    // 3. Out of order: work and results before registering.
    let work = raw
        .request_work(pb::WorkRequest {
            public_key: rogue.id().0.to_vec(),
            max_units: 4,
            ..Default::default()
        })
        .await
        .map(drop);
    expect_error("work before registering", work).await;
    let cert = raw
        .submit_certificate(pb::CertificateSubmission {
            unit_id: 1,
            claims: vec![pb::Claim {
                project_id: 1,
                unit_id: 1,
                digest: vec![0; 32],
                fuel: 1,
                worker_key: rogue.id().0.to_vec(),
                signature: vec![0; 64],
                salt: vec![0; 32],
            }],
            output: b"42\n".to_vec(),
            submitter_key: rogue.id().0.to_vec(),
        })
        .await
        .map(drop);
    expect_error("a certificate from an unregistered worker", cert).await;

    // Registered properly (to learn the peers), the rogue still lies.
    let client = CoordinatorClient::new(&url, rogue.clone()).expect("client");
    let registration = client
        .register(
            &rogue,
            Introduction {
                name: "rogue",
                account: "rogue",
                team: "",
                peer_addr: "",
                cores: 1,
            },
        )
        .await
        .expect("a valid registration is accepted");
    let forged_claims = raw
        .submit_certificate(pb::CertificateSubmission {
            unit_id: 1,
            claims: vec![pb::Claim {
                project_id: 1,
                unit_id: 1,
                digest: vec![9; 32],
                fuel: 1,
                worker_key: rogue.id().0.to_vec(),
                signature: vec![0; 64],
                salt: vec![0; 32],
            }],
            output: b"42\n".to_vec(),
            submitter_key: rogue.id().0.to_vec(),
        })
        .await
        .map(drop);
    expect_error(
        "a certificate with forged claims for a unit never leased",
        forged_claims,
    )
    .await;
    let garbage_evidence = raw
        .report_misbehaviour(pb::Evidence::default())
        .await
        .map(drop);
    expect_error("empty evidence", garbage_evidence).await;
    for unit in [0, u64::MAX] {
        let failure = raw
            .report_failure(pb::FailureReport {
                public_key: rogue.id().0.to_vec(),
                unit_id: unit,
                ..Default::default()
            })
            .await
            .map(drop);
        expect_error("a failure report for a unit never leased", failure).await;
    }

    // Oversized: a 6 MiB heartbeat (a million held units) is cut off at its method's cap
    // (4 MiB), long before the 256 MiB an upload may have.
    let huge = raw
        .clone()
        .max_encoding_message_size(usize::MAX)
        .heartbeat(pb::HeartbeatRequest {
            public_key: rogue.id().0.to_vec(),
            held_units: (1..=750_000u64).map(|u| u << 40).collect(),
            ..Default::default()
        })
        .await
        .map(drop);
    match &huge {
        Err(status) => assert!(
            status.code() == tonic::Code::ResourceExhausted
                && status
                    .message()
                    .contains("Heartbeat request may be at most 4194304 bytes"),
            "an oversized heartbeat: {status:?}"
        ),
        Ok(()) => panic!("an oversized heartbeat was accepted"),
    }
    expect_error("an oversized heartbeat", huge).await;

    // 4. The peers: garbage bytes, an oversized exchange, and forged, out-of-order board
    // messages (a reveal with no commitment, a commitment with a bad signature).
    let peers: Vec<&worker::rpc::PeerInfo> = registration
        .peers
        .iter()
        .filter(|p| !p.addr.is_empty())
        .collect();
    assert!(!peers.is_empty(), "the honest workers are members");
    for info in &peers {
        if let Ok(a) = info.addr.parse() {
            raw_garbage(a);
        }
        let mut peer = crate::harness::peer(&info.addr, info.id)
            .await
            .max_encoding_message_size(64 << 20);
        let oversized = peer
            .exchange(pb::BoardExchange {
                want_units: vec![1; 1 << 20],
                ..Default::default()
            })
            .await;
        assert!(oversized.is_err(), "a 1M-entry exchange must be refused");
        let forged = peer
            .exchange(pb::BoardExchange {
                commitments: vec![pb::Commitment {
                    project_id: 1,
                    unit_id: 2,
                    worker_key: rogue.id().0.to_vec(),
                    seal: vec![3; 32],
                    signature: vec![4; 64],
                    ticket: None,
                }],
                reveals: vec![pb::Claim {
                    project_id: 1,
                    unit_id: 3,
                    digest: vec![5; 32],
                    fuel: 10,
                    worker_key: rogue.id().0.to_vec(),
                    signature: vec![6; 64],
                    salt: vec![7; 32],
                }],
                want_units: vec![2, 3],
            })
            .await;
        // Refused whole or answered with the bad parts dropped: either way, counted.
        drop(forged);
        let truncated = peer
            .exchange(pb::BoardExchange {
                commitments: vec![pb::Commitment {
                    worker_key: vec![1],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        drop(truncated);
    }

    // 5. A flood: 1,000 heartbeats at once on one connection, each properly signed and
    // stamped (`protocol::call`). Beyond its rate (100 a second, 200 in a burst) the worker
    // is refused, saying so; the others are not slowed.
    let mut flood = tokio::task::JoinSet::new();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    for i in 0..1000 {
        let mut raw = raw.clone();
        let message = pb::HeartbeatRequest {
            public_key: rogue.id().0.to_vec(),
            ..Default::default()
        };
        let stamp = rogue.sign_call(
            "Heartbeat",
            now_us + i,
            &prost::Message::encode_to_vec(&message),
        );
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            protocol::call::CALL_HEADER,
            stamp.encode().parse().expect("ASCII"),
        );
        flood.spawn(async move { raw.heartbeat(request).await });
    }
    let mut limited = 0;
    while let Some(answer) = flood.join_next().await {
        match answer.expect("heartbeat task") {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    status.message().contains("requests per second"),
                    "{status:?}"
                );
                limited += 1;
            }
            Err(status) => panic!("a heartbeat refused for another reason: {status:?}"),
            Ok(_) => {}
        }
    }
    assert!(
        limited >= 300,
        "1,000 heartbeats at once from one worker: only {limited} were refused by the rate limit"
    );
    println!("flood: {limited} of 1,000 heartbeats refused by the per-worker rate limit");
    refused + limited
}

/// Writes 64 KiB of junk to `addr` and reads until the server hangs up.
fn raw_garbage(addr: SocketAddr) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        panic!("cannot connect to {addr}");
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let junk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&junk);
    let mut sink = [0u8; 4096];
    while s.read(&mut sink).is_ok_and(|n| n > 0) {}
}

/// The values of every sample of `name` (any labels) in a Prometheus text exposition.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = u64> + 'a {
    text.lines()
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
