"""Off loopback the coordinator speaks TLS with a self-signed certificate, pinned by the
`#sha256=HEX` of the URL it prints: the client trusts exactly that certificate."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, fallow_bin

sys.path.insert(0, str(REPO / "clients" / "python"))
from fallow_client import Client, ConnectionError  # noqa: E402


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("tls") / "coordinator"
    log = open(data.parent / "coordinator.log", "wb")
    coordinator = subprocess.Popen(
        [str(fallow_bin()), "coordinator", "--listen", "127.0.0.1:0", "--tls", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=log, env=dict(os.environ, RUST_LOG="info"),
    )
    try:
        url = None
        while True:
            line = coordinator.stdout.readline().decode()
            if not line:
                raise AssertionError(f"coordinator stopped: {(data.parent / 'coordinator.log').read_text()}")
            if line.startswith("coordinator url "):
                url = line.removeprefix("coordinator url ").strip()
            if line.startswith("dashboard on "):
                break
        assert url and url.startswith("https://") and "#sha256=" in url, url
        yield url
    finally:
        coordinator.terminate()
        coordinator.wait(timeout=15)


def test_the_pinned_url_connects(tls_url):
    with Client(tls_url) as fallow:
        assert fallow.status() == []


def test_another_pin_is_refused(tls_url):
    wrong = tls_url.split("#")[0] + "#sha256=" + "00" * 32
    with pytest.raises(ConnectionError, match="not the pinned one"):
        Client(wrong)


def test_plain_http_off_loopback_is_refused_unless_asked():
    with pytest.raises(ConnectionError, match="only for loopback"):
        Client("http://192.0.2.1:7070")
    Client("http://192.0.2.1:7070", insecure_plaintext=True).close()
