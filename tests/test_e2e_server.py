"""End to end: a real `estkit serve` over TLS, driven by curl, openssl and Python's ssl.

Covers the core of RFC 7030 sections A to E of the conformance list (see the
README's conformance table for the item numbers)."""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from support import ServerProcess, basic, https, require_tool, run, server

from estkit.ca.create import ca_name, make_ca_certificate
from estkit.ca.signer import KeySigner
from estkit.protocol.csr import build_csr
from estkit.protocol.csrattrs import decode_csrattrs, key_types_from
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

PKCS10 = {"Content-Type": "application/pkcs10"}
IDEVID_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idevid"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN123")])


def _b64(der: bytes) -> bytes:
    return base64.b64encode(der) + b"\n"


def _write_key(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def manufacturer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A foreign 'manufacturer' CA (bootstrap trust anchor) and a device certificate it issued."""
    d = tmp_path_factory.mktemp("mfg")
    k = generate_key("ec:P-256")
    root = make_ca_certificate(ca_name("Device Manufacturer CA"), k.public_key(), KeySigner(k))
    from datetime import UTC, datetime, timedelta
    dk = generate_key("ec:P-256")
    dev = (x509.CertificateBuilder().subject_name(IDEVID_NAME)
           .issuer_name(root.subject).public_key(dk.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(datetime.now(UTC) - timedelta(hours=1))
           .not_valid_after(datetime.now(UTC) + timedelta(days=30))
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    dev_cert = KeySigner(k).sign_certificate(dev)
    (d / "mfg-ca.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (d / "idevid.pem").write_bytes(dev_cert.public_bytes(Encoding.PEM))
    _write_key(d / "idevid.key", dk)
    # A certificate from a CA nobody trusts.
    ok = generate_key("ec:P-256")
    other = make_ca_certificate(ca_name("Unrelated CA"), ok.public_key(), KeySigner(ok))
    ek = generate_key("ec:P-256")
    stranger = KeySigner(ok).sign_certificate(
        x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=stranger"))
        .issuer_name(other.subject).public_key(ek.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(hours=1)).not_valid_after(datetime.now(UTC) + timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    (d / "stranger.pem").write_bytes(stranger.public_bytes(Encoding.PEM))
    _write_key(d / "stranger.key", ek)
    return {"ca": d / "mfg-ca.pem", "cert": d / "idevid.pem", "key": d / "idevid.key",
            "stranger_cert": d / "stranger.pem", "stranger_key": d / "stranger.key"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, manufacturer: dict[str, Path]) -> Iterator[ServerProcess]:
    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["bootstrap_trust"] = [str(manufacturer["ca"])]
        doc["labels"]["linked"] = {"ca": "default", "require_linking": True}
        doc["labels"]["rsaonly"] = {"ca": "default", "allowed_key_types": ["rsa:2048", "rsa:3072"]}
    with server(tmp_path_factory.mktemp("srv") / "data", users={"alice": "s3cret pass"}, configure=configure,
                init_args=("--intermediate",), workers=2) as s:
        yield s


def _enroll(srv: ServerProcess, tmp: Path, cn: str, *, label: str | None = None, key: Any = None,
            dns: tuple[str, ...] = ()) -> tuple[Path, Path]:
    key = key or generate_key("ec:P-256")
    r = https(srv, "POST", "simpleenroll", _b64(build_csr(key, cn=cn, dns=dns)), label=label,
              headers={**PKCS10, "Authorization": basic("alice", "s3cret pass")})
    assert r.status == 200, r.body
    cert = parse_certs_only(decode_b64(r.body))[0]
    cp, kp = tmp / f"{cn}.pem", tmp / f"{cn}.key"
    cp.write_bytes(cert.public_bytes(Encoding.PEM))
    _write_key(kp, key)
    return cp, kp


# -- what a person types -------------------------------------------------------------------------


def test_ok_curl_cacerts_and_enroll_openssl_verify(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("curl", "openssl")
    chain = tmp_path / "chain.pem"
    run(["sh", "-c", f"curl -sf --cacert {srv.ca_pem} {srv.url('cacerts')} | openssl base64 -d -A "
                     f"| openssl pkcs7 -inform DER -print_certs -out {chain}"])
    subjects = re.findall(r"subject=(.*)", chain.read_text())
    assert len(subjects) == 2 and any("Root" in s for s in subjects) and any("Issuing" in s for s in subjects)
    # A CSR framed as openssl's `base64` prints it: 64 columns, LF.
    run(["sh", "-c", f"cd {tmp_path} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                     "-keyout dev.key -subj /CN=curl-device -addext subjectAltName=DNS:curl.example "
                     "-outform DER 2>/dev/null | openssl base64 > dev.b64"])
    run(["sh", "-c", f"cd {tmp_path} && curl -sf --cacert {srv.ca_pem} --user 'alice:s3cret pass' "
                     f"-H 'Content-Type: application/pkcs10' --data-binary @dev.b64 {srv.url('simpleenroll')} "
                     "| openssl base64 -d -A | openssl pkcs7 -inform DER -print_certs -out dev.pem"])
    out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(chain), str(tmp_path / "dev.pem")])
    assert b": OK" in out.stdout
    text = run(["openssl", "x509", "-in", str(tmp_path / "dev.pem"), "-noout", "-text"]).stdout.decode()
    assert "CN = curl-device" in text and "DNS:curl.example" in text and "TLS Web Client Authentication" in text
    assert "CA:FALSE" in text


def test_ok_response_wire_format(srv: ServerProcess) -> None:
    for op in ("cacerts", "csrattrs"):
        r = https(srv, "GET", op)
        assert r.status == 200
        assert r.header("Content-Transfer-Encoding") == "base64" and r.header("Content-Length") == str(len(r.body))
        assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1  # one line plus a newline
    assert https(srv, "GET", "cacerts").header("Content-Type") == "application/pkcs7-mime"
    assert https(srv, "GET", "csrattrs").header("Content-Type") == "application/csrattrs"
    r = https(srv, "POST", "simpleenroll", _b64(build_csr(generate_key("ec:P-256"), cn="wire")),
              headers={**PKCS10, "Authorization": basic("alice", "s3cret pass")})
    assert r.header("Content-Type") == "application/pkcs7-mime; smime-type=certs-only"
    assert r.body.count(b"\n") == 1 and len(parse_certs_only(decode_b64(r.body))) == 1


def _wrap(data: bytes, width: int, eol: bytes) -> bytes:
    return eol.join(data[i:i + width] for i in range(0, len(data), width)) + eol


@pytest.mark.parametrize("frame,headers", [
    pytest.param(lambda d: base64.b64encode(d), {}, id="ok/one-line-no-newline-no-cte"),
    pytest.param(lambda d: _wrap(base64.b64encode(d), 64, b"\r\n"), {"Content-Transfer-Encoding": "base64"},
                 id="ok/64-col-crlf"),
    pytest.param(lambda d: _wrap(base64.b64encode(d), 76, b"\n"), {"Content-Transfer-Encoding": "binary"},
                 id="ok/76-col-cte-binary-ignored"),
    pytest.param(lambda d: b"-----BEGIN CERTIFICATE REQUEST-----\r\n" + _wrap(base64.b64encode(d), 64, b"\r\n")
                 + b"-----END CERTIFICATE REQUEST-----\r\n", {}, id="ok/pem-armour"),
    pytest.param(lambda d: b" \t" + base64.b64encode(d) + b" \r\n", {"Content-Type": "application/pkcs10; charset=utf-8"},
                 id="ok/stray-whitespace-and-charset"),
])
def test_request_framings_accepted(srv: ServerProcess, frame: Any, headers: dict[str, str]) -> None:
    key = generate_key("ec:P-256")
    der = build_csr(key, cn="framed", dns=["framed.example"])
    r = https(srv, "POST", "simpleenroll", frame(der),
              headers={**PKCS10, **headers, "Authorization": basic("alice", "s3cret pass")})
    assert r.status == 200, r.body
    # The very CSR was read: its key and names are in the certificate.
    (cert,) = parse_certs_only(decode_b64(r.body))
    assert cert.public_key() == key.public_key() and cert.subject.rfc4514_string() == "CN=framed"
    assert _sans(cert) == ["framed.example"] and _requester(srv, cert) == "user:alice"


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def _requester(srv: ServerProcess, cert: x509.Certificate) -> str:
    """Who the store recorded as having obtained ``cert`` (the identity kind and name)."""
    import sqlite3
    db = sqlite3.connect(srv.dir / "estkit.db")
    try:
        rows = db.execute("SELECT requester FROM certificates WHERE der = ?", (cert.public_bytes(Encoding.DER),))
        (row,) = rows.fetchall()
        return str(row[0])
    finally:
        db.close()


# -- every error status, from a real request -------------------------------------------------------

AUTH = {"Authorization": basic("alice", "s3cret pass")}


@pytest.mark.parametrize("method,op,label,body,headers,status,reason", [
    pytest.param("POST", "simpleenroll", None, b"bm90IGEgY3Ny\n", {**PKCS10, **AUTH}, 400, "PKCS#10",
                 id="fail/400-not-a-csr"),
    pytest.param("POST", "simpleenroll", None, b"%%%\n", {**PKCS10, **AUTH}, 400, "base64", id="fail/400-not-base64"),
    pytest.param("POST", "simpleenroll", None, b"", {**PKCS10, **AUTH}, 400, "empty", id="fail/400-empty"),
    pytest.param("POST", "simpleenroll", None, "rsa1024", {**PKCS10, **AUTH}, 400, "2048", id="fail/400-rsa-1024"),
    pytest.param("POST", "simpleenroll", "rsaonly", "ec", {**PKCS10, **AUTH}, 400, "not allowed",
                 id="fail/400-key-type-for-label"),
    pytest.param("POST", "simpleenroll", None, "ec", {**PKCS10, "Authorization": basic("alice", "wrong")}, 401,
                 "wrong user name or password", id="fail/401-wrong-password"),
    pytest.param("POST", "simpleenroll", None, "ec", {**PKCS10, "Authorization": basic("nobody", "x")}, 401,
                 "wrong user name or password", id="fail/401-unknown-user"),
    pytest.param("POST", "simpleenroll", None, "ec", {**PKCS10, "Authorization": "Basic !!!"}, 400,
                 "Authorization", id="fail/400-malformed-auth-header"),
    pytest.param("GET", "nosuchop", None, None, {}, 404, "unknown EST operation", id="fail/404-unknown-op"),
    pytest.param("GET", "cacerts", "nosuchlabel", None, {}, 404, "unknown CA label", id="fail/404-unknown-label"),
    pytest.param("POST", "cacerts", None, b"x", {}, 405, "takes GET", id="fail/405-post-cacerts"),
    pytest.param("GET", "simpleenroll", None, None, AUTH, 405, "takes POST", id="fail/405-get-enroll"),
    pytest.param("POST", "simpleenroll", None, b"A" * 70000, {**PKCS10, **AUTH}, 413, "over 65536",
                 id="fail/413-too-large"),
    pytest.param("POST", "simpleenroll", None, "ec", {"Content-Type": "application/json", **AUTH}, 415,
                 "application/pkcs10", id="fail/415-json"),
    pytest.param("POST", "simpleenroll", None, "ec", {**AUTH}, 415, "application/pkcs10", id="fail/415-none"),
])
def test_error_statuses(srv: ServerProcess, method: str, op: str, label: str | None, body: Any,
                        headers: dict[str, str], status: int, reason: str) -> None:
    if body == "ec":
        body = _b64(build_csr(generate_key("ec:P-256"), cn="e"))
    elif body == "rsa1024":
        body = _b64(build_csr(generate_key("rsa:1024"), cn="weak"))
    r = https(srv, method, op, body, label=label, headers=headers)
    assert r.status == status, r.body
    assert r.header("Content-Type", ).startswith("text/plain")
    text = r.body.decode()
    assert reason in text and text.count("\n") == 1 and "Traceback" not in text
    if status == 401:
        assert r.header("WWW-Authenticate", ).startswith("Basic realm=")
    if status == 405:
        assert r.header("Allow") in ("GET", "POST")


def test_fail_401_challenge_without_credentials_has_empty_body(srv: ServerProcess) -> None:
    r = https(srv, "POST", "simpleenroll", _b64(build_csr(generate_key("ec:P-256"), cn="x")), headers=PKCS10)
    assert r.status == 401 and r.body == b"" and r.header("Content-Length") == "0"
    assert r.header("WWW-Authenticate") == 'Basic realm="estkit", charset="UTF-8"'


def test_fail_404_outside_est_prefix(srv: ServerProcess) -> None:
    r = https(srv, "GET", "", path="/index.html")
    assert r.status == 404 and r.header("Content-Type").startswith("text/plain")
    r = https(srv, "GET", "", path="/.well-known/est/a/b/cacerts")
    assert r.status == 404


# -- /cacerts, /csrattrs under labels ----------------------------------------------------------------


@pytest.mark.parametrize("label", [None, "linked", "rsaonly"])
def test_ok_cacerts_every_label_chains_issued_certs(srv: ServerProcess, label: str | None) -> None:
    certs = parse_certs_only(decode_b64(https(srv, "GET", "cacerts", label=label).body))
    assert len(certs) == 2
    root = x509.load_pem_x509_certificate(srv.ca_pem.read_bytes())
    # certificates is a SET OF in CMS: order is not meaningful
    assert root in certs and any(c != root and c.issuer == root.subject for c in certs)


def test_ok_csrattrs_per_label(srv: ServerProcess) -> None:
    plain = decode_csrattrs(decode_b64(https(srv, "GET", "csrattrs").body))
    assert key_types_from(plain)[0] == "ec:P-256" and "1.2.840.113549.1.9.7" not in plain.oids()
    linked = decode_csrattrs(decode_b64(https(srv, "GET", "csrattrs", label="linked").body))
    assert "1.2.840.113549.1.9.7" in linked.oids()  # RFC 7030 §3.5: a server requiring linking lists it
    rsa = decode_csrattrs(decode_b64(https(srv, "GET", "csrattrs", label="rsaonly").body))
    assert key_types_from(rsa) == ["rsa:2048", "rsa:3072"]


# -- client certificates, reenroll -------------------------------------------------------------------


@pytest.mark.parametrize("rekey", [pytest.param(False, id="ok/renew-same-key"), pytest.param(True, id="ok/rekey")])
def test_reenroll_with_client_certificate(srv: ServerProcess, tmp_path: Path, rekey: bool) -> None:
    key = generate_key("ec:P-256")
    cert_path, key_path = _enroll(srv, tmp_path, "renewer", key=key, dns=("renew.example",))
    new_key = generate_key("ec:P-384") if rekey else key
    r = https(srv, "POST", "simplereenroll", _b64(build_csr(new_key, cn="renewer", dns=["renew.example"])),
              headers=PKCS10, ctx=srv.ssl_context(cert_path, key_path))
    assert r.status == 200, r.body
    new = parse_certs_only(decode_b64(r.body))[0]
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.subject == old.subject and new.serial_number != old.serial_number
    assert _sans(new) == _sans(old) == ["renew.example"]  # RFC 7030 §4.2.2: the same names
    assert new.public_key() == new_key.public_key() and (new.public_key() == old.public_key()) is (not rekey)
    assert _requester(srv, new) == "cert:CN=renewer"  # authorised by the certificate being renewed


@pytest.mark.parametrize("cn,dns,status,reason", [
    pytest.param("someone-else", ("renew2.example",), 400, "subject differs", id="fail/changed-subject"),
    pytest.param("renewer2", ("evil.example",), 400, "subjectAltName differs", id="fail/changed-san"),
    pytest.param("renewer2", (), 400, "subjectAltName differs", id="fail/dropped-san"),
])
def test_reenroll_refuses_changed_names(srv: ServerProcess, tmp_path: Path, cn: str, dns: tuple[str, ...],
                                        status: int, reason: str) -> None:
    cert_path, key_path = _enroll(srv, tmp_path, "renewer2", dns=("renew2.example",))
    r = https(srv, "POST", "simplereenroll", _b64(build_csr(generate_key("ec:P-256"), cn=cn, dns=list(dns))),
              headers=PKCS10, ctx=srv.ssl_context(cert_path, key_path))
    assert r.status == status and reason in r.body.decode() and "4.2.2" in r.body.decode()


def test_fail_reenroll_without_client_certificate(srv: ServerProcess) -> None:
    csr = _b64(build_csr(generate_key("ec:P-256"), cn="x"))
    r = https(srv, "POST", "simplereenroll", csr, headers=PKCS10)
    assert r.status == 401
    r = https(srv, "POST", "simplereenroll", csr, headers={**PKCS10, **AUTH})
    assert r.status == 401 and b"client certificate" in r.body


def test_fail_reenroll_with_bootstrap_certificate_is_403(srv: ServerProcess, manufacturer: dict[str, Path]) -> None:
    csr = _b64(build_csr(generate_key("ec:P-256"), subject=IDEVID_NAME))
    r = https(srv, "POST", "simplereenroll", csr, headers=PKCS10,
              ctx=srv.ssl_context(manufacturer["cert"], manufacturer["key"]))
    assert r.status == 403 and b"issued by this CA" in r.body


def test_fail_reenroll_with_untrusted_ca_certificate_fails_handshake(srv: ServerProcess,
                                                                     manufacturer: dict[str, Path]) -> None:
    csr = _b64(build_csr(generate_key("ec:P-256"), cn="stranger"))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        https(srv, "POST", "simplereenroll", csr, headers=PKCS10,
              ctx=srv.ssl_context(manufacturer["stranger_cert"], manufacturer["stranger_key"]))


def test_ok_simpleenroll_with_bootstrap_certificate(srv: ServerProcess, manufacturer: dict[str, Path]) -> None:
    key = generate_key("ec:P-256")
    csr = _b64(build_csr(key, cn="ldevid-SN123"))
    r = https(srv, "POST", "simpleenroll", csr, headers=PKCS10,
              ctx=srv.ssl_context(manufacturer["cert"], manufacturer["key"]))
    assert r.status == 200, r.body
    (cert,) = parse_certs_only(decode_b64(r.body))
    assert cert.public_key() == key.public_key() and cert.subject.rfc4514_string() == "CN=ldevid-SN123"
    # Authorised as the manufacturer-issued device (a bootstrap identity), not as a user or an issued certificate.
    assert _requester(srv, cert) == "bootstrap:" + IDEVID_NAME.rfc4514_string()


def test_ok_simpleenroll_with_issued_client_certificate(srv: ServerProcess, tmp_path: Path) -> None:
    cert_path, key_path = _enroll(srv, tmp_path, "certauth")
    # its own name: a certificate without a [policies] grant asks for nothing else (docs/policy.md)
    key = generate_key("ec:P-256")
    r = https(srv, "POST", "simpleenroll", _b64(build_csr(key, cn="certauth")), headers=PKCS10,
              ctx=srv.ssl_context(cert_path, key_path))
    assert r.status == 200, r.body
    (cert,) = parse_certs_only(decode_b64(r.body))
    assert cert.public_key() == key.public_key() and cert.subject.rfc4514_string() == "CN=certauth"
    # Authorised by the TLS client certificate this CA issued (no password was sent).
    assert _requester(srv, cert) == "cert:CN=certauth"
    r = https(srv, "POST", "simpleenroll", _b64(build_csr(generate_key("ec:P-256"), cn="second")), headers=PKCS10,
              ctx=srv.ssl_context(cert_path, key_path))
    assert r.status == 403 and b"rule 'own-names'" in r.body, r.body


# -- proof-of-possession linking (RFC 7030 §3.5) -----------------------------------------------------


def _linked(key: Any, cn: str, wrong: bool = False) -> Any:
    def body(tls_unique: bytes) -> bytes:
        value = base64.b64encode(tls_unique if not wrong else bytes(12)).decode()
        return _b64(build_csr(key, cn=cn, challenge_password=value))
    return body


TLS12 = ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("label", [None, "linked"])
def test_ok_linking_right_tls_unique(srv: ServerProcess, label: str | None) -> None:
    r = https(srv, "POST", "simpleenroll", label=label, headers={**PKCS10, **AUTH},
              ctx=srv.ssl_context(max_version=TLS12), csr_for_tls_unique=_linked(generate_key("ec:P-256"), "linked"))
    assert r.tls_version == "TLSv1.2" and r.status == 200, r.body


@pytest.mark.parametrize("label,wrong,max_version,reason", [
    pytest.param(None, True, TLS12, "linking failed", id="fail/wrong-tls-unique"),
    pytest.param("linked", True, TLS12, "linking failed", id="fail/wrong-tls-unique-linked-label"),
    pytest.param("linked", None, TLS12, "linking is required", id="fail/required-but-absent"),
    pytest.param("linked", None, None, "linking is required", id="fail/required-but-absent-tls13"),
    pytest.param(None, False, None, "TLS 1.2", id="fail/linked-csr-over-tls13"),
])
def test_linking_refusals(srv: ServerProcess, label: str | None, wrong: bool | None,
                          max_version: ssl.TLSVersion | None, reason: str) -> None:
    key = generate_key("ec:P-256")
    make = (lambda _u: _b64(build_csr(key, cn="nolink"))) if wrong is None else _linked(key, "l", wrong)
    r = https(srv, "POST", "simpleenroll", label=label, headers={**PKCS10, **AUTH},
              ctx=srv.ssl_context(max_version=max_version), csr_for_tls_unique=make)
    assert r.status == 400 and reason in r.body.decode(), r.body


# -- TLS -----------------------------------------------------------------------------------------------


# OpenSSL 3 refuses TLS 1.0/1.1 by itself at its default security level: the
# client must offer them (@SECLEVEL=0) for a refusal to be the server's.
_LEGACY = ["-cipher", "ALL:@SECLEVEL=0"]


@pytest.mark.parametrize("args,ok", [
    pytest.param(["-tls1_2"], True, id="ok/tls1.2"),
    pytest.param(["-tls1_3"], True, id="ok/tls1.3"),
    pytest.param(["-tls1_1", *_LEGACY], False, id="fail/tls1.1"),
    pytest.param(["-tls1", *_LEGACY], False, id="fail/tls1.0"),
])
def test_tls_versions(srv: ServerProcess, args: list[str], ok: bool) -> None:
    require_tool("openssl")
    p = run(["openssl", "s_client", *args, "-connect", f"127.0.0.1:{srv.port}", "-CAfile", str(srv.ca_pem),
             "-verify_return_error", "-servername", "localhost"], input=b"", check=False, timeout=20)
    assert (p.returncode == 0 and b"Verify return code: 0" in p.stdout) is ok, p.stdout[-400:] + p.stderr[-400:]


def test_ok_access_log_line(srv: ServerProcess) -> None:
    https(srv, "GET", "cacerts", label="linked")
    https(srv, "POST", "simpleenroll", _b64(build_csr(generate_key("ec:P-256"), cn="logged")),
          headers={**PKCS10, **AUTH})
    log = srv.log()
    assert re.search(r"127\.0\.0\.1:\d+ - cacerts linked 200 [\d.]+ms", log)
    assert re.search(r"127\.0\.0\.1:\d+ user:alice simpleenroll - 200 [\d.]+ms", log)
