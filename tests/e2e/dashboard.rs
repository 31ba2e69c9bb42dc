//! The dashboard in a real headless Chromium (Debian `chromium` + `chromium-driver`, which
//! `scripts/test` installs; elsewhere `FALLOW_CHROMIUM` and `FALLOW_CHROMEDRIVER` name
//! them), driven with fantoccini: a Mandelbrot project's progress and picture
//! fill in live, without a reload, and no page raises a JavaScript error.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{Cluster, project};

/// chromedriver: `FALLOW_CHROMEDRIVER`, else Debian's.
fn chromedriver() -> PathBuf {
    std::env::var_os("FALLOW_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from)
}

/// Chromium: `FALLOW_CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("FALLOW_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Tiles of the test picture: 12 x 9 tiles of 64 px, enough units that the picture is
/// always caught part-way (with 30 tiles two workers sometimes finished between two paints).
const WIDTH: u32 = 768;
const HEIGHT: u32 = 576;
const TILE: u32 = 64;

#[test]
fn dashboard_shows_live_progress_and_the_picture_in_chromium() {
    for path in [chromedriver(), chromium()] {
        assert!(
            path.exists(),
            "{} is missing: the browser test needs Chromium and chromedriver; run the tests \
             with `scripts/test`, which installs Debian's chromium and chromium-driver, or set \
             FALLOW_CHROMIUM and FALLOW_CHROMEDRIVER",
            path.display()
        );
    }
    let shots = screenshot_dir();
    println!("dashboard screenshots: {}", shots.display());

    let mut cluster = Cluster::start(30);
    let manifest = mandelbrot(cluster.dir.path());
    let id = cluster
        .submit(&manifest)
        .unwrap_or_else(|e| panic!("submit mandelbrot: {e}\n{}", cluster.logs()));
    let tiles = u64::from(WIDTH.div_ceil(TILE) * HEIGHT.div_ceil(TILE));

    let driver = ChromeDriver::start(&cluster.dir.path().join("chrome-profile"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let browser = driver.session().await;
        let base = cluster.url.clone();

        // The project page before any worker: nothing verified, no picture yet.
        browser
            .goto(&format!("{base}/projects/{id}"))
            .await
            .expect("open the project page");
        wait_for(
            &browser,
            "the live stream",
            Duration::from_secs(15),
            |b| async move { number(&b, "return window.fallowEvents || 0").await >= 1 },
        )
        .await;
        let before = number(&browser, VERIFIED).await;
        assert_eq!(before, 0, "no worker has run yet");
        no_js_errors(&browser).await;

        // Workers start; the same page (no reload) shows progress and tiles.
        let metrics = free_port();
        cluster.start_worker(&["--metrics", &metrics.to_string()]);
        cluster.start_worker(&[]);
        let loaded = number(&browser, "return performance.timeOrigin").await;
        wait_for(
            &browser,
            "verified tiles to appear",
            Duration::from_secs(120),
            |b| async move {
                number(&b, MOSAIC_TILES).await >= 4 && number(&b, PAINTED_PIXELS).await > 0
            },
        )
        .await;
        let early_pixels = number(&browser, PAINTED_PIXELS).await;
        let early_tiles = number(&browser, MOSAIC_TILES).await;
        let in_progress = save(&browser, &shots, "project-in-progress.png").await;
        wait_for(
            &browser,
            "every tile verified",
            Duration::from_secs(240),
            |b| async move {
                number(&b, VERIFIED).await == tiles && number(&b, MOSAIC_TILES).await == tiles
            },
        )
        .await;
        eprintln!(
            "picture caught at {early_tiles} of {tiles} tiles, {early_pixels} painted pixels"
        );
        wait_for(
            &browser,
            "the last tiles drawn",
            Duration::from_secs(20),
            |b| async move { number(&b, PAINTED_PIXELS).await > early_pixels },
        )
        .await;
        assert!(
            early_tiles < tiles,
            "the picture should have been caught part-way ({early_tiles} of {tiles} tiles)"
        );
        assert_eq!(
            number(&browser, "return performance.timeOrigin").await,
            loaded,
            "the page must update without a reload"
        );
        no_js_errors(&browser).await;
        save(&browser, &shots, "project-done.png").await;

        // Prometheus metrics: the coordinator counted every certificate, the worker its runs.
        let text = http_get(cluster.addr.parse().expect("addr"), "/metrics");
        let accepted = metric(&text, "fallow_certificates_total{result=\"accepted\"}");
        assert_eq!(accepted, tiles, "{text}");
        assert_eq!(
            metric(&text, "fallow_units{state=\"verified\"}"),
            tiles,
            "{text}"
        );
        let text = http_get(metrics, "/metrics");
        assert!(
            metric(&text, "fallow_worker_units_total{result=\"ok\"}") >= 1,
            "{text}"
        );
        assert!(metric(&text, "fallow_worker_fuel_total") > 0, "{text}");
        assert!(text.contains("fallow_worker_busy_seconds_total"), "{text}");

        // The overview lists the project as done, with its numbers in the HTML.
        browser.goto(&format!("{base}/")).await.expect("overview");
        // Read in one script: the page rebuilds its rows on every update, so an element
        // found first may be gone by the time its text is asked for.
        let row_text = format!(
            "const r = document.querySelector('tr[data-project=\"{id}\"]'); \
             return r ? r.innerText : '';"
        );
        wait_for(
            &browser,
            "the project's row, done",
            Duration::from_secs(15),
            |b| {
                let script = row_text.clone();
                async move {
                    let text = b.execute(&script, vec![]).await.expect("run script");
                    let text = text.as_str().unwrap_or_default();
                    text.contains("mandelbrot") && text.contains("100.0")
                }
            },
        )
        .await;
        wait_for(
            &browser,
            "the live stream",
            Duration::from_secs(15),
            |b| async move { number(&b, "return window.fallowEvents || 0").await >= 1 },
        )
        .await;
        no_js_errors(&browser).await;
        save(&browser, &shots, "overview.png").await;
        // The README's picture: `FALLOW_UPDATE_SCREENSHOT=1 cargo test -p fallow --test e2e
        // dashboard` refreshes it.
        if std::env::var_os("FALLOW_UPDATE_SCREENSHOT").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
            std::fs::write(&docs, &in_progress).expect("write docs/dashboard.png");
        }
        browser.set_window_size(390, 844).await.expect("phone size");
        save(&browser, &shots, "overview-phone.png").await;
        let overflow = number(
            &browser,
            "return document.documentElement.scrollWidth - window.innerWidth",
        )
        .await;
        assert_eq!(overflow, 0, "the overview must fit a phone's width");
        browser
            .set_window_size(1280, 1000)
            .await
            .expect("desktop size");

        // The volunteers page: leaderboard and workers.
        browser
            .find(Locator::LinkText("Volunteers"))
            .await
            .expect("volunteers link")
            .click()
            .await
            .expect("open volunteers");
        browser
            .find(Locator::Css("#leaderboard"))
            .await
            .expect("the leaderboard table");
        let page = browser.source().await.expect("page source");
        assert!(
            page.contains(">w0<") && page.contains(">w1<"),
            "workers listed"
        );
        assert_eq!(
            number(
                &browser,
                "return document.querySelectorAll('#accounts tr').length"
            )
            .await,
            2,
            "each worker's account is on the leaderboard"
        );
        no_js_errors(&browser).await;
        save(&browser, &shots, "volunteers.png").await;

        // A script error on a page is caught by the page's own hook.
        browser
            .execute(
                "setTimeout(function () { undefinedFunction(); }, 0); return 0;",
                vec![],
            )
            .await
            .expect("inject an error");
        wait_for(
            &browser,
            "the injected error to be recorded",
            Duration::from_secs(5),
            |b| async move { number(&b, "return (window.fallowErrors || []).length").await == 1 },
        )
        .await;
        browser.close().await.expect("close the browser");
    });
    drop(cluster);
}

/// The number of verified units the page shows.
const VERIFIED: &str = "var e = document.querySelector('[data-k=\"project.verified\"]'); return e ? Number(e.textContent.replace(/,/g, '')) : -1;";
/// The tile counter above the picture.
const MOSAIC_TILES: &str = "var e = document.getElementById('mosaic-tiles'); return e ? Number(e.textContent.replace(/,/g, '')) : -1;";
/// Pixels of the picture that are not the grey of unverified tiles (0 before it loads).
const PAINTED_PIXELS: &str = r#"
var img = document.getElementById('mosaic');
if (!img || !img.complete || !img.naturalWidth || img.closest('figure').hidden) return 0;
var c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
var ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
var d = ctx.getImageData(0, 0, c.width, c.height).data;
var n = 0;
for (var i = 0; i < d.length; i += 4) {
  if (d[i] !== 48 || d[i + 1] !== 48 || d[i + 2] !== 48) n++;
}
return n;
"#;

async fn number(browser: &Client, script: &str) -> u64 {
    let v = browser.execute(script, vec![]).await.expect("run script");
    v.as_f64()
        .map(|f| f.max(0.0) as u64)
        .unwrap_or_else(|| panic!("{script} returned {v}"))
}

async fn no_js_errors(browser: &Client) {
    let errors = browser
        .execute(
            "return window.fallowErrors === undefined ? null : window.fallowErrors;",
            vec![],
        )
        .await
        .expect("read errors");
    assert_eq!(
        errors,
        json!([]),
        "the page raised JavaScript errors (null: the error hook did not load)"
    );
}

async fn wait_for<F, Fut>(browser: &Client, what: &str, limit: Duration, check: F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check(browser.clone()).await {
        if start.elapsed() > limit {
            let source = browser.source().await.unwrap_or_default();
            panic!("waited {limit:?} for {what}; page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn save(browser: &Client, dir: &Path, name: &str) -> Vec<u8> {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(name), &png).expect("save screenshot");
    png
}

pub(crate) fn free_port() -> SocketAddr {
    crate::harness::free_port()
}

/// A plain HTTP/1.0 GET (the body of a 200 answer).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of one sample line of a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Screenshots stay after the test (its cluster's temporary directory does not).
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The Mandelbrot project the demo runs, smaller.
fn mandelbrot(root: &Path) -> PathBuf {
    let manifest = project(
        root,
        "mandelbrot",
        artifacts::MANDELBROT,
        None,
        "replication = 2\nquorum = 2\n\n[limits]\nfuel = 50_000_000_000\nwall_seconds = 120\n\n[inputs]\ndir = \"inputs\"\n",
    );
    let inputs = root.join("mandelbrot/inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    for (row, y) in (0..HEIGHT).step_by(TILE as usize).enumerate() {
        for (col, x) in (0..WIDTH).step_by(TILE as usize).enumerate() {
            let (w, h) = (TILE.min(WIDTH - x), TILE.min(HEIGHT - y));
            std::fs::write(
                inputs.join(format!("tile-{row:03}-{col:03}")),
                format!("{x} {y} {w} {h} {WIDTH} {HEIGHT} 4000\n"),
            )
            .expect("tile input");
        }
    }
    manifest
}

/// chromedriver on a free loopback port, killed when dropped.
struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
    profile: PathBuf,
}

impl ChromeDriver {
    fn start(profile: &Path) -> ChromeDriver {
        let addr = free_port();
        let child = Command::new(chromedriver())
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ChromeDriver {
            child,
            addr,
            profile: profile.to_path_buf(),
        }
    }

    async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("start a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
