"""Table-driven unit tests of the pure protocol codecs."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr, general_names_text, load_csr
from estkit.protocol.csrattrs import (CsrAttribute, decode_csrattrs, encode_csrattrs, key_type_attribute,
                                      key_types_from)
from estkit.protocol.framing import decode_b64, encode_b64, media_params, media_type
from estkit.protocol.keys import check_key_type_name, generate_key, key_type_of
from estkit.protocol.pkcs7 import certs_only, parse_certs_only

DER = bytes(range(256)) * 3
B64 = base64.b64encode(DER)


def _wrap(data: bytes, width: int, eol: bytes) -> bytes:
    return eol.join(data[i:i + width] for i in range(0, len(data), width)) + eol


@pytest.mark.parametrize("body", [
    pytest.param(B64, id="ok/one-line-no-newline"),
    pytest.param(B64 + b"\n", id="ok/one-line-lf"),
    pytest.param(_wrap(B64, 64, b"\r\n"), id="ok/64-col-crlf"),
    pytest.param(_wrap(B64, 76, b"\n"), id="ok/76-col-lf"),
    pytest.param(b"  " + B64[:10] + b"\t" + B64[10:] + b" \r\n", id="ok/stray-space-tab"),
    pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\n" + _wrap(B64, 64, b"\n")
                 + b"-----END CERTIFICATE REQUEST-----\n", id="ok/pem-armour"),
    # libest's example server ends /csrattrs with a NUL counted in Content-Length (interop-notes).
    pytest.param(B64 + b"\x00", id="ok/trailing-nul-libest"),
    pytest.param(B64 + b"\n\x00", id="ok/newline-then-nul"),
    pytest.param(_wrap(B64, 64, b"\r\n") + b"\x00\x00\r\n", id="ok/wrapped-nuls-then-crlf"),
])
def test_decode_b64_tolerant(body: bytes) -> None:
    assert decode_b64(body) == DER


@pytest.mark.parametrize("body", [
    pytest.param(b"", id="fail/empty"),
    pytest.param(b" \r\n", id="fail/whitespace-only"),
    pytest.param(b"not*base64!", id="fail/bad-alphabet"),
    pytest.param(B64[:-1], id="fail/truncated-padding"),
    pytest.param(b"\x00\x00\n", id="fail/nuls-only"),
    pytest.param(B64[:40] + b"\x00" + B64[40:], id="fail/nul-inside"),
])
def test_decode_b64_rejects(body: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_b64(body)


def test_encode_b64_is_one_line_plus_newline() -> None:
    out = encode_b64(DER)
    assert out.endswith(b"\n") and out.count(b"\n") == 1 and base64.b64decode(out) == DER


@pytest.mark.parametrize("header,mt,params", [
    pytest.param("application/pkcs10", "application/pkcs10", {}, id="ok/bare"),
    pytest.param("application/pkcs10; charset=utf-8", "application/pkcs10", {"charset": "utf-8"}, id="ok/charset"),
    pytest.param("Application/PKCS7-MIME; smime-type=certs-only", "application/pkcs7-mime",
                 {"smime-type": "certs-only"}, id="ok/case"),
    pytest.param('multipart/mixed ; boundary="est"', "multipart/mixed", {"boundary": "est"}, id="ok/space-quoted"),
    pytest.param(None, "", {}, id="ok/none"),
])
def test_media_type(header: str | None, mt: str, params: dict[str, str]) -> None:
    assert media_type(header) == mt and media_params(header) == params


@pytest.mark.parametrize("kt", ["ec:P-256", "ec:P-384", "rsa:2048", "ed25519"])
def test_csr_roundtrip(kt: str) -> None:
    key = generate_key(kt)
    der = build_csr(key, cn="dev", dns=["a.example"], ips=["192.0.2.1"], challenge_password="abc+/=")
    info = load_csr(der)
    assert info.key_type == kt and key_type_of(key.public_key()) == kt
    assert info.signature_valid and info.challenge_password == b"abc+/="
    assert general_names_text(info.san) == ["DNS:a.example", "IP:192.0.2.1"]
    assert len(info.fingerprint) == 64


def test_csr_bad_signature_is_reported_not_raised() -> None:
    der = bytearray(build_csr(generate_key("ec:P-256"), cn="dev"))
    der[-5] ^= 0x01  # inside the signature
    assert load_csr(bytes(der)).signature_valid is False


@pytest.mark.parametrize("der", [
    pytest.param(b"\x30\x03\x02\x01\x01", id="fail/not-a-csr"),
    pytest.param(b"garbage", id="fail/garbage"),
])
def test_csr_malformed(der: bytes) -> None:
    with pytest.raises(BadRequest):
        load_csr(der)


@pytest.mark.parametrize("name,norm", [
    pytest.param("ec:p-256", "ec:P-256", id="ok/ec-case"),
    pytest.param("RSA:3072", "rsa:3072", id="ok/rsa"),
    pytest.param("Ed25519", "ed25519", id="ok/ed25519"),
])
def test_key_type_names(name: str, norm: str) -> None:
    assert check_key_type_name(name) == norm


@pytest.mark.parametrize("name", ["dsa:1024", "ec:P-999", "rsa:512", "rsa:x"])
def test_key_type_names_fail(name: str) -> None:
    with pytest.raises(ValueError):
        check_key_type_name(name)


def test_csrattrs_roundtrip_and_key_types() -> None:
    entries = [CsrAttribute(c.OID_CHALLENGE_PASSWORD.dotted_string), key_type_attribute("ec:P-384"),
               key_type_attribute("rsa:3072"), key_type_attribute("ed25519")]
    attrs = decode_csrattrs(encode_csrattrs([e for e in entries if e]))
    assert c.OID_CHALLENGE_PASSWORD.dotted_string in attrs.oids()
    assert key_types_from(attrs) == ["ec:P-384", "rsa:3072", "ed25519"]


def test_csrattrs_rfc7030_example_with_unknown_entries() -> None:
    # RFC 7030 Appendix A.4 (challengePassword, EC P-384, an extension request, ecdsa-with-SHA384).
    ex = base64.b64decode("MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw==")
    attrs = decode_csrattrs(ex)
    assert key_types_from(attrs) == ["ec:P-384"]
    assert c.OID_ECDSA_SHA384.dotted_string in attrs.oids()


@pytest.mark.parametrize("der", [pytest.param(b"\x04\x00", id="fail/octet-string"),
                                 pytest.param(b"\x30\x80", id="fail/truncated")])
def test_csrattrs_malformed(der: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_csrattrs(der)


def test_certs_only_roundtrip(tmp_path: object) -> None:
    from estkit.ca.create import ca_name, make_ca_certificate
    from estkit.ca.signer import KeySigner
    k1, k2 = generate_key("ec:P-256"), generate_key("ec:P-256")
    root = make_ca_certificate(ca_name("R"), k1.public_key(), KeySigner(k1))
    sub = make_ca_certificate(ca_name("S"), k2.public_key(), KeySigner(k1), issuer=root)
    got = parse_certs_only(certs_only([sub, root]))
    # certificates is a DER SET OF: the order on the wire is the sorted one, not ours
    assert sorted(x.public_bytes(Encoding.DER) for x in got) == sorted([sub.public_bytes(Encoding.DER),
                                                                         root.public_bytes(Encoding.DER)])
    assert isinstance(got[0], x509.Certificate)
    with pytest.raises(BadRequest):
        parse_certs_only(b"\x30\x03\x02\x01\x00")


def test_request_fingerprint_ignores_attributes_not_what_is_asked() -> None:
    """A linked CSR re-signed with another tls-unique (RFC 7030 §3.5) asks for the same certificate."""
    key, other = generate_key("ec:P-256"), generate_key("ec:P-256")
    base = load_csr(build_csr(key, cn="d", dns=["d.example"], challenge_password="AAAAAAAAAAAAAAAA"))
    cases = {
        "ok/other-challenge-password": (build_csr(key, cn="d", dns=["d.example"],
                                                  challenge_password="BBBBBBBBBBBBBBBB"), True),
        "ok/no-challenge-password": (build_csr(key, cn="d", dns=["d.example"]), True),
        "fail/other-key": (build_csr(other, cn="d", dns=["d.example"]), False),
        "fail/other-subject": (build_csr(key, cn="e", dns=["d.example"]), False),
        "fail/other-san": (build_csr(key, cn="d", dns=["e.example"]), False),
    }
    for case, (der, same) in cases.items():
        info = load_csr(der)
        assert info.fingerprint != base.fingerprint, case
        assert (info.request_fingerprint == base.request_fingerprint) is same, case
