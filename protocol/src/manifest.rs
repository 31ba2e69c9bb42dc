//! The project manifest (TOML) and the validated project it describes.
//!
//! [`load`] is, with `identity::load_or_create`, the only code in this crate that reads
//! files: it resolves the manifest's paths and inputs into a [`ProjectSpec`] that the CLI
//! uploads and the coordinator validates again with [`ProjectSpec::validate`]. Its pure
//! half, [`Manifest::parse`] and [`Manifest::to_spec`], is what the fuzz target runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Limits};

/// Most work units one project may have.
pub const MAX_UNITS: usize = 1_000_000;
/// Largest input of one unit.
pub const MAX_INPUT_BYTES: usize = 16 << 20;
/// Largest module (project or reducer).
pub const MAX_MODULE_BYTES: usize = 64 << 20;
/// Most replicas (executions) of one unit, whatever the manifest says.
pub const MAX_REPLICAS: u32 = 64;
/// Unit names a results directory already uses for its own files.
pub const RESERVED_UNIT_NAMES: [&str; 3] = ["aggregate", "failed.txt", "results.jsonl"];

/// The manifest as written. Every key is documented in the README with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Project name shown in status and on the dashboard.
    pub name: String,
    /// The project module, relative to the manifest.
    pub wasm: PathBuf,
    /// Independent executions per unit. Default 2.
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// Byte-identical results needed. Default: `replication`.
    pub quorum: Option<u32>,
    /// Most executions of one unit, disputes included, before it fails. Default:
    /// `replication + 3`.
    pub max_replicas: Option<u32>,
    /// Adaptive replication: workers that earned trust run units alone, with secret spot
    /// checks. Default true.
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
    /// Target error bound of adaptive replication, in (0, 0.5]. Default 0.02.
    pub error_bound: Option<f64>,
    /// Sandbox limits per execution.
    #[serde(default)]
    pub limits: Limits,
    /// Where the units come from.
    pub inputs: Inputs,
    /// Optional reducer.
    pub reduce: Option<Reduce>,
    /// Files mounted read-only under `/data` in every unit ([`crate::data`]).
    #[serde(default)]
    pub data: Data,
}

fn default_replication() -> u32 {
    2
}

fn default_adaptive() -> bool {
    true
}

/// Default of `error_bound`.
pub const DEFAULT_ERROR_BOUND: f64 = 0.02;

/// `[inputs]`: exactly one of `dir`, `sweep`, `linspace` or `table` ([`Inputs::source`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// One unit per file in this directory (relative to the manifest); the file name names
    /// the unit and its bytes are the unit's stdin.
    pub dir: Option<PathBuf>,
    /// An integer range split into units.
    pub sweep: Option<Sweep>,
    /// Evenly spaced numbers, one unit each.
    pub linspace: Option<Linspace>,
    /// A CSV file (relative to the manifest) with a header line: one unit per data row,
    /// named by its first column; the unit's stdin is the header line and its row.
    pub table: Option<PathBuf>,
}

/// Where a manifest's units come from: the one `[inputs]` key it gives.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `dir`: one unit per file (read by [`load`]).
    Dir(&'a Path),
    /// `sweep`: [`sweep_units`].
    Sweep(Sweep),
    /// `linspace`: [`linspace_units`].
    Linspace(Linspace),
    /// `table`: [`table_units`] of the file's bytes.
    Table(&'a Path),
}

impl Inputs {
    /// The one source of units; an error names the keys given when there is not exactly one.
    pub fn source(&self) -> Result<Source<'_>, String> {
        let mut given = Vec::new();
        if let Some(d) = &self.dir {
            given.push(("dir", Source::Dir(d)));
        }
        if let Some(s) = self.sweep {
            given.push(("sweep", Source::Sweep(s)));
        }
        if let Some(l) = self.linspace {
            given.push(("linspace", Source::Linspace(l)));
        }
        if let Some(t) = &self.table {
            given.push(("table", Source::Table(t)));
        }
        match given.as_slice() {
            [(_, source)] => Ok(*source),
            [] => Err("[inputs] needs one of `dir = \"inputs\"` (one unit per file), `sweep = { from = 0, to = 100, step = 10 }`, `linspace = { from = 0.0, to = 1.0, count = 11 }` or `table = \"params.csv\"` (one unit per row)".into()),
            more => Err(format!(
                "[inputs] has {}; keep exactly one",
                more.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
            )),
        }
    }
}

/// `sweep = { from, to, step }`: unit `a` gets stdin `"a b\n"` with `b = min(a + step, to)`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// First value (inclusive).
    pub from: i64,
    /// End of the range (exclusive).
    pub to: i64,
    /// Width of each unit's sub-range.
    pub step: i64,
}

/// `linspace = { from, to, count }`: `count` evenly spaced numbers from `from` to `to`, both
/// included (as `numpy.linspace`). Each is one unit, named by the number as Rust prints
/// an `f64` shortest and exactly (`2.5`, `3.0`, `1e-7`), with that text and a newline as
/// its stdin.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linspace {
    /// First value.
    pub from: f64,
    /// Last value (included when `count` > 1).
    pub to: f64,
    /// How many values: 1 to [`MAX_UNITS`].
    pub count: u32,
}

/// `[reduce]`: a reducer folds all verified outputs into the aggregate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reduce {
    /// The reducer module, relative to the manifest.
    pub wasm: PathBuf,
}

/// `[data]`: `files = ["params.db", "table.bin"]` (each mounted by its file name) and/or
/// `NAME = "path"` entries (mounted as `/data/NAME`); paths are relative to the manifest.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Data {
    /// Files mounted under their own file names.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Files mounted under the name given.
    #[serde(flatten)]
    pub named: std::collections::BTreeMap<String, PathBuf>,
}

impl Data {
    /// Every `(name, path)`, sorted by name; an error names a duplicate or a bad name.
    pub fn entries(&self) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for path in &self.files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("[data].files: {path:?} has no file name"))?;
            crate::data::check_name(name).map_err(|e| {
                format!("{e}; or name it yourself: `my-name = {path:?}` under [data]")
            })?;
            out.push((name.to_string(), path.clone()));
        }
        for (name, path) in &self.named {
            crate::data::check_name(name)?;
            out.push((name.clone(), path.clone()));
        }
        out.sort();
        for pair in out.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(format!(
                    "[data]: two files are mounted as {}/{} ({:?} and {:?}); name one `other = \"path\"`",
                    crate::data::MOUNT,
                    pair[0].0,
                    pair[0].1,
                    pair[1].1
                ));
            }
        }
        Ok(out)
    }
}

/// A project ready to submit: modules loaded, inputs resolved.
#[derive(Debug, Clone)]
pub struct ProjectSpec {
    /// Name.
    pub name: String,
    /// Project module bytes.
    pub module: Vec<u8>,
    /// Reducer module bytes, if any.
    pub reducer: Option<Vec<u8>>,
    /// Executions per unit.
    pub replication: u32,
    /// Matching results needed.
    pub quorum: u32,
    /// Most executions per unit.
    pub max_replicas: u32,
    /// Adaptive replication on.
    pub adaptive: bool,
    /// Target error bound of adaptive replication.
    pub error_bound: f64,
    /// Sandbox limits.
    pub limits: Limits,
    /// `(name, stdin)` per unit.
    pub units: Vec<(String, Vec<u8>)>,
    /// The manifest text, kept for the record.
    pub manifest: String,
    /// The `[data]` files, sorted by name (empty for none).
    pub data: Vec<crate::data::DataFile>,
    /// Where [`load`] read each of `data`, in the same order; empty in a spec that came
    /// from the wire.
    pub data_paths: Vec<PathBuf>,
    /// The submitter's signatures ([`crate::provenance`]); `None` until
    /// [`ProjectSpec::sign`]. The coordinator refuses unsigned projects.
    pub signatures: Option<crate::provenance::Signatures>,
}

/// Reads the manifest at `path`, its modules and its inputs: the file side of
/// [`Manifest::parse`] and [`Manifest::to_spec`].
pub fn load(path: &Path) -> Result<ProjectSpec, Error> {
    let fail = |message: String| Error::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let manifest = Manifest::parse(&text).map_err(fail)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let read_module = |key: &str, rel: &Path| -> Result<Vec<u8>, Error> {
        let file = base.join(rel);
        let bytes = std::fs::read(&file).map_err(|e| {
            fail(format!(
                "{key} = {:?}: cannot read {}: {e} (paths are relative to the manifest)",
                rel,
                file.display()
            ))
        })?;
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(fail(format!(
                "{key}: {} is {} bytes, over the {MAX_MODULE_BYTES}-byte limit",
                file.display(),
                bytes.len()
            )));
        }
        Ok(bytes)
    };
    let module = read_module("wasm", &manifest.wasm)?;
    let reducer = match &manifest.reduce {
        Some(r) => Some(read_module("[reduce].wasm", &r.wasm)?),
        None => None,
    };
    let units = match manifest.inputs.source().map_err(fail)? {
        Source::Dir(dir) => read_dir_units(&base.join(dir)).map_err(fail)?,
        Source::Sweep(sweep) => sweep_units(sweep).map_err(fail)?,
        Source::Linspace(l) => linspace_units(l).map_err(fail)?,
        Source::Table(table) => {
            let file = base.join(table);
            let bytes = std::fs::read(&file).map_err(|e| {
                fail(format!(
                    "[inputs].table = {table:?}: cannot read {}: {e} (paths are relative to the manifest)",
                    file.display()
                ))
            })?;
            table_units(&bytes).map_err(fail)?
        }
    };
    let entries = manifest.data.entries().map_err(fail)?;
    let mut data = Vec::with_capacity(entries.len());
    let mut data_paths = Vec::with_capacity(entries.len());
    for (name, rel) in entries {
        let file = base.join(&rel);
        let meta = std::fs::metadata(&file).map_err(|e| {
            fail(format!(
                "[data] {name} = {rel:?}: cannot read {}: {e} (paths are relative to the manifest)",
                file.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(fail(format!(
                "[data] {name} = {rel:?}: {} is not a file (directories cannot be mounted; name each file)",
                file.display()
            )));
        }
        // Checked before hashing so a 50 GiB file is refused at once, not after minutes.
        if meta.len() > crate::data::MAX_FILE_BYTES {
            crate::data::check_list(&[crate::data::DataFile {
                name: name.clone(),
                size: meta.len(),
                digest: crate::Digest([0; 32]),
            }])
            .map_err(fail)?;
        }
        let (size, digest) = crate::data::hash_file(&file).map_err(|e| {
            fail(format!(
                "[data] {name}: cannot read {}: {e}",
                file.display()
            ))
        })?;
        data.push(crate::data::DataFile { name, size, digest });
        data_paths.push(file);
    }
    let mut spec = manifest.to_spec(module, reducer, units, text);
    spec.data = data;
    spec.data_paths = data_paths;
    spec.validate().map_err(fail)?;
    Ok(spec)
}

impl Manifest {
    /// Parses manifest text; no file is read. The message is TOML's, naming the line.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string())
    }

    /// The project this manifest describes, with the module, reducer and units its paths
    /// and `[inputs]` resolve to (no data files: [`load`] hashes those), and every default
    /// filled in (`quorum` = `replication`,
    /// `max_replicas` = `replication + 3`, `error_bound` = [`DEFAULT_ERROR_BOUND`]). Not
    /// validated: call [`ProjectSpec::validate`]. `text` is kept as the record.
    pub fn to_spec(
        self,
        module: Vec<u8>,
        reducer: Option<Vec<u8>>,
        units: Vec<(String, Vec<u8>)>,
        text: String,
    ) -> ProjectSpec {
        ProjectSpec {
            name: self.name,
            module,
            reducer,
            replication: self.replication,
            quorum: self.quorum.unwrap_or(self.replication),
            max_replicas: self
                .max_replicas
                .unwrap_or(self.replication.saturating_add(3)),
            adaptive: self.adaptive,
            error_bound: self.error_bound.unwrap_or(DEFAULT_ERROR_BOUND),
            limits: self.limits,
            units,
            manifest: text,
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        }
    }
}

impl ProjectSpec {
    /// Structural checks, shared by the CLI (before upload) and the coordinator (on
    /// receipt). Module contents are checked by the sandbox. The message names the key and
    /// the fix.
    pub fn validate(&self) -> Result<(), String> {
        // The CLI reads no bigger file, but a raw `SubmitProject` can carry anything up to
        // the upload cap: every receiver checks the sizes again here.
        check_module_size("wasm", &self.module)?;
        if let Some(reducer) = &self.reducer {
            check_module_size("[reduce].wasm", reducer)?;
        }
        // Checked untrimmed: whitespace around the name is stored and shown too, and a
        // newline or tab is whitespace as well as a control character.
        let name = &self.name;
        if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(format!(
                "name must be 1 to 100 printable characters (got {:?})",
                self.name
            ));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replication) {
            return Err(format!(
                "replication must be between 1 and {MAX_REPLICAS} (got {})",
                self.replication
            ));
        }
        if self.quorum < 1 || self.quorum > self.replication {
            return Err(format!(
                "quorum must be between 1 and replication ({}) (got {})",
                self.replication, self.quorum
            ));
        }
        if self.max_replicas < self.replication || self.max_replicas > MAX_REPLICAS {
            return Err(format!(
                "max_replicas must be between replication ({}) and {MAX_REPLICAS} (got {})",
                self.replication, self.max_replicas
            ));
        }
        if !(self.error_bound > 0.0 && self.error_bound <= 0.5) {
            return Err(format!(
                "error_bound must be in (0, 0.5], e.g. 0.02 (got {})",
                self.error_bound
            ));
        }
        self.limits.validate()?;
        crate::data::check_list(&self.data)?;
        if self.units.is_empty() {
            return Err("[inputs] produced no work units".into());
        }
        if self.units.len() > MAX_UNITS {
            return Err(format!(
                "[inputs] produced {} units, at most {MAX_UNITS} per project",
                self.units.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (unit, input) in &self.units {
            check_unit_name(unit)?;
            if !names.insert(unit.as_str()) {
                return Err(format!("[inputs]: unit name {unit:?} appears twice"));
            }
            if input.len() > MAX_INPUT_BYTES {
                return Err(format!(
                    "[inputs]: unit {unit:?} has {} bytes of input, at most {MAX_INPUT_BYTES}",
                    input.len()
                ));
            }
        }
        Ok(())
    }
}

/// Refuses a module over [`MAX_MODULE_BYTES`], naming `key`, the size and the limit.
fn check_module_size(key: &str, module: &[u8]) -> Result<(), String> {
    if module.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "{key}: the module is {} bytes, over the {MAX_MODULE_BYTES}-byte ({} MiB) limit",
            module.len(),
            MAX_MODULE_BYTES >> 20
        ));
    }
    Ok(())
}

/// Unit names become file names in `fallow results`, so they must be safe ones.
pub fn check_unit_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-+=,@".contains(c));
    if name.is_empty() || name.len() > 200 || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "[inputs]: unit name {name:?} is not usable as a file name: use 1 to 200 characters of A-Z a-z 0-9 . _ - + = , @, not starting with '.'"
        ));
    }
    if RESERVED_UNIT_NAMES.contains(&name) {
        return Err(format!(
            "[inputs]: unit name {name:?} is reserved for the results directory; rename that input file"
        ));
    }
    Ok(())
}

fn read_dir_units(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("[inputs].dir: cannot read {}: {e}", dir.display()))?;
    let mut units = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("[inputs].dir: {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!(
                "[inputs].dir: {:?} is not a UTF-8 file name",
                entry.file_name()
            ));
        };
        // Hidden files (.DS_Store, editor swap files) are not work units.
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            return Err(format!(
                "[inputs].dir: {} is not a regular file; one unit per file, no subdirectories",
                path.display()
            ));
        }
        check_unit_name(name)?;
        let input = std::fs::read(&path)
            .map_err(|e| format!("[inputs].dir: cannot read {}: {e}", path.display()))?;
        units.push((name.to_string(), input));
        if units.len() > MAX_UNITS {
            return Err(format!("[inputs].dir has more than {MAX_UNITS} files"));
        }
    }
    units.sort();
    Ok(units)
}

/// The units of a `linspace`; an error names the bad key.
pub fn linspace_units(l: Linspace) -> Result<Vec<(String, Vec<u8>)>, String> {
    if !l.from.is_finite() || !l.to.is_finite() {
        return Err(format!(
            "[inputs].linspace: from and to must be finite numbers (got {} and {})",
            l.from, l.to
        ));
    }
    if l.count == 0 || l.count as usize > MAX_UNITS {
        return Err(format!(
            "[inputs].linspace.count must be from 1 to {MAX_UNITS} (got {})",
            l.count
        ));
    }
    let last = f64::from(l.count - 1);
    let mut units: Vec<(String, Vec<u8>)> = Vec::with_capacity(l.count as usize);
    for i in 0..l.count {
        let v = if i == 0 {
            l.from
        } else if i == l.count - 1 {
            l.to
        } else {
            l.from + (l.to - l.from) * (f64::from(i) / last)
        };
        // `{:?}` is the shortest text that reads back as the same f64, with an exponent
        // for very large or small numbers, so names stay short and distinct.
        let name = format!("{v:?}");
        if units.last().is_some_and(|(prev, _)| *prev == name) {
            return Err(format!(
                "[inputs].linspace: {} values between {} and {} repeat ({name} twice): lower count or widen the range",
                l.count, l.from, l.to
            ));
        }
        let input = format!("{name}\n").into_bytes();
        units.push((name, input));
    }
    Ok(units)
}

/// The units of a `table`: a CSV file whose first line is a header. Each data row is one
/// unit named by its first column (trimmed); its stdin is the header line and the row as
/// they are written in the file, each ending in `\n`. An error names the row.
pub fn table_units(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let header_end =
        match reader.headers() {
            Ok(h) if h.iter().any(|f| !f.trim().is_empty()) => reader.position().byte(),
            Ok(_) => return Err(
                "[inputs].table: the file is empty; its first line must be a header (column names)"
                    .into(),
            ),
            Err(e) => return Err(format!("[inputs].table: {e}")),
        };
    let raw = |from: u64, to: u64| -> Vec<u8> {
        let (from, to) = (from as usize, (to as usize).min(bytes.len()));
        let line = bytes.get(from..to).unwrap_or_default();
        // Blank lines the reader skipped before the row are not part of it.
        let skip = line
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let line = &line[skip..];
        let mut line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        line.to_vec()
    };
    let header = raw(0, header_end);
    let mut units: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rows: HashMap<String, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(format!("[inputs].table: {e}")),
        }
        let line = record.position().map_or(0, |p| p.line());
        let name = record.get(0).unwrap_or_default().trim().to_string();
        if name.is_empty() {
            return Err(format!(
                "[inputs].table: line {line}: the first column (the unit's name) is empty"
            ));
        }
        check_unit_name(&name).map_err(|e| format!("[inputs].table: line {line}: {e}"))?;
        if let Some(earlier) = rows.insert(name.clone(), line) {
            return Err(format!(
                "[inputs].table: line {line}: unit {name:?} is also on line {earlier}; names must be unique"
            ));
        }
        let mut input = header.clone();
        input.push(b'\n');
        input.extend_from_slice(&raw(start, reader.position().byte()));
        input.push(b'\n');
        units.push((name, input));
        if units.len() > MAX_UNITS {
            return Err(format!("[inputs].table has more than {MAX_UNITS} rows"));
        }
    }
    if units.is_empty() {
        return Err("[inputs].table has a header but no rows: one unit per row".into());
    }
    Ok(units)
}

/// The units of a sweep; an error names the bad key.
pub fn sweep_units(s: Sweep) -> Result<Vec<(String, Vec<u8>)>, String> {
    if s.step <= 0 {
        return Err(format!("[inputs].sweep.step must be > 0 (got {})", s.step));
    }
    if s.from >= s.to {
        return Err(format!(
            "[inputs].sweep: from ({}) must be below to ({})",
            s.from, s.to
        ));
    }
    let count = (s.to as i128 - s.from as i128 + s.step as i128 - 1) / s.step as i128;
    if count > MAX_UNITS as i128 {
        return Err(format!(
            "[inputs].sweep makes {count} units, at most {MAX_UNITS}: raise step"
        ));
    }
    let mut units = Vec::with_capacity(count as usize);
    let mut a = s.from;
    while a < s.to {
        let b = a.saturating_add(s.step).min(s.to);
        units.push((a.to_string(), format!("{a} {b}\n").into_bytes()));
        a = b;
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pure half fills the documented defaults without touching a file.
    #[test]
    fn parse_and_to_spec_fill_the_defaults() {
        let text =
            "name = \"p\"\nwasm = \"m.wasm\"\n[inputs]\nsweep = { from = 0, to = 4, step = 2 }\n";
        let manifest = Manifest::parse(text).expect("parses");
        let sweep = manifest.inputs.sweep.expect("a sweep");
        let units = sweep_units(sweep).expect("units");
        let spec = manifest.to_spec(b"\0asm\x01\0\0\0".to_vec(), None, units, text.into());
        assert_eq!(
            (
                spec.replication,
                spec.quorum,
                spec.max_replicas,
                spec.adaptive
            ),
            (2, 2, 5, true)
        );
        assert_eq!(spec.error_bound, DEFAULT_ERROR_BOUND);
        assert_eq!(spec.units.len(), 2);
        assert_eq!(spec.manifest, text);
        assert!(spec.validate().is_ok());
        let err = Manifest::parse("name = 1").expect_err("not a manifest");
        assert!(err.contains("name"), "{err}");
    }

    /// `fuel = 1e18` is a TOML float: the error says to write the digits, and shows them.
    #[test]
    fn a_float_limit_names_the_fix() {
        let base =
            "name = \"p\"\nwasm = \"m.wasm\"\n[inputs]\nsweep = { from = 0, to = 4, step = 2 }\n";
        let err = Manifest::parse(&format!("{base}[limits]\nfuel = 1e18\n")).expect_err("a float");
        assert!(err.contains("fuel"), "{err}");
        assert!(err.contains("1_000_000_000_000_000_000"), "{err}");
        assert!(err.contains("whole number"), "{err}");
        let err =
            Manifest::parse(&format!("{base}[limits]\nmemory_mb = 1.5\n")).expect_err("a float");
        assert!(
            err.contains("memory_mb") && err.contains("whole number"),
            "{err}"
        );
        let err =
            Manifest::parse(&format!("{base}[limits]\nwall_seconds = -3\n")).expect_err("negative");
        assert!(err.contains("negative"), "{err}");
        let ok = Manifest::parse(&format!(
            "{base}[limits]\nfuel = 1_000_000_000\nmemory_mb = 128\n"
        ))
        .expect("integers parse");
        assert_eq!((ok.limits.fuel, ok.limits.memory_mb), (1_000_000_000, 128));
    }

    /// `linspace` includes both ends, names units by value, and refuses repeats.
    #[test]
    fn linspace_spaces_evenly_and_names_units_by_value() {
        let units = linspace_units(Linspace {
            from: 2.5,
            to: 4.0,
            count: 4,
        })
        .expect("units");
        let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["2.5", "3.0", "3.5", "4.0"]);
        assert_eq!(units[1].1, b"3.0\n");
        let one = linspace_units(Linspace {
            from: -1e-9,
            to: 7.0,
            count: 1,
        })
        .expect("one");
        assert_eq!(one, [("-1e-9".to_string(), b"-1e-9\n".to_vec())]);
        for (bad, says) in [
            (
                Linspace {
                    from: 0.0,
                    to: 1.0,
                    count: 0,
                },
                "count",
            ),
            (
                Linspace {
                    from: f64::NAN,
                    to: 1.0,
                    count: 3,
                },
                "finite",
            ),
            (
                Linspace {
                    from: 1.0,
                    to: 1.0,
                    count: 3,
                },
                "repeat",
            ),
        ] {
            let err = linspace_units(bad).expect_err("refused");
            assert!(err.contains(says), "{err}");
        }
    }

    /// A table gives one unit per row: named by the first column, stdin the header and the
    /// row as written; bad rows are named by line.
    #[test]
    fn a_table_gives_one_unit_per_row_with_its_header() {
        let csv = b"name,r,x0\r\nlow,2.8,0.5\r\n\nhigh,\"3.9\",0.25\n";
        let units = table_units(csv).expect("units");
        assert_eq!(
            units,
            [
                ("low".to_string(), b"name,r,x0\nlow,2.8,0.5\n".to_vec()),
                (
                    "high".to_string(),
                    b"name,r,x0\nhigh,\"3.9\",0.25\n".to_vec()
                ),
            ]
        );
        for (bad, says) in [
            (&b""[..], "empty"),
            (b"name,r\n", "no rows"),
            (b"name,r\na,1\na,2\n", "also on line 2"),
            (b"name,r\n,1\n", "empty"),
            (b"name,r\na,1,9\n", "fields"),
            (b"name,r\n../etc,1\n", "line 2"),
        ] {
            let err = table_units(bad).expect_err("refused");
            assert!(err.contains(says), "{err}");
        }
    }

    /// Exactly one source of units, and the error names the keys given.
    #[test]
    fn inputs_take_exactly_one_source() {
        let base = "name = \"p\"\nwasm = \"m.wasm\"\n[inputs]\n";
        let two =
            Manifest::parse(&format!("{base}dir = \"i\"\ntable = \"t.csv\"\n")).expect("parses");
        let err = two.inputs.source().expect_err("two");
        assert!(err.contains("`dir` and `table`"), "{err}");
        let none = Manifest::parse(base).expect("parses");
        assert!(none.inputs.source().expect_err("none").contains("linspace"));
        let one = Manifest::parse(&format!(
            "{base}linspace = {{ from = 0.0, to = 1.0, count = 3 }}\n"
        ))
        .expect("parses");
        assert!(matches!(one.inputs.source(), Ok(Source::Linspace(_))));
    }

    fn write_project(manifest: &str) -> (PathBuf, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fallow-manifest-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("inputs")).expect("mkdir");
        std::fs::write(dir.join("m.wasm"), b"\0asm\x01\0\0\0").expect("write");
        std::fs::write(dir.join("inputs/a"), b"1").expect("write");
        std::fs::write(dir.join("inputs/b"), b"2").expect("write");
        let path = dir.join("project.toml");
        std::fs::write(&path, manifest).expect("write");
        (dir, path)
    }

    /// Loads `manifest` and returns the error text, or "ok".
    fn check(manifest: &str) -> String {
        let (dir, path) = write_project(manifest);
        let out = match load(&path) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = std::fs::remove_dir_all(dir);
        out
    }

    #[test]
    fn sweep_splits_the_range_and_stops_at_to() {
        let units = sweep_units(Sweep {
            from: 0,
            to: 250,
            step: 100,
        })
        .expect("valid");
        let names: Vec<_> = units.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["0", "100", "200"]);
        assert_eq!(units[2].1, b"200 250\n");
    }

    #[test]
    fn good_manifests_load() {
        assert_eq!(
            check("name='p'\nwasm='m.wasm'\n[inputs]\ndir='inputs'\n"),
            "ok"
        );
        assert_eq!(
            check(
                "name='p'\nwasm='m.wasm'\nreplication=3\nquorum=2\n[limits]\nfuel=5000\n[inputs]\nsweep={from=0,to=10,step=3}\n"
            ),
            "ok"
        );
    }

    #[test]
    fn bad_manifests_name_the_file_and_the_key() {
        let cases = [
            (
                "name='p'\nwasm='m.wasm'\n[inputs]\ndir='inputs'\n[limits]\nfuel=0\n",
                "[limits].fuel",
            ),
            (
                "name='p'\nwasm='m.wasm'\nreplication=2\nquorum=3\n[inputs]\ndir='inputs'\n",
                "quorum",
            ),
            (
                "name='p'\nwasm='missing.wasm'\n[inputs]\ndir='inputs'\n",
                "missing.wasm",
            ),
            ("name='p'\nwasm='m.wasm'\n[inputs]\n", "[inputs] needs"),
            (
                "name='p'\nwasm='m.wasm'\nreplicaton=2\n[inputs]\ndir='inputs'\n",
                "replicaton",
            ),
            (
                "name='p'\nwasm='m.wasm'\n[inputs]\nsweep={from=5,to=1,step=1}\n",
                "from (5)",
            ),
            (
                "name='p'\nwasm='m.wasm'\n[inputs]\nsweep={from=0,to=10,step=0}\n",
                "step",
            ),
            (
                "name='p'\nwasm='m.wasm'\n[inputs]\ndir='nowhere'\n",
                "[inputs].dir",
            ),
        ];
        for (manifest, key) in cases {
            let err = check(manifest);
            assert!(err.contains("project.toml"), "no file name in {err:?}");
            assert!(err.contains(key), "{key:?} not named in {err:?}");
        }
    }

    #[test]
    fn names_are_printable_including_the_whitespace_around_them() {
        let manifest =
            |name: &str| format!("name={name:?}\nwasm='m.wasm'\n[inputs]\ndir='inputs'\n");
        assert_eq!(check(&manifest(" primes ")), "ok");
        for bad in [
            "\nprimes",
            "primes\t",
            "   ",
            &format!("p{}", " ".repeat(100)),
        ] {
            assert!(
                check(&manifest(bad)).contains("name must be"),
                "{bad:?} accepted"
            );
        }
    }

    /// `[data]` takes `files = [...]` and `name = "path"`, sorted by name, hashed; bad
    /// names, missing files and duplicates are refused naming the key and the fix.
    #[test]
    fn data_files_are_listed_hashed_and_checked() {
        let base = "name='p'\nwasm='m.wasm'\n[inputs]\ndir='inputs'\n[data]\n";
        let (dir, path) = write_project(&format!(
            "{base}files = ['params.db']\ntable = 'sub/T.BIN'\n"
        ));
        std::fs::write(dir.join("params.db"), b"p=1\n").expect("write");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/T.BIN"), b"1\n2\n").expect("write");
        let spec = load(&path).expect("loads");
        let names: Vec<_> = spec.data.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["params.db", "table"]);
        assert_eq!(spec.data[1].size, 4);
        assert_eq!(spec.data[1].digest, crate::Digest::of(b"1\n2\n"));
        assert_eq!(spec.data_paths[1], dir.join("sub/T.BIN"));
        let _ = std::fs::remove_dir_all(dir);
        for (data, says) in [
            ("files = ['missing.bin']\n", "missing.bin"),
            (
                "files = ['inputs/a', 'inputs/a']\n",
                "two files are mounted as /data/a",
            ),
            ("files = ['m.wasm']\nBig = 'inputs/a'\n", "a-z"),
            ("files = ['inputs']\n", "not a file"),
        ] {
            let err = check(&format!("{base}{data}"));
            assert!(err.contains("[data]"), "{err}");
            assert!(err.contains(says), "{says:?} not in {err}");
        }
        assert_eq!(check(&format!("{base}files = ['m.wasm']\n")), "ok");
    }

    #[test]
    fn unit_names_must_be_file_names() {
        for bad in ["", ".hidden", "a/b", "aggregate", "failed.txt", "x y"] {
            assert!(check_unit_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_unit_name("tile-03_04.in").is_ok());
    }
}
