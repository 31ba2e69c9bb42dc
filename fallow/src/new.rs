//! `fallow new NAME --lang rust|c`: a working project to start from — the program, the
//! script that builds its module, the manifest, example inputs and a short README.
//! `fallow run` and `fallow submit` accept it as it stands once `./build.sh` has run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The languages with a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for wasm32-wasip1.
    Rust,
    /// C, built with clang and wasi-libc.
    C,
}

/// A template file: its path in the project, its text (`{{name}}` is the project's name),
/// and whether it is a script to make executable.
type File = (&'static str, &'static str, bool);

const RUST: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust/Cargo.toml"),
        false,
    ),
    (
        "src/main.rs",
        include_str!("../templates/rust/src/main.rs"),
        false,
    ),
    ("build.sh", include_str!("../templates/rust/build.sh"), true),
    (
        "fallow.toml",
        include_str!("../templates/rust/fallow.toml"),
        false,
    ),
    (
        "README.md",
        include_str!("../templates/rust/README.md"),
        false,
    ),
    (
        "inputs/r2.8-3.0",
        include_str!("../templates/rust/inputs/r2.8-3.0"),
        false,
    ),
    (
        "inputs/r3.0-3.2",
        include_str!("../templates/rust/inputs/r3.0-3.2"),
        false,
    ),
    (
        "inputs/r3.5-4.0",
        include_str!("../templates/rust/inputs/r3.5-4.0"),
        false,
    ),
    (".gitignore", "/target\n/*.wasm\n/results\n", false),
];

const C: &[File] = &[
    ("main.c", include_str!("../templates/c/main.c"), false),
    ("build.sh", include_str!("../templates/c/build.sh"), true),
    (
        "fallow.toml",
        include_str!("../templates/c/fallow.toml"),
        false,
    ),
    ("README.md", include_str!("../templates/c/README.md"), false),
    ("inputs/a", include_str!("../templates/c/inputs/a"), false),
    ("inputs/b", include_str!("../templates/c/inputs/b"), false),
    ("inputs/c", include_str!("../templates/c/inputs/c"), false),
    (".gitignore", "/*.wasm\n/results\n", false),
];

/// Writes the project into the new directory `dir`, named after its last component;
/// refuses a directory that exists (nothing is overwritten). Returns what was written.
pub fn create(dir: &Path, lang: Lang) -> anyhow::Result<Vec<PathBuf>> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the project needs a name, e.g. `fallow new ising --lang c`")?;
    check_name(name)?;
    if dir.exists() {
        bail!(
            "{} already exists; `fallow new` writes a new directory and overwrites nothing",
            dir.display()
        );
    }
    let files = match lang {
        Lang::Rust => RUST,
        Lang::C => C,
    };
    let mut written = Vec::new();
    for (path, text, script) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text.replace("{{name}}", name))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if *script {
            make_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// A name that is a Cargo package name, a file name and a project name all at once.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "project name {name:?}: use 1 to 64 lowercase letters, digits, `-` or `_`, starting \
             with a letter (it names the directory, the module and the Cargo package)"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_written_once_with_its_name_filled_in() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("ising");
        let files = create(&dir, Lang::C).expect("created");
        assert!(files.iter().any(|f| f.ends_with("build.sh")));
        let manifest = std::fs::read_to_string(dir.join("fallow.toml")).expect("manifest");
        assert!(manifest.contains("wasm = \"ising.wasm\""), "{manifest}");
        assert!(!manifest.contains("{{"), "{manifest}");
        let again = create(&dir, Lang::Rust).expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
        for bad in ["Ising", "1sing", "is ing", "../x", ""] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The manifests of both templates are valid manifests (their inputs and limits).
    #[test]
    fn the_template_manifests_parse() {
        for files in [RUST, C] {
            let (_, text, _) = files
                .iter()
                .find(|(p, _, _)| *p == "fallow.toml")
                .expect("a manifest");
            let m = protocol::manifest::Manifest::parse(&text.replace("{{name}}", "x"))
                .expect("parses");
            m.limits.validate().expect("valid limits");
        }
    }
}
