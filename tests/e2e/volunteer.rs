//! The browser volunteer's guest runtime (`coordinator/assets/volunteer/guest.js`) gives
//! the native sandbox's bytes and fuel: V8, under node and in headless Chromium's module
//! Web Workers, runs the task, hostile and ABI-probing units through the same metered
//! modules a worker compiles (`sandbox::meter`), and every outcome is compared with what
//! this build's `fallow run` gives for the same unit, taken afresh here.
//!
//! Needs node (Debian's `nodejs`; `FALLOW_NODE` names another) and Chromium (as the
//! dashboard test: `FALLOW_CHROMIUM`, else Debian's); `scripts/test` installs both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn node() -> PathBuf {
    std::env::var_os("FALLOW_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

pub(crate) fn chromium() -> PathBuf {
    std::env::var_os("FALLOW_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Runs `command` (node, which may start Chromium) in a process group of its own and
/// returns its output; after `limit`, kills the whole group and fails, saying what ran
/// and what it printed, so that a page that never answers cannot hold the suite.
fn run_for(mut command: Command, limit: std::time::Duration) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .process_group(0)
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("node runs");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > limit {
            // `--`: the negative id is a process group, never an option.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still ran after {limit:?}; killed it and its children.\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}

/// The repository root (this crate is `fallow/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fallow/ has a parent")
        .to_path_buf()
}

#[test]
fn the_browser_guest_runtime_gives_the_native_bytes_and_fuel_in_node_and_chromium() {
    let version = Command::new(node()).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{} does not run ({version:?}): this test needs node; run the tests with \
         scripts/test (which installs Debian's nodejs) or set FALLOW_NODE",
        node().display()
    );
    assert!(
        chromium().exists(),
        "{} is missing: this test needs Chromium; run the tests with scripts/test or set \
         FALLOW_CHROMIUM",
        chromium().display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (built, metered) = (dir.path().join("built"), dir.path().join("metered"));
    for d in [&built, &metered] {
        std::fs::create_dir(d).expect("dir");
    }
    // The modules as built (named as the build writes them) and as a worker meters them.
    let mut modules: Vec<(&str, &[u8])> = artifacts::ALL.to_vec();
    modules.push(("nbody", artifacts::NBODY));
    for (name, bytes) in modules {
        let file = format!("{}.wasm", name.rsplit('/').next().unwrap_or(name));
        std::fs::write(built.join(&file), bytes).expect("write module");
        let rewritten = sandbox::meter::instrument(bytes).expect("every guest can be metered");
        std::fs::write(metered.join(&file), rewritten).expect("write metered module");
    }
    let volunteer = root().join("coordinator/assets/volunteer");
    let env = |c: &mut Command| {
        c.current_dir(root())
            .env("FALLOW_ARTIFACTS", &built)
            .env("FALLOW_METERED", &metered)
            .env("FALLOW_EXPECTED", dir.path().join("expected.json"))
            .env("CHROMIUM", chromium());
    };

    // What the native sandbox gives for every unit of the suite, from this build.
    let mut native = Command::new(node());
    env(&mut native);
    native
        .arg(volunteer.join("tools/make-expected.mjs"))
        .arg(env!("CARGO_BIN_EXE_fallow"))
        .env("FALLOW_EXPECTED_OUT", dir.path().join("expected.json"));
    let made = run_for(native, std::time::Duration::from_secs(600));
    assert!(
        made.status.success(),
        "the native outcomes could not be taken: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The committed fixture (what the suite checks when run by hand) is this build's too.
    let fresh = std::fs::read_to_string(dir.path().join("expected.json")).expect("written");
    let committed = std::fs::read_to_string(volunteer.join("test/fixtures/expected.json"))
        .expect("committed fixture");
    assert!(
        fresh == committed,
        "coordinator/assets/volunteer/test/fixtures/expected.json is not what this build's \
         sandbox gives any more: rerun `node coordinator/assets/volunteer/tools/make-expected.mjs`"
    );

    let mut suite = Command::new(node());
    env(&mut suite);
    suite.arg("--test").arg(volunteer.join("test"));
    let ran = run_for(suite, std::time::Duration::from_secs(600));
    let report = String::from_utf8_lossy(&ran.stdout);
    let tail: String = report
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        ran.status.success(),
        "guest.js differs from the native sandbox:\n{report}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    // Nothing skipped: each file skips only when node finds no modules or no Chromium.
    for line in ["# fail 0", "# skipped 0", "# todo 0", "# cancelled 0"] {
        assert!(report.contains(line), "expected `{line}`:\n{tail}");
    }
    let passed = report
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 500, "only {passed} checks ran:\n{tail}");
}

/// One gRPC-web call as a browser's fetch() makes it, over HTTP/1.0 (so the answer ends
/// with the connection): `application/grpc-web+proto`, the message in a data frame. Returns
/// the HTTP head, the data frames' messages and the trailers frame's text.
fn grpc_web(addr: &str, path: &str, message: &[u8]) -> (String, Vec<Vec<u8>>, String) {
    use std::io::{Read, Write};
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("send head");
    stream.write_all(&body).expect("send body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut rest = &answer[split + 4..];
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let frame = rest[5..5 + len].to_vec();
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8_lossy(&frame).to_string();
        } else {
            messages.push(frame);
        }
        rest = &rest[5 + len..];
    }
    (head, messages, trailers)
}

/// The coordinator serves its API as gRPC-web on its one port, beside gRPC and the
/// dashboard: the transport of the volunteer page, a browser having no HTTP/2 trailers.
#[test]
fn the_coordinator_answers_grpc_web_on_its_one_port() {
    use prost::Message;
    let c = crate::harness::Cluster::start(30);
    let manifest = crate::harness::project(
        c.dir.path(),
        "web",
        artifacts::PRIMES,
        None,
        "[inputs]\nsweep = { from = 0, to = 100, step = 50 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let request = proto::v1::ListProjectsRequest { project_id: 0 }.encode_to_vec();
    let (head, messages, trailers) =
        grpc_web(&c.addr, "/fallow.v1.Coordinator/ListProjects", &request);
    assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/grpc-web"),
        "{head}"
    );
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let [message] = messages.as_slice() else {
        panic!("one answer expected, got {}", messages.len());
    };
    let list = proto::v1::ListProjectsResponse::decode(message.as_slice()).expect("decodes");
    let project = list.projects.iter().find(|p| p.id == id).expect("listed");
    assert_eq!((project.name.as_str(), project.total), ("web", 2));
    // A refusal is a gRPC status (here a message that does not decode), in the head of a
    // trailers-only answer, as a browser client reads it.
    let (head, messages, _) = grpc_web(&c.addr, "/fallow.v1.Coordinator/GetModule", b"\xff");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200 "), "{head}");
    assert!(messages.is_empty(), "{head}");
    assert!(
        head.contains("grpc-status:") && !head.contains("grpc-status: 0"),
        "{head}"
    );

    // Another web site cannot have its visitors' browsers call the API: a cross-origin
    // gRPC-web call needs a CORS preflight (its content type is not a simple one), and the
    // coordinator grants none, so the browser never sends the call.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&c.addr).expect("connect");
    write!(
        stream,
        "OPTIONS /fallow.v1.Coordinator/ListProjects HTTP/1.0\r\nHost: {}\r\n\
         Origin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web\r\n\r\n",
        c.addr
    )
    .expect("send preflight");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1."),
        "no answer to the preflight: {answer:?}"
    );
    assert!(
        !answer.contains("access-control-allow-origin"),
        "a preflight from another origin was granted: {answer}"
    );
}

/// Runs one of the volunteer tools (`tools/NAME`) with the coordinator's URL and returns
/// the JSON object it prints.
fn volunteer_tool(c: &crate::harness::Cluster, name: &str) -> serde_json::Value {
    let script = root().join("coordinator/assets/volunteer/tools").join(name);
    let mut tool = Command::new(node());
    tool.arg(&script)
        .arg(format!("http://{}", c.addr))
        .env("CHROMIUM", chromium());
    let ran = run_for(tool, std::time::Duration::from_secs(300));
    assert!(
        ran.status.success(),
        "{name}: the browser worker's calls failed:\n{}\n{}\ncoordinator:\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr),
        c.coordinator_log()
    );
    serde_json::from_slice(&ran.stdout).expect("the tool prints one JSON object")
}

/// What `tools/calls.mjs` got: registered with `platform` on the coordinator's clock after
/// one correction, two heartbeats answered, the tampered signature refused.
fn check_first_calls(out: &serde_json::Value, platform: &str) {
    let register = &out["register"];
    assert_eq!(register["clock_corrections"], 1, "{out}");
    assert!(register["heartbeat_ms"].as_u64().unwrap_or(0) > 0, "{out}");
    assert_eq!(register["lease_ms"], 30_000, "{out}");
    assert_eq!(register["coordinator_key"].as_str().map(str::len), Some(64));
    assert_eq!(register["platform"], platform, "{out}");
    let heartbeats = out["heartbeats"].as_array().expect("heartbeats");
    assert_eq!(heartbeats.len(), 2, "{out}");
    for h in heartbeats {
        assert_eq!(h["unknown_worker"], false, "{out}");
        assert!(h["now_ms"].as_u64().unwrap_or(0) > 0, "{out}");
    }
    // The tampered signature was refused as unauthenticated, and said why.
    let bad = &out["bad_signature"];
    assert_eq!(bad["status"], 16, "{out}");
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.contains("signature")),
        "{out}"
    );
    // The equivocation evidence was authenticated, decoded and checked as proof: it was
    // refused only for naming a unit the coordinator does not have.
    assert!(
        out["misbehaviour"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown unit")),
        "{out}"
    );
}

/// The coordinator's `/api/workers` row of the worker whose (full, hex) id is `id`, once
/// it is listed online.
fn listed_worker(c: &crate::harness::Cluster, id: &str) -> serde_json::Value {
    let addr = c.addr.parse().expect("addr");
    // The dashboard's snapshot is refreshed in the background: poll it.
    let start = std::time::Instant::now();
    loop {
        let workers: serde_json::Value =
            serde_json::from_str(&crate::dashboard::http_get(addr, "/api/workers")).expect("JSON");
        let found = workers["workers"].as_array().and_then(|all| {
            all.iter()
                // The dashboard shows ids shortened.
                .find(|w| {
                    w["id"].as_str().is_some_and(|short| id.starts_with(short))
                        && w["online"] == true
                })
                .cloned()
        });
        match found {
            Some(w) => break w,
            None if start.elapsed() > std::time::Duration::from_secs(15) => {
                panic!("worker {id} not listed online: {workers}")
            }
            None => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// The browser worker's identity and first calls (`identity.js`, `rpc.js`, `proto.js`),
/// under node and in a headless Chromium tab, against a real coordinator over gRPC-web:
/// each registers (its clock an hour off, corrected from the refusal), heartbeats twice,
/// and a tampered signature is refused. `/api/workers` lists both as browser workers with
/// their account and team, and `proto.js` encodes as prost does (the call signatures
/// cover those bytes).
#[test]
fn a_browser_worker_registers_and_heartbeats_over_grpc_web() {
    use prost::Message;
    let c = crate::harness::Cluster::start(30);
    let out = volunteer_tool(&c, "worker-calls.mjs");

    // proto.js writes prost's bytes for the same values.
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7)).collect();
    let prost_hex = [
        (
            "register_full",
            proto::v1::RegisterWorkerRequest {
                public_key: key.clone(),
                name: "tab ünïcode ✓".into(),
                peer_addr: String::new(),
                cores: 300,
                version: "web-1".into(),
                signature: vec![0xab; 64],
                account: "webvol".into(),
                team: "lab".into(),
                platform: "browser-node".into(),
                fuel_rules: 1,
            }
            .encode_to_vec(),
        ),
        (
            "register_defaults",
            proto::v1::RegisterWorkerRequest {
                public_key: key.clone(),
                name: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "heartbeat_full",
            proto::v1::HeartbeatRequest {
                public_key: key.clone(),
                held_units: vec![0, 1, 300, (1 << 63) + 5, u64::MAX],
                peers_version: 1_234_567_890_123,
                run_state: "suspended".into(),
                state_reason: "the tab is hidden".into(),
            }
            .encode_to_vec(),
        ),
        (
            "heartbeat_empty",
            proto::v1::HeartbeatRequest::default().encode_to_vec(),
        ),
        (
            "heartbeat_response",
            proto::v1::HeartbeatResponse {
                settled_units: vec![7, 1 << 40],
                peers_version: 3,
                peers: vec![
                    proto::v1::PeerInfo {
                        public_key: key.clone(),
                        addr: "10.0.0.1:7000".into(),
                    },
                    proto::v1::PeerInfo::default(),
                ],
                unknown_worker: true,
                now_ms: 1_800_000_000_000,
                membership_credential: vec![1, 2, 3],
            }
            .encode_to_vec(),
        ),
    ];
    let claim = proto::v1::Claim {
        project_id: 3,
        unit_id: (1 << 63) + 9,
        digest: vec![0xd1; 32],
        fuel: 123_456_789_012_345,
        worker_key: key.clone(),
        signature: vec![0x5a; 64],
        salt: vec![0x17; 32],
    };
    let commitment = proto::v1::Commitment {
        project_id: 3,
        unit_id: 9,
        worker_key: key.clone(),
        seal: vec![0x33; 32],
        signature: vec![0x44; 64],
        ticket: Some(proto::v1::LeaseTicket {
            expires_ms: 1_800_000_000_000,
            signature: vec![0x55; 64],
        }),
    };
    // The messages of leases, boards and certificates (loop.js, holder.js).
    let more = [
        (
            "work_request",
            proto::v1::WorkRequest {
                public_key: key.clone(),
                max_units: 2,
                accept_submitters: vec![vec![1; 32], vec![2; 32]],
                allow_unsigned: true,
            }
            .encode_to_vec(),
        ),
        (
            "work_response",
            proto::v1::WorkResponse {
                assignments: vec![
                    proto::v1::Assignment {
                        project_id: 3,
                        unit_id: 9,
                        unit_name: "primes-0001".into(),
                        input: vec![1, 2, 3],
                        module_digest: vec![0xee; 32],
                        limits: Some(proto::v1::Limits {
                            fuel: 10_000_000_000,
                            memory_mb: 64,
                            wall_seconds: 60,
                            max_output_bytes: 1 << 20,
                            nan_canonicalization: true,
                            max_checkpoint_bytes: 16 << 20,
                        }),
                        quorum: 2,
                        lease_ms: 600_000,
                        submitter_key: vec![9; 32],
                        terms: vec![8; 32],
                        signature: vec![7; 64],
                        ticket: Some(proto::v1::LeaseTicket {
                            expires_ms: 1_800_000_000_000,
                            signature: vec![6; 64],
                        }),
                        data: vec![proto::v1::DataFile {
                            name: "a.bin".into(),
                            size: 1 << 30,
                            digest: vec![5; 32],
                        }],
                    },
                    proto::v1::Assignment {
                        project_id: 1,
                        limits: Some(proto::v1::Limits::default()),
                        ..Default::default()
                    },
                ],
                retry_after_ms: 2500,
                reason: "at its limit".into(),
            }
            .encode_to_vec(),
        ),
        (
            "get_module_request",
            proto::v1::GetModuleRequest {
                digest: vec![0xee; 32],
                fuel_rules: 1,
                canonical_nans: true,
            }
            .encode_to_vec(),
        ),
        (
            "failure_report",
            proto::v1::FailureReport {
                public_key: key.clone(),
                unit_id: 9,
                kind: proto::v1::FailureKind::BadSignature.into(),
                detail: "the signature on unit \"x\" does not verify".into(),
                exit_code: -3,
            }
            .encode_to_vec(),
        ),
        (
            "certificate_submission",
            proto::v1::CertificateSubmission {
                unit_id: 9,
                claims: vec![
                    claim.clone(),
                    proto::v1::Claim {
                        fuel: 0,
                        ..claim.clone()
                    },
                ],
                output: b"42\n".to_vec(),
                submitter_key: key.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "dispute",
            proto::v1::Dispute {
                public_key: key.clone(),
                unit_id: 9,
                claims: vec![claim.clone()],
            }
            .encode_to_vec(),
        ),
        (
            "return_units",
            proto::v1::ReturnUnitsRequest {
                public_key: key.clone(),
                unit_ids: vec![9, 1 << 40],
            }
            .encode_to_vec(),
        ),
        (
            "relay_exchange",
            proto::v1::RelayExchangeRequest {
                public_key: key.clone(),
                board_key: vec![0xbb; 32],
                exchange: Some(proto::v1::BoardExchange {
                    commitments: vec![commitment.clone()],
                    reveals: vec![claim.clone()],
                    want_units: vec![9, 10],
                }),
            }
            .encode_to_vec(),
        ),
        (
            "evidence",
            proto::v1::Evidence {
                reporter_key: key.clone(),
                commitment: Some(commitment.clone()),
                claim: None,
                other: Some(proto::v1::Commitment {
                    seal: vec![0x34; 32],
                    ticket: None,
                    ..commitment.clone()
                }),
            }
            .encode_to_vec(),
        ),
        (
            "board_views",
            proto::v1::BoardViews {
                views: vec![proto::v1::UnitView {
                    unit_id: 9,
                    commitments: 2,
                    reveals: vec![claim.clone()],
                    committed: vec![proto::v1::Commitment {
                        ticket: None,
                        ..commitment.clone()
                    }],
                }],
                rejected: vec![proto::v1::BoardRejection {
                    unit_id: 10,
                    reason: "no_ticket".into(),
                }],
            }
            .encode_to_vec(),
        ),
    ];
    for (name, bytes) in prost_hex.into_iter().chain(more) {
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            out["encodings"][name].as_str(),
            Some(expected.as_str()),
            "proto.js encodes {name} unlike prost"
        );
    }

    check_first_calls(&out, "browser-node");
    let tab = volunteer_tool(&c, "chromium-calls.mjs");
    check_first_calls(&tab, "browser-chromium");

    // The coordinator lists both as browser workers, online, with their account and team.
    for (out, family) in [(&out, "node"), (&tab, "chromium")] {
        let listed = listed_worker(&c, out["id"].as_str().expect("id"));
        assert_eq!(listed["account"], "webvol", "{listed}");
        assert_eq!(listed["team"], "lab", "{listed}");
        assert_eq!(listed["platform"], format!("browser-{family}"), "{listed}");
        assert_eq!(listed["browser"], family, "{listed}");
        assert_eq!(listed["state"], "idle", "{listed}");
    }
}

/// `loop.js`'s `BrowserWorker` under node (its units run by `guest.js` in-process, as the
/// page's Web Workers run them) is one replica and a native worker the other, with
/// replication 2: every unit verifies with a mixed quorum. The browser worker leases, gets
/// the metered module, checks the submitter's signature, and commits and reveals on the
/// native worker's board through `RelayExchange`; certificates verify, both accounts are
/// credited, and the outputs are the primes.
#[test]
fn a_browser_worker_under_node_and_a_native_worker_verify_units_together() {
    use crate::harness::{n, project, sum_outputs};
    let mut c = crate::harness::Cluster::start(30);
    c.start_worker(&["--account", "native"]);
    let manifest = project(
        c.dir.path(),
        "primes-mixed",
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[inputs]\nsweep = { from = 0, to = 100_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let mut tool = Command::new(node());
    tool.arg(root().join("coordinator/assets/volunteer/tools/worker-loop.mjs"))
        .arg(format!("http://{}", c.addr))
        .arg("5");
    let ran = run_for(tool, std::time::Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the browser worker did not see its 5 units verified:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        c.logs()
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let counts = &out["snapshot"]["counts"];
    assert_eq!(counts["verified"], 5, "{out}");
    assert_eq!(counts["failed"], 0, "{out}");
    assert_eq!(
        out["events"]["revealed"], 5,
        "it revealed on the boards: {out}"
    );
    let status = c.wait_finished(id, std::time::Duration::from_secs(120));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (5, 0),
        "{status}"
    );
    assert!(
        n(&status, "executions") >= 10,
        "two replicas each: {status}"
    );
    assert_eq!(sum_outputs(&c.results(id)), (9_592, 5));
    let accounts = c.accounts();
    for name in ["native", "webvol"] {
        let verified = accounts.iter().find(|a| a.0 == name).map_or(0, |a| a.1);
        assert_eq!(
            verified, 5,
            "{name} earned a share of every unit: {accounts:?}"
        );
    }
}

/// A browser worker (`loop.js` under node) made to corrupt its outputs
/// (`fault: 'corrupt-output'`) beside two honest native workers: its claims disagree with
/// the native replicas', the disputes bring in native replicas, and every unit verifies
/// with the true output. The browser worker's account verifies nothing.
#[test]
fn a_browser_worker_that_corrupts_its_outputs_is_caught() {
    use crate::harness::{n, project, sum_outputs};
    let mut c = crate::harness::Cluster::start(30);
    // Of different accounts: an extra replica goes to an account that has not run the unit.
    c.start_worker(&["--account", "alice"]);
    c.start_worker(&["--account", "bob"]);
    let manifest = project(
        c.dir.path(),
        "primes-corrupt",
        artifacts::PRIMES,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[inputs]\nsweep = { from = 0, to = 120_000, step = 20_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let mut tool = Command::new(node());
    tool.arg(root().join("coordinator/assets/volunteer/tools/worker-loop.mjs"))
        .arg(format!("http://{}", c.addr))
        .arg("idle")
        .arg("corrupt-output")
        .env("FALLOW_LOOP_SECONDS", "90");
    let ran = run_for(tool, std::time::Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the browser worker did not finish:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        c.logs()
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let committed = out["snapshot"]["counts"]["committed"].as_u64().unwrap_or(0);
    assert!(committed >= 1, "the browser worker ran units: {out}");
    let status = c.wait_finished(id, std::time::Duration::from_secs(180));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (6, 0),
        "{status}"
    );
    assert!(
        n(&status, "disputes") >= 1,
        "the corrupt claims were disputed: {status}"
    );
    assert_eq!(sum_outputs(&c.results(id)), (11_301, 6));
    let accounts = c.accounts();
    let webvol = accounts.iter().find(|a| a.0 == "webvol").map_or(0, |a| a.1);
    assert_eq!(webvol, 0, "a corrupt output never verifies: {accounts:?}");
}
