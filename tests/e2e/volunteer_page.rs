//! The volunteer page as a running coordinator serves it: `/volunteer` and its modules with
//! their types, a Content-Security-Policy that allows only what the page needs, and
//! cross-origin isolation; in headless Chromium the page loads under that policy without a
//! violation and is cross-origin isolated (so its runners can hold a paused guest).
//! The page donating beside native workers is `browser`'s test.

use std::io::{Read, Write};
use std::process::Command;

/// A plain HTTP/1.0 GET: the status line, the headers (names lowercased) and the body.
fn get(addr: &str, path: &str) -> (String, Vec<(String, String)>, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_coordinator_serves_the_volunteer_page_isolated_under_a_strict_policy() {
    let c = crate::harness::Cluster::start(30);
    for (path, kind) in [
        ("/volunteer", "text/html"),
        ("/volunteer/volunteer.js", "text/javascript"),
        ("/volunteer/runner.js", "text/javascript"),
        ("/volunteer/guest.js", "text/javascript"),
        ("/volunteer/loop.js", "text/javascript"),
        ("/volunteer/volunteer.css", "text/css"),
    ] {
        let (status, headers, body) = get(&c.addr, path);
        assert!(status.contains(" 200 "), "{path}: {status}");
        assert!(header(&headers, "content-type").starts_with(kind), "{path}");
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "connect-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"));
        assert_eq!(
            header(&headers, "cross-origin-opener-policy"),
            "same-origin"
        );
        assert_eq!(
            header(&headers, "cross-origin-embedder-policy"),
            "require-corp"
        );
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, headers, _) = get(&c.addr, "/volunteer/nothing.js");
    assert!(status.contains(" 404 "), "{status}");
    assert!(!header(&headers, "content-security-policy").is_empty());
    // The dashboard links to it.
    let (_, _, overview) = get(&c.addr, "/");
    assert!(overview.contains("<a href=\"/volunteer\">Donate</a>"));

    // In Chromium the page runs under that policy: its modules load (it is ready for a
    // click), nothing is refused, and it is cross-origin isolated.
    let chromium = crate::volunteer::chromium();
    if !chromium.exists() {
        eprintln!("skipped the Chromium half: no {}", chromium.display());
        return;
    }
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new("timeout")
        .arg("90")
        .arg(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{}/volunteer", c.addr))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("data-isolated=\"true\""), "{dom}");
    assert!(dom.contains("data-phase=\"idle\""), "{dom}");
    assert!(dom.contains("\"violations\": []"), "{dom}");
}
