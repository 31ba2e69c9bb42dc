//! Writes the metered form of WebAssembly modules: what `Sandbox::compile` runs and what a
//! browser worker gets, rewritten by [`sandbox::meter::instrument`].
//!
//! `cargo run -p sandbox --example meter -- IN_DIR OUT_DIR` rewrites every `IN_DIR/*.wasm`
//! to `OUT_DIR/*.wasm`. The browser runtime's tests (coordinator/assets/volunteer) run these
//! bytes and compare their fuel with `fallow run`'s.

use std::path::{Path, PathBuf};

fn main() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: meter IN_DIR OUT_DIR".into());
    };
    fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
        move |e| format!("{}: {e}", path.display())
    }
    std::fs::create_dir_all(&output).map_err(io(&output))?;
    for entry in std::fs::read_dir(&input).map_err(io(&input))? {
        let path = entry.map_err(io(&input))?.path();
        let (Some(name), Some("wasm")) =
            (path.file_name(), path.extension().and_then(|e| e.to_str()))
        else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let metered = sandbox::meter::instrument(&bytes)
            .map_err(|e| format!("cannot meter {}: {e}", path.display()))?;
        let out = output.join(name);
        std::fs::write(&out, metered).map_err(io(&out))?;
    }
    Ok(())
}
