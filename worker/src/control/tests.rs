//! The policy loop with injected readings and a fake clock driving real guests, and the
//! control API over a real loopback socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{Digest, Limits, ProjectId, UnitId};
use sandbox::{Execution, Sandbox, SandboxConfig};

use super::*;
use crate::policy::Reason;

const MIN: u64 = 60_000;

fn user_idle(ms: u64) -> Readings {
    Readings {
        user_idle: Some(Duration::from_millis(ms)),
        ..Readings::default()
    }
}

fn busy(ms_idle: u64, load: f32) -> Readings {
    Readings {
        other_cpu_percent: load,
        ..user_idle(ms_idle)
    }
}

/// Waits (up to 60 s) until `what` holds of the running units.
fn wait_until(
    control: &Control,
    what: &str,
    ok: impl Fn(&[RunningUnit]) -> bool,
) -> Vec<RunningUnit> {
    let start = Instant::now();
    loop {
        let (running, _) = control.gate().snapshot();
        if ok(&running) {
            return running;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting: {what}; {running:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn limits() -> Limits {
    Limits {
        fuel: 1 << 40,
        memory_mb: 32,
        wall_seconds: 600,
        ..Limits::default()
    }
}

fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            slots: 4,
            max_memory_mb: 64,
            ..SandboxConfig::default()
        })
        .expect("sandbox"),
    )
}

/// Runs `input` through the primes guest on a guest-sized thread, paced by `pacer`.
fn spawn_primes(
    sb: &Arc<Sandbox>,
    input: &'static [u8],
    pacer: Box<dyn sandbox::Pacer>,
) -> std::thread::JoinHandle<Result<Execution, protocol::Failure>> {
    let sb = sb.clone();
    std::thread::Builder::new()
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || {
            let wasm = artifacts::PRIMES;
            let compiled = sb.compile(Digest::of(wasm), wasm, false).expect("compile");
            sb.run_paced(&compiled, input, [7; 32], &limits(), pacer)
        })
        .expect("thread")
}

struct Unpaced;
impl sandbox::Pacer for Unpaced {
    fn pace(&mut self, _: u64) {}
}

#[test]
fn idle_cpu_and_battery_readings_start_suspend_and_resume_a_guest_without_losing_progress() {
    const INPUT: &[u8] = b"0 300000000\n";
    let dir = tempfile::tempdir().expect("tmp");
    let sb = sandbox();
    let straight = spawn_primes(&sb, INPUT, Box::new(Unpaced))
        .join()
        .expect("join")
        .expect("straight run");

    // t = 0: the user is at the keyboard; the unit is held before it starts.
    let control = Control::new(dir.path(), 1, BTreeMap::new(), user_idle(0)).expect("control");
    assert_eq!(
        control.decision().state,
        State::Suspended(Reason::UserActive)
    );
    let pacer = control
        .gate()
        .pacer(UnitId(1), ProjectId(1), "primes", &limits());
    let run = spawn_primes(&sb, INPUT, Box::new(pacer));
    let r = wait_until(&control, "held before start", |r| r.len() == 1 && r[0].held);
    assert_eq!(r[0].fuel_used, 0, "a held unit must not start");

    // Two minutes later the user is still around: nothing runs.
    assert!(!control.step(2 * MIN, user_idle(2 * MIN)).running());
    // Three idle minutes: it runs.
    assert!(control.step(3 * MIN, user_idle(3 * MIN)).running());
    wait_until(&control, "computing", |r| r[0].fuel_used > 0 && !r[0].held);

    // Another program takes the CPU: suspended mid-run, progress frozen.
    let d = control.step(3 * MIN + 1_000, busy(3 * MIN + 1_000, 80.0));
    assert_eq!(d.state, State::Suspended(Reason::CpuBusy));
    let r = wait_until(&control, "held mid-run", |r| r[0].held);
    let frozen = r[0].fuel_used;
    assert!(
        frozen > 0 && frozen < straight.fuel,
        "held mid-run: {frozen} of {}",
        straight.fuel
    );
    std::thread::sleep(Duration::from_millis(300));
    let (r, _) = control.gate().snapshot();
    assert!(r[0].held);
    assert_eq!(r[0].fuel_used, frozen, "no progress while suspended");

    // The load drops, but running again waits for ten calm seconds; meanwhile the laptop
    // goes on battery (suspended for that), then back on AC.
    assert!(
        !control
            .step(3 * MIN + 2_000, busy(3 * MIN + 2_000, 5.0))
            .running()
    );
    let on_battery = Readings {
        on_battery: true,
        ..user_idle(3 * MIN + 8_000)
    };
    assert_eq!(
        control.step(3 * MIN + 8_000, on_battery).state,
        State::Suspended(Reason::OnBattery)
    );
    assert!(
        !control
            .step(3 * MIN + 11_999, busy(3 * MIN + 11_999, 5.0))
            .running()
    );
    assert!(
        control
            .step(3 * MIN + 12_000, busy(3 * MIN + 12_000, 5.0))
            .running()
    );

    let resumed = run
        .join()
        .expect("join")
        .expect("the suspended unit completes");
    assert_eq!(resumed.output, straight.output, "byte-identical output");
    assert_eq!(
        (resumed.digest, resumed.fuel),
        (straight.digest, straight.fuel)
    );
    assert!(
        control.gate().snapshot().0.is_empty(),
        "the unit left the gate"
    );
}

#[test]
fn the_cpu_limit_and_max_cores_apply_to_running_guests_and_results_stay_identical() {
    const INPUT: &[u8] = b"0 20000000\n";
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join(prefs::FILE),
        "cpu_limit_percent = 30\nmax_cores = 1\n",
    )
    .expect("prefs");
    let sb = sandbox();
    let straight = spawn_primes(&sb, INPUT, Box::new(Unpaced))
        .join()
        .expect("join")
        .expect("straight");
    let control =
        Control::new(dir.path(), 2, BTreeMap::new(), Readings::default()).expect("control");
    let d = control.decision();
    assert_eq!((d.cores, d.cpu_limit_percent), (1, 30));
    let a = spawn_primes(
        &sb,
        INPUT,
        Box::new(
            control
                .gate()
                .pacer(UnitId(1), ProjectId(1), "a", &limits()),
        ),
    );
    wait_until(&control, "a registered", |r| r.len() == 1);
    let b = spawn_primes(
        &sb,
        INPUT,
        Box::new(
            control
                .gate()
                .pacer(UnitId(2), ProjectId(1), "b", &limits()),
        ),
    );
    // One core allowed: the second unit waits, unstarted, behind the first.
    let r = wait_until(&control, "b held", |r| r.len() == 2 && r[1].held);
    assert_eq!(r[1].fuel_used, 0);
    // A live change of the file (as an editor would save it) lets both run at full speed.
    std::fs::write(dir.path().join(prefs::FILE), "max_cores = 2\n").expect("prefs");
    control.reload_if_changed();
    assert_eq!(control.decision().cores, 2);
    for run in [a, b] {
        let out = run.join().expect("join").expect("run");
        assert_eq!((out.digest, out.fuel), (straight.digest, straight.fuel));
    }
}

#[tokio::test]
async fn the_control_api_suspends_resumes_sets_prefs_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tmp");
    let control =
        Control::new(dir.path(), 2, BTreeMap::new(), Readings::default()).expect("control");
    let who = Identity {
        worker: "ab".repeat(32),
        account: "alice".into(),
        coordinator: "http://127.0.0.1:7070".into(),
    };
    let server = serve(control.clone(), who, dir.path())
        .await
        .expect("serve");
    let client = Client::open(dir.path()).expect("client");

    let s = client.status().await.expect("status");
    assert_eq!((s.state, s.account.as_str()), (State::Running, "alice"));
    let s = client.suspend().await.expect("suspend");
    assert_eq!(s.state, State::Suspended(Reason::ByUser));
    assert!(s.suspended_by_user && !control.decision().running());
    let s = client.resume().await.expect("resume");
    assert_eq!(s.state, State::Running);

    let rows = client
        .set_pref("cpu_limit_percent", "50")
        .await
        .expect("set");
    let row = rows
        .iter()
        .find(|r| r.key == "cpu_limit_percent")
        .expect("row");
    assert_eq!(
        (row.value.as_str(), row.source),
        ("50", prefs::Source::File)
    );
    assert_eq!(control.decision().cpu_limit_percent, 50, "applied live");
    let file = std::fs::read_to_string(dir.path().join(prefs::FILE)).expect("file");
    assert!(file.contains("cpu_limit_percent = 50"), "{file}");
    let err = client
        .set_pref("cpu_limit_percent", "0")
        .await
        .expect_err("0 %")
        .to_string();
    assert!(
        err.contains("cpu_limit_percent must be between 1 and 100"),
        "{err}"
    );
    let err = client
        .set_pref("turbo", "1")
        .await
        .expect_err("unknown")
        .to_string();
    assert!(err.contains("unknown preference `turbo`"), "{err}");

    let err = client
        .clone()
        .with_token("guess")
        .status()
        .await
        .expect_err("wrong token")
        .to_string();
    assert!(err.contains("refused the token"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token readable by its owner only");
    }

    // A stale address (the worker died without cleaning up) and no worker at all.
    server.shutdown().await;
    let err = Client::open(dir.path()).expect_err("gone").to_string();
    assert!(err.contains("no worker is running with --data"), "{err}");
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stale = unused.local_addr().expect("addr").to_string();
    drop(unused);
    std::fs::write(dir.path().join(ADDR_FILE), stale).expect("write");
    let err = Client::open(dir.path())
        .expect("files exist")
        .status()
        .await
        .expect_err("nothing listens")
        .to_string();
    assert!(err.contains("no worker answers at"), "{err}");
}
