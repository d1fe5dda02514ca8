"""`estkit certs list` and `estkit certs show` against a real server's store:
a header row, serials exactly as `openssl x509 -serial` prints them, filters by
CN, SAN, label, status, expiry and requester, JSON, and one certificate's
details and PEM."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support import ServerProcess, basic, estkit, require_tool, run, server

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

USERS = {"inv-a": "pw-a", "inv-b": "pw-b"}

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@dataclass
class Env:
    srv: ServerProcess
    certs: dict[str, x509.Certificate]


def _enroll(srv: ServerProcess, user: str, cn: str, dns: list[str], label: str | None) -> x509.Certificate:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(), timeout=30)
    path = f"/.well-known/est/{label}/simpleenroll" if label else "/.well-known/est/simpleenroll"
    conn.request("POST", path, body=base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn, dns=dns)),
                 headers={"Content-Type": c.CT_PKCS10, "Authorization": basic(user, USERS[user])})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 200, body
    return parse_certs_only(base64.b64decode(body))[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    def configure(doc: dict[str, Any]) -> None:
        doc["labels"]["short"] = {**doc["labels"]["default"], "validity_days": 10}
    with server(tmp_path_factory.mktemp("inv") / "d", users=USERS, configure=configure) as srv:
        certs = {"gw1": _enroll(srv, "inv-a", "gw1", ["gw1.example.com"], None),
                 "gw2": _enroll(srv, "inv-a", "gw2", ["gw2.routers.example.com"], "short"),
                 "printer": _enroll(srv, "inv-b", "printer", ["printer.example.com"], None)}
        estkit("revoke", format(certs["printer"].serial_number, "x"), "--reason", "keyCompromise",
               "--dir", str(srv.dir))
        yield Env(srv, certs)


def _list(env: Env, *args: str) -> list[str]:
    out = estkit("certs", "list", "--dir", str(env.srv.dir), *args).stdout.decode().splitlines()
    assert out[0].split("\t") == ["SERIAL", "SUBJECT", "SANS", "NOT_AFTER", "LABEL", "REQUESTER", "STATUS"], out
    return out[1:]


def _subjects(rows: list[str]) -> set[str]:
    return {r.split("\t")[1] for r in rows}


def test_serials_are_printed_as_openssl_prints_them(env: Env, tmp_path: Path) -> None:
    require_tool("openssl")
    rows = _list(env)
    for name, cert in env.certs.items():
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(cert.public_bytes(Encoding.PEM))
        serial = run(["openssl", "x509", "-in", str(pem), "-noout", "-serial"]).stdout.decode().strip()
        assert serial.startswith("serial=")
        assert any(r.split("\t")[0] == serial[len("serial="):] for r in rows), (serial, rows)


@pytest.mark.parametrize("args,expect", [
    # CN=localhost: the TLS server certificate `estkit init` issued and recorded
    pytest.param((), {"CN=gw1", "CN=gw2", "CN=printer", "CN=localhost"}, id="ok/all"),
    pytest.param(("--cn", "gw*"), {"CN=gw1", "CN=gw2"}, id="ok/cn-glob"),
    pytest.param(("--san", "*.routers.example.com"), {"CN=gw2"}, id="ok/san-glob"),
    pytest.param(("--label", "short"), {"CN=gw2"}, id="ok/label"),
    pytest.param(("--status", "revoked"), {"CN=printer"}, id="ok/revoked"),
    pytest.param(("--revoked",), {"CN=printer"}, id="ok/revoked-flag"),
    pytest.param(("--status", "valid"), {"CN=gw1", "CN=gw2", "CN=localhost"}, id="ok/valid"),
    pytest.param(("--status", "expired"), set(), id="ok/expired-none"),
    pytest.param(("--expiring-within", "30d"), {"CN=gw2"}, id="ok/expiring"),
    pytest.param(("--requester", "user:inv-b"), {"CN=printer"}, id="ok/requester"),
    pytest.param(("--cn", "gw*", "--label", "default"), {"CN=gw1"}, id="ok/combined"),
    pytest.param(("--cn", "nobody"), set(), id="ok/no-match"),
])
def test_filters(env: Env, args: tuple[str, ...], expect: set[str]) -> None:
    assert _subjects(_list(env, *args)) == expect


def test_json(env: Env) -> None:
    out = estkit("certs", "list", "--dir", str(env.srv.dir), "--json", "--cn", "printer").stdout.decode()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    cert = env.certs["printer"]
    hexa = format(cert.serial_number, "X")
    assert row["serial"] == ("0" + hexa if len(hexa) % 2 else hexa)  # whole bytes, as openssl prints
    assert row["subject"] == "CN=printer" and row["sans"] == ["DNS:printer.example.com"]
    assert row["status"] == "revoked" and row["revocation_reason"] == "keyCompromise"
    assert row["requester"] == "user:inv-b" and row["label"] == "default"


def test_fail_bad_filters(env: Env) -> None:
    for args, what in (("--status", "lost"), "--status"), (("--expiring-within", "soon"), "--expiring-within"):
        p = estkit("certs", "list", "--dir", str(env.srv.dir), *args, check=False)
        assert p.returncode == 2 and what.encode() in p.stderr, p


def test_show_and_pem(env: Env, tmp_path: Path) -> None:
    cert = env.certs["printer"]
    serial = format(cert.serial_number, "x")
    out = estkit("certs", "show", serial, "--dir", str(env.srv.dir)).stdout.decode()
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["subject"].strip() == "CN=printer" and fields["status"].strip().startswith("revoked")
    assert "keyCompromise" in fields["status"] and fields["requester"].strip() == "user:inv-b"
    assert fields["label"].strip() == "default" and fields["sans"].strip() == "DNS:printer.example.com"
    pem = estkit("certs", "show", serial, "--pem", "--dir", str(env.srv.dir)).stdout
    assert x509.load_pem_x509_certificate(pem) == cert
    p = estkit("certs", "show", "abcdef", "--dir", str(env.srv.dir), check=False)
    assert p.returncode == 1 and b"no certificate" in p.stderr, p
