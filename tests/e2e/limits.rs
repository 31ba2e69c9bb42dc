//! Every documented limit is enforced by the party receiving the bytes, over the wire,
//! against a real coordinator: a module over 64 MiB in a correctly signed raw
//! `SubmitProject` is refused naming the limit; idle, silent and slowloris connections are
//! closed after the idle timeout while an honest client carries on; connections past the
//! cap from one address are closed at accept; serving one big module to many callers
//! at once holds less than one copy per call; and an honest fleet on tiny units is never
//! refused by the rate limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use protocol::manifest::{MAX_MODULE_BYTES, ProjectSpec};
use protocol::{Digest, Identity, Limits};

use crate::harness::fallow;

/// The first bytes an HTTP/2 client sends: the preface, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[test]
fn an_oversize_module_in_a_signed_submission_is_refused_naming_the_limit() {
    let c = InProcess::start(|_| {});
    // A valid module (it passes the sandbox's inspection) of 100 MiB, as the attacker's.
    let spec = project("oversize", padded(artifacts::PRIMES, 100 << 20), None);
    let refused = c.submit(spec).expect_err("a 100 MiB module accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused
            .message()
            .contains("wasm: the module is 104857600 bytes, over the 67108864-byte (64 MiB) limit"),
        "{refused}"
    );
    // A reducer one byte over, likewise.
    let spec = project(
        "oversize-reducer",
        artifacts::PRIMES.to_vec(),
        Some(padded(artifacts::SUM, MAX_MODULE_BYTES + 1)),
    );
    let refused = c.submit(spec).expect_err("a reducer over 64 MiB accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused
            .message()
            .contains("[reduce].wasm: the module is 67108865 bytes, over the 67108864-byte"),
        "{refused}"
    );
    // At the limit is fine, and nothing of the refused ones was kept.
    let spec = project(
        "at-the-limit",
        padded(artifacts::PRIMES, MAX_MODULE_BYTES),
        None,
    );
    let id = c.submit(spec).expect("a 64 MiB module is within the limit");
    let projects = c.block_on(async {
        c.client()
            .await
            .list_projects(pb::ListProjectsRequest { project_id: 0 })
            .await
            .expect("list")
            .into_inner()
            .projects
    });
    let ids: Vec<u64> = projects.iter().map(|p| p.id).collect();
    assert_eq!(ids, [id]);
}

#[test]
fn idle_silent_and_slowloris_connections_are_closed_after_the_idle_timeout() {
    let c = InProcess::start(|config| config.idle_timeout = Duration::from_secs(1));
    // An honest client makes a call, then idles past the timeout.
    let mut honest = c.block_on(c.client());
    c.block_on(honest.list_projects(pb::ListProjectsRequest { project_id: 0 }))
        .expect("list");
    // 60 that make no call: silent ones, HTTP/2 ones that only send the preface, and
    // slowloris ones that never finish their HTTP/1 headers.
    let mut idle: Vec<TcpStream> = (0..60)
        .map(|i| {
            let mut s = TcpStream::connect(c.addr).expect("connect");
            match i % 3 {
                0 => {}
                1 => s.write_all(H2_PREFACE).expect("preface"),
                _ => s
                    .write_all(b"GET /api/overview HTTP/1.1\r\nhost: x\r\nx-slow")
                    .expect("partial headers"),
            }
            s
        })
        .collect();
    let started = Instant::now();
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "idle connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    println!(
        "60 idle connections closed {:?} after opening (idle timeout 1 s)",
        started.elapsed()
    );
    // The honest client's connection was closed too; its next call opens a new one.
    std::thread::sleep(Duration::from_secs(2));
    c.block_on(honest.list_projects(pb::ListProjectsRequest { project_id: 0 }))
        .expect("an honest client's call after its idle connection was closed");
}

#[test]
fn connections_past_the_cap_from_one_address_are_closed_at_accept() {
    const CAP: usize = 8;
    let c = InProcess::start(|config| {
        config.max_connections_per_address = CAP;
        config.limit_loopback = true;
    });
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = TcpStream::connect(c.addr).expect("connect");
            s.write_all(H2_PREFACE).expect("preface");
            s
        })
        .collect();
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(200)),
            "within the cap"
        );
    }
    let mut past = TcpStream::connect(c.addr).expect("the kernel accepts it");
    assert!(
        closed_within(&mut past, Duration::from_secs(5)),
        "connection {} from one address stayed open",
        CAP + 1
    );
    // A real client fails too while the cap is taken…
    let list = || {
        c.block_on(async {
            let url = format!("http://{}", c.addr);
            let mut client = pb::coordinator_client::CoordinatorClient::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            client
                .list_projects(pb::ListProjectsRequest { project_id: 0 })
                .await
                .map_err(|e| e.to_string())
        })
    };
    let refused = list().expect_err("a call got through past the cap");
    println!("a client past the cap: {refused}");
    // …and gets through once a connection is given back.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    list().expect("a call within the cap");
}

/// `GetModule` of a 60 MiB module by 8 callers at once, against a `fallow coordinator`
/// process restarted after the submission (so its peak is the serving's): prints its
/// resident memory before and its peak after. Run with `--nocapture` to see the numbers;
/// `FALLOW_MEASURE_BIN=/path/to/fallow` measures another build of the binary.
#[test]
fn serving_a_big_module_to_many_callers_at_once_holds_less_than_a_copy_per_call() {
    const CALLERS: usize = 8;
    const SIZE: usize = 60 << 20;
    let dir = tempfile::Builder::new()
        .prefix("fallow-e2e-limits-")
        .tempdir()
        .expect("tempdir");
    let data = dir.path().join("coordinator");
    let out = fallow()
        .args(["token", "create", "--name", "measure", "--data"])
        .arg(&data)
        .output()
        .expect("fallow token create");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bin = std::env::var_os("FALLOW_MEASURE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_fallow").into());

    let module = padded(artifacts::PRIMES, SIZE);
    let digest = Digest::of(&module);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (mut child, addr) = start_process(&bin, &data, &dir.path().join("c0.log"));
    let url = format!("http://{addr}");
    runtime.block_on(async {
        let mut client = pb::coordinator_client::CoordinatorClient::connect(url.clone())
            .await
            .expect("connect")
            .max_encoding_message_size(usize::MAX);
        let mut request =
            tonic::Request::new(pb::SubmitProjectRequest::from(project("big", module, None)));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        client.submit_project(request).await.expect("accepted");
    });
    let _ = child.kill();
    let _ = child.wait();
    let (mut child, addr) = start_process(&bin, &data, &dir.path().join("c1.log"));
    let url = format!("http://{addr}");
    std::thread::sleep(Duration::from_secs(1));
    let before = memory_kib(child.id(), "VmRSS");
    runtime.block_on(async {
        let calls = (0..CALLERS).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                // A connection each, as separate workers have.
                let mut client = pb::coordinator_client::CoordinatorClient::connect(url)
                    .await
                    .expect("connect")
                    .max_decoding_message_size(128 << 20);
                let module = client
                    .get_module(pb::GetModuleRequest {
                        digest: digest.0.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .expect("module")
                    .into_inner()
                    .module;
                assert_eq!(Digest::of(&module), digest);
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.expect("caller");
        }
    });
    let peak = memory_kib(child.id(), "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    println!(
        "GetModule, {CALLERS} callers at once, {} MiB module ({}): coordinator resident {} MiB before, peak {} MiB (+{growth_mib} MiB)",
        SIZE >> 20,
        bin.display(),
        before / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < ((CALLERS * SIZE) >> 20) as u64,
        "{CALLERS} callers cost {growth_mib} MiB: a copy of the module each or more"
    );
}

/// A coordinator served in this process (its own thread and runtime), stopped when
/// dropped.
struct InProcess {
    addr: SocketAddr,
    token: String,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(edit: impl FnOnce(&mut coordinator::CoordinatorConfig)) -> InProcess {
        let dir = tempfile::Builder::new()
            .prefix("fallow-e2e-limits-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("coordinator");
        let token = coordinator::auth::create(&data, "limits").expect("token");
        let mut config = coordinator::CoordinatorConfig {
            data_dir: data,
            ..Default::default()
        };
        edit(&mut config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                coordinator::serve(listener, config, async {
                    let _ = stopped.await;
                })
                .await
                .expect("coordinator");
            });
        });
        let c = InProcess {
            addr,
            token,
            runtime: tokio::runtime::Runtime::new().expect("runtime"),
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        };
        // Serving once it answers over HTTP/1 (a connection that ends with its answer).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ =
                s.write_all(b"GET /api/overview HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator not serving: {reply:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Its connection is gone from the coordinator's table before a test counts.
        std::thread::sleep(Duration::from_millis(200));
        c
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A raw gRPC client on a connection of its own.
    async fn client(&self) -> pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
            .max_encoding_message_size(usize::MAX)
    }

    /// A raw `SubmitProject` with the submit token; the project id or the refusal.
    fn submit(&self, spec: ProjectSpec) -> Result<u64, tonic::Status> {
        self.block_on(async {
            let mut request = tonic::Request::new(pb::SubmitProjectRequest::from(spec));
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", self.token).parse().expect("header"),
            );
            let mut client = self.client().await;
            client
                .submit_project(request)
                .await
                .map(|r| r.into_inner().project_id)
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A one-unit project signed by a fixed test key, as `fallow submit` would send it.
fn project(name: &str, module: Vec<u8>, reducer: Option<Vec<u8>>) -> ProjectSpec {
    let mut spec = ProjectSpec {
        name: name.into(),
        module,
        reducer,
        replication: 2,
        quorum: 2,
        max_replicas: 5,
        adaptive: true,
        error_bound: 0.02,
        limits: Limits::default(),
        units: vec![("0".into(), b"0 1000\n".to_vec())],
        manifest: format!("name = {name:?}"),
        data: Vec::new(),
        data_paths: Vec::new(),
        signatures: None,
    };
    spec.sign(&Identity::from_seed([17; 32]));
    spec
}

/// `module` with a custom section appended so that it is exactly `size` bytes: still a
/// valid module, which runs as before.
fn padded(module: &[u8], size: usize) -> Vec<u8> {
    let name = b"padding";
    // Section: id 0, size (LEB128, padded to 5 bytes), name length, name, payload.
    let payload = size - module.len() - 1 - 5 - 1 - name.len();
    let content = (1 + name.len() + payload) as u32;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(module);
    out.push(0);
    for i in 0..5 {
        let byte = ((content >> (7 * i)) & 0x7f) as u8;
        out.push(if i < 4 { byte | 0x80 } else { byte });
    }
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.resize(size, 0);
    out
}

/// Whether the server closed `stream` within `within` (end of stream or reset), reading
/// and discarding what it sends meanwhile.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
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
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Starts `bin coordinator` on `data` and a free port; returns it and its address.
fn start_process(bin: &Path, data: &Path, log: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start coordinator");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("listening line");
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .expect("address");
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, addr)
}

/// A `/proc/PID/status` field in KiB (`VmRSS` now, `VmHWM` the peak).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Issue 17, item 7: with small units the default rate limit once refused 537,276 honest
/// `SubmitCertificate` calls in 20 minutes. Each unit leased now earns its worker the
/// calls it needs beyond the rate, so three honest workers at the default limits run
/// 2,000 tiny units with no refusal at all — while a flood from one key without work is
/// still refused (`garbage.rs`: 1,000 heartbeats at once).
#[test]
fn an_honest_fleet_on_tiny_units_is_never_refused_by_the_rate_limit() {
    // A tenth of the default rate (100 calls a second), so that the workers' calls are
    // well past the rate: each one runs about 20 units a second.
    let mut c =
        crate::harness::Cluster::start_with(30, &["--worker-requests-per-second", "10"], |_| {});
    for _ in 0..3 {
        c.start_worker(&[]);
    }
    // 2,000 units of 100 numbers each: a few milliseconds apiece, so the workers call as
    // fast as they can.
    let manifest = crate::harness::project(
        c.dir.path(),
        "primes-tiny",
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\n[inputs]\nsweep = { from = 0, to = 200_000, step = 100 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(600));
    assert_eq!(
        (
            crate::harness::n(&status, "verified"),
            crate::harness::n(&status, "failed")
        ),
        (2000, 0),
        "{status}"
    );
    assert_eq!(crate::harness::sum_outputs(&c.results(id)), (17_984, 2000));
    let coordinator: SocketAddr = c.addr.parse().expect("coordinator address");
    let text = crate::dashboard::http_get(coordinator, "/metrics");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fallow_rejected_requests_total{"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    println!(
        "2,000 tiny units, {} executions: refused calls {refused:?}",
        crate::harness::n(&status, "executions")
    );
    assert!(
        refused.is_empty(),
        "honest calls were refused: {refused:?}\n{}",
        c.logs()
    );
    for i in 0..3 {
        let log = c.worker_log(i);
        assert!(
            !log.contains("RESOURCE_EXHAUSTED") && !log.contains("rate limit"),
            "worker {i} was told to slow down:\n{log}"
        );
    }
}

/// A stranger opening `GetResults` follow streams from one address gets 8 and then
/// `RESOURCE_EXHAUSTED` naming the cap; a stream that ends gives its place back. (The
/// project has no workers, so every follower would wait for ever.)
#[test]
fn follow_streams_from_one_address_are_capped() {
    let c = InProcess::start(|config| config.limit_loopback = true);
    let id = c
        .submit(project("followed", artifacts::PRIMES.to_vec(), None))
        .expect("submitted");
    c.block_on(async {
        let mut client = c.client().await;
        let follow = pb::GetResultsRequest {
            project_id: id,
            follow: true,
        };
        let mut held = Vec::new();
        for i in 0..8 {
            let stream = client
                .get_results(follow)
                .await
                .unwrap_or_else(|e| panic!("follow stream {i} refused: {e}"))
                .into_inner();
            held.push(stream);
        }
        let refused = client
            .get_results(follow)
            .await
            .expect_err("a ninth follow stream from one address");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains("at most 8"), "{refused}");
        // Without follow, results stay open to anyone.
        client
            .get_results(pb::GetResultsRequest {
                project_id: id,
                follow: false,
            })
            .await
            .expect("a plain results call");
        drop(held.pop());
        // The coordinator notices the closed stream at its next round (500 ms).
        let mut again = None;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Ok(s) = client.get_results(follow).await {
                again = Some(s);
                break;
            }
        }
        assert!(again.is_some(), "a place freed by a closed stream");
    });
}
