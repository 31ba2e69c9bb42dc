"""A real Fallow cluster for the tests: one coordinator and two workers, as processes.

The binary comes from FALLOW_BIN (default: target/debug/fallow of this repository), the
guest modules (primes.wasm, sum.wasm) from FALLOW_WASM_DIR (default: the newest
target/debug/build/artifacts-*/out, where `cargo build`/`cargo test` of the workspace put
them). `scripts/test` sets both.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "clients" / "python"))


def fallow_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FALLOW_BIN", REPO / "target" / "debug" / "fallow"))
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no fallow binary at {path}: build it (`cargo build -p fallow`) or set FALLOW_BIN "
            "to its path",
            pytrace=False,
        )
    return path


def wasm_dir() -> pathlib.Path:
    given = os.environ.get("FALLOW_WASM_DIR")
    if given:
        candidates = [pathlib.Path(given)]
    else:
        candidates = sorted(
            (REPO / "target" / "debug" / "build").glob("artifacts-*/out"),
            key=lambda d: (d / "primes.wasm").stat().st_mtime if (d / "primes.wasm").exists() else 0,
            reverse=True,
        )
    for d in candidates:
        if (d / "primes.wasm").is_file() and (d / "sum.wasm").is_file():
            return d
    pytest.fail(
        "no guest modules (primes.wasm and sum.wasm): build the workspace (`cargo build "
        "--workspace`, which puts them in target/debug/build/artifacts-*/out) or set "
        "FALLOW_WASM_DIR to a directory holding them"
        + (f" (FALLOW_WASM_DIR={given} has none)" if given else ""),
        pytrace=False,
    )


@dataclasses.dataclass
class Cluster:
    bin: pathlib.Path
    dir: pathlib.Path
    wasm: pathlib.Path
    url: str
    token: str
    processes: list

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the Rust CLI against this coordinator."""
        done = subprocess.run(
            [str(self.bin), *args], capture_output=True, timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"fallow {' '.join(args)}: {done.stderr.decode()}\n{self.logs()}")
        return done

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in sorted(self.dir.glob("*.log"))
        )


@pytest.fixture(scope="session")
def cluster():
    binary = fallow_bin()
    wasm = wasm_dir()
    with tempfile.TemporaryDirectory(prefix="fallow-py-") as tmp:
        tmp = pathlib.Path(tmp)
        data = tmp / "coordinator"
        token = subprocess.run(
            [str(binary), "token", "create", "--name", "pytest", "--data", str(data)],
            capture_output=True, check=True, timeout=60,
        ).stdout.decode().strip()
        env = dict(os.environ, RUST_LOG="info")
        processes = []
        coordinator = subprocess.Popen(
            [str(binary), "coordinator", "--listen", "127.0.0.1:0", "--lease-seconds", "30", "--data", str(data)],
            stdout=subprocess.PIPE, stderr=open(tmp / "coordinator.log", "wb"), env=env,
        )
        processes.append(coordinator)
        try:
            first = coordinator.stdout.readline().decode().strip()
            if not first.startswith("listening on "):
                raise AssertionError(f"coordinator said {first!r}; log: {(tmp / 'coordinator.log').read_text()}")
            url = "http://" + first.removeprefix("listening on ")
            # Then the dashboard line: the coordinator is serving.
            while True:
                line = coordinator.stdout.readline().decode()
                if not line:
                    raise AssertionError(f"coordinator stopped; log: {(tmp / 'coordinator.log').read_text()}")
                if line.startswith("dashboard on "):
                    break
            for account in ("alice", "bob"):
                processes.append(subprocess.Popen(
                    [str(binary), "worker", "--coordinator", url, "--cores", "1", "--name", account,
                     "--account", account, "--dedicated", "--peer-listen", "127.0.0.1:0",
                     "--data", str(tmp / account)],
                    stdout=subprocess.DEVNULL, stderr=open(tmp / f"{account}.log", "wb"), env=env,
                ))
            yield Cluster(binary, tmp, wasm, url, token, processes)
        finally:
            for p in reversed(processes):
                p.terminate()
            for p in processes:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture
def key_path(tmp_path):
    """A fresh submitter key file (made on first use, by whichever tool comes first)."""
    return tmp_path / "submitter.key"


def wait_for(what, predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {timeout} s")
