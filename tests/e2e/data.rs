//! Project data files end to end: `fallow submit` uploads each file once (in chunks), two
//! workers fetch each once, verify it and mount it read-only at /data for every unit, a
//! restarted worker reuses its cache, `fallow run` mounts the same files, and a project
//! naming data the coordinator does not hold is refused.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;
use protocol::data::DataFile;
use protocol::manifest::ProjectSpec;
use protocol::{Digest, Identity, Limits};

use crate::harness::{Cluster, fallow, n, project};

/// Rows of the table: a few MiB, so it travels in several 1 MiB chunks.
const ROWS: u64 = 600_000;

fn row(i: u64) -> i64 {
    ((i * 7919) % 1_000_003) as i64 - 500_000
}

/// A project summing table rows named by each unit's input, plus the offset file.
fn write_project(root: &Path, name: &str, units: &[(&str, &[u64])]) -> std::path::PathBuf {
    let manifest = project(
        root,
        name,
        artifacts::LOOKUP,
        None,
        "replication = 2\nquorum = 2\nadaptive = false\n[limits]\nfuel = 50_000_000_000\nmemory_mb = 256\n\
         [inputs]\ndir = \"inputs\"\n[data]\ntable = \"../shared/table.txt\"\nfiles = [\"../shared/offset\"]\n",
    );
    let dir = manifest.parent().expect("dir");
    std::fs::create_dir_all(dir.join("inputs")).expect("inputs");
    for (unit, rows) in units {
        let text: Vec<String> = rows.iter().map(u64::to_string).collect();
        std::fs::write(dir.join("inputs").join(unit), text.join(" ")).expect("input");
    }
    manifest
}

fn expected(rows: &[u64]) -> String {
    format!("{}\n", rows.iter().map(|&i| row(i)).sum::<i64>() + 7)
}

/// `fallow submit MANIFEST` as `Cluster::submit` runs it, with its whole output.
fn submit(c: &Cluster, manifest: &Path) -> std::process::Output {
    fallow()
        .env("FALLOW_SUBMITTER_KEY", crate::harness::submitter_key())
        .arg("submit")
        .arg(manifest)
        .args(["--coordinator", &c.url, "--token", &c.token])
        .output()
        .expect("run fallow submit")
}

/// How many data files worker `i` downloaded, by its logs.
fn fetched(log: &str) -> usize {
    log.matches("data file fetched and verified").count()
}

#[test]
fn units_read_data_files_each_worker_fetches_once_and_keeps_across_a_restart() {
    let mut c = Cluster::start(30);
    let shared = c.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let table: String = (0..ROWS).map(|i| format!("{}\n", row(i))).collect();
    assert!(
        table.len() > 3 << 20,
        "several chunks: {} bytes",
        table.len()
    );
    std::fs::write(shared.join("table.txt"), &table).expect("table");
    std::fs::write(shared.join("offset"), "7\n").expect("offset");
    let w0 = c.start_worker(&[]);
    let w1 = c.start_worker(&[]);

    let units: [(&str, &[u64]); 3] = [
        ("a", &[0, 1, 2]),
        ("b", &[ROWS - 1]),
        ("c", &[5, 5, 599_000]),
    ];
    let first = write_project(c.dir.path(), "lookup-1", &units);
    let submit = submit(&c, &first);
    let said = String::from_utf8_lossy(&submit.stderr).into_owned();
    assert!(submit.status.success(), "{said}");
    assert!(said.contains("data: 2 of 2 files uploaded"), "{said}");
    let id: u64 = String::from_utf8_lossy(&submit.stdout)
        .trim()
        .parse()
        .expect("id");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (3, 0),
        "{status}\n{}",
        c.logs()
    );
    let out = c.results(id);
    for (unit, rows) in units {
        assert_eq!(
            std::fs::read_to_string(out.join(unit)).expect("output"),
            expected(rows),
            "unit {unit}"
        );
    }
    // Both workers ran every unit (replication 2) and fetched each of the 2 files once.
    for w in [w0, w1] {
        assert_eq!(
            fetched(&c.worker_logs(w)),
            2,
            "worker {w}:\n{}",
            c.worker_logs(w)
        );
        let blobs = c.worker_dir(w).join("data").join("blobs");
        let table_blob = blobs.join(Digest::of(table.as_bytes()).to_hex());
        assert_eq!(
            std::fs::read(&table_blob).expect("cached"),
            table.as_bytes()
        );
    }

    // `fallow run` mounts the same files the same way: the bytes the workers signed.
    let module = first.with_file_name("module.wasm");
    let run = fallow()
        .args(["run", module.to_str().expect("utf-8"), "--input"])
        .arg(first.with_file_name("inputs").join("c"))
        .arg("--manifest")
        .arg(&first)
        .output()
        .expect("fallow run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.stdout, std::fs::read(out.join("c")).expect("output"));

    // A second project on the same data: nothing uploaded again; a restarted worker and the
    // other one both run it from their caches.
    c.kill_worker(w0);
    c.restart_worker(w0, &[]);
    let more: [(&str, &[u64]); 2] = [("d", &[3]), ("e", &[4, 6])];
    let second = write_project(c.dir.path(), "lookup-2", &more);
    let submit = self::submit(&c, &second);
    let said = String::from_utf8_lossy(&submit.stderr).into_owned();
    assert!(submit.status.success(), "{said}");
    assert!(
        said.contains("data: 0 of 2 files uploaded (2 already on the coordinator)"),
        "{said}"
    );
    let id: u64 = String::from_utf8_lossy(&submit.stdout)
        .trim()
        .parse()
        .expect("id");
    let status = c.wait_finished(id, Duration::from_secs(240));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (2, 0),
        "{status}\n{}",
        c.logs()
    );
    let out = c.results(id);
    for (unit, rows) in more {
        assert_eq!(
            std::fs::read_to_string(out.join(unit)).expect("output"),
            expected(rows)
        );
    }
    for w in [w0, w1] {
        assert_eq!(
            fetched(&c.worker_logs(w)),
            2,
            "worker {w} fetched again:\n{}",
            c.worker_logs(w)
        );
    }
}

/// `SubmitProject` naming a data file that was never uploaded is refused, naming the file
/// and the fix; nothing is created.
#[test]
fn a_project_naming_data_the_coordinator_lacks_is_refused() {
    let c = Cluster::start(30);
    let token = c.token.clone();
    let mut spec = ProjectSpec {
        name: "no-data".into(),
        module: artifacts::LOOKUP.to_vec(),
        reducer: None,
        replication: 1,
        quorum: 1,
        max_replicas: 4,
        adaptive: false,
        error_bound: 0.02,
        limits: Limits::default(),
        units: vec![("0".into(), b"0\n".to_vec())],
        manifest: "name = \"no-data\"".into(),
        data: vec![DataFile {
            name: "table".into(),
            size: 3,
            digest: Digest::of(b"1\n\n"),
        }],
        data_paths: Vec::new(),
        signatures: None,
    };
    spec.sign(&Identity::from_seed([17; 32]));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let refused = runtime.block_on(async {
        let mut client = pb::coordinator_client::CoordinatorClient::connect(c.url.clone())
            .await
            .expect("connect");
        let mut request = tonic::Request::new(pb::SubmitProjectRequest::from(spec));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().expect("header"),
        );
        client.submit_project(request).await.expect_err("refused")
    });
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("table"), "{}", refused.message());
    assert!(
        refused.message().contains("upload it first"),
        "{}",
        refused.message()
    );
    let status = c.cli(&["status"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("no-data"));
}
