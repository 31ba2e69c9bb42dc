use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::sync::Weak;

use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::*;

/// A server on 127.0.0.1 with `limits`: `GET /slow` answers after 1.5 s, anything else at
/// once. Runs until the returned sender is dropped.
async fn serve(limits: Limits) -> (SocketAddr, Connections, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Connections::new(limits);
    let routes = tonic::service::Routes::from(
        axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow"
                }),
            )
            .route("/", axum::routing::get(|| async { "fast" })),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server(&limits)
        .accept_http1(true)
        .layer(connections.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(connections.incoming(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    (addr, connections, stop)
}

/// Whether the server closed `stream` within `within` (end of stream or reset), reading
/// and discarding what it sends meanwhile.
fn closed_within(stream: &mut StdStream, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Waits (a few seconds at most) until `connections` has `n` open.
async fn until_open(connections: &Connections, n: usize) {
    for _ in 0..200 {
        if connections.open() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} connections open, expected {n}", connections.open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_from_one_address_are_closed_at_accept() {
    let limits = Limits {
        per_address: 3,
        exempt_loopback: false,
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, connections, _stop) = serve(limits).await;
    let mut kept: Vec<StdStream> = (0..3)
        .map(|_| StdStream::connect(addr).expect("connect"))
        .collect();
    until_open(&connections, 3).await;
    let mut fourth = StdStream::connect(addr).expect("the kernel accepts it");
    assert!(
        closed_within(&mut fourth, Duration::from_secs(5)),
        "a fourth connection from one address stayed open"
    );
    assert_eq!(connections.refused(), 1);
    for stream in &mut kept {
        assert!(!closed_within(stream, Duration::from_millis(100)));
    }
    // One closed frees its place for a new one, which is served.
    drop(kept.pop());
    until_open(&connections, 2).await;
    let mut fresh = StdStream::connect(addr).expect("connect");
    fresh
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut reply = [0u8; 12];
    fresh.read_exact(&mut reply).expect("a reply");
    assert_eq!(&reply, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_from_the_cap_by_default() {
    let limits = Limits {
        per_address: 2,
        ..Limits::default()
    };
    let (addr, connections, _stop) = serve(limits).await;
    let _streams: Vec<StdStream> = (0..10)
        .map(|_| StdStream::connect(addr).expect("connect"))
        .collect();
    until_open(&connections, 10).await;
    assert_eq!(connections.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let idle = Duration::from_millis(500);
    let limits = Limits {
        idle_timeout: idle,
        ..Limits::default()
    };
    let (addr, connections, _stop) = serve(limits).await;
    // Silent, and a slowloris that never finishes its request's headers.
    let mut silent = StdStream::connect(addr).expect("connect");
    let mut slow = StdStream::connect(addr).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nhost").expect("write");
    // Busy for 1.5 s, three times the idle timeout.
    let mut busy = StdStream::connect(addr).expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(closed_within(&mut slow, Duration::from_secs(5)));
    let mut reply = Vec::new();
    busy.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    while !reply.ends_with(b"slow") {
        let n = busy.read(&mut buf).expect("the busy connection stays open");
        assert!(n > 0, "the busy connection was closed mid-request");
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // Then idle: closed after the timeout.
    assert!(closed_within(&mut busy, Duration::from_secs(5)));
    until_open(&connections, 0).await;
    assert_eq!(connections.idle_closed(), 3);
}

#[tokio::test]
async fn a_value_kept_until_sent_lives_until_the_bytes_of_the_response_are_dropped() {
    let marker = Arc::new(());
    let weak: Weak<()> = Arc::downgrade(&marker);
    let inner = tower::service_fn(move |_: http::Request<()>| {
        let marker = marker.clone();
        async move {
            let mut response = http::Response::new(http_body_util::Full::new(Bytes::from_static(
                b"module bytes",
            )));
            response.extensions_mut().insert(KeepUntilSent::new(marker));
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connections = Connections::new(Limits::default());
    let mut service = connections.layer().layer(inner);
    let response = service
        .call(http::Request::new(()))
        .await
        .expect("infallible");
    assert!(
        response.extensions().get::<KeepUntilSent>().is_none(),
        "moved into the body"
    );
    // The service's own clone of the marker is gone with the service.
    drop(service);
    assert!(
        weak.upgrade().is_some(),
        "released before the body was sent"
    );
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&bytes[..], b"module bytes");
    assert!(
        weak.upgrade().is_some(),
        "released while the body's bytes still wait to be written"
    );
    drop(bytes);
    assert!(weak.upgrade().is_none(), "kept after the response was sent");
}
