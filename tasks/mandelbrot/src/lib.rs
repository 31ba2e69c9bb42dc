//! Renders one rectangular tile of a Mandelbrot image as a binary PPM.
//!
//! stdin: one line `x y w h width height max_iter` (integers). The tile is the
//! pixel rectangle `[x, x+w) x [y, y+h)` of a `width x height` image whose real
//! axis spans [-2.2, 0.8] and whose imaginary axis is centred on 0 at the same
//! scale; each pixel samples its centre.
//!
//! stdout: `P6\n# fallow-tile x=<x> y=<y> width=<width> height=<height>\n<w> <h>\n255\n`
//! followed by `w*h*3` RGB bytes, row by row from the top.
//!
//! Only IEEE-754 basic arithmetic (exactly rounded everywhere) and integer
//! colouring are used, so native and wasm builds produce identical bytes.

use std::io::{self, Write};

const RE_MIN: f64 = -2.2;
const RE_SPAN: f64 = 3.0;
const MAX_ITER: u32 = 1_000_000;
const MAX_TILE_PIXELS: u64 = 16_777_216;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    width: u32,
    height: u32,
    max_iter: u32,
}

fn parse_tile(input: &str) -> Result<Tile, String> {
    const NAMES: [&str; 7] = ["x", "y", "w", "h", "width", "height", "max_iter"];
    let fields: Vec<&str> = input.split_ascii_whitespace().collect();
    if fields.len() != NAMES.len() {
        return Err(format!(
            "expected 7 integers `x y w h width height max_iter`, got {} fields",
            fields.len()
        ));
    }
    let mut values = [0u32; 7];
    for ((value, field), name) in values.iter_mut().zip(&fields).zip(NAMES) {
        *value = field
            .parse()
            .map_err(|_| format!("{name} is not an integer in 0..=4294967295: {field:?}"))?;
    }
    let [x, y, w, h, width, height, max_iter] = values;
    let tile = Tile {
        x,
        y,
        w,
        h,
        width,
        height,
        max_iter,
    };

    if w == 0 || h == 0 {
        return Err(format!("tile must be at least 1x1, got {w}x{h}"));
    }
    if u64::from(x) + u64::from(w) > u64::from(width)
        || u64::from(y) + u64::from(h) > u64::from(height)
    {
        return Err(format!(
            "tile [{x}, {}) x [{y}, {}) lies outside the {width}x{height} image",
            u64::from(x) + u64::from(w),
            u64::from(y) + u64::from(h)
        ));
    }
    if !(1..=MAX_ITER).contains(&max_iter) {
        return Err(format!(
            "max_iter must be in 1..={MAX_ITER}, got {max_iter}"
        ));
    }
    if u64::from(w) * u64::from(h) > MAX_TILE_PIXELS {
        return Err(format!(
            "tile has {} pixels, more than the limit of {MAX_TILE_PIXELS}",
            u64::from(w) * u64::from(h)
        ));
    }
    Ok(tile)
}

/// Iterations until `z -> z^2 + c` leaves the radius-2 disc, or `None` if it
/// stays inside for `max_iter` iterations.
fn escape_count(cr: f64, ci: f64, max_iter: u32) -> Option<u32> {
    if in_main_cardioid_or_bulb(cr, ci) {
        return None;
    }
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    for n in 0..max_iter {
        let (zr2, zi2) = (zr * zr, zi * zi);
        if zr2 + zi2 > 4.0 {
            return Some(n);
        }
        zi = 2.0 * zr * zi + ci;
        zr = zr2 - zi2 + cr;
    }
    None
}

/// Closed-form membership of the two largest components of the set, which
/// would otherwise burn the full `max_iter` on most of the black pixels.
fn in_main_cardioid_or_bulb(cr: f64, ci: f64) -> bool {
    let ci2 = ci * ci;
    let q = (cr - 0.25) * (cr - 0.25) + ci2;
    let in_cardioid = q * (q + (cr - 0.25)) <= 0.25 * ci2;
    let in_bulb = (cr + 1.0) * (cr + 1.0) + ci2 <= 0.0625;
    in_cardioid || in_bulb
}

/// Control points of a cyclic gradient (deep blue, sky, white, orange, near
/// black), in the style of the classic Ultra Fractal palette.
const STOPS: [[u8; 3]; 5] = [
    [0, 7, 100],
    [32, 107, 203],
    [237, 255, 255],
    [255, 170, 0],
    [0, 2, 0],
];

/// Iterations spent blending from one stop to the next; long enough that
/// neighbouring escape counts differ only slightly in colour.
const STEPS_PER_STOP: u32 = 16;

const INSIDE: [u8; 3] = [0, 0, 0];

fn colour(escape: Option<u32>) -> [u8; 3] {
    let Some(n) = escape else {
        return INSIDE;
    };
    let period = STOPS.len() as u32 * STEPS_PER_STOP;
    let position = n % period;
    let stop = (position / STEPS_PER_STOP) as usize;
    let step = (position % STEPS_PER_STOP) as i32;
    let (from, to) = (STOPS[stop], STOPS[(stop + 1) % STOPS.len()]);
    let mut rgb = [0u8; 3];
    for ((out, &a), &b) in rgb.iter_mut().zip(&from).zip(&to) {
        let (a, b) = (i32::from(a), i32::from(b));
        // Stays within [min(a, b), max(a, b)] because step < STEPS_PER_STOP.
        *out = (a + (b - a) * step / STEPS_PER_STOP as i32) as u8;
    }
    rgb
}

/// The point of the complex plane sampled by pixel (`px`, `py`) of the full
/// image; `py` grows downwards, so the top rows have positive imaginary parts.
fn pixel_centre(px: u32, py: u32, width: u32, height: u32) -> (f64, f64) {
    let scale = RE_SPAN / f64::from(width);
    let re = RE_MIN + (f64::from(px) + 0.5) * scale;
    let im = (f64::from(height) / 2.0 - (f64::from(py) + 0.5)) * scale;
    (re, im)
}

fn header(tile: &Tile) -> String {
    format!(
        "P6\n# fallow-tile x={} y={} width={} height={}\n{} {}\n255\n",
        tile.x, tile.y, tile.width, tile.height, tile.w, tile.h
    )
}

/// Streams the tile one row at a time so memory stays small however large
/// the tile is.
fn write_tile(tile: &Tile, out: &mut impl Write) -> io::Result<()> {
    out.write_all(header(tile).as_bytes())?;
    let mut row = Vec::with_capacity(tile.w as usize * 3);
    for py in tile.y..tile.y + tile.h {
        row.clear();
        for px in tile.x..tile.x + tile.w {
            let (re, im) = pixel_centre(px, py, tile.width, tile.height);
            row.extend_from_slice(&colour(escape_count(re, im, tile.max_iter)));
        }
        out.write_all(&row)?;
    }
    out.flush()
}

/// The whole guest as a function: stdin bytes in, stdout bytes out.
pub fn compute(input: &[u8]) -> Result<Vec<u8>, String> {
    let input = std::str::from_utf8(input).map_err(|_| "input is not UTF-8 text".to_string())?;
    let tile = parse_tile(input)?;
    let mut out = Vec::new();
    write_tile(&tile, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(x: u32, y: u32, w: u32, h: u32, width: u32, height: u32, max_iter: u32) -> Tile {
        Tile {
            x,
            y,
            w,
            h,
            width,
            height,
            max_iter,
        }
    }

    fn render(tile: &Tile) -> Vec<u8> {
        let mut out = Vec::new();
        write_tile(tile, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Splits a rendered tile into its header text and pixel bytes.
    fn split_ppm(ppm: &[u8]) -> (&str, &[u8]) {
        let mut newlines = 0;
        let end = ppm
            .iter()
            .position(|&b| {
                newlines += usize::from(b == b'\n');
                newlines == 4
            })
            .expect("header has four lines")
            + 1;
        (
            std::str::from_utf8(&ppm[..end]).expect("ASCII header"),
            &ppm[end..],
        )
    }

    #[test]
    fn escape_counts_of_known_points() {
        // c = 1: z = 0, 1, 2, 5 -> |5| > 2 is first seen at n = 3.
        assert_eq!(escape_count(1.0, 0.0, 100), Some(3));
        // c = 2: z = 0, 2, 6.
        assert_eq!(escape_count(2.0, 0.0, 100), Some(2));
        // Outside the radius-2 disc it escapes after the first step.
        assert_eq!(escape_count(-2.2, 0.0, 100), Some(1));
        assert_eq!(escape_count(0.0, 3.0, 100), Some(1));
        // c = i is a Misiurewicz point: z cycles -1+i, -i, -1+i, ...
        assert_eq!(escape_count(0.0, 1.0, 1000), None);
        // c = -2 lands on the fixed point 2 whose |z|^2 = 4 is not > 4.
        assert_eq!(escape_count(-2.0, 0.0, 1000), None);
        assert_eq!(escape_count(0.0, 0.0, 1), None);
        assert_eq!(escape_count(-1.0, 0.0, 1), None);
        assert_eq!(escape_count(-0.75, 0.1, 1_000), Some(33));
        // max_iter cuts off points that escape later than it allows.
        assert_eq!(escape_count(1.0, 0.0, 3), None);
        assert_eq!(escape_count(1.0, 0.0, 4), Some(3));
    }

    #[test]
    fn shortcut_agrees_with_iteration() {
        for (re, im) in [
            (0.0, 0.0),
            (-0.1, 0.2),
            (0.2, 0.0),
            (-1.0, 0.0),
            (-1.2, 0.1),
            (-0.5, 0.5),
        ] {
            assert!(in_main_cardioid_or_bulb(re, im), "({re}, {im})");
        }
        for (re, im) in [
            (0.3, 0.0),
            (-0.75, 0.1),
            (-1.3, 0.0),
            (-2.0, 0.0),
            (0.0, 1.0),
        ] {
            assert!(!in_main_cardioid_or_bulb(re, im), "({re}, {im})");
        }
    }

    #[test]
    fn palette_is_cyclic_and_starts_at_the_stops() {
        assert_eq!(colour(None), [0, 0, 0]);
        for (i, stop) in STOPS.iter().enumerate() {
            assert_eq!(colour(Some(i as u32 * STEPS_PER_STOP)), *stop);
        }
        let period = STOPS.len() as u32 * STEPS_PER_STOP;
        for n in 0..period {
            assert_eq!(colour(Some(n)), colour(Some(n + period)));
            assert_eq!(colour(Some(n)), colour(Some(n + 1000 * period)));
        }
        // Halfway from deep blue to sky.
        assert_eq!(colour(Some(8)), [16, 57, 151]);
        assert_eq!(colour(Some(u32::MAX)), colour(Some(u32::MAX % period)));
    }

    #[test]
    fn palette_changes_gradually() {
        let period = STOPS.len() as u32 * STEPS_PER_STOP;
        for n in 0..period {
            let (a, b) = (colour(Some(n)), colour(Some(n + 1)));
            for (x, y) in a.iter().zip(&b) {
                assert!(x.abs_diff(*y) <= 16, "step {n}: {a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn pixel_centres_cover_the_plane() {
        let (re, im) = pixel_centre(0, 0, 300, 200);
        assert_eq!(re, -2.2 + 0.5 * 0.01);
        assert_eq!(im, 99.5 * 0.01);
        let (re, im) = pixel_centre(299, 199, 300, 200);
        assert!((re - (0.8 - 0.005)).abs() < 1e-12, "{re}");
        assert!((im + 0.995).abs() < 1e-12, "{im}");
        // Vertically symmetric about the real axis.
        let (_, top) = pixel_centre(7, 3, 300, 200);
        let (_, bottom) = pixel_centre(7, 196, 300, 200);
        assert_eq!(top, -bottom);
    }

    #[test]
    fn header_is_exact() {
        let t = tile(64, 32, 16, 8, 640, 480, 500);
        assert_eq!(
            header(&t),
            "P6\n# fallow-tile x=64 y=32 width=640 height=480\n16 8\n255\n"
        );
        let ppm = render(&t);
        let (head, pixels) = split_ppm(&ppm);
        assert_eq!(head, header(&t));
        assert_eq!(pixels.len(), 16 * 8 * 3);
    }

    #[test]
    fn tiles_reassemble_into_the_full_image() {
        let (width, height, max_iter) = (60, 40, 200);
        let full = render(&tile(0, 0, width, height, width, height, max_iter));
        let (_, full_pixels) = split_ppm(&full);

        let mut assembled = vec![0u8; full_pixels.len()];
        for (x, w) in [(0, 25), (25, 35)] {
            for (y, h) in [(0, 1), (1, 20), (21, 19)] {
                let part = render(&tile(x, y, w, h, width, height, max_iter));
                let (_, pixels) = split_ppm(&part);
                for row in 0..h as usize {
                    let src = &pixels[row * w as usize * 3..][..w as usize * 3];
                    let dst = ((y as usize + row) * width as usize + x as usize) * 3;
                    assembled[dst..dst + src.len()].copy_from_slice(src);
                }
            }
        }
        assert_eq!(assembled, full_pixels);
    }

    #[test]
    fn image_has_the_set_in_the_middle_and_colour_at_the_edge() {
        let (width, height) = (300, 200);
        let ppm = render(&tile(0, 0, width, height, width, height, 256));
        let (_, pixels) = split_ppm(&ppm);
        let at = |px: usize, py: usize| {
            let i = (py * width as usize + px) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        // Pixel (220, 100) samples 0.005 - 0.005i, inside the main cardioid.
        assert_eq!(at(220, 100), [0, 0, 0]);
        // The left edge is outside the radius-2 disc: one iteration.
        assert_eq!(at(0, 100), colour(Some(1)));
        // Top-right corner: 0.795 + 0.995i, escapes after two iterations.
        assert_eq!(at(299, 0), colour(Some(2)));
        // Symmetric about the real axis.
        for py in 0..100 {
            for px in (0..300).step_by(7) {
                assert_eq!(at(px, py), at(px, 199 - py), "({px}, {py})");
            }
        }
    }

    #[test]
    fn pinned_tile_checksum() {
        // A cheap fingerprint of a whole render, pinned so that a change to
        // mapping, iteration or palette (which would mix badly with tiles
        // rendered by older guests) fails loudly.
        let ppm = render(&tile(100, 50, 100, 60, 400, 300, 1000));
        let fnv = ppm.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        assert_eq!(fnv, PINNED_FNV);
    }

    const PINNED_FNV: u64 = 493_503_551_901_432_451;

    #[test]
    fn parses_valid_input() {
        assert_eq!(
            parse_tile("0 0 64 64 640 480 500\n"),
            Ok(tile(0, 0, 64, 64, 640, 480, 500))
        );
        assert_eq!(
            parse_tile("576 416 64 64 640 480 1000000"),
            Ok(tile(576, 416, 64, 64, 640, 480, 1_000_000))
        );
        assert_eq!(
            parse_tile("0 0 4096 4096 4096 4096 1"),
            Ok(tile(0, 0, 4096, 4096, 4096, 4096, 1))
        );
    }

    #[test]
    fn rejects_invalid_input() {
        let cases = [
            ("", "expected 7 integers"),
            ("0 0 1 1 1 1", "expected 7 integers"),
            ("0 0 1 1 1 1 1 1", "expected 7 integers"),
            ("0 0 1 1 1 1 ten", "max_iter is not an integer"),
            ("-1 0 1 1 1 1 1", "x is not an integer"),
            ("0 0 1 1 4294967296 1 1", "width is not an integer"),
            ("0 0 0 1 10 10 1", "at least 1x1"),
            ("0 0 1 0 10 10 1", "at least 1x1"),
            ("9 0 2 1 10 10 1", "outside"),
            ("0 10 1 1 10 10 1", "outside"),
            ("4294967295 0 1 1 4294967295 1 1", "outside"),
            ("0 0 1 1 10 10 0", "max_iter must be"),
            ("0 0 1 1 10 10 1000001", "max_iter must be"),
            ("0 0 4097 4096 5000 5000 1", "more than the limit"),
        ];
        for (input, expected) in cases {
            let err = parse_tile(input).expect_err(input);
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }
}
