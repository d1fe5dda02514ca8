"""/serverkeygen end to end (RFC 7030 §4.4): a real ``estkit serve``, real TLS,
the key checked against the certificate with openssl, the encrypted key opened
with ``openssl cms -decrypt``, the multipart fetched with curl and parsed by a
MIME parser."""

from __future__ import annotations

import base64
import email
import email.policy
import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import ServerProcess, basic, require_tool, run, server, write_credentials

from estkit.protocol import constants as c
from estkit.protocol.cmc_cms import content_info, key_identifier
from estkit.protocol.csr import build_csr
from estkit.protocol.envelope import serverkeygen_csr, unwrap_server_key
from estkit.protocol.keys import generate_key, key_type_of
from estkit.protocol.multipart import KEY_ENCRYPTED, KEY_PLAIN, parse_serverkeygen
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "alice", "s3cret-pw"


def _configure(doc: dict[str, Any]) -> None:
    base = dict(doc["labels"]["default"])
    doc["labels"]["kg"] = {**base, "serverkeygen": True}
    doc["labels"]["kgrsa"] = {**base, "serverkeygen": True, "serverkeygen_key_type": "rsa:2048"}
    doc["labels"]["kgenc"] = {**base, "serverkeygen": True, "serverkeygen_encrypt": True}
    # A device's certificate may ask for a server-generated key for another name on any label only
    # because this table grants it (without one: its own names on its own label, docs/policy.md).
    doc["policies"] = {"devices": {"kinds": ["cert"]}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server(tmp_path_factory.mktemp("kg") / "d", users={USER: PW}, configure=_configure) as s:
        yield s


def _post(srv: ServerProcess, op: str, body: bytes, *, label: str | None = None, auth: bool = True,
          ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=ctx or srv.ssl_context(), timeout=30)
    headers = {"Content-Type": c.CT_PKCS10}
    if auth:
        headers["Authorization"] = basic(USER, PW)
    path = f"/.well-known/est/{label}/{op}" if label else f"/.well-known/est/{op}"
    conn.request("POST", path, body=base64.b64encode(body) + b"\n", headers=headers)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def _client_cert(srv: ServerProcess, tmp: Path, key_type: str, name: str) -> tuple[Path, Path, Any]:
    """Enroll a TLS client certificate with /simpleenroll; returns its files and key."""
    key = generate_key(key_type)
    status, _h, body = _post(srv, "simpleenroll", build_csr(key, cn=name))
    assert status == 200, body
    cert = parse_certs_only(base64.b64decode(body))[0]
    return *write_credentials(tmp, name, key, cert), key


def _same_key_openssl(tmp: Path, key_der: bytes, cert: x509.Certificate) -> None:
    """The key matches the certificate, as openssl sees them."""
    (tmp / "k.der").write_bytes(key_der)
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    from_key = run(["openssl", "pkey", "-inform", "DER", "-in", str(tmp / "k.der"), "-pubout"]).stdout
    from_cert = run(["openssl", "x509", "-in", str(tmp / "c.pem"), "-noout", "-pubkey"]).stdout
    assert from_key == from_cert and b"BEGIN PUBLIC KEY" in from_key


@pytest.mark.parametrize("label,csr_key,expect", [
    ("kg", "ec:P-256", "ec:P-256"),
    ("kg", "ec:P-384", "ec:P-384"),
    ("kg", "ed25519", "ed25519"),
    ("kg", "rsa:3072", "rsa:3072"),
    ("kg", "rsa:4096", "rsa:4096"),
    ("kgrsa", "ec:P-256", "rsa:2048"),  # the label's policy beats the CSR's key type
], ids=["ok/p256", "ok/p384", "ok/ed25519", "ok/rsa3072-from-csr", "ok/rsa4096-from-csr", "ok/rsa2048-from-label"])
def test_serverkeygen_plain(srv: ServerProcess, tmp_path: Path, label: str, csr_key: str, expect: str) -> None:
    require_tool("openssl")
    csr_keypair = generate_key(csr_key)
    status, headers, body = _post(srv, "serverkeygen", build_csr(csr_keypair, cn="kg-dev", dns=["kg.example"]),
                                  label=label)
    assert status == 200, body
    assert headers["content-type"].startswith("multipart/mixed; boundary=")
    parts = parse_serverkeygen(body, headers["content-type"])
    assert parts.key_kind == KEY_PLAIN and len(parts.certificates) == 1
    cert = parts.certificates[0]
    key = serialization.load_der_private_key(parts.key_der, None)
    assert key_type_of(key.public_key()) == expect  # type: ignore[arg-type]
    # The CSR's key is ignored: the certificate carries the new one.
    assert cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        != csr_keypair.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.subject.rfc4514_string() == "CN=kg-dev"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["kg.example"]
    _same_key_openssl(tmp_path, parts.key_der, cert)
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(tmp_path / "c.pem")])


def test_ok_broken_csr_signature_is_accepted(srv: ServerProcess, tmp_path: Path) -> None:
    """RFC 7030 §4.4.1: the CSR's signature is ignored."""
    csr = bytearray(build_csr(generate_key("ec:P-256"), cn="broken-sig"))
    csr[-3] ^= 0x55  # inside the signature value
    assert not x509.load_der_x509_csr(bytes(csr)).is_signature_valid
    status, headers, body = _post(srv, "serverkeygen", bytes(csr), label="kg")
    assert status == 200, body
    parts = parse_serverkeygen(body, headers["content-type"])
    assert parts.certificates[0].subject.rfc4514_string() == "CN=broken-sig"


@pytest.mark.parametrize("label,auth,status,reason", [
    (None, True, 404, "serverkeygen is not enabled"),
    ("kg", False, 401, ""),
], ids=["fail/disabled-by-default", "fail/unauthenticated"])
def test_serverkeygen_refused(srv: ServerProcess, label: str | None, auth: bool, status: int, reason: str) -> None:
    got, headers, body = _post(srv, "serverkeygen", build_csr(generate_key("ec:P-256"), cn="x"), label=label,
                               auth=auth)
    assert got == status, body
    assert reason.encode() in body
    assert headers["content-type"].startswith("text/plain")


def test_ok_multipart_with_curl_and_a_mime_parser(srv: ServerProcess, tmp_path: Path) -> None:
    """As a person would: curl saves headers and body, Python's email package
    parses the MIME, openssl reads the parts."""
    require_tool("curl", "openssl")
    (tmp_path / "req.b64").write_bytes(base64.b64encode(build_csr(generate_key("ec:P-256"), cn="curl-kg")) + b"\n")
    run(["curl", "-sS", "--fail", "--cacert", str(srv.ca_pem), "--user", f"{USER}:{PW}",
         "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{tmp_path / 'req.b64'}",
         "-D", str(tmp_path / "headers"), "-o", str(tmp_path / "body"), srv.url("serverkeygen", "kg")])
    raw_headers = (tmp_path / "headers").read_bytes()
    ctype = next(line.split(b":", 1)[1].strip() for line in raw_headers.splitlines()
                 if line.lower().startswith(b"content-type:"))
    body = (tmp_path / "body").read_bytes()
    assert b"\r\n" in body and b"Content-Transfer-Encoding: base64" in body
    msg = email.message_from_bytes(b"Content-Type: " + ctype + b"\r\n\r\n" + body, policy=email.policy.default)
    assert msg.is_multipart()
    parts = {p.get_content_type(): p for p in msg.iter_parts()}
    assert set(parts) == {"application/pkcs8", "application/pkcs7-mime"}
    assert parts["application/pkcs7-mime"].get_param("smime-type") == "certs-only"
    # libest's client matches this exact prefix (interop-notes).
    assert b"\r\nContent-Type: " + c.CT_CERTS_ONLY.encode() + b"\r\n" in body
    key_der = parts["application/pkcs8"].get_payload(decode=True)
    p7_der = parts["application/pkcs7-mime"].get_payload(decode=True)
    (tmp_path / "p7.der").write_bytes(p7_der)
    pem = run(["openssl", "pkcs7", "-inform", "DER", "-in", str(tmp_path / "p7.der"), "-print_certs"]).stdout
    cert = x509.load_pem_x509_certificate(pem)
    _same_key_openssl(tmp_path, key_der, cert)


def _decrypt_with_openssl(tmp: Path, enveloped: bytes, cert: Path, key: Path) -> bytes:
    """openssl cms -decrypt, then openssl cms -verify of the inner SignedData;
    returns the PrivateKeyInfo from the AsymmetricKeyPackage."""
    (tmp / "env.der").write_bytes(enveloped)
    run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp / "env.der"), "-recip", str(cert),
         "-inkey", str(key), "-out", str(tmp / "signed.der")])
    inner = (tmp / "signed.der").read_bytes()
    (tmp / "signed-ci.der").write_bytes(content_info(c.OID_SIGNED_DATA.dotted_string, inner))
    run(["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(tmp / "signed-ci.der"),
         "-out", str(tmp / "pkg.der")])
    pkg = (tmp / "pkg.der").read_bytes()
    listing = run(["openssl", "asn1parse", "-inform", "DER", "-in", str(tmp / "pkg.der")]).stdout.decode()
    # AsymmetricKeyPackage ::= SEQUENCE OF OneAsymmetricKey: the key starts at offset of its header.
    second = [ln for ln in listing.splitlines() if "d=1" in ln][0]
    off = int(second.split(":")[0])
    return pkg[off:]


@pytest.mark.parametrize("tls_key,how", [
    ("rsa:2048", "label"),
    ("ec:P-256", "label"),
    ("rsa:2048", "key-id"),
    ("ec:P-384", "key-id"),
], ids=["ok/rsa-tls-label-demands", "ok/ec-tls-label-demands", "ok/rsa-tls-asymmetric-key-id",
        "ok/ec-tls-asymmetric-key-id"])
def test_serverkeygen_encrypted(srv: ServerProcess, tmp_path: Path, tls_key: str, how: str) -> None:
    require_tool("openssl")
    cp, kp, tkey = _client_cert(srv, tmp_path, tls_key, f"tls-{tls_key.replace(':', '')}-{how}")
    ctx = srv.ssl_context(cp, kp)
    tls_cert = x509.load_pem_x509_certificate(cp.read_bytes())
    kid = key_identifier(tls_cert.public_key()) if how == "key-id" else None
    csr = serverkeygen_csr(generate_key("ec:P-256"), cn="enc-dev", asymmetric_key_id=kid)
    status, headers, body = _post(srv, "serverkeygen", csr, label="kgenc" if how == "label" else "kg",
                                  auth=False, ctx=ctx)
    assert status == 200, body
    assert c.CT_SERVER_KEY.encode() in body
    parts = parse_serverkeygen(body, headers["content-type"])
    assert parts.key_kind == KEY_ENCRYPTED
    cert = parts.certificates[0]
    # Our own decoder (the client library's building block) ...
    key_der, signer_certs = unwrap_server_key(parts.key_der, tkey)
    _same_key_openssl(tmp_path, key_der, cert)
    # ... and openssl's CMS tooling agree.
    assert _decrypt_with_openssl(tmp_path, parts.key_der, cp, kp) == key_der
    assert any(s.subject == cert.issuer for s in signer_certs)


@pytest.mark.parametrize("case,reason", [
    ("unknown-key-id", "unknown AsymmetricDecryptKeyIdentifier"),
    ("symmetric-key-id", "unknown DecryptKeyIdentifier"),
    ("no-tls-cert", "needs a TLS client certificate"),
    ("ed25519-tls-cert", "supported are RSA keys"),
], ids=["fail/unknown-key-id", "fail/symmetric-key-id", "fail/no-tls-cert", "fail/ed25519-tls-cert"])
def test_serverkeygen_encrypted_refused(srv: ServerProcess, tmp_path: Path, case: str, reason: str) -> None:
    kt = "ed25519" if case == "ed25519-tls-cert" else "ec:P-256"
    cp, kp, _ = _client_cert(srv, tmp_path, kt, f"tls-refused-{case}")
    ctx = None if case == "no-tls-cert" else srv.ssl_context(cp, kp)
    kwargs: dict[str, bytes] = {}
    if case == "unknown-key-id":
        kwargs["asymmetric_key_id"] = b"\x01" * 20
    elif case == "symmetric-key-id":
        kwargs["decrypt_key_id"] = b"shared-key-7"
    label = "kg" if kwargs else "kgenc"
    before = len(_issued(srv))
    status, headers, body = _post(srv, "serverkeygen", serverkeygen_csr(generate_key("ec:P-256"), cn="r", **kwargs),
                                  label=label, auth=ctx is None, ctx=ctx)
    assert status == 400, body
    assert reason.encode() in body and headers["content-type"].startswith("text/plain")
    assert len(_issued(srv)) == before  # refused before anything was issued


def _issued(srv: ServerProcess) -> list[str]:
    from estkit.store import open_store
    store = open_store("sqlite:///" + str(srv.dir / "estkit.db"), upgrade=False)
    try:
        return [format(s.serial, "x") for s in store.list_certificates(limit=10000)]
    finally:
        store.close()


def test_ok_generated_key_is_never_stored_or_logged(srv: ServerProcess) -> None:
    status, headers, body = _post(srv, "serverkeygen", build_csr(generate_key("ec:P-256"), cn="secret-key"),
                                  label="kg")
    assert status == 200
    parts = parse_serverkeygen(body, headers["content-type"])
    key = serialization.load_der_private_key(parts.key_der, None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    needles = [parts.key_der, scalar, base64.b64encode(parts.key_der), scalar.hex().encode()]
    for f in srv.dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for n in needles:
                assert n not in data, f"generated key material found in {f}"
