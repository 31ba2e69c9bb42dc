"""The client against a real coordinator and real workers: a project signed here runs on
the workers (so the signatures are exactly right), its results equal what `fallow results`
writes, and a bad token is refused with a clear exception."""

from __future__ import annotations

import pathlib
import shutil
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "clients" / "python"))
from fallow_client import (  # noqa: E402
    Aggregate,
    AuthenticationError,
    Client,
    Failed,
    NotFound,
    Project,
    ProjectRefused,
    SubmitterKey,
    Verified,
)

SWEEP = (0, 30_000, 3_000)


def primes_below(n: int) -> list[bool]:
    sieve = [True] * n
    sieve[:2] = [False, False][:n]
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = [False] * len(sieve[i * i :: i])
    return sieve


def write_manifest(cluster, directory: pathlib.Path) -> pathlib.Path:
    """A primes sweep with the sum reducer, as tasks/examples/primes.toml but smaller."""
    shutil.copy(cluster.wasm / "primes.wasm", directory / "primes.wasm")
    shutil.copy(cluster.wasm / "sum.wasm", directory / "sum.wasm")
    start, stop, step = SWEEP
    manifest = directory / "primes.toml"
    manifest.write_text(
        f"""# Counts the primes below {stop} in {stop // step} units, each run on two workers.
name = "primes-py"
wasm = "primes.wasm"
replication = 2

[limits]
fuel = 10_000_000_000
max_output_bytes = 1024

[inputs]
sweep = {{ from = {start}, to = {stop}, step = {step} }}

[reduce]
wasm = "sum.wasm"
"""
    )
    return manifest


def test_a_manifest_submitted_from_python_runs_and_its_results_match_the_cli(cluster, key_path, tmp_path):
    manifest = write_manifest(cluster, tmp_path)
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        project = fallow.submit(manifest)
        status = fallow.wait(project, timeout=300)
        assert status.outcome == "done", (status, cluster.logs())
        assert status.submitter == SubmitterKey.load_or_create(key_path).hex()
        start, stop, step = SWEEP
        assert status.total == status.verified == (stop - start) // step

        sieve = primes_below(stop)
        outputs = dict(fallow.results(project))
        assert outputs == {
            str(a): f"{sum(sieve[a:a + step])}\n".encode() for a in range(start, stop, step)
        }
        assert fallow.aggregate(project) == f"{sum(sieve)}\n".encode()
        detailed = list(fallow.results_detailed(project))
        verified = [i for i in detailed if isinstance(i, Verified)]
        assert all(len(v.signers) >= 1 and len(v.digest) == 32 and v.fuel > 0 for v in verified)
        assert not [i for i in detailed if isinstance(i, Failed)]

        # The Rust CLI writes the same bytes.
        out = tmp_path / "out"
        cluster.cli("results", str(project), "--out", str(out), "--coordinator", cluster.url)
        for unit, output in outputs.items():
            assert (out / unit).read_bytes() == output
        assert (out / "aggregate").read_bytes() == fallow.aggregate(project)
        assert (out / "failed.txt").read_bytes() == b""


def test_a_project_built_in_python_is_signed_so_workers_run_it(cluster, key_path):
    """No manifest file: units and limits straight from Python, a dir-style naming."""
    module = (cluster.wasm / "primes.wasm").read_bytes()
    project = Project(
        name="primes from python",
        module=module,
        units=[(f"block-{i:02}", f"{i * 1000} {(i + 1) * 1000}\n".encode()) for i in range(6)],
        replication=2,
        manifest="# built in Python\n",
    )
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        id = fallow.submit(project)
        status = fallow.wait(id, timeout=300)
        assert status.outcome == "done", (status, cluster.logs())
        sieve = primes_below(6000)
        assert list(fallow.results(id)) == [
            (f"block-{i:02}", f"{sum(sieve[i * 1000:(i + 1) * 1000])}\n".encode()) for i in range(6)
        ]
        assert fallow.aggregate(id) is None
        mine = [s for s in fallow.status() if s.id == id]
        assert mine and mine[0].name == "primes from python"


def test_a_bad_token_is_refused_with_a_clear_exception(cluster, key_path, tmp_path):
    manifest = write_manifest(cluster, tmp_path)
    with Client(cluster.url, token="not-a-token", submitter_key=key_path) as fallow:
        with pytest.raises(AuthenticationError, match="not valid on this coordinator"):
            fallow.submit(manifest)
    with Client(cluster.url, token="", submitter_key=key_path) as fallow:
        with pytest.raises(AuthenticationError, match="needs a token"):
            fallow.submit(manifest)


def test_a_wrong_signature_is_refused(cluster, key_path):
    class Forged(Project):
        def terms(self) -> bytes:
            return bytes(32)  # not what the coordinator computes from the request

    forged = Forged(name="forged", module=(cluster.wasm / "primes.wasm").read_bytes(), units=[("a", b"0 10\n")])
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        with pytest.raises(ProjectRefused, match="signature"):
            fallow.submit(forged)


def test_one_key_signs_for_both_tools_and_once_finds_the_duplicate(cluster, key_path, tmp_path):
    manifest = write_manifest(cluster, tmp_path)
    submitted = cluster.cli(
        "submit", str(manifest), "--coordinator", cluster.url, "--token", cluster.token, "--key", str(key_path)
    )
    rust_id = int(submitted.stdout.decode().split()[-1])
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        again = fallow.submit_detailed(manifest, once=True)
        # Same module, inputs and terms (manifest text included) under the same key.
        assert again.reused and again.id <= rust_id
        assert fallow.project(rust_id).submitter == fallow.submitter_key.hex()


def test_an_unknown_project_is_not_found(cluster):
    with Client(cluster.url) as fallow:
        with pytest.raises(NotFound):
            fallow.project(987_654)


def test_results_followed_from_submit_arrive_as_units_verify_and_end_with_the_aggregate(cluster, key_path):
    """`follow=True` right after submitting: the iterator waits for the units instead of
    ending with what is verified now, and ends by itself with the aggregate."""
    start, stop, step = 0, 40_000, 10_000
    project = Project(
        name="primes followed",
        module=(cluster.wasm / "primes.wasm").read_bytes(),
        units=[(str(a), f"{a} {a + step}\n".encode()) for a in range(start, stop, step)],
        replication=2,
        reducer=(cluster.wasm / "sum.wasm").read_bytes(),
    )
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        id = fallow.submit(project)
        items = list(fallow.results_detailed(id, follow=True))
        verified = {i.unit: i for i in items if isinstance(i, Verified)}
        sieve = primes_below(stop)
        assert {u: v.output for u, v in verified.items()} == {
            str(a): f"{sum(sieve[a:a + step])}\n".encode() for a in range(start, stop, step)
        }, cluster.logs()
        assert all(v.verified_ms > 0 for v in verified.values())
        assert isinstance(items[-1], Aggregate) and items[-1].output == f"{sum(sieve)}\n".encode()
        assert fallow.project(id).outcome == "done"


def test_the_submitter_pauses_resumes_and_cancels_and_nobody_else_may(cluster, key_path, tmp_path):
    """Control calls are signed with the submitter key: another key is refused, naming the
    project's; pause stops leasing, resume finishes it, cancel is final."""
    manifest = write_manifest(cluster, tmp_path)
    with Client(cluster.url, token=cluster.token, submitter_key=key_path) as fallow:
        id = fallow.submit(manifest)
        paused = fallow.pause(id)
        assert paused.state == "paused"
        assert fallow.project(id).outcome in ("paused", "done")
        with Client(cluster.url, submitter_key=tmp_path / "stranger.key") as stranger:
            with pytest.raises(ProjectRefused, match="only that key may control it"):
                stranger.resume(id)
        assert fallow.resume(id).state == "active"
        assert fallow.wait(id, timeout=300).outcome == "done"
        cancelled = fallow.cancel(id)
        assert cancelled.state == "cancelled"
        assert fallow.project(id).outcome == "cancelled"
        with pytest.raises(ProjectRefused, match="final"):
            fallow.pause(id)
