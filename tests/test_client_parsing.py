"""The client's tolerant parsing, from byte strings in the shapes real EST
servers send (interop-notes, RFC 7030 Appendix A, RFC 8951): framing,
certs-only with chains and CRLs, serverkeygen multiparts, Retry-After,
WWW-Authenticate and Digest (RFC 7616 §3.9.1 vectors), errors, host names."""

from __future__ import annotations

import base64
import textwrap
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from client_pki import Pki, make_pki, pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support import require_tool, run

from estkit.client.auth import PasswordAuth, digest_response, parse_challenges
from estkit.client.errors import ProtocolError
from estkit.client.responses import (certificates, error_from, issued_certificate, parse_retry_after, payload_der,
                                     read_serverkeygen)
from estkit.client.transport import Endpoint, Response, name_matches
from estkit.errors import BadRequest, Forbidden, NotFound, Pending, ServiceUnavailable, Unauthorized
from estkit.protocol.csrattrs import decode_csrattrs, key_types_from
from estkit.protocol.pkcs7 import certs_only


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _wrap(b64: bytes, width: int, eol: bytes) -> bytes:
    return eol.join(b64[i:i + width] for i in range(0, len(b64), width)) + eol


FRAMINGS = {
    "ok/one-line-lf": lambda d: base64.b64encode(d) + b"\n",
    "ok/one-line-crlf": lambda d: base64.b64encode(d) + b"\r\n",
    "ok/no-newline": lambda d: base64.b64encode(d),
    "ok/64-columns-crlf": lambda d: _wrap(base64.b64encode(d), 64, b"\r\n"),
    "ok/76-columns-lf": lambda d: _wrap(base64.b64encode(d), 76, b"\n"),
    "ok/spaces-and-tabs": lambda d: b" \t" + b" ".join(_wrap(base64.b64encode(d), 40, b"\n").split(b"\n")) + b"\t\n",
    "ok/pem-armour": lambda d: b"-----BEGIN PKCS7-----\n" + _wrap(base64.b64encode(d), 64, b"\n") + b"-----END PKCS7-----\n",
    "ok/raw-der": lambda d: d,
}


@pytest.mark.parametrize("shape", list(FRAMINGS), ids=list(FRAMINGS))
def test_cacerts_framings(pki: Pki, shape: str) -> None:
    der = certs_only([pki.sub, pki.root])
    assert set(certificates(FRAMINGS[shape](der), "cacerts")) == {pki.sub, pki.root}


@pytest.mark.parametrize("body", [b"", b"   \n", b"not base64 at all!", b"QUJD\n", base64.b64encode(b"\x30\x03abc")],
                         ids=["fail/empty", "fail/blank", "fail/garbage", "fail/base64-not-pkcs7", "fail/bad-der"])
def test_fail_malformed_payload_is_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        certificates(body, "cacerts")


def test_ok_pkcs7_from_openssl_with_extra_certificates_and_crl(pki: Pki, tmp_path: Path) -> None:
    """A certs-only made by openssl crl2pkcs7 carrying a CRL, the chain and the leaf, in any order."""
    require_tool("openssl")
    key, leaf = pki.leaf("dev1")
    (tmp_path / "crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    (tmp_path / "certs.pem").write_bytes(pem(pki.root, leaf, pki.sub))
    der = run(["openssl", "crl2pkcs7", "-in", str(tmp_path / "crl.pem"), "-certfile", str(tmp_path / "certs.pem"),
               "-outform", "DER"]).stdout
    got = certificates(_wrap(base64.b64encode(der), 64, b"\r\n"), "simpleenroll response")
    assert set(got) == {pki.root, leaf, pki.sub}
    assert issued_certificate(got, key.public_key()) == leaf
    assert issued_certificate(got, None) == leaf  # the one that is not a CA


def test_fail_no_certificate_for_our_key(pki: Pki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    _k, leaf = pki.leaf("dev1")
    with pytest.raises(ProtocolError, match="no certificate for the requested key"):
        issued_certificate([pki.sub, leaf], other.public_key())


# -- serverkeygen multipart ------------------------------------------------------------

def _multipart(key_der: bytes, cert_der: bytes, *, key_first: bool, eol: str, cte: bool, boundary: str,
               key_type: str = "application/pkcs8", wrap: bool = False, preamble: bool = False) -> bytes:
    def part(ctype: str, der: bytes) -> str:
        b64 = base64.b64encode(der).decode()
        if wrap:
            b64 = eol.join(textwrap.wrap(b64, 64))
        head = f"Content-Type: {ctype}{eol}" + (f"Content-Transfer-Encoding: base64{eol}" if cte else "")
        return f"--{boundary}{eol}{head}{eol}{b64}{eol}"
    parts = [part(key_type, key_der), part("application/pkcs7-mime; smime-type=certs-only", cert_der)]
    if not key_first:
        parts.reverse()
    pre = f"This is the preamble.{eol}" if preamble else ""
    return (pre + "".join(parts) + f"--{boundary}--{eol}").encode()


SKG = [
    # id, key first, eol, CTE header, boundary, Content-Type parameter as sent, key is PKCS#1, wrapped base64
    ("ok/key-first-crlf-cte-bare", True, "\r\n", True, "estkit-b1", "multipart/mixed; boundary=estkit-b1", False, False),
    ("ok/cert-first-lf-no-cte", False, "\n", False, "b2", "multipart/mixed; boundary=b2", False, False),
    ("ok/quoted-boundary", True, "\r\n", True, "=_Part 1", 'multipart/mixed; boundary="=_Part 1"', False, False),
    ("ok/rfc7030-a4-space-before-semicolon", True, "\n", True, "est", "multipart/mixed ; boundary=est", False, True),
    ("ok/libest-pkcs1-labelled-pkcs8", False, "\r\n", True, "libest", "multipart/mixed; boundary=libest", True, True),
    ("ok/preamble-and-wrapped", True, "\r\n", False, "pp", "multipart/mixed; boundary=pp", False, True),
]


@pytest.mark.parametrize("key_first,eol,cte,boundary,ctype,pkcs1,wrap", [s[1:] for s in SKG], ids=[s[0] for s in SKG])
def test_serverkeygen_shapes(pki: Pki, key_first: bool, eol: str, cte: bool, boundary: str, ctype: str, pkcs1: bool,
                             wrap: bool) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = pki.sub  # any certificate: replaced below by one for this key
    from client_pki import issue
    cert = issue(pki.sub_key, pki.sub.subject, "kg", key.public_key())
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if pkcs1 else serialization.PrivateFormat.PKCS8
    key_der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
    if pkcs1:
        assert key_der[:4] != b"\x30\x82\x04\xbd" and b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" not in key_der[:32]
    body = _multipart(key_der, certs_only([cert, pki.sub]), key_first=key_first, eol=eol, cte=cte, boundary=boundary,
                      preamble=boundary == "pp", wrap=wrap)
    got_key, got_cert = read_serverkeygen(body, ctype)
    assert got_cert == cert
    assert got_key.private_numbers() == key.private_numbers()  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["no-key", "wrong-cert", "not-multipart", "encrypted-without-key"],
                         ids=["fail/no-key-part", "fail/cert-for-another-key", "fail/not-multipart",
                              "fail/encrypted-without-tls-key"])
def test_serverkeygen_failures(pki: Pki, case: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _k, other = pki.leaf("other")
    body = _multipart(key_der, certs_only([other]), key_first=True, eol="\r\n", cte=True, boundary="b",
                      key_type="application/pkcs7-mime; smime-type=server-generated-key"
                      if case == "encrypted-without-key" else "application/pkcs8")
    ctype = "multipart/mixed; boundary=b"
    if case == "no-key":
        body = body.replace(b"application/pkcs8", b"application/octet-stream")
    if case == "not-multipart":
        ctype = "application/pkcs7-mime"
    with pytest.raises(ProtocolError):
        read_serverkeygen(body, ctype)


# -- headers ---------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("value,expect", [
    ("120", 120), (" 5 ", 5), ("0", 0),
    (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90),
    ("Tue, 01 Dec 2026 11:00:00 GMT", 0),
    ("soon", None), ("", None), (None, None), ("-5", None),
], ids=["ok/seconds", "ok/seconds-padded", "ok/zero", "ok/http-date", "ok/http-date-past", "fail/word", "fail/empty",
        "fail/absent", "fail/negative"])
def test_retry_after(value: str | None, expect: int | None) -> None:
    assert parse_retry_after(value, NOW) == expect


RFC7616 = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
           'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')


@pytest.mark.parametrize("algorithm,expect", [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
], ids=["ok/rfc7616-sha256", "ok/rfc7616-md5"])
def test_digest_rfc7616_vectors(algorithm: str, expect: str) -> None:
    ch = parse_challenges([RFC7616.replace("SHA-256", algorithm)])[0]
    value = digest_response(ch, user="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html",
                            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert f'response="{expect}"' in value
    assert 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' in value and "qop=auth," in value


@pytest.mark.parametrize("headers,schemes,chosen", [
    ([RFC7616 + ", " + RFC7616.replace("SHA-256", "MD5") + ', Basic realm="estkit", charset="UTF-8"'],
     ("digest", "basic"), ("digest", "SHA-256")),
    ([RFC7616.replace("SHA-256", "MD5"), RFC7616], ("digest", "basic"), ("digest", "SHA-256")),
    (['Basic realm="estkit", charset="UTF-8"'], ("digest", "basic"), ("basic", None)),
    (['Basic realm="a, b \\"quoted\\""', RFC7616], ("basic",), ("basic", None)),
    ([RFC7616.replace("SHA-256", "SHA-1")], ("digest",), None),
    (['Negotiate abc123==', 'Bearer realm="x"'], ("digest", "basic"), None),
], ids=["ok/three-in-one-header-strongest-digest", "ok/two-headers", "ok/basic-only", "ok/quoted-comma-and-escape",
        "fail/unknown-digest-algorithm", "fail/only-other-schemes"])
def test_challenge_choice(headers: list[str], schemes: tuple[str, ...], chosen: tuple[str, str | None] | None) -> None:
    got = PasswordAuth("u", "p", schemes).choose(parse_challenges(headers))
    if chosen is None:
        assert got is None
    else:
        assert got is not None and (got.scheme, got.param("algorithm")) == chosen
    if headers[0].startswith("Basic realm=\"a"):
        assert parse_challenges(headers)[0].param("realm") == 'a, b "quoted"'


@pytest.mark.parametrize("status,body,headers,cls,retry", [
    (400, b"linking failed: challengePassword is not the tls-unique\n", (), BadRequest, None),
    (401, b"", (("WWW-Authenticate", 'Basic realm="estkit"'),), Unauthorized, None),
    (403, b"client certificate has been revoked\n", (), Forbidden, None),
    (404, b"unknown CA label 'x'\n", (), NotFound, None),
    (503, b"busy\n", (("Retry-After", "30"),), ServiceUnavailable, 30),
    (202, b"request 7 is waiting for approval\n", (("Retry-After", "60"),), Pending, 60),
], ids=["ok/400", "ok/401-empty-body", "ok/403", "ok/404", "ok/503-retry-after", "ok/202"])
def test_error_from_response(status: int, body: bytes, headers: tuple[tuple[str, str], ...], cls: type,
                             retry: int | None) -> None:
    err = error_from("simpleenroll", Response(status, (("Content-Type", "text/plain; charset=utf-8"), *headers), body))
    assert type(err) is cls and err.status == status and err.retry_after == retry
    assert err.reason == "simpleenroll: " + (body.decode().strip() or f"HTTP {status}")
    if cls is Unauthorized:
        assert err.challenges == ("basic",)  # type: ignore[attr-defined]


@pytest.mark.parametrize("host,dns,ips,ok", [
    ("est.example.com", ("est.example.com",), (), True),
    ("EST.Example.COM.", ("est.example.com",), (), True),
    ("a.example.com", ("*.example.com",), (), True),
    ("a.b.example.com", ("*.example.com",), (), False),
    ("example.com", ("*.com",), (), False),
    ("127.0.0.1", ("localhost",), ("127.0.0.1",), True),
    ("::1", (), ("::1",), True),
    ("127.0.0.2", (), ("127.0.0.1",), False),
    ("evil.example", ("est.example.com",), (), False),
], ids=["ok/exact", "ok/case-and-dot", "ok/wildcard", "fail/wildcard-two-labels", "fail/wildcard-tld", "ok/ipv4",
        "ok/ipv6", "fail/other-ip", "fail/other-name"])
def test_name_matches(pki: Pki, host: str, dns: tuple[str, ...], ips: tuple[str, ...], ok: bool) -> None:
    _k, cert = pki.leaf("srv", dns=dns, ips=ips)
    assert name_matches(cert, host) is ok


@pytest.mark.parametrize("url,label,path", [
    ("https://est.example.com", None, "/.well-known/est/cacerts"),
    ("https://est.example.com:8443/", "routers", "/.well-known/est/routers/cacerts"),
    ("est.example.com/.well-known/est", None, "/.well-known/est/cacerts"),
    ("https://gw.example/routers", None, "/routers/.well-known/est/cacerts"),
], ids=["ok/bare", "ok/port-and-label", "ok/no-scheme-with-prefix", "ok/path-prefix"])
def test_endpoint(url: str, label: str | None, path: str) -> None:
    assert Endpoint.parse(url, label).path("cacerts") == path


@pytest.mark.parametrize("url,label", [("http://est.example.com", None), ("https://est.example.com", "cacerts"),
                                       ("https://est.example.com", "a/b")],
                         ids=["fail/plain-http", "fail/label-is-operation", "fail/label-with-slash"])
def test_fail_endpoint(url: str, label: str | None) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(url, label)


def test_ok_rfc7030_appendix_a2_csrattrs() -> None:
    """RFC 7030 A.2: challengePassword, an EC P-384 key, an extension request
    and ecdsa-with-SHA384; the client reads the key type and the linking wish."""
    der = payload_der(b"MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw==\n",
                      "csrattrs")
    attrs = decode_csrattrs(der)
    assert key_types_from(attrs) == ["ec:P-384"]
    assert "1.2.840.113549.1.9.7" in attrs.oids()
    _ = x509  # noqa: F841


@pytest.mark.parametrize("elapsed_days,fraction,due", [
    (0, 1 / 3, False), (19, 1 / 3, False), (21, 1 / 3, True), (29, 0.5, True), (10, 0.5, False), (31, 0.1, True),
], ids=["ok/fresh", "ok/just-before-last-third", "ok/in-last-third", "ok/half-threshold-due",
        "ok/half-threshold-not-due", "ok/expired"])
def test_renewal_due(pki: Pki, elapsed_days: int, fraction: float, due: bool) -> None:
    """``renew`` renews once less than ``fraction`` of the lifetime is left (a 30-day certificate here)."""
    from estkit.client import renewal_due
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _k, cert = pki.leaf("due", not_before=start, days=30)
    assert renewal_due(cert, fraction, start + timedelta(days=elapsed_days)) is due


def test_credential_dir_switches_pairs(pki: Pki, tmp_path: Path) -> None:
    from estkit.client import CredentialDir
    store = CredentialDir(tmp_path / "cred")
    k1, c1 = pki.leaf("one")
    k2, c2 = pki.leaf("two")
    store.write(k1, c1)
    assert store.load()[1] == c1 and (store.path / "cert.pem").resolve().parent.name.startswith("gen-")
    store.write(k2, c2)
    assert store.load()[1] == c2 and len(list(store.path.glob("gen-*"))) == 1
    assert x509.load_pem_x509_certificates(store.cert_path.read_bytes())[0] == c2
    assert oct(store.key_path.stat().st_mode & 0o777) == "0o600"
    # A pair that does not match is refused on load.
    gen = store.path / "current"
    (gen / "key.pem").chmod(0o600)
    (gen / "key.pem").write_bytes(k1.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    with pytest.raises(ValueError, match="do not match"):
        store.load()
