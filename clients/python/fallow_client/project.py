"""Projects: the manifest (TOML) resolved into a `Project`, and the submitter's signatures.

This mirrors the Rust side exactly, because the coordinator and every worker check the
signatures the client makes:

- `load_manifest` is `protocol::manifest::load`: the same keys and defaults (`replication`
  2, `quorum` = replication, `max_replicas` = replication + 3, `adaptive` true,
  `error_bound` 0.02, the `[limits]` defaults), `[inputs]` as `dir` (one unit per file,
  sorted by name, hidden files skipped) or `sweep` (unit `a` gets stdin `"a b\\n"`).
- `Project.sign` is `protocol::provenance`: one ed25519 signature per unit over

      "fallow/project-unit/v1\\0" ‖ terms ‖ BLAKE3(module) ‖ limits ‖ quorum
          ‖ len(name) ‖ name ‖ BLAKE3(input)
      terms = BLAKE3("fallow/project-terms/v1\\0" ‖ len(name) ‖ name ‖ BLAKE3(manifest)
          ‖ reducer digest ‖ replication ‖ max_replicas ‖ adaptive ‖ error bound ‖ units)

  with every integer little-endian (lengths and counts as u64).
- `SubmitterKey` reads and writes the key file `fallow submit --key` uses: 64 hex digits
  of the ed25519 seed, so one key serves both tools.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
import secrets
import struct
import tomllib
from typing import Optional, Sequence

import blake3
import nacl.signing

from .errors import ManifestError, KeyFileError

TERMS_CONTEXT = b"fallow/project-terms/v1\0"
UNIT_CONTEXT = b"fallow/project-unit/v1\0"

#: Default of `error_bound` (protocol::manifest::DEFAULT_ERROR_BOUND).
DEFAULT_ERROR_BOUND = 0.02
#: Most work units one project may have.
MAX_UNITS = 1_000_000
#: Largest input of one unit.
MAX_INPUT_BYTES = 16 << 20
#: Largest module (project or reducer).
MAX_MODULE_BYTES = 64 << 20
#: Unit names a results directory uses for its own files.
RESERVED_UNIT_NAMES = ("aggregate", "failed.txt", "results.jsonl")

_UNIT_NAME = re.compile(r"[A-Za-z0-9._\-+=,@]{1,200}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Sandbox limits per execution; the defaults are the manifest's (README, `[limits]`)."""

    fuel: int = 10_000_000_000
    memory_mb: int = 64
    wall_seconds: int = 60
    max_output_bytes: int = 1 << 20
    nan_canonicalization: bool = False
    max_checkpoint_bytes: int = 16 << 20

    def encode(self) -> bytes:
        """The limits as a unit signature covers them."""
        return struct.pack(
            "<QIIQBQ",
            self.fuel,
            self.memory_mb,
            self.wall_seconds,
            self.max_output_bytes,
            int(self.nan_canonicalization),
            self.max_checkpoint_bytes,
        )


@dataclasses.dataclass
class Project:
    """A project ready to submit: modules loaded, inputs resolved (Rust's `ProjectSpec`).

    Build one from a manifest with `load_manifest`, or directly::

        Project(name="squares", module=wasm_bytes,
                units=[("a", b"1\\n"), ("b", b"2\\n")])
    """

    name: str
    module: bytes
    units: Sequence[tuple[str, bytes]]
    reducer: Optional[bytes] = None
    replication: int = 2
    quorum: Optional[int] = None
    max_replicas: Optional[int] = None
    adaptive: bool = True
    error_bound: float = DEFAULT_ERROR_BOUND
    limits: Limits = dataclasses.field(default_factory=Limits)
    #: The manifest text, kept for the record (and covered by the signatures).
    manifest: str = ""

    def __post_init__(self) -> None:
        if self.quorum is None:
            self.quorum = self.replication
        if self.max_replicas is None:
            self.max_replicas = self.replication + 3
        self.units = [(str(n), bytes(i)) for n, i in self.units]
        for name, _ in self.units:
            check_unit_name(name)

    def terms(self) -> bytes:
        """The digest of the terms every unit signature covers besides the unit itself."""
        h = blake3.blake3(TERMS_CONTEXT)
        name = self.name.encode()
        h.update(struct.pack("<Q", len(name)))
        h.update(name)
        h.update(blake3.blake3(self.manifest.encode()).digest())
        if self.reducer is not None:
            h.update(b"\x01")
            h.update(blake3.blake3(self.reducer).digest())
        else:
            h.update(b"\x00")
        h.update(struct.pack("<II", self.replication, self.max_replicas))
        h.update(bytes([int(self.adaptive)]))
        h.update(struct.pack("<d", self.error_bound))
        h.update(struct.pack("<Q", len(self.units)))
        return h.digest()

    def unit_message(self, terms: bytes, module_digest: bytes, i: int) -> bytes:
        """What unit `i`'s signature signs (see the module doc)."""
        name, data = self.units[i]
        encoded = name.encode()
        return b"".join(
            (
                UNIT_CONTEXT,
                terms,
                module_digest,
                self.limits.encode(),
                struct.pack("<I", self.quorum),
                struct.pack("<Q", len(encoded)),
                encoded,
                blake3.blake3(data).digest(),
            )
        )

    def sign(self, key: "SubmitterKey") -> list[bytes]:
        """One 64-byte signature per unit, in unit order."""
        terms = self.terms()
        module = blake3.blake3(self.module).digest()
        return [key.sign(self.unit_message(terms, module, i)) for i in range(len(self.units))]


class SubmitterKey:
    """A submitter's ed25519 key, kept in the same file `fallow submit --key` uses."""

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise KeyFileError(f"a submitter key is 32 bytes, got {len(seed)}")
        self._signing = nacl.signing.SigningKey(seed)

    @classmethod
    def load_or_create(cls, path: "os.PathLike[str] | str | None" = None) -> "SubmitterKey":
        """The key at `path` (default: `$FALLOW_SUBMITTER_KEY`, else the file `fallow key`
        uses), made on first use (mode 0600). A file that is not a key is an error, never
        replaced."""
        path = pathlib.Path(path) if path is not None else default_key_path()
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return cls._create(path)
        except OSError as e:
            raise KeyFileError(f"submitter key {path}: {e}") from e
        try:
            seed = bytes.fromhex(text.decode().strip())
        except (UnicodeDecodeError, ValueError) as e:
            raise KeyFileError(f"submitter key {path}: not hex: {e}") from e
        if len(seed) != 32:
            raise KeyFileError(f"submitter key {path}: expected 32 bytes of hex (64 digits)")
        return cls(seed)

    @classmethod
    def _create(cls, path: pathlib.Path) -> "SubmitterKey":
        seed = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        # As the Rust side: a temporary file then a hard link that fails if the key
        # appeared meanwhile, so two processes creating it at once end up with one key.
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls.load_or_create(path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(seed)

    @property
    def public(self) -> bytes:
        """The 32-byte public key (what `fallow key` prints in hex)."""
        return bytes(self._signing.verify_key)

    def hex(self) -> str:
        """The public key in lowercase hex, as `fallow key` and `Status.submitter` show it."""
        return self.public.hex()

    def sign(self, message: bytes) -> bytes:
        """A plain ed25519 signature (64 bytes) over `message`."""
        return self._signing.sign(message).signature


def default_key_path() -> pathlib.Path:
    """`$FALLOW_SUBMITTER_KEY`, else `$XDG_CONFIG_HOME/fallow/submitter.key`, else
    `~/.config/fallow/submitter.key`: where `fallow submit` looks."""
    if os.environ.get("FALLOW_SUBMITTER_KEY"):
        return pathlib.Path(os.environ["FALLOW_SUBMITTER_KEY"])
    config = os.environ.get("XDG_CONFIG_HOME") or (
        os.path.join(os.environ["HOME"], ".config") if os.environ.get("HOME") else None
    )
    if not config:
        raise KeyFileError(
            "no home directory to keep the submitter key in: pass submitter_key=PATH "
            "or set FALLOW_SUBMITTER_KEY"
        )
    return pathlib.Path(config) / "fallow" / "submitter.key"


def check_unit_name(name: str) -> None:
    """Unit names become file names in `fallow results`, so they must be safe ones."""
    if not _UNIT_NAME.fullmatch(name) or name.startswith("."):
        raise ManifestError(
            f"[inputs]: unit name {name!r} is not usable as a file name: use 1 to 200 "
            "characters of A-Z a-z 0-9 . _ - + = , @, not starting with '.'"
        )
    if name in RESERVED_UNIT_NAMES:
        raise ManifestError(f"[inputs]: unit name {name!r} is reserved for the results directory")


def sweep_units(start: int, stop: int, step: int) -> list[tuple[str, bytes]]:
    """`sweep = { from, to, step }`: unit `a` gets stdin `"a b\\n"`, `b = min(a + step, to)`."""
    if step <= 0:
        raise ManifestError(f"[inputs].sweep.step must be > 0 (got {step})")
    if start >= stop:
        raise ManifestError(f"[inputs].sweep: from ({start}) must be below to ({stop})")
    if (stop - start + step - 1) // step > MAX_UNITS:
        raise ManifestError(f"[inputs].sweep makes more than {MAX_UNITS} units: raise step")
    units = []
    a = start
    while a < stop:
        b = min(a + step, stop)
        units.append((str(a), f"{a} {b}\n".encode()))
        a = b
    return units


def rust_float(v: float) -> str:
    """`v` as Rust's `{:?}` prints an f64 (how `linspace` names units): the shortest text
    that reads back as `v`, like Python's repr, but `1e-5`/`1e16` where repr writes
    `1e-05`/`1e+16` (both switch to an exponent below 1e-4 and from 1e16)."""
    text = repr(v)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def linspace_units(start: float, stop: float, count: int) -> list[tuple[str, bytes]]:
    """`linspace = { from, to, count }`: both ends included, each number one unit named by
    its text (as `protocol::manifest::linspace_units`)."""
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise ManifestError(f"[inputs].linspace: from and to must be finite numbers (got {start} and {stop})")
    if not 1 <= count <= MAX_UNITS:
        raise ManifestError(f"[inputs].linspace.count must be from 1 to {MAX_UNITS} (got {count})")
    last = float(count - 1)
    units: list[tuple[str, bytes]] = []
    for i in range(count):
        if i == 0:
            v = start
        elif i == count - 1:
            v = stop
        else:
            v = start + (stop - start) * (i / last)
        name = rust_float(v)
        if units and units[-1][0] == name:
            raise ManifestError(
                f"[inputs].linspace: {count} values between {start} and {stop} repeat ({name} twice): "
                "lower count or widen the range"
            )
        units.append((name, f"{name}\n".encode()))
    return units


def table_units(data: bytes) -> list[tuple[str, bytes]]:
    """`table = "params.csv"`: one unit per data row, named by its first column; its stdin
    is the header line and the row as written (as `protocol::manifest::table_units`)."""
    records = _csv_records(data)
    if not records or not any(f.strip() for f in _fields(records[0][1])):
        raise ManifestError("[inputs].table: the file is empty; its first line must be a header (column names)")
    header = records[0][1]
    width = len(_fields(header))
    units: list[tuple[str, bytes]] = []
    seen: dict[str, int] = {}
    for line, raw in records[1:]:
        fields = _fields(raw)
        if len(fields) != width:
            raise ManifestError(
                f"[inputs].table: line {line}: found record with {len(fields)} fields, "
                f"but the header has {width} fields"
            )
        name = fields[0].strip()
        if not name:
            raise ManifestError(f"[inputs].table: line {line}: the first column (the unit's name) is empty")
        try:
            check_unit_name(name)
        except ManifestError as e:
            raise ManifestError(f"[inputs].table: line {line}: {e}") from e
        if name in seen:
            raise ManifestError(
                f"[inputs].table: line {line}: unit {name!r} is also on line {seen[name]}; names must be unique"
            )
        seen[name] = line
        units.append((name, header + b"\n" + raw + b"\n"))
        if len(units) > MAX_UNITS:
            raise ManifestError(f"[inputs].table has more than {MAX_UNITS} rows")
    if not units:
        raise ManifestError("[inputs].table has a header but no rows: one unit per row")
    return units


def _csv_records(data: bytes) -> list[tuple[int, bytes]]:
    """The raw records of a CSV file with the line each starts on: a record ends at a line
    break outside quotes; blank lines are skipped; the line break is not kept."""
    records: list[tuple[int, bytes]] = []
    line, start, quoted = 1, 0, False
    record_line = 1
    for i in range(len(data) + 1):
        c = data[i : i + 1]
        if c == b'"':
            quoted = not quoted
        elif c in (b"\n", b"") and not quoted:
            raw = data[start:i]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if raw:
                records.append((record_line, raw))
            start = i + 1
            record_line = line + 1
        if c == b"\n":
            line += 1
    return records


def _fields(raw: bytes) -> list[str]:
    try:
        return next(csv.reader([raw.decode()]))
    except (UnicodeDecodeError, csv.Error, StopIteration) as e:
        raise ManifestError(f"[inputs].table: {e}") from e


_TOP_KEYS = {
    "name", "wasm", "replication", "quorum", "max_replicas", "adaptive", "error_bound",
    "limits", "inputs", "reduce",
}
_LIMIT_KEYS = {f.name for f in dataclasses.fields(Limits)}


def load_manifest(path: "os.PathLike[str] | str") -> Project:
    """Reads the manifest at `path`, its modules and its inputs, as `fallow submit` does.
    Paths in it are relative to the manifest. Raises `ManifestError` naming the key."""
    path = pathlib.Path(path)

    def fail(message: str) -> ManifestError:
        return ManifestError(f"manifest {path}: {message}")

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read it: {e}") from e
    try:
        m = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise fail(str(e)) from e
    unknown = set(m) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key {sorted(unknown)[0]!r}; expected one of {sorted(_TOP_KEYS)}")
    for key in ("name", "wasm", "inputs"):
        if key not in m:
            raise fail(f"missing key {key!r}")
    base = path.parent

    def module(key: str, rel: object) -> bytes:
        if not isinstance(rel, str):
            raise fail(f"{key} must be a path string")
        file = base / rel
        try:
            data = file.read_bytes()
        except OSError as e:
            raise fail(f"{key} = {rel!r}: cannot read {file}: {e} (paths are relative to the manifest)") from e
        if len(data) > MAX_MODULE_BYTES:
            raise fail(f"{key}: {file} is {len(data)} bytes, over the {MAX_MODULE_BYTES}-byte limit")
        return data

    def whole(key: str, value: object) -> int:
        # TOML floats and booleans are not limits (`fuel = 1e18` is a float).
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"{key} must be a whole number written as an integer (got {value!r})")
        return value

    limits_table = m.get("limits", {})
    if not isinstance(limits_table, dict):
        raise fail("[limits] must be a table")
    unknown = set(limits_table) - _LIMIT_KEYS
    if unknown:
        raise fail(f"[limits]: unknown key {sorted(unknown)[0]!r}")
    limits = Limits(
        **{
            k: (bool(v) if k == "nan_canonicalization" else whole(f"[limits].{k}", v))
            for k, v in limits_table.items()
        }
    )

    inputs = m["inputs"]
    sources = ("dir", "sweep", "linspace", "table")
    if not isinstance(inputs, dict) or set(inputs) - set(sources):
        raise fail("[inputs] takes one of `dir`, `sweep`, `linspace` or `table`")
    given = [k for k in sources if k in inputs]
    if len(given) > 1:
        raise fail(f"[inputs] has {' and '.join(f'`{k}`' for k in given)}; keep exactly one")
    if "dir" in inputs:
        units = _dir_units(base / inputs["dir"], fail)
    elif "sweep" in inputs:
        s = inputs["sweep"]
        if not isinstance(s, dict) or set(s) != {"from", "to", "step"}:
            raise fail("[inputs].sweep needs exactly `from`, `to` and `step`")
        try:
            units = sweep_units(s["from"], s["to"], s["step"])
        except ManifestError as e:
            raise fail(str(e)) from e
    elif "linspace" in inputs:
        s = inputs["linspace"]
        if not isinstance(s, dict) or set(s) != {"from", "to", "count"}:
            raise fail("[inputs].linspace needs exactly `from`, `to` and `count`")
        try:
            units = linspace_units(float(s["from"]), float(s["to"]), whole("[inputs].linspace.count", s["count"]))
        except (ManifestError, TypeError, ValueError) as e:
            raise fail(str(e)) from e
    elif "table" in inputs:
        rel = inputs["table"]
        try:
            data = (base / rel).read_bytes()
        except (OSError, TypeError) as e:
            raise fail(f"[inputs].table = {rel!r}: cannot read it: {e} (paths are relative to the manifest)") from e
        try:
            units = table_units(data)
        except ManifestError as e:
            raise fail(str(e)) from e
    else:
        raise fail(
            '[inputs] needs one of `dir = "inputs"` (one unit per file), '
            "`sweep = { from = 0, to = 100, step = 10 }`, "
            "`linspace = { from = 0.0, to = 1.0, count = 11 }` or "
            '`table = "params.csv"` (one unit per row)'
        )
    if not units:
        raise fail("[inputs] produced no work units")

    reducer = None
    if "reduce" in m:
        r = m["reduce"]
        if not isinstance(r, dict) or set(r) != {"wasm"}:
            raise fail("[reduce] takes exactly `wasm`")
        reducer = module("[reduce].wasm", r["wasm"])

    replication = whole("replication", m.get("replication", 2))
    try:
        return Project(
            name=m["name"],
            module=module("wasm", m["wasm"]),
            units=units,
            reducer=reducer,
            replication=replication,
            quorum=whole("quorum", m["quorum"]) if "quorum" in m else None,
            max_replicas=whole("max_replicas", m["max_replicas"]) if "max_replicas" in m else None,
            adaptive=bool(m.get("adaptive", True)),
            error_bound=float(m.get("error_bound", DEFAULT_ERROR_BOUND)),
            limits=limits,
            manifest=text,
        )
    except ManifestError as e:
        raise fail(str(e)) from e


def _dir_units(directory: pathlib.Path, fail) -> list[tuple[str, bytes]]:
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name.encode())
    except OSError as e:
        raise fail(f"[inputs].dir: cannot read {directory}: {e}") from e
    units = []
    for entry in entries:
        # Hidden files (.DS_Store, editor swap files) are not work units.
        if entry.name.startswith("."):
            continue
        if not entry.is_file():
            raise fail(
                f"[inputs].dir: {entry} is not a regular file; one unit per file, no subdirectories"
            )
        try:
            check_unit_name(entry.name)
        except ManifestError as e:
            raise fail(str(e)) from e
        units.append((entry.name, entry.read_bytes()))
    return units
