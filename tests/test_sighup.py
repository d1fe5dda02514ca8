"""SIGHUP reloads the TLS certificate and key from disk (issue 13) in every
worker, without dropping a connection a client keeps open."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import ServerProcess, init_server_dir

from estkit.ca.create import make_tls_certificate
from estkit.ca.signer import load_signer
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


def _peer_serial(srv: ServerProcess) -> int:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            srv.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _get(s: ssl.SSLSocket) -> bytes:
    s.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head.split(b"\r\n")[0]


@pytest.mark.parametrize("workers", [1, 2], ids=["ok/one-worker", "ok/two-workers"])
def test_sighup_reloads_the_tls_certificate_keeping_open_connections(tmp_path: Path, workers: int) -> None:
    d = init_server_dir(tmp_path / "d")
    srv = ServerProcess(d, workers=workers).start()
    try:
        old = _peer_serial(srv)
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        kept = srv.ssl_context().wrap_socket(raw, server_hostname="localhost")
        assert _get(kept).endswith(b"200 OK")
        # a new certificate from the same CA, written where config.toml points
        ca = x509.load_pem_x509_certificate((d / "ca" / "root.pem").read_bytes())
        key = generate_key("ec:P-256")
        cert = make_tls_certificate(key, ca, load_signer(d / "ca" / "root.key", None), ["localhost", "127.0.0.1"])
        (d / "tls" / "server.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (d / "tls" / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                                               + ca.public_bytes(serialization.Encoding.PEM))
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _peer_serial(srv) != cert.serial_number:
            time.sleep(0.05)
        assert old != cert.serial_number
        # every new connection, whichever worker takes it, gets the new certificate
        assert {_peer_serial(srv) for _ in range(12)} == {cert.serial_number}
        assert _get(kept).endswith(b"200 OK")  # the connection kept open was not dropped
        kept.close()
        assert "reloaded the TLS certificate" in srv.log()
    finally:
        assert srv.stop() == 0, srv.log()
