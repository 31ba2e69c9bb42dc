//! A worker cut off from the coordinator: its traffic goes through a proxy that starts
//! black-holing it mid-run (connections stay open, nothing gets through, like a dead
//! route) for longer than a lease. The others carry the run (the units it already ran still
//! verify through its peers, which it reaches directly); when the link heals it talks to
//! the coordinator again. The run completes with nothing lost or doubled.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Cluster, assert_settled_once, n, primes_below_two_billion};

#[test]
fn a_worker_cut_off_mid_run_loses_its_leases_then_rejoins_and_the_run_completes() {
    let mut c = Cluster::start(5);
    let coordinator: SocketAddr = c.addr.parse().expect("address");
    let proxy = BlackHoleProxy::start(coordinator);
    let cut_off = c.start_worker_via(&format!("http://{}", proxy.addr), &[]);
    // The two others compute a tenth of the time: on a quiet machine the whole run takes
    // only seconds at full speed (less since the guests use simd128), and it must outlast
    // the cut (a lease and more; at a quarter it once did not).
    c.start_worker(&["--cpu-limit-percent", "10"]);
    c.start_worker(&["--cpu-limit-percent", "10"]);
    // 200 units of 10 million numbers: primes below two billion (98,222,287 of them).
    let manifest = primes_below_two_billion(c.dir.path(), "primes-partition", 200, false);
    let id = c.submit(&manifest).expect("accepted");
    c.wait_until(id, Duration::from_secs(120), "work under way", |s| {
        n(s, "verified") >= 10
    });
    let before_cut = proxy.forwarded();
    assert!(before_cut > 0, "the worker talks through the proxy");

    proxy.cut();
    // Longer than the 5 s lease: the coordinator gives the worker's units to others.
    let during = c.wait_until(id, Duration::from_secs(120), "progress without it", |s| {
        n(s, "verified") >= 40
    });
    std::thread::sleep(Duration::from_secs(6));
    let cut_status = c.status(id).expect("status");
    assert!(
        n(&cut_status, "verified") < 200,
        "the run finished during the cut; make it longer: {cut_status}"
    );
    assert!(
        n(&cut_status, "verified") >= n(&during, "verified"),
        "the others kept going"
    );
    let log = c.worker_log(cut_off);
    assert!(
        proxy.dropped() > 0,
        "the cut-off worker kept trying to reach the coordinator during the cut"
    );
    proxy.heal();
    let healed_at = proxy.forwarded();

    let status = c.wait_finished(id, Duration::from_secs(600));
    assert_eq!(
        (
            n(&status, "total"),
            n(&status, "verified"),
            n(&status, "failed")
        ),
        (200, 200, 0),
        "{status}"
    );
    assert_settled_once(&c, id, 200);
    assert!(
        proxy.forwarded() > healed_at,
        "the cut-off worker talked to the coordinator again after the link healed; its log \
         during the cut:\n{log}"
    );
}

/// A TCP proxy to `upstream` that can black-hole traffic: while cut, bytes are read and
/// dropped in both directions and new connections are accepted but go nowhere. Healing
/// closes the black-holed connections so the client reconnects.
struct BlackHoleProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    cut: AtomicBool,
    /// Bytes forwarded upstream (client to coordinator).
    forwarded: AtomicU64,
    /// Bytes swallowed while cut, both directions.
    dropped: AtomicU64,
    /// Every connection, to close on heal.
    open: Mutex<Vec<TcpStream>>,
}

impl BlackHoleProxy {
    fn start(upstream: SocketAddr) -> BlackHoleProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            cut: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || connection(client, upstream, s));
            }
        });
        BlackHoleProxy { addr, state }
    }

    fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.state.open.lock().expect("lock"));
        for s in open {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

fn connection(client: TcpStream, upstream: SocketAddr, state: Arc<ProxyState>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    if let Ok(mut open) = state.open.lock() {
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                open.push(s);
            }
        }
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = state.clone();
    std::thread::spawn(move || pump(client, server, &up, true));
    pump(s2, c2, &state, false);
}

/// Copies `from` to `to` until either closes; while cut, reads and drops.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &ProxyState, upstream: bool) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if state.cut.load(Ordering::SeqCst) {
            state.dropped.fetch_add(n as u64, Ordering::SeqCst);
            continue; // black hole
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if upstream {
            state.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
