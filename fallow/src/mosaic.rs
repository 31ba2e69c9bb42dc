//! Assembles Mandelbrot tiles into one picture. Each tile is a binary PPM whose comment line
//! says where it goes: `P6\n# fallow-tile x=X y=Y width=W height=H\n<w> <h>\n255\n<rgb>`.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, anyhow, bail};

pub use coordinator::mosaic::Tile;

/// Parses one tile, checking that it fits its picture (the coordinator's dashboard paints
/// its live picture with the same parser).
pub fn parse_tile(bytes: &[u8]) -> anyhow::Result<Tile> {
    Ok(coordinator::mosaic::parse_tile(bytes)?)
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
}
