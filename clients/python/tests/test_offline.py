"""What needs no cluster: the generated code matches the proto, manifests resolve as the
Rust side resolves them, and the key file is the one `fallow key` uses."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, fallow_bin

sys.path.insert(0, str(REPO / "clients" / "python"))
import generate  # noqa: E402
from fallow_client import ManifestError, Project, SubmitterKey, load_manifest  # noqa: E402
from fallow_client.project import sweep_units  # noqa: E402


def test_generated_code_matches_the_proto():
    stale = generate.differences()
    assert not stale, (
        f"{stale} differ from proto/proto/fallow.proto: run `python clients/python/generate.py` "
        "and commit the result"
    )


def test_a_sweep_splits_the_range_as_the_rust_side_does():
    units = sweep_units(0, 250, 100)
    assert [n for n, _ in units] == ["0", "100", "200"]
    assert units[2][1] == b"200 250\n"
    with pytest.raises(ManifestError, match="step"):
        sweep_units(0, 10, 0)


def test_manifest_defaults_and_dir_inputs(tmp_path):
    (tmp_path / "m.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "inputs").mkdir()
    for name, data in [("b", b"2"), ("a", b"1"), (".hidden", b"x")]:
        (tmp_path / "inputs" / name).write_bytes(data)
    manifest = tmp_path / "p.toml"
    manifest.write_text("name = 'p'\nwasm = 'm.wasm'\n[inputs]\ndir = 'inputs'\n")
    p = load_manifest(manifest)
    assert (p.replication, p.quorum, p.max_replicas, p.adaptive, p.error_bound) == (2, 2, 5, True, 0.02)
    assert p.units == [("a", b"1"), ("b", b"2")]
    assert p.limits.fuel == 10_000_000_000 and p.limits.max_checkpoint_bytes == 16 << 20
    assert p.manifest == manifest.read_text()


@pytest.mark.parametrize(
    "body, named",
    [
        ("[inputs]\ndir = 'inputs'\n[limits]\nfuel = 1e18\n", "[limits].fuel"),
        ("replicaton = 2\n[inputs]\ndir = 'inputs'\n", "replicaton"),
        ("[inputs]\n", "[inputs] needs"),
        ("[inputs]\nsweep = { from = 5, to = 1, step = 1 }\n", "from (5)"),
        ("[inputs]\ndir = 'nowhere'\n", "[inputs].dir"),
    ],
)
def test_bad_manifests_name_the_key(tmp_path, body, named):
    (tmp_path / "m.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a").write_bytes(b"1")
    manifest = tmp_path / "p.toml"
    manifest.write_text("name = 'p'\nwasm = 'm.wasm'\n" + body)
    with pytest.raises(ManifestError) as e:
        load_manifest(manifest)
    assert named in str(e.value) and "p.toml" in str(e.value)


def test_unit_names_must_be_file_names():
    for bad in ["", ".hidden", "a/b", "aggregate", "x y"]:
        with pytest.raises(ManifestError):
            Project(name="p", module=b"", units=[(bad, b"")])


def test_one_key_file_serves_both_tools(tmp_path):
    """A key made by Python is the key `fallow key` reads, and the other way round."""
    made_here = tmp_path / "python.key"
    key = SubmitterKey.load_or_create(made_here)
    assert (made_here.stat().st_mode & 0o777) == 0o600
    printed = subprocess.run(
        [str(fallow_bin()), "key", "--key", str(made_here)], capture_output=True, check=True
    ).stdout.decode().strip()
    assert printed == key.hex()
    made_there = tmp_path / "rust.key"
    printed = subprocess.run(
        [str(fallow_bin()), "key", "--key", str(made_there)], capture_output=True, check=True
    ).stdout.decode().strip()
    assert SubmitterKey.load_or_create(made_there).hex() == printed
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(Exception, match="not hex"):
        SubmitterKey.load_or_create(tmp_path / "bad.key")


def test_linspace_names_units_as_rust_prints_floats():
    from fallow_client.project import linspace_units, rust_float

    units = linspace_units(2.5, 4.0, 4)
    assert [n for n, _ in units] == ["2.5", "3.0", "3.5", "4.0"]
    assert units[1][1] == b"3.0\n"
    assert linspace_units(-1e-9, 7.0, 1) == [("-1e-9", b"-1e-9\n")]
    assert [rust_float(v) for v in (1e16, 1.5e-5, 0.0001, 123.25, -0.0)] == [
        "1e16", "1.5e-5", "0.0001", "123.25", "-0.0",
    ]
    for bad in ((0.0, 1.0, 0), (float("nan"), 1.0, 3), (1.0, 1.0, 3)):
        with pytest.raises(ManifestError):
            linspace_units(*bad)


def test_a_table_gives_one_unit_per_row_as_the_rust_side_does():
    from fallow_client.project import table_units

    data = b'name,r,x0\r\nlow,2.8,0.5\r\n\nhigh,"3.9",0.25\n'
    assert table_units(data) == [
        ("low", b"name,r,x0\nlow,2.8,0.5\n"),
        ("high", b'name,r,x0\nhigh,"3.9",0.25\n'),
    ]
    for bad, says in (
        (b"", "empty"),
        (b"name,r\n", "no rows"),
        (b"name,r\na,1\na,2\n", "also on line 2"),
        (b"name,r\n,1\n", "empty"),
        (b"name,r\na,1,9\n", "fields"),
        (b"name,r\n../etc,1\n", "line 2"),
    ):
        with pytest.raises(ManifestError, match=re.escape(says)):
            table_units(bad)
