"""CA options end to end: every CA key type, an encrypted CA key, weak TLS suites refused, the label alias path."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from support import ESTKIT, basic, https, require_tool, run, server

from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

PKCS10 = {"Content-Type": "application/pkcs10"}


@pytest.mark.parametrize("key_type,intermediate", [
    pytest.param("ec:P-384", False, id="ok/p384"),
    pytest.param("rsa:2048", True, id="ok/rsa2048-intermediate"),
    pytest.param("rsa:3072", False, id="ok/rsa3072"),
    pytest.param("ed25519", False, id="ok/ed25519"),
])
def test_ca_key_types_issue_verifiable_certificates(tmp_path: Path, key_type: str, intermediate: bool) -> None:
    require_tool("openssl")
    args = ("--key-type", key_type) + (("--intermediate",) if intermediate else ())
    with server(tmp_path / "data", users={"u": "p"}, init_args=args) as srv:
        chain = parse_certs_only(decode_b64(https(srv, "GET", "cacerts").body))
        assert len(chain) == (2 if intermediate else 1)
        r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(generate_key("ec:P-256"), cn="k")),
                  headers={**PKCS10, "Authorization": basic("u", "p")})
        assert r.status == 200, r.body
        from cryptography.hazmat.primitives.serialization import Encoding
        (tmp_path / "leaf.pem").write_bytes(parse_certs_only(decode_b64(r.body))[0].public_bytes(Encoding.PEM))
        (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in chain))
        out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(tmp_path / "chain.pem"),
                   str(tmp_path / "leaf.pem")])
        assert b": OK" in out.stdout
        text = run(["openssl", "x509", "-in", str(srv.ca_pem), "-noout", "-text"]).stdout.decode()
        expect = {"ec:P-384": "secp384r1", "rsa:2048": "(2048 bit)", "rsa:3072": "(3072 bit)", "ed25519": "ED25519"}
        assert expect[key_type] in text


def test_encrypted_ca_key_needs_its_passphrase(tmp_path: Path) -> None:
    d = tmp_path / "data"
    env = {"CA_PASS": "correct horse battery"}
    run([ESTKIT, "init", "--dir", str(d), "--passphrase-env", "CA_PASS"], env=env)
    assert b"ENCRYPTED" in (d / "ca" / "root.key").read_bytes()
    assert (d / "ca" / "root.key").stat().st_mode & 0o777 == 0o600
    p = run([ESTKIT, "serve", "--dir", str(d), "--listen", "127.0.0.1:0"], check=False, env={"CA_PASS": ""},
            timeout=30)
    assert p.returncode != 0 and b"Traceback" not in p.stderr and b"key" in p.stderr.lower()
    with server(d, users={"u": "p"}, env=env) as srv:
        r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(generate_key("ec:P-256"), cn="enc")),
                  headers={**PKCS10, "Authorization": basic("u", "p")})
        assert r.status == 200


# RFC 7030 §6: no NULL, anonymous, export, DES or RC4 suites; and TLS 1.2 here
# is AEAD with forward secrecy only.  The client offers each at @SECLEVEL=0
# (OpenSSL 3 refuses them by itself otherwise, and the test could not fail);
# a suite this OpenSSL cannot offer at all is skipped rather than "refused".
WEAK_SUITES = ["NULL:eNULL", "aNULL", "EXPORT", "DES", "3DES", "RC4",
               "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA", "AES128-SHA:AES256-SHA", "ECDHE-ECDSA-CAMELLIA128-SHA256"]


def test_weak_suites_and_alias_path(tmp_path: Path) -> None:
    require_tool("openssl")
    offered = []
    with server(tmp_path / "data") as srv:
        for suites in WEAK_SUITES:
            spec = f"{suites}:@SECLEVEL=0"
            if run(["openssl", "ciphers", "-tls1_2", spec], check=False).returncode != 0:
                continue  # not in this OpenSSL build (e.g. EXPORT, DES, RC4 in OpenSSL 3)
            offered.append(suites)
            p = run(["openssl", "s_client", "-tls1_2", "-cipher", spec, "-connect", f"127.0.0.1:{srv.port}"],
                    input=b"", check=False, timeout=20)
            assert p.returncode != 0, suites
        assert {"NULL:eNULL", "aNULL"} <= set(offered), offered
        # /<label>/.well-known/est/<op> is served like /.well-known/est/<label>/<op>.
        r = https(srv, "GET", "", path="/default/.well-known/est/cacerts")
        assert r.status == 200 and parse_certs_only(decode_b64(r.body))
        assert https(srv, "GET", "", path="/nolabel/.well-known/est/cacerts").status == 404
