//! `fallow demo` runs end to end and writes a real picture.

use crate::harness::fallow;

#[test]
fn demo_exits_zero_and_writes_the_picture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("mandelbrot.png");
    let out = fallow()
        .args(["demo", "--workers", "3", "--width", "384", "--out"])
        .arg(&png)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tiles verified      9 of 9"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("picture: ")),
        "{stdout}"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png).expect("png written"),
    ));
    let reader = decoder.read_info().expect("valid png");
    let info = reader.info();
    assert_eq!((info.width, info.height), (384, 288));
}
