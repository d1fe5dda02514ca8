"""The pure building blocks: CMCStatusInfoV2 both ways (the pyasn1-modules
trap), identityProofV2 over the exact reqSequence bytes, the serverkeygen
multipart in every form peers send, EnvelopedData to each supported key."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1.codec.der import decoder, encoder
from pyasn1_modules import rfc6402

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.cmc import (FAIL_INFO, FAILED, SUCCESS, StatusInfo, TaggedRequest, decode_pkidata,
                                 decode_status_info_v2, encode_pkidata, encode_status_info_v2,
                                 identity_proof_witness)
from estkit.protocol.cmc_client import build_cmc_request
from estkit.protocol.cmc_cms import parse_signed
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.multipart import KEY_PLAIN, build_serverkeygen, parse_serverkeygen
from estkit.protocol.pkcs7 import certs_only


@pytest.mark.parametrize("info", [
    StatusInfo(SUCCESS, (1, 2)),
    StatusInfo(FAILED, (7,), "unknown control", FAIL_INFO["badRequest"]),
    StatusInfo(FAILED, (), None, FAIL_INFO["internalCAError"]),
], ids=["ok/success", "ok/failed-with-failinfo", "ok/failed-empty-bodylist"])
def test_status_info_v2_round_trip(info: StatusInfo) -> None:
    der = encode_status_info_v2(info)
    assert decode_status_info_v2(der) == info


def test_ok_status_info_v2_from_pyasn1_encoder_decodes_by_hand() -> None:
    """What pyasn1-modules 0.4.2 encodes but (with otherInfo) cannot decode itself."""
    v = rfc6402.CMCStatusInfoV2()
    v["cMCStatus"] = 2
    v["bodyList"][0]["bodyPartID"] = 4
    v["statusString"] = "nope"
    v["otherInfo"]["failInfo"] = FAIL_INFO["popFailed"]
    der = encoder.encode(v)
    assert decode_status_info_v2(der) == StatusInfo(FAILED, (4,), "nope", FAIL_INFO["popFailed"])


def test_ok_identity_proof_covers_exact_req_sequence() -> None:
    """RFC 5272 §6.2.1/§6.2.3: HMAC over the reqSequence as encoded, key = SHA-256(secret || identification)."""
    key = generate_key("ec:P-256")
    reqs = [TaggedRequest(1, "tcr", build_csr(key, cn="w"))]
    req = build_cmc_request(key, requests=reqs, shared_secret=b"s3", identification="id-1")
    pd = decode_pkidata(parse_signed(req.der).content)
    proof = pd.control(c.OID_CMC_IDENTITY_PROOF_V2.dotted_string)
    assert proof is not None
    v, _ = decoder.decode(proof.values[0], asn1Spec=rfc6402.IdentifyProofV2())
    expect = hmac.new(hashlib.sha256(b"s3id-1").digest(), pd.req_sequence_der, hashlib.sha256).digest()
    assert bytes(v["witness"]) == expect == identity_proof_witness(b"s3", pd.req_sequence_der, "id-1")
    # The req_sequence kept is the request's own bytes, embedded in the PKIData.
    pkidata, reqseq = encode_pkidata(pd.controls, pd.requests)
    assert reqseq == pd.req_sequence_der and reqseq in pkidata


def _cert_and_key() -> tuple[x509.Certificate, bytes]:
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    k = generate_key("ec:P-256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mp")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(3).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(k, hashes.SHA256()))
    return cert, k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _variant(name: str) -> tuple[bytes, str, bytes, x509.Certificate]:
    cert, key = _cert_and_key()
    p7 = certs_only([cert])
    if name == "estkit":
        body, ctype = build_serverkeygen(key, p7, boundary="b0und")
        return body, ctype, key, cert
    b64k, b64c = base64.b64encode(key).decode(), base64.b64encode(p7).decode()
    wrapped = "\n".join(b64c[i:i + 64] for i in range(0, len(b64c), 64))
    key_part = f"Content-Type: application/pkcs8\nContent-Transfer-Encoding: base64\n\n{b64k}\n"
    cert_part = f"Content-Type: application/pkcs7-mime; smime-type=certs-only\n\n{wrapped}\n"
    if name == "cert-first-lf":
        body = f"--xyz\n{cert_part}--xyz\n{key_part}--xyz--\n"
        return body.encode(), "multipart/mixed; boundary=xyz", key, cert
    if name == "rfc7030-a4-quoted-space":  # "multipart/mixed ; boundary=..." with a preamble
        body = f"preamble\r\n--est-boundary\r\n{key_part}--est-boundary\r\n{cert_part}--est-boundary--\r\n"
        return body.replace("\n", "\r\n").replace("\r\r", "\r").encode(), \
            'multipart/mixed ; boundary="est-boundary"', key, cert
    if name == "libest-pkcs1-key":
        from cryptography.hazmat.primitives.asymmetric import rsa
        rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pkcs1 = rk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
        body = (f"--q\r\nContent-Type: application/pkcs8\r\n\r\n{base64.b64encode(pkcs1).decode()}\r\n"
                f"--q\r\n{cert_part.replace(chr(10), chr(13) + chr(10))}--q--\r\n")
        return body.encode(), "multipart/mixed; boundary=q", pkcs1, cert
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["estkit", "cert-first-lf", "rfc7030-a4-quoted-space", "libest-pkcs1-key"],
                         ids=["ok/estkit", "ok/cert-first-lf", "ok/rfc7030-a4-quoted-space", "ok/libest-pkcs1-key"])
def test_parse_serverkeygen_variants(name: str) -> None:
    body, ctype, key, cert = _variant(name)
    parts = parse_serverkeygen(body, ctype)
    assert parts.key_kind == KEY_PLAIN and parts.key_der == key and parts.certificates == (cert,)
    serialization.load_der_private_key(parts.key_der, None)  # PKCS#8 or PKCS#1: both load


@pytest.mark.parametrize("ctype,body,message", [
    ("application/pkcs7-mime", b"x", "not multipart/mixed"),
    ("multipart/mixed", b"--a\r\n\r\n--a--", "boundary"),
    ("multipart/mixed; boundary=a", b"--a\r\nContent-Type: application/pkcs8\r\n\r\nAAAA\r\n--a--\r\n",
     "no certs-only part"),
    ("multipart/mixed; boundary=a", b"--a\r\nContent-Type: text/plain\r\n\r\nhi\r\n--a--\r\n", "no application/pkcs8"),
], ids=["fail/not-multipart", "fail/no-boundary", "fail/no-cert-part", "fail/no-key-part"])
def test_parse_serverkeygen_refuses(ctype: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_serverkeygen(body, ctype)
    assert message in err.value.reason
