"""Revocation is idempotent, certificateHold can be released (RFC 5280 §5.3.1),
against a real server: a second `estkit revoke` changes nothing (no new CRL, no
second audit row); a hold turns final when revoked again with another reason;
`estkit unrevoke` releases a hold, and only a hold, and the certificate then
authenticates again and leaves the CRL."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from policy_support import audit
from support import ServerProcess, basic, estkit, free_port, server, write_credentials

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

USER, PW = "hold-user", "hold-pw-1"

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("hold") / "d"
    with server(d, users={USER: PW}, init_args=("--crl-listen", f"127.0.0.1:{free_port()}")) as s:
        yield s


def _post(srv: ServerProcess, op: str, body: bytes, *, auth: bool, tls: tuple[Path, Path] | None = None
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(*(tls or ())), timeout=30)
    headers = {"Content-Type": c.CT_PKCS10, **({"Authorization": basic(USER, PW)} if auth else {})}
    conn.request("POST", f"/.well-known/est/{op}", body=base64.b64encode(body) + b"\n", headers=headers)
    r = conn.getresponse()
    status, data = r.status, r.read()
    conn.close()
    return status, data


def _enroll(srv: ServerProcess, tmp: Path, cn: str) -> tuple[tuple[Path, Path], x509.Certificate]:
    key = generate_key("ec:P-256")
    status, body = _post(srv, "simpleenroll", build_csr(key, cn=cn), auth=True)
    assert status == 200, body
    cert = parse_certs_only(base64.b64decode(body))[0]
    return write_credentials(tmp, cn, key, cert), cert


def _renew(srv: ServerProcess, tls: tuple[Path, Path], cn: str) -> int:
    return _post(srv, "simplereenroll", build_csr(generate_key("ec:P-256"), cn=cn), auth=False, tls=tls)[0]


def _crl(srv: ServerProcess) -> tuple[int, dict[int, str]]:
    lines = estkit("crl", "show", "--dir", str(srv.dir)).stdout.decode().splitlines()
    number = int(lines[0].split("CRL number ")[1].split(",")[0])
    return number, {int(s, 16): reason for s, _at, reason in (ln.split("\t") for ln in lines[1:])}


def test_revoking_twice_changes_nothing(srv: ServerProcess, tmp_path: Path) -> None:
    _tls, cert = _enroll(srv, tmp_path, "twice")
    serial = format(cert.serial_number, "x")
    estkit("revoke", serial, "--reason", "keyCompromise", "--dir", str(srv.dir))
    number, listed = _crl(srv)
    out = estkit("revoke", serial, "--reason", "superseded", "--dir", str(srv.dir))
    assert b"already revoked" in out.stdout + out.stderr and b"keyCompromise" in out.stdout + out.stderr, out
    assert _crl(srv) == (number, listed) and listed[cert.serial_number] == "keyCompromise"
    assert [e["event"] for e in audit(srv, "--serial", serial)].count("revoked") == 1


def test_hold_is_released_and_authenticates_again(srv: ServerProcess, tmp_path: Path) -> None:
    tls, cert = _enroll(srv, tmp_path, "held")
    serial = format(cert.serial_number, "x")
    estkit("revoke", serial, "--reason", "certificateHold", "--dir", str(srv.dir))
    assert _renew(srv, tls, "held") == 403
    assert _crl(srv)[1][cert.serial_number] == "certificateHold"
    number = _crl(srv)[0]
    out = estkit("unrevoke", serial, "--dir", str(srv.dir)).stdout.decode()
    assert "released" in out, out
    after, listed = _crl(srv)
    assert after > number and cert.serial_number not in listed
    assert _renew(srv, tls, "held") == 200
    assert [e["event"] for e in audit(srv, "--serial", serial)][:2] == ["unrevoked", "revoked"]


def test_hold_turns_final_and_is_then_not_released(srv: ServerProcess, tmp_path: Path) -> None:
    _tls, cert = _enroll(srv, tmp_path, "final")
    serial = format(cert.serial_number, "x")
    estkit("revoke", serial, "--reason", "certificateHold", "--dir", str(srv.dir))
    number = _crl(srv)[0]
    estkit("revoke", serial, "--reason", "keyCompromise", "--dir", str(srv.dir))
    after, listed = _crl(srv)
    assert after > number and listed[cert.serial_number] == "keyCompromise"
    p = estkit("unrevoke", serial, "--dir", str(srv.dir), check=False)
    assert p.returncode == 1 and b"certificateHold" in p.stderr, p
    assert _crl(srv)[1][cert.serial_number] == "keyCompromise"


def test_unrevoke_of_a_valid_certificate_is_refused(srv: ServerProcess, tmp_path: Path) -> None:
    _tls, cert = _enroll(srv, tmp_path, "valid")
    p = estkit("unrevoke", format(cert.serial_number, "x"), "--dir", str(srv.dir), check=False)
    assert p.returncode == 1 and b"not revoked" in p.stderr, p
