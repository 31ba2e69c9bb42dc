//! `fallow run` gives what a worker gives: the same output bytes and the same fuel, and a
//! failing unit fails with the reason a worker would report.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Cluster, fallow, n, project};

/// The fuel `fallow run` printed on stderr (`… fuel N of M …`).
fn fuel_of(stderr: &str) -> u64 {
    let after = stderr
        .split("fuel ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fuel in {stderr:?}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fuel number in {stderr:?}"))
}

#[test]
fn a_local_run_gives_the_bytes_and_fuel_a_worker_gives() {
    let mut c = Cluster::start(30);
    c.start_worker(&[]);
    // One replica per unit, so the project's credit is exactly the fuel of its units.
    let manifest = project(
        c.dir.path(),
        "primes-local",
        artifacts::PRIMES,
        None,
        "replication = 1\nquorum = 1\nadaptive = false\n[limits]\nfuel = 20_000_000_000\n[inputs]\nsweep = { from = 0, to = 100_000, step = 25_000 }\n",
    );
    let id = c.submit(&manifest).expect("accepted");
    let status = c.wait_finished(id, Duration::from_secs(180));
    assert_eq!(
        (n(&status, "verified"), n(&status, "failed")),
        (4, 0),
        "{status}"
    );
    let out = c.results(id);
    let module = manifest.with_file_name("module.wasm");
    let inputs = c.dir.path().join("local-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    let mut fuel = 0;
    for a in (0..100_000).step_by(25_000) {
        let name = a.to_string();
        let input = inputs.join(&name);
        std::fs::write(&input, format!("{a} {}\n", a + 25_000)).expect("input");
        let run = fallow()
            .args(["run", module.to_str().expect("utf-8"), "--input"])
            .arg(&input)
            .arg("--manifest")
            .arg(&manifest)
            .output()
            .expect("fallow run");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "unit {name}: {stderr}");
        let verified = std::fs::read(out.join(&name)).expect("verified output");
        assert_eq!(
            run.stdout, verified,
            "unit {name}: the bytes a worker signed"
        );
        assert!(stderr.contains(&format!("unit \"{name}\" ok")), "{stderr}");
        fuel += fuel_of(&stderr);
    }
    assert_eq!(
        fuel,
        n(&status, "credit"),
        "the fuel workers claimed: {status}"
    );

    // The same units as JSON lines, for scripts: outputs, fuel and signers per unit.
    let jsonl = c.cli(&["results", &id.to_string(), "--format", "jsonl"]);
    assert!(
        jsonl.status.success(),
        "{}",
        String::from_utf8_lossy(&jsonl.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(jsonl.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let mut claimed = 0;
    for line in &lines {
        let unit = line["unit"].as_str().expect("unit");
        assert_eq!(line["state"], "verified", "{line}");
        let output = std::fs::read_to_string(out.join(unit)).expect("output");
        assert_eq!(line["output"].as_str(), Some(output.as_str()), "{line}");
        assert_eq!(line["signers"].as_array().map(Vec::len), Some(1), "{line}");
        assert_eq!(line["digest"].as_str().map(str::len), Some(64), "{line}");
        claimed += line["fuel"].as_u64().expect("fuel");
    }
    assert_eq!(
        claimed, fuel,
        "the fuel in the lines is the fuel fallow run measured"
    );
    let no_out = c.cli(&["results", &id.to_string()]);
    assert!(!no_out.status.success());
    assert!(
        String::from_utf8_lossy(&no_out.stderr).contains("--out DIR is needed"),
        "{}",
        String::from_utf8_lossy(&no_out.stderr)
    );

    // The input on stdin, the name given: the same bytes again.
    let mut child = fallow()
        .args(["run", module.to_str().expect("utf-8"), "--name", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fallow run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"0 25000\n")
        .expect("write stdin");
    let piped = child.wait_with_output().expect("fallow run");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(piped.stdout, std::fs::read(out.join("0")).expect("output"));

    // Too little fuel: the unit fails as on a worker, and says so.
    let starved = project(
        c.dir.path(),
        "primes-starved",
        artifacts::PRIMES,
        None,
        "[limits]\nfuel = 1_000\n[inputs]\nsweep = { from = 0, to = 10, step = 10 }\n",
    );
    let run = fallow()
        .args(["run", module.to_str().expect("utf-8"), "--input"])
        .arg(inputs.join("0"))
        .arg("--manifest")
        .arg(&starved)
        .output()
        .expect("fallow run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(run.stdout.is_empty(), "no output from a failed unit");
    assert!(
        stderr.contains("fuel_exhausted") && stderr.contains("1000 fuel"),
        "{stderr}"
    );

    // A file that is not a module is named as such.
    let run = fallow()
        .args(["run"])
        .arg(&manifest)
        .args(["--input"])
        .arg(inputs.join("0"))
        .output()
        .expect("fallow run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("not a WebAssembly module"), "{stderr}");
}

/// `[inputs] table` and `linspace` reach each unit's stdin as the README says: a unit per
/// row named by its first column with the header and its row, a unit per number.
#[test]
fn table_and_linspace_units_get_the_documented_stdin() {
    let mut c = Cluster::start(30);
    c.start_worker(&[]);
    let table = project(
        c.dir.path(),
        "table",
        artifacts::hostile::ECHO,
        None,
        "replication = 1\nquorum = 1\nadaptive = false\n[inputs]\ntable = \"params.csv\"\n",
    );
    std::fs::write(
        table.with_file_name("params.csv"),
        "name,r,x0\r\nlow,2.8,0.5\r\n\"high\",\"3,9\",0.25\n",
    )
    .expect("csv");
    let linspace = project(
        c.dir.path(),
        "linspace",
        artifacts::hostile::ECHO,
        None,
        "replication = 1\nquorum = 1\nadaptive = false\n[inputs]\nlinspace = { from = 2.5, to = 4.0, count = 4 }\n",
    );
    let (t, l) = (
        c.submit(&table).expect("table accepted"),
        c.submit(&linspace).expect("linspace accepted"),
    );
    for (id, units) in [(t, 2), (l, 4)] {
        let status = c.wait_finished(id, Duration::from_secs(120));
        assert_eq!(n(&status, "verified"), units, "{status}");
    }
    let out = c.results(t);
    let read = |dir: &std::path::Path, unit: &str| {
        std::fs::read_to_string(dir.join(unit)).unwrap_or_else(|e| panic!("unit {unit}: {e}"))
    };
    assert_eq!(read(&out, "low"), "name,r,x0\nlow,2.8,0.5\n");
    assert_eq!(read(&out, "high"), "name,r,x0\n\"high\",\"3,9\",0.25\n");
    let out = c.results(l);
    for v in ["2.5", "3.0", "3.5", "4.0"] {
        assert_eq!(read(&out, v), format!("{v}\n"));
    }
    // A table row with a name that is not a file name is refused, naming its line.
    let bad = project(
        c.dir.path(),
        "bad-table",
        artifacts::hostile::ECHO,
        None,
        "[inputs]\ntable = \"params.csv\"\n",
    );
    std::fs::write(bad.with_file_name("params.csv"), "name,r\nok,1\n../up,2\n").expect("csv");
    let err = c.submit(&bad).expect_err("refused");
    assert!(err.contains("line 3"), "{err}");
}
