//! Pictures from results: the Mandelbrot demo's tiles (binary PPMs whose comment line says
//! where they go, `P6\n# fallow-tile x=X y=Y width=W height=H\n<w> <h>\n255\n<rgb>`) painted
//! onto one canvas as units verify. The `fallow` binary assembles its final PNG with the
//! same parser.

use std::collections::HashSet;

use crate::Error;

/// The longest side of the dashboard's picture; larger pictures are sampled down.
pub const MAX_SIDE: u32 = 1024;
/// Grey of a tile not verified yet.
pub const UNVERIFIED: u8 = 48;

/// One tile's place and pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Left edge in the full picture.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Tile width.
    pub w: u32,
    /// Tile height.
    pub h: u32,
    /// Full picture width.
    pub width: u32,
    /// Full picture height.
    pub height: u32,
    /// `w * h * 3` RGB bytes.
    pub rgb: Vec<u8>,
}

/// Parses one tile, checking that it fits its picture. Tiles are unit outputs: untrusted
/// bytes, so every size is checked before use.
pub fn parse_tile(bytes: &[u8]) -> Result<Tile, Error> {
    let bad = |m: String| Error::BadTile(m);
    let mut rest = bytes;
    let mut line = || -> Result<&str, Error> {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("truncated header".into()))?;
        let l = std::str::from_utf8(&rest[..end]).map_err(|_| bad("header is not text".into()))?;
        rest = &rest[end + 1..];
        Ok(l)
    };
    if line()? != "P6" {
        return Err(bad("not a binary PPM (P6)".into()));
    }
    let comment = line()?;
    let fields = comment
        .strip_prefix("# fallow-tile ")
        .ok_or_else(|| bad("missing `# fallow-tile` line".into()))?;
    let get = |key: &str| -> Result<u32, Error> {
        fields
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| bad(format!("missing {key}=")))?
            .parse()
            .map_err(|_| bad(format!("bad {key}")))
    };
    let (x, y, width, height) = (get("x")?, get("y")?, get("width")?, get("height")?);
    let dims = line()?;
    let (w, h) = dims
        .split_once(' ')
        .ok_or_else(|| bad(format!("bad size line {dims:?}")))?;
    let parse = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| bad(format!("bad size {dims:?}")))
    };
    let (w, h) = (parse(w)?, parse(h)?);
    if line()? != "255" {
        return Err(bad("maxval must be 255".into()));
    }
    if x.checked_add(w).is_none_or(|r| r > width) || y.checked_add(h).is_none_or(|b| b > height) {
        return Err(bad(format!(
            "tile {w}x{h} at ({x},{y}) does not fit a {width}x{height} picture"
        )));
    }
    if width as u64 * height as u64 > 1 << 28 {
        return Err(bad(format!("picture {width}x{height} is too large")));
    }
    let expected = w as usize * h as usize * 3;
    if rest.len() != expected {
        return Err(bad(format!(
            "{} pixel bytes, expected {expected}",
            rest.len()
        )));
    }
    Ok(Tile {
        x,
        y,
        w,
        h,
        width,
        height,
        rgb: rest.to_vec(),
    })
}

/// A picture being filled in tile by tile, sampled down so its longest side is at most
/// [`MAX_SIDE`]; unpainted pixels are grey.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Full picture width (before sampling).
    pub width: u32,
    /// Full picture height.
    pub height: u32,
    step: u32,
    /// Canvas width.
    pub w: u32,
    /// Canvas height.
    pub h: u32,
    /// `w * h * 3` RGB bytes.
    pub rgb: Vec<u8>,
    painted: HashSet<(u32, u32)>,
}

impl Canvas {
    /// A grey canvas for a `width` x `height` picture.
    pub fn new(width: u32, height: u32) -> Canvas {
        let step = width.max(height).div_ceil(MAX_SIDE).max(1);
        let (w, h) = (width.div_ceil(step), height.div_ceil(step));
        Canvas {
            width,
            height,
            step,
            w,
            h,
            rgb: vec![UNVERIFIED; w as usize * h as usize * 3],
            painted: HashSet::new(),
        }
    }

    /// Tiles painted so far.
    pub fn tiles(&self) -> u64 {
        self.painted.len() as u64
    }

    /// Paints a tile (once; a tile already painted is skipped). A tile of another picture
    /// size is refused.
    pub fn paint(&mut self, t: &Tile) -> Result<bool, Error> {
        if (t.width, t.height) != (self.width, self.height) {
            return Err(Error::BadTile("tiles disagree on the picture size".into()));
        }
        if !self.painted.insert((t.x, t.y)) {
            return Ok(false);
        }
        let s = self.step;
        // Canvas pixel (cx, cy) shows picture pixel (cx * s, cy * s).
        for cy in t.y.div_ceil(s)..(t.y + t.h).div_ceil(s).min(self.h) {
            let sy = (cy * s - t.y) as usize;
            for cx in t.x.div_ceil(s)..(t.x + t.w).div_ceil(s).min(self.w) {
                let sx = (cx * s - t.x) as usize;
                let src = (sy * t.w as usize + sx) * 3;
                let dst = (cy as usize * self.w as usize + cx as usize) * 3;
                self.rgb[dst..dst + 3].copy_from_slice(&t.rgb[src..src + 3]);
            }
        }
        Ok(true)
    }

    /// The canvas as PNG (fast compression: it is re-encoded as tiles arrive).
    pub fn png(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.w, self.h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let png_err = |e: png::EncodingError| Error::BadTile(format!("cannot encode PNG: {e}"));
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&self.rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(x: u32, y: u32, width: u32, colour: u8) -> Vec<u8> {
        let mut t = format!("P6\n# fallow-tile x={x} y={y} width={width} height=2\n2 2\n255\n")
            .into_bytes();
        t.extend(std::iter::repeat_n(colour, 12));
        t
    }

    #[test]
    fn tiles_fill_the_canvas_once_each() {
        let mut c = Canvas::new(4, 2);
        assert_eq!((c.w, c.h), (4, 2));
        assert!(
            c.paint(&parse_tile(&tile(2, 0, 4, 20)).expect("tile"))
                .expect("paint")
        );
        assert!(
            !c.paint(&parse_tile(&tile(2, 0, 4, 20)).expect("tile"))
                .expect("paint")
        );
        assert_eq!(c.tiles(), 1);
        assert_eq!(
            &c.rgb[..12],
            &[48, 48, 48, 48, 48, 48, 20, 20, 20, 20, 20, 20]
        );
        assert!(
            c.paint(&parse_tile(&tile(0, 0, 6, 1)).expect("tile"))
                .is_err()
        );
        assert!(c.png().expect("png").starts_with(b"\x89PNG"));
    }

    #[test]
    fn large_pictures_are_sampled_down() {
        let c = Canvas::new(4096, 3072);
        assert_eq!((c.w, c.h), (1024, 768));
        let c = Canvas::new(1500, 100);
        assert_eq!((c.w, c.h), (750, 50));
    }

    #[test]
    fn broken_tiles_are_refused() {
        let mut short = tile(0, 0, 4, 1);
        short.pop();
        assert!(parse_tile(&short).is_err());
        assert!(parse_tile(&tile(3, 0, 4, 1)).is_err(), "does not fit");
        assert!(parse_tile(b"P5\n").is_err());
        assert!(
            parse_tile(b"P6\n# fallow-tile x=0 y=0 width=99999999 height=99999999\n0 0\n255\n")
                .is_err()
        );
    }
}
