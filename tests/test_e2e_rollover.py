"""Root key rollover (RFC 7030 §4.1.3, RFC 4210 §4.4) end to end."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from support import ESTKIT, basic, https, require_tool, run, server

from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

PKCS10 = {"Content-Type": "application/pkcs10"}


def test_ok_rollover_keeps_old_and_new_trust_working(tmp_path: Path) -> None:
    require_tool("openssl")
    d = tmp_path / "data"
    key = generate_key("ec:P-256")
    with server(d, users={"u": "p"}) as srv:
        r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(key, cn="old-device")),
                  headers={**PKCS10, "Authorization": basic("u", "p")})
        old_device = parse_certs_only(decode_b64(r.body))[0]
    old_root_pem = tmp_path / "old-root.pem"
    old_root_pem.write_bytes(srv.ca_pem.read_bytes())
    (tmp_path / "dev.pem").write_bytes(old_device.public_bytes(Encoding.PEM))
    (tmp_path / "dev.key").write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    out = run([ESTKIT, "ca", "rollover", "--dir", str(d)]).stdout.decode()
    assert "G2" in out
    new_root = x509.load_pem_x509_certificate((d / "ca" / "root-2.pem").read_bytes())
    old_root = x509.load_pem_x509_certificate(old_root_pem.read_bytes())
    with server(d) as srv:
        # A client that still trusts only the old root authenticates the server through NewWithOld.
        old_ctx = ssl.create_default_context(cafile=str(old_root_pem))
        published = parse_certs_only(decode_b64(https(srv, "GET", "cacerts", ctx=old_ctx).body))
        assert len(published) == 4
        kinds = {(c.subject == c.issuer, c.public_key() == new_root.public_key()) for c in published}
        assert kinds == {(True, True), (True, False), (False, True), (False, False)}  # NwN, OwO, NwO, OwN
        # New certificates come from the new root ...
        r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(generate_key("ec:P-256"), cn="new-device")),
                  headers={**PKCS10, "Authorization": basic("u", "p")}, ctx=old_ctx)
        new_device = parse_certs_only(decode_b64(r.body))[0]
        assert new_device.issuer == new_root.subject
        (tmp_path / "new.pem").write_bytes(new_device.public_bytes(Encoding.PEM))
        (tmp_path / "published.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in published))
        # ... and verify both for a relying party with only the new root and one with only the old root.
        (tmp_path / "new-root.pem").write_bytes(new_root.public_bytes(Encoding.PEM))
        for anchor in ("new-root.pem", "old-root.pem"):
            v = run(["openssl", "verify", "-CAfile", str(tmp_path / anchor), "-untrusted",
                     str(tmp_path / "published.pem"), str(tmp_path / "new.pem")])
            assert b": OK" in v.stdout
        # A device certified under the old root still renews with its certificate.
        r = https(srv, "POST", "simplereenroll", base64.b64encode(build_csr(key, cn="old-device")), headers=PKCS10,
                  ctx=srv.ssl_context(tmp_path / "dev.pem", tmp_path / "dev.key"))
        assert r.status == 200, r.body
        assert parse_certs_only(decode_b64(r.body))[0].issuer == new_root.subject
    assert old_root.subject != new_root.subject
