"""The container's entry point (deploy/docker/entrypoint.sh), run as the
Dockerfile runs it: a first start initialises the volume and serves, a second
start serves the same CA; SIGTERM stops it cleanly.  (The image itself cannot
be built here: no base image can be pulled.)"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from support import VENV_BIN, free_port

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

ENTRYPOINT = Path(__file__).parent.parent / "deploy" / "docker" / "entrypoint.sh"


def _start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ESTKIT_DIR": str(data), "ESTKIT_LISTEN": f"127.0.0.1:{port}",
           "ESTKIT_HOSTNAME": "est.example.test", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), "--workers", "1"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"entrypoint never listened:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(20)


def test_first_start_initialises_and_later_starts_serve_the_same_ca(tmp_path: Path) -> None:
    data, log = tmp_path / "volume", tmp_path / "log"
    port = free_port()
    proc = _start(data, port, log)
    try:
        ctx = ssl.create_default_context(cafile=str(data / "ca.pem"))
        with urllib.request.urlopen(f"https://localhost:{port}/.well-known/est/cacerts", context=ctx) as r:
            assert r.status == 200
        tls = x509.load_pem_x509_certificates((data / "tls" / "server.pem").read_bytes())[0]
        names = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "est.example.test" in names.get_values_for_type(x509.DNSName)
    finally:
        assert _stop(proc) == 0, log.read_text()
    assert "initialised" in log.read_text()
    ca = (data / "ca.pem").read_bytes()
    proc = _start(data, port, log)
    assert _stop(proc) == 0, log.read_text()
    assert (data / "ca.pem").read_bytes() == ca and log.read_text().count("initialised") == 1
