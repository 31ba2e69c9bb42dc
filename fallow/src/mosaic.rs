//! Assembles Mandelbrot tiles into one picture. Each tile is a binary PPM whose comment line
//! says where it goes: `P6\n# fallow-tile x=X y=Y width=W height=H\n<w> <h>\n255\n<rgb>`.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, anyhow, bail};

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

/// Parses one tile, checking that it fits its picture.
pub fn parse_tile(bytes: &[u8]) -> anyhow::Result<Tile> {
    let mut rest = bytes;
    let mut line = || -> anyhow::Result<&str> {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("truncated header"))?;
        let l = std::str::from_utf8(&rest[..end]).context("header is not text")?;
        rest = &rest[end + 1..];
        Ok(l)
    };
    if line()? != "P6" {
        bail!("not a binary PPM (P6)");
    }
    let comment = line()?;
    let fields = comment
        .strip_prefix("# fallow-tile ")
        .ok_or_else(|| anyhow!("missing `# fallow-tile` line"))?;
    let get = |key: &str| -> anyhow::Result<u32> {
        fields
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| anyhow!("missing {key}="))?
            .parse()
            .with_context(|| format!("bad {key}"))
    };
    let (x, y, width, height) = (get("x")?, get("y")?, get("width")?, get("height")?);
    let dims = line()?;
    let (w, h) = dims
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad size line {dims:?}"))?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    if line()? != "255" {
        bail!("maxval must be 255");
    }
    let expected = w as usize * h as usize * 3;
    if rest.len() != expected {
        bail!("{} pixel bytes, expected {expected}", rest.len());
    }
    if x.checked_add(w).is_none_or(|r| r > width) || y.checked_add(h).is_none_or(|b| b > height) {
        bail!("tile {w}x{h} at ({x},{y}) does not fit a {width}x{height} picture");
    }
    if width as u64 * height as u64 > 1 << 28 {
        bail!("picture {width}x{height} is too large");
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

/// Paints `tiles` onto one RGB picture; missing tiles stay dark grey.
pub fn assemble(tiles: &[Tile]) -> anyhow::Result<(u32, u32, Vec<u8>)> {
    let first = tiles.first().ok_or_else(|| anyhow!("no tiles"))?;
    let (width, height) = (first.width, first.height);
    let mut rgb = vec![32u8; width as usize * height as usize * 3];
    for t in tiles {
        if (t.width, t.height) != (width, height) {
            bail!("tiles disagree on the picture size");
        }
        for row in 0..t.h as usize {
            let src = &t.rgb[row * t.w as usize * 3..(row + 1) * t.w as usize * 3];
            let start = ((t.y as usize + row) * width as usize + t.x as usize) * 3;
            rgb[start..start + src.len()].copy_from_slice(src);
        }
    }
    Ok((width, height, rgb))
}

/// Writes an RGB picture as PNG.
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(x: u32, y: u32, colour: u8) -> Vec<u8> {
        let mut t =
            format!("P6\n# fallow-tile x={x} y={y} width=4 height=2\n2 2\n255\n").into_bytes();
        t.extend(std::iter::repeat_n(colour, 12));
        t
    }

    #[test]
    fn tiles_land_where_their_header_says() {
        let tiles = [
            parse_tile(&tile(0, 0, 10)).expect("tile"),
            parse_tile(&tile(2, 0, 20)).expect("tile"),
        ];
        let (w, h, rgb) = assemble(&tiles).expect("assemble");
        assert_eq!((w, h), (4, 2));
        assert_eq!(
            &rgb[..12],
            &[10, 10, 10, 10, 10, 10, 20, 20, 20, 20, 20, 20]
        );
    }

    #[test]
    fn broken_tiles_are_refused() {
        let mut short = tile(0, 0, 1);
        short.pop();
        assert!(parse_tile(&short).is_err());
        assert!(parse_tile(&tile(3, 0, 1)).is_err(), "does not fit");
        assert!(parse_tile(b"P5\n").is_err());
    }
}
