//! Several coordinators serving one deployment on one PostgreSQL ([`crate::testpg`],
//! `coordinator::forward`): workers spread over them, submits and status through any of
//! them, and coordinators killed -9 mid-run, the scheduling one included. The runs
//! complete with every result right and every unit credited once.

use std::time::{Duration, Instant};

use crate::failover::{Standby, free_port};
use crate::harness::{
    Cluster, after_kill, assert_chaos_done, n, primes_below_two_billion, project, sum_outputs,
};
use crate::testpg::TestPg;

/// The primes below ten million.
const PRIMES_BELOW_TEN_MILLION: u64 = 664_579;

/// Which of the named coordinators' logs say they took over, in the order given.
fn took_over(coordinators: &[&Standby]) -> Vec<bool> {
    coordinators
        .iter()
        .map(|c| c.log().contains("taking over"))
        .collect()
}

#[test]
fn three_coordinators_and_six_workers_count_the_primes_below_ten_million_through_two_kills() {
    let pg = TestPg::start();
    let database = pg.url();
    let lease = 30;
    // Coordinator A schedules: it is first on the database.
    let mut c = Cluster::start_with(lease, &["--database", &database, "--tls"], |_| {});
    let pin = c.fingerprint.clone().expect("TLS: a fingerprint");
    let hex = pin.strip_prefix("sha256:").unwrap_or(&pin).to_string();
    let a = c.url.clone();
    let (b_addr, c_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut b = Standby::named(c.dir.path(), "b", &b_addr, &database, lease);
    let mut c3 = Standby::named(c.dir.path(), "c", &c_addr, &database, lease);
    for edge in [&b, &c3] {
        let printed = edge.announced();
        assert!(
            printed.contains(&format!("tls fingerprint {pin}")),
            "an edge serves another certificate: {printed:?}"
        );
        edge.wait_log("edge:", Duration::from_secs(30));
    }
    let urls = [
        a.clone(),
        format!("https://{b_addr}#sha256={hex}"),
        format!("https://{c_addr}#sha256={hex}"),
    ];
    // Six workers, two first reaching each coordinator; each knows all three.
    let accounts = ["ann", "ben", "cat", "dan", "eve", "fay"];
    for (i, account) in accounts.iter().enumerate() {
        let list: Vec<&str> = (0..3).map(|k| urls[(i + k) % 3].as_str()).collect();
        c.start_worker_via(&list.join(","), &["--account", account]);
    }
    // 1,000 units: primes below ten million, two matching results each.
    let manifest = project(
        c.dir.path(),
        "primes-10m",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 10_000_000, step = 10_000 }\n",
    );
    // Submitted through an edge: it forwards the submit to A.
    c.url = urls[1].clone();
    let started = Instant::now();
    let id = c.submit(&manifest).expect("accepted through an edge");
    // Status through the other edge shows the whole deployment.
    c.url = urls[2].clone();
    let first = c.wait_until(id, Duration::from_secs(300), "100 units verified", |s| {
        n(s, "verified") >= 100
    });
    assert!(
        n(&first, "verified") < 500,
        "the run got too far before the first kill; make it longer: {first}"
    );
    println!("100 verified after {:?}; killing A", started.elapsed());

    // Kill -9 the scheduling coordinator: B or C takes over.
    c.kill_coordinator();
    let limit = Instant::now() + Duration::from_secs(60);
    let next = loop {
        match took_over(&[&b, &c3]).as_slice() {
            [true, _] => break 1,
            [_, true] => break 2,
            _ => {}
        }
        assert!(
            Instant::now() < limit,
            "no edge took over: {}\n{}",
            b.log(),
            c3.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "{} took over after {:?}",
        ["A", "B", "C"][next],
        started.elapsed()
    );
    c.url = format!("{},{}", urls[1], urls[2]);
    let goal = n(&first, "verified") + 50;
    let second = c.wait_until(
        id,
        Duration::from_secs(300),
        "50 more units verified",
        |s| n(s, "verified") >= goal,
    );
    assert!(
        n(&second, "verified") >= n(&first, "verified"),
        "verified units lost: {first} -> {second}"
    );
    assert!(
        n(&second, "verified") < 1000,
        "the run ended before the second kill; make it longer: {second}"
    );

    // Kill -9 the new scheduling coordinator: the last one takes over.
    let (killed, last) = if next == 1 {
        (&mut b, &c3)
    } else {
        (&mut c3, &b)
    };
    killed.kill();
    last.wait_log("taking over", Duration::from_secs(60));
    println!("second takeover after {:?}", started.elapsed());
    c.url = urls[3 - next].clone();
    let status = c.wait_finished(id, Duration::from_secs(600));
    println!("finished after {:?}", started.elapsed());
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (1000, 1000, 0),
        "{status}"
    );
    assert_eq!(
        sum_outputs(&c.results(id)),
        (PRIMES_BELOW_TEN_MILLION, 1000)
    );
    // Each unit credited to the two accounts of its certificate (three if a reissued
    // replica also matched), never twice to one account.
    let credited = c.accounts();
    let grants: u64 = credited.iter().map(|a| a.1).sum();
    assert!(
        credited.iter().all(|a| a.1 <= 1000) && (2000..=3000).contains(&grants),
        "credit lost or doubled: {credited:?}"
    );
    // The workers that first reached A moved on under their own keys, in words.
    for i in [0, 3] {
        let log = c.worker_log(i);
        assert!(log.contains("moving to"), "worker {i} did not move: {log}");
    }
}

#[test]
fn chaos_on_postgres_with_two_coordinators_loses_nothing_and_doubles_nothing() {
    let seed = std::env::var("FALLOW_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7_120_461_310_u64);
    println!("chaos seed {seed} (replay with FALLOW_CHAOS_SEED={seed})");
    let mut rng = protocol::rng::SplitMix64::new(seed);
    let mut between = |lo: u64, hi: u64| lo + rng.next_u64() % (hi - lo);
    let pg = TestPg::start();
    let database = pg.url();
    let lease = 10;
    let mut c = Cluster::start_with(lease, &["--database", &database, "--tls"], |_| {});
    let pin = c.fingerprint.clone().expect("TLS: a fingerprint");
    let hex = pin.strip_prefix("sha256:").unwrap_or(&pin).to_string();
    let b_addr = format!("127.0.0.1:{}", free_port());
    let mut b = Some(Standby::named(c.dir.path(), "b", &b_addr, &database, lease));
    if let Some(b) = &b {
        b.announced();
    }
    let both = format!("{},https://{b_addr}#sha256={hex}", c.url);
    c.url = both.clone();
    for i in 0..3 {
        // Workers start at different coordinators.
        let list = if i % 2 == 0 {
            both.clone()
        } else {
            let (x, y) = both.split_once(',').expect("two URLs");
            format!("{y},{x}")
        };
        c.start_worker_via(&list, &[]);
    }
    let manifest = primes_below_two_billion(c.dir.path(), "primes-pg-chaos", 200, false);
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(id, Duration::from_secs(120), "first units verified", |s| {
        n(s, "verified") >= 3
    });
    let kills = 8;
    let mut verified_seen = 0;
    for kill in 1..=kills {
        // Each kill at a seeded point of the run's progress (kill k at 20k to 20k + 9
        // verified units of 200), not of the clock: with two coordinators the work barely
        // pauses, so a schedule in seconds ends after the run does on a fast machine.
        let goal = u64::from(kill) * 20 + between(0, 10);
        c.wait_until(
            id,
            Duration::from_secs(300),
            "progress before the next kill",
            |s| n(s, "verified") >= goal,
        );
        // Either coordinator, whichever role it has now; restarted after a moment.
        if between(0, 2) == 0 {
            c.kill_coordinator();
            if kill == 4 {
                // A worker dies too; a fresh one (new identity) replaces it.
                c.kill_worker(0);
                c.start_worker_via(&both, &[]);
            }
            std::thread::sleep(Duration::from_millis(between(50, 1_000)));
            c.start_coordinator();
            c.url = both.clone();
        } else {
            if let Some(mut old) = b.take() {
                old.kill();
            }
            std::thread::sleep(Duration::from_millis(between(50, 1_000)));
            let fresh = Standby::named(c.dir.path(), "b", &b_addr, &database, lease);
            fresh.announced();
            b = Some(fresh);
        }
        verified_seen = after_kill(&c, id, kill, kills, verified_seen);
    }
    assert_chaos_done(&c, id, 200);
}

/// A plain HTTP/1.1 GET with extra headers: the status code and the body.
fn raw_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The start of `/api/events` (server-sent events) up to its first event.
fn first_event(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\n\n")
        || !String::from_utf8_lossy(&seen).contains("data:")
    {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn an_edge_serves_the_whole_deployment_and_a_stranger_cannot_pose_as_one() {
    let pg = TestPg::start();
    let database = pg.url();
    let mut c = Cluster::start_with(30, &["--database", &database], |_| {});
    let scheduling = c.addr.clone();
    let edge_addr = format!("127.0.0.1:{}", free_port());
    let edge = Standby::plain(c.dir.path(), "edge", &edge_addr, &database, 30);
    edge.announced();
    // A worker and the CLI that know only the edge: registration (with the proof of the
    // worker's peer address, made to the caller's address the edge passes on), leases,
    // certificates and results all go through it.
    let through_edge = format!("http://{edge_addr}");
    for account in ["ann", "ben"] {
        c.start_worker_via(&through_edge, &["--account", account]);
    }
    c.url = through_edge;
    let manifest = project(
        c.dir.path(),
        "primes-edge",
        artifacts::PRIMES,
        Some(artifacts::SUM),
        "replication = 2\nquorum = 2\nadaptive = false\n\
         [inputs]\nsweep = { from = 0, to = 1_000_000, step = 100_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted through the edge");
    let status = c.wait_finished(id, Duration::from_secs(300));
    assert_eq!(n(&status, "verified"), 10, "{status}");
    assert_eq!(sum_outputs(&c.results(id)), (78_498, 10));
    // The dashboard's API through the edge is the scheduling coordinator's.
    let (code, body) = raw_get(&edge_addr, "/api/projects", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("primes-edge"), "{body}");
    let (code, page) = raw_get(&edge_addr, "/", &[]);
    assert_eq!(code, 200, "{page}");
    // The live stream too: its first event arrives through the edge.
    let first = first_event(&edge_addr);
    assert!(first.contains("data:"), "{first}");
    // A stranger naming a caller (to dodge per-address limits, or to pass a peer-address
    // proof for someone else's address) without the deployment's secret is refused...
    let forged = [
        ("fallow-forward-key", "00".repeat(32)),
        ("fallow-forwarded-for", "203.0.113.5:4242".to_string()),
    ];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, body) = raw_get(&scheduling, "/api/projects", &forged);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("fallow-forward-key"), "{body}");
    // ...and through the edge the header is replaced by the edge's own: served as the
    // stranger it is.
    let (code, body) = raw_get(&edge_addr, "/api/projects", &forged);
    assert_eq!(code, 200, "{body}");
}
