//! The volunteer's preferences: when, and how much, this worker computes.
//!
//! Kept in `<data>/prefs.toml` (every key optional; a missing file means all defaults).
//! Flags of `fallow worker` override the file; `fallow worker prefs set KEY VALUE` changes
//! the file and the running worker at once. The running worker also re-reads the file when
//! it changes, so edits apply without a restart. The defaults are BOINC's client
//! preferences.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The file name of the preferences inside the data directory.
pub const FILE: &str = "prefs.toml";

/// The worker's preferences, as read from `prefs.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prefs {
    /// Run only when the user has touched neither keyboard nor mouse for this many
    /// minutes. Default 3; 0 = run even while the user is active; at most 1440. Where the
    /// platform cannot tell (no graphical session, e.g. a headless server) the machine
    /// counts as idle, and the log says so once.
    pub run_if_idle_minutes: u32,
    /// Suspend while programs other than this worker use more than this percentage of the
    /// machine's total CPU (all cores), measured with sysinfo. Default 25; 1 to 100;
    /// 0 = never suspend for other programs' load. Running again waits until the load has
    /// stayed below for 10 s, so a flickering load does not flap the worker.
    pub suspend_cpu_busy_percent: u32,
    /// Percentage of the time each guest thread may compute (a duty cycle over 100 ms
    /// periods: at 50, 50 ms on and 50 ms paused). Default 100; 1 to 100. Lower values keep
    /// fans quiet and laptops cool.
    pub cpu_limit_percent: u32,
    /// Most units run at once. Default 0 = as many as `--cores`; otherwise 1 to 1024, and
    /// never more than `--cores` (the guest threads started).
    pub max_cores: u32,
    /// While the user is active: the declared memory (`memory_mb`) of running units may
    /// add up to at most this percentage of the machine's RAM; units beyond wait. Default
    /// 50; 1 to 100.
    pub memory_in_use_percent: u32,
    /// The same while the user is idle. Default 90; 1 to 100.
    pub memory_idle_percent: u32,
    /// Size cap of the on-disk module cache (`<data>/modules`), in MiB; the least recently
    /// used modules are deleted past it. Default 1024; 1 to 1,048,576.
    pub disk_cache_mb: u64,
    /// Compute while the machine runs on battery. Default false (a machine without a
    /// battery is on AC).
    pub run_on_battery: bool,
    /// Local times of day when the worker may compute, as `"HH:MM-HH:MM"` windows (end
    /// excluded; a window may wrap midnight, e.g. `"22:00-06:00"`). Default empty = any
    /// time.
    pub run_hours: Vec<Window>,
    /// Once suspended this many seconds (for any reason), hand back the units this worker
    /// holds that have neither a result nor a checkpoint on disk, so other workers run
    /// them; checkpointed units are kept, but only within their current lease (it is no
    /// longer renewed). Default 300; 0 = at once; at most 86400.
    pub suspend_hand_back_seconds: u32,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            run_if_idle_minutes: 3,
            suspend_cpu_busy_percent: 25,
            cpu_limit_percent: 100,
            max_cores: 0,
            memory_in_use_percent: 50,
            memory_idle_percent: 90,
            disk_cache_mb: 1024,
            run_on_battery: false,
            run_hours: Vec::new(),
            suspend_hand_back_seconds: 300,
        }
    }
}

/// Every key, in the order `fallow worker prefs` prints them.
pub const KEYS: &[&str] = &[
    "run_if_idle_minutes",
    "suspend_cpu_busy_percent",
    "cpu_limit_percent",
    "max_cores",
    "memory_in_use_percent",
    "memory_idle_percent",
    "disk_cache_mb",
    "run_on_battery",
    "run_hours",
    "suspend_hand_back_seconds",
];

impl Prefs {
    /// Checks every value, naming the first bad key and its allowed range.
    pub fn validate(&self) -> Result<(), Error> {
        let within = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{FILE}: {key} must be between {lo} and {hi} (got {v})"
                )))
            }
        };
        within(
            "run_if_idle_minutes",
            self.run_if_idle_minutes.into(),
            0,
            1440,
        )?;
        within(
            "suspend_cpu_busy_percent",
            self.suspend_cpu_busy_percent.into(),
            0,
            100,
        )?;
        within("cpu_limit_percent", self.cpu_limit_percent.into(), 1, 100)?;
        within("max_cores", self.max_cores.into(), 0, 1024)?;
        within(
            "memory_in_use_percent",
            self.memory_in_use_percent.into(),
            1,
            100,
        )?;
        within(
            "memory_idle_percent",
            self.memory_idle_percent.into(),
            1,
            100,
        )?;
        within("disk_cache_mb", self.disk_cache_mb, 1, 1 << 20)?;
        within(
            "suspend_hand_back_seconds",
            self.suspend_hand_back_seconds.into(),
            0,
            86_400,
        )?;
        if self.run_hours.len() > 48 {
            return Err(Error::Config(format!(
                "{FILE}: run_hours has at most 48 windows (got {})",
                self.run_hours.len()
            )));
        }
        Ok(())
    }

    /// The value of `key` as TOML text (`"08:00-18:00"` windows as a TOML array).
    pub fn get(&self, key: &str) -> Result<String, Error> {
        let table = toml::Table::try_from(self)
            .map_err(|e| Error::Config(format!("cannot serialize preferences: {e}")))?;
        match table.get(key) {
            Some(v) => Ok(v.to_string()),
            // `run_hours` is always present; any other miss is an unknown key.
            None => Err(unknown_key(key)),
        }
    }

    /// Sets `key` from the text a user typed (`30`, `true`, `08:00-18:00,22:00-02:00`, or
    /// TOML such as `["08:00-18:00"]`) and validates the result; on error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let mut table = toml::Table::try_from(&*self)
            .map_err(|e| Error::Config(format!("cannot serialize preferences: {e}")))?;
        table.insert(key.to_string(), parse_value(key, value)?);
        let next = Prefs::from_table(table)?;
        *self = next;
        Ok(())
    }

    fn from_table(table: toml::Table) -> Result<Prefs, Error> {
        let prefs: Prefs = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("{FILE}: {}", e.message())))?;
        prefs.validate()?;
        Ok(prefs)
    }
}

fn unknown_key(key: &str) -> Error {
    Error::Config(format!(
        "unknown preference `{key}`; the keys are: {}",
        KEYS.join(", ")
    ))
}

/// What a typed value means for `key`.
fn parse_value(key: &str, value: &str) -> Result<toml::Value, Error> {
    if !KEYS.contains(&key) {
        return Err(unknown_key(key));
    }
    let value = value.trim();
    let bad = |what: &str| Error::Config(format!("{key}: expected {what} (got {value:?})"));
    match key {
        "run_on_battery" => match value {
            "true" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(bad("true or false")),
        },
        "run_hours" => {
            if value.starts_with('[') {
                let parsed: toml::Table = toml::from_str(&format!("v = {value}"))
                    .map_err(|_| bad("a TOML array of \"HH:MM-HH:MM\" strings"))?;
                return parsed.get("v").cloned().ok_or_else(|| bad("a TOML array"));
            }
            let windows = value
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty() && *w != "any")
                .map(|w| {
                    w.parse::<Window>()
                        .map(|_| toml::Value::String(w.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(toml::Value::Array(windows))
        }
        _ => value
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| bad("a whole number")),
    }
}

/// A local time-of-day window, `"HH:MM-HH:MM"`, end excluded; wraps midnight when the end
/// is earlier than the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    /// Minutes after midnight the window opens (0 to 1439).
    pub start: u16,
    /// Minutes after midnight the window closes (0 to 1439), excluded.
    pub end: u16,
}

impl Window {
    /// Whether `minute` (after local midnight) is inside the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl std::str::FromStr for Window {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Config(format!(
                "run_hours: {s:?} is not a window like \"08:00-18:00\" (HH:MM-HH:MM, 24-hour, start ≠ end)"
            ))
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(bad());
        }
        Ok(Window { start, end })
    }
}

impl TryFrom<String> for Window {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Nobody set it.
    Default,
    /// `prefs.toml` (directly or through `fallow worker prefs set`).
    File,
    /// A flag of `fallow worker`.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => FILE,
            Source::Flag => "flag",
        })
    }
}

/// One row of `fallow worker prefs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The key.
    pub key: String,
    /// Its effective value, as TOML.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// The preferences in force: the file's, overridden by flags, with where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The merged preferences.
    pub prefs: Prefs,
    /// Keys set in the file.
    file_keys: Vec<String>,
    /// Flag overrides, key → value text (as `Prefs::set` takes it).
    flags: BTreeMap<String, String>,
}

impl Effective {
    /// Loads `<dir>/prefs.toml` (absent = defaults) and applies `flags` (key → value
    /// text). Errors name the file, the key and the fix.
    pub fn load(dir: &Path, flags: BTreeMap<String, String>) -> Result<Effective, Error> {
        let (file, file_keys) = read_file(&path(dir))?;
        let mut prefs = file;
        for (key, value) in &flags {
            prefs
                .set(key, value)
                .map_err(|e| Error::Config(format!("flag --{}: {e}", key.replace('_', "-"))))?;
        }
        Ok(Effective {
            prefs,
            file_keys,
            flags,
        })
    }

    /// Every key with its value and source.
    pub fn rows(&self) -> Vec<Row> {
        KEYS.iter()
            .map(|&key| Row {
                key: key.to_string(),
                value: self.prefs.get(key).unwrap_or_default(),
                source: if self.flags.contains_key(key) {
                    Source::Flag
                } else if self.file_keys.iter().any(|k| k == key) {
                    Source::File
                } else {
                    Source::Default
                },
            })
            .collect()
    }

    /// `prefs set`: validates, writes the key to `<dir>/prefs.toml` (other keys in the
    /// file are kept; comments are not) and applies it. A live setting is the newest
    /// instruction, so it also replaces a flag given for that key at start.
    pub fn set(&mut self, dir: &Path, key: &str, value: &str) -> Result<(), Error> {
        let mut next = self.prefs.clone();
        next.set(key, value)?;
        let file = path(dir);
        let mut table = match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str::<toml::Table>(&text)
                .map_err(|e| Error::Config(format!("{}: {}", file.display(), e.message())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(e) => return Err(Error::io(&file, e)),
        };
        table.insert(key.to_string(), parse_value(key, value)?);
        let text = toml::to_string(&table)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", file.display())))?;
        let tmp = file.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))?;
        self.prefs = next;
        self.flags.remove(key);
        if !self.file_keys.iter().any(|k| k == key) {
            self.file_keys.push(key.to_string());
        }
        Ok(())
    }

    /// Re-reads the file after it changed on disk; flags still win. On error the old
    /// values stay in force.
    pub fn reload(&mut self, dir: &Path) -> Result<(), Error> {
        *self = Effective::load(dir, self.flags.clone())?;
        Ok(())
    }
}

/// Overrides for a machine given over to Fallow (the demo, tests, a server): compute
/// while the user is active and whatever else runs.
pub fn dedicated() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("run_if_idle_minutes".to_string(), "0".to_string()),
        ("suspend_cpu_busy_percent".to_string(), "0".to_string()),
    ])
}

/// `<dir>/prefs.toml`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn read_file(file: &Path) -> Result<(Prefs, Vec<String>), Error> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Prefs::default(), Vec::new()));
        }
        Err(e) => return Err(Error::io(file, e)),
    };
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {}", file.display(), e.message())))?;
    let keys = table.keys().cloned().collect();
    let prefs = Prefs::from_table(table)
        .map_err(|e| Error::Config(format!("{} ({}): {e}", file.display(), FILE)))?;
    Ok((prefs, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_boincs_and_valid() {
        let p = Prefs::default();
        p.validate().expect("defaults valid");
        assert_eq!(p.run_if_idle_minutes, 3);
        assert_eq!(p.suspend_cpu_busy_percent, 25);
        assert_eq!((p.memory_in_use_percent, p.memory_idle_percent), (50, 90));
        assert!(!p.run_on_battery);
    }

    #[test]
    fn bad_values_name_the_key_and_change_nothing() {
        let mut p = Prefs::default();
        for (key, value, needle) in [
            (
                "cpu_limit_percent",
                "0",
                "cpu_limit_percent must be between 1 and 100",
            ),
            ("cpu_limit_percent", "fast", "expected a whole number"),
            ("memory_idle_percent", "101", "memory_idle_percent"),
            ("run_on_battery", "maybe", "true or false"),
            ("run_hours", "8-18", "HH:MM-HH:MM"),
            ("run_hours", "08:00-08:00", "start ≠ end"),
            ("colour", "blue", "unknown preference `colour`"),
        ] {
            let err = p.set(key, value).expect_err(key).to_string();
            assert!(err.contains(needle), "{key}={value}: {err}");
        }
        assert_eq!(p, Prefs::default());
    }

    #[test]
    fn windows_parse_print_and_wrap_midnight() {
        let day: Window = "08:00-18:00".parse().expect("day");
        assert!(day.contains(8 * 60) && day.contains(17 * 60 + 59));
        assert!(!day.contains(18 * 60) && !day.contains(7 * 60));
        let night: Window = "22:00-02:30".parse().expect("night");
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(2 * 60 + 29));
        assert!(!night.contains(2 * 60 + 30) && !night.contains(12 * 60));
        assert_eq!(night.to_string(), "22:00-02:30");
        let mut p = Prefs::default();
        p.set("run_hours", "08:00-18:00, 22:00-02:30").expect("set");
        assert_eq!(p.run_hours, vec![day, night]);
        assert_eq!(
            p.get("run_hours").expect("get"),
            r#"["08:00-18:00", "22:00-02:30"]"#
        );
        p.set("run_hours", "any").expect("clear");
        assert!(p.run_hours.is_empty());
    }

    #[test]
    fn the_file_then_flags_then_live_sets_decide_and_each_value_says_where_from() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join(FILE),
            "cpu_limit_percent = 60\nrun_hours = [\"09:00-17:00\"]\n",
        )
        .expect("write");
        let flags = BTreeMap::from([
            ("cpu_limit_percent".to_string(), "40".to_string()),
            ("max_cores".to_string(), "1".to_string()),
        ]);
        let mut eff = Effective::load(dir.path(), flags).expect("load");
        assert_eq!(eff.prefs.cpu_limit_percent, 40);
        assert_eq!(eff.prefs.max_cores, 1);
        let source = |eff: &Effective, key: &str| {
            eff.rows()
                .into_iter()
                .find(|r| r.key == key)
                .map(|r| r.source)
        };
        assert_eq!(source(&eff, "cpu_limit_percent"), Some(Source::Flag));
        assert_eq!(source(&eff, "run_hours"), Some(Source::File));
        assert_eq!(source(&eff, "run_if_idle_minutes"), Some(Source::Default));

        eff.set(dir.path(), "cpu_limit_percent", "70").expect("set");
        assert_eq!(eff.prefs.cpu_limit_percent, 70);
        assert_eq!(source(&eff, "cpu_limit_percent"), Some(Source::File));
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert!(text.contains("cpu_limit_percent = 70"), "{text}");
        assert!(text.contains("09:00-17:00"), "other keys kept: {text}");

        // An edit on disk is picked up by reload; flags still win for their keys.
        std::fs::write(
            dir.path().join(FILE),
            "max_cores = 3\nrun_on_battery = true\n",
        )
        .expect("write");
        eff.reload(dir.path()).expect("reload");
        assert!(eff.prefs.run_on_battery);
        assert_eq!(eff.prefs.max_cores, 1, "the flag still overrides the file");

        // A broken file is refused with its name and the key, and changes nothing.
        std::fs::write(dir.path().join(FILE), "memory_in_use_percent = 0\n").expect("write");
        let err = eff.reload(dir.path()).expect_err("invalid").to_string();
        assert!(
            err.contains("prefs.toml") && err.contains("memory_in_use_percent"),
            "{err}"
        );
        assert!(eff.prefs.run_on_battery);
        std::fs::write(dir.path().join(FILE), "colour = 1\n").expect("write");
        let err = eff.reload(dir.path()).expect_err("unknown").to_string();
        assert!(err.contains("colour"), "{err}");
    }
}
