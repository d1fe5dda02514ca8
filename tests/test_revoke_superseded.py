"""`revoke_superseded = true` on a label (issue 13): a successful simplereenroll
revokes the renewed certificate with reason superseded once the new one is
recorded; without it the old certificate stays valid.  Against a real server."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import ServerProcess, basic, estkit, server

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "sup-user", "sup-pw-1"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    def configure(doc: dict[str, Any]) -> None:
        doc["labels"]["rotating"] = {**doc["labels"]["default"], "revoke_superseded": True}
    with server(tmp_path_factory.mktemp("sup") / "d", users={USER: PW}, configure=configure) as s:
        yield s


def _post(srv: ServerProcess, op: str, label: str, csr: bytes, tls: tuple[Path, Path] | None = None
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(*(tls or ())), timeout=30)
    headers = {"Content-Type": c.CT_PKCS10, **({} if tls else {"Authorization": basic(USER, PW)})}
    conn.request("POST", f"/.well-known/est/{label}/{op}", body=base64.b64encode(csr) + b"\n", headers=headers)
    r = conn.getresponse()
    status, body = r.status, r.read()
    conn.close()
    return status, body


def _write(tmp: Path, name: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    cp, kp = tmp / f"{name}.pem", tmp / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


def _status(srv: ServerProcess, cert: x509.Certificate) -> str:
    out = estkit("certs", "show", format(cert.serial_number, "x"), "--dir", str(srv.dir)).stdout.decode()
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("status:"))


@pytest.mark.parametrize("label,superseded", [("rotating", True), ("default", False)],
                         ids=["ok/revoked-as-superseded", "ok/kept-without-the-rule"])
def test_renewal(srv: ServerProcess, tmp_path: Path, label: str, superseded: bool) -> None:
    key = generate_key("ec:P-256")
    status, body = _post(srv, "simpleenroll", label, build_csr(key, cn=f"rot-{label}"))
    assert status == 200, body
    old = parse_certs_only(base64.b64decode(body))[0]
    tls = _write(tmp_path, "old", key, old)
    new_key = generate_key("ec:P-256")
    status, body = _post(srv, "simplereenroll", label, build_csr(new_key, cn=f"rot-{label}"), tls)
    assert status == 200, body
    new = parse_certs_only(base64.b64decode(body))[0]
    assert _status(srv, new) == "valid"
    if superseded:
        assert _status(srv, old) == "revoked superseded"
        # the old certificate no longer authenticates
        assert _post(srv, "simplereenroll", label, build_csr(key, cn=f"rot-{label}"), tls)[0] == 403
        crl = estkit("crl", "show", "--dir", str(srv.dir)).stdout.decode()
        assert f"{old.serial_number:x}\t" in crl and "superseded" in crl
    else:
        assert _status(srv, old) == "valid"
