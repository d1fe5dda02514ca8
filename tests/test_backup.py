"""`estkit backup` while a real server enrolls, `estkit restore` into a new
directory, and a server started on the restored directory serving the same CA
and the same certificate inventory (issue 13)."""

from __future__ import annotations

import base64
import http.client
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import ServerProcess, basic, estkit, server

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "bk-user", "bk-pw-1"


def _post(srv: ServerProcess, op: str, csr: bytes, tls: tuple[Path, Path] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(*(tls or ())), timeout=30)
    headers = {"Content-Type": c.CT_PKCS10, **({} if tls else {"Authorization": basic(USER, PW)})}
    conn.request("POST", f"/.well-known/est/{op}", body=base64.b64encode(csr) + b"\n", headers=headers)
    r = conn.getresponse()
    status, body = r.status, r.read()
    conn.close()
    return status, body


def _cacerts(srv: ServerProcess) -> bytes:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(), timeout=30)
    conn.request("GET", "/.well-known/est/cacerts")
    body = conn.getresponse().read()
    conn.close()
    return body


def _serials(directory: Path) -> set[str]:
    out = estkit("certs", "list", "--limit", "0", "--dir", str(directory)).stdout.decode().splitlines()[1:]
    return {line.split("\t")[0] for line in out}


def test_backup_under_load_restores_and_serves(tmp_path: Path) -> None:
    with server(tmp_path / "d", users={USER: PW}, workers=2) as srv:
        key = generate_key("ec:P-256")
        status, body = _post(srv, "simpleenroll", build_csr(key, cn="before-backup"))
        assert status == 200, body
        before = parse_certs_only(base64.b64decode(body))[0]
        cp, kp = tmp_path / "dev.pem", tmp_path / "dev.key"
        cp.write_bytes(before.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        stop, issued, errors = threading.Event(), [0], []

        def load() -> None:  # enrollments keep the store busy while the snapshot is taken
            while not stop.is_set():
                st, b = _post(srv, "simpleenroll", build_csr(generate_key("ec:P-256"), cn="during"))
                if st == 200:
                    issued[0] += 1
                else:
                    errors.append((st, b))
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            archive = tmp_path / "backup.tar.gz"
            out = estkit("backup", "--dir", str(srv.dir), "--out", str(archive)).stdout.decode()
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert issued[0] > 0 and not errors, (issued, errors)
        assert "wrote" in out and stat.S_IMODE(os.stat(archive).st_mode) == 0o600
        cacerts = _cacerts(srv)
        at_backup = _serials(srv.dir)

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "estkit.db" in names and not any(n.endswith(("-wal", "-shm", "-lock")) for n in names), names
    assert "ca/root.key" in names and "config.toml" in names

    restored = tmp_path / "restored"
    estkit("restore", str(archive), "--dir", str(restored))
    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(restored / "ca" / "root.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(restored / "ca.pem").st_mode) == 0o644
    # every certificate recorded when the snapshot was taken, and none that is not
    got = _serials(restored)
    hexa = format(before.serial_number, "X")
    assert ("0" + hexa if len(hexa) % 2 else hexa) in got and got <= at_backup and len(got) >= 2

    with server(restored) as srv2:
        assert _cacerts(srv2) == cacerts
        # a certificate issued before the backup still authenticates (the store knows it)
        status, body = _post(srv2, "simplereenroll", build_csr(generate_key("ec:P-256"), cn="before-backup"),
                             tls=(cp, kp))
        assert status == 200, body
        renewed = parse_certs_only(base64.b64decode(body))[0]
        assert renewed.issuer == before.issuer


@pytest.mark.parametrize("case", ["fail/not-empty", "fail/not-a-backup"])
def test_restore_refuses(tmp_path: Path, case: str) -> None:
    target = tmp_path / "t"
    target.mkdir()
    archive = tmp_path / "a.tar.gz"
    if case == "fail/not-empty":
        (target / "x").write_text("x")
        with tarfile.open(archive, "w:gz"):
            pass
    else:
        archive.write_bytes(b"not a tar")
    p = estkit("restore", str(archive), "--dir", str(target), check=False)
    assert p.returncode == 1 and (b"not empty" in p.stderr or b"not an estkit backup" in p.stderr), p
