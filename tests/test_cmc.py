"""/fullcmc end to end (RFC 7030 §4.3, RFC 5272): a real ``estkit serve`` over
TLS, requests built with the protocol building blocks, every response's
signature checked by us and by ``openssl cms -verify``, and every failure path
with its CMCFailInfo and HTTP status.  Revocation through CMC, then refusal of
the revoked certificate and its listing in the CRL served over HTTP, checked
with ``openssl verify -crl_check``."""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from support import ServerProcess, basic, free_port, require_tool, run, server

from estkit.protocol import constants as c
from estkit.protocol.cmc import (SUCCESS, Control, TaggedRequest, ctl_get_cert, ctl_revoke_request,
                                 decode_pkiresponse, octets_value)
from estkit.protocol.cmc_client import CmcReply, build_cmc_request, parse_cmc_response
from estkit.protocol.cmc_crmf import build_crmf
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "cmc-user", "cmc-pw-1"
# RFC 5272 §6.1.4 CMCFailInfo, written out here so that the code's own table is checked, not trusted.
RFC5272_FAIL_INFO = {"badAlg": 0, "badMessageCheck": 1, "badRequest": 2, "badTime": 3, "badCertId": 4,
                     "unsupportedExt": 5, "mustArchiveKeys": 6, "badIdentity": 7, "popRequired": 8, "popFailed": 9,
                     "noKeyReuse": 10, "internalCAError": 11, "tryLater": 12, "authDataFail": 13}
SECRET, IDENT = b"topsecret-7", "device-7"


@dataclass
class Env:
    srv: ServerProcess
    crl_port: int
    ca: list[x509.Certificate]
    tmp: Path


def _configure(crl_port: int) -> Any:
    def conf(doc: dict[str, Any]) -> None:
        doc["server"]["crl_listen"] = f"127.0.0.1:{crl_port}"
        doc["labels"]["default"]["crl_url"] = f"http://127.0.0.1:{crl_port}/crl/default.crl"
        doc["labels"]["default"]["cmc_secrets_file"] = "cmc-secrets"
        doc["labels"]["ra"] = {**doc["labels"]["default"], "extended_key_usage": ["clientAuth", "cmcRA"]}
        doc["labels"]["held"] = {**doc["labels"]["default"], "manual_approval": True, "pending_retry_after": 17}
        # RA authority is granted, never obtained (docs/policy.md): the user may use the RA label,
        # and RA certificates act as RAs.
        doc["policies"] = {"operators": {"users": [USER], "labels": ["default", "ra", "held"]},
                           "ras": {"kinds": ["ra"]}}
    return conf


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("cmc") / "d"
    d.mkdir()
    (d / "cmc-secrets").write_text(f"# identityProofV2 secrets\n{IDENT}:{SECRET.decode()}\n:anonymous-secret\n")
    port = free_port()
    with server(d, users={USER: PW}, configure=_configure(port)) as s:
        yield Env(s, port, x509.load_pem_x509_certificates(s.ca_pem.read_bytes()), tmp_path_factory.mktemp("cmcw"))


def _post(env: Env, der: bytes, *, auth: bool = False, ctx: ssl.SSLContext | None = None,
          content_type: str = c.CT_CMC_REQUEST, label: str | None = None,
          basic_auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=ctx or env.srv.ssl_context(), timeout=30)
    headers = {"Content-Type": content_type}
    if auth or basic_auth:
        headers["Authorization"] = basic(*(basic_auth or (USER, PW)))
    path = f"/.well-known/est/{label}/fullcmc" if label else "/.well-known/est/fullcmc"
    conn.request("POST", path, body=base64.b64encode(der) + b"\n", headers=headers)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def _reply(env: Env, status: int, headers: dict[str, str], body: bytes, *, expect: int) -> CmcReply:
    """Check the HTTP status and media type, verify the response's signature
    (ours and openssl's) and that openssl reads the same PKIResponse."""
    assert headers["content-type"] == c.CT_CMC_RESPONSE, body
    der = base64.b64decode(body)
    reply = parse_cmc_response(der, trusted=env.ca)
    assert status == expect, [str(s) for s in reply.statuses]
    (env.tmp / "resp.der").write_bytes(der)
    run(["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(env.tmp / "resp.der"),
         "-out", str(env.tmp / "pkiresponse.der")])
    assert decode_pkiresponse((env.tmp / "pkiresponse.der").read_bytes()) == reply.response
    return reply


def _enroll_tcr(env: Env, cn: str, **kw: Any) -> tuple[Any, x509.Certificate, CmcReply]:
    key = generate_key("ec:P-256")
    req = build_cmc_request(key, requests=[TaggedRequest(1, "tcr", build_csr(key, cn=cn))], **kw)
    reply = _reply(env, *_post(env, req.der, auth=True), expect=200)
    cert = reply.certificate_for(key.public_key())
    assert cert is not None
    return key, cert, reply


def _files(env: Env, name: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    cp, kp = env.tmp / f"{name}.pem", env.tmp / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


# -- enrollment -------------------------------------------------------------------

def test_ok_pkcs10_enroll_echoes_transaction_and_nonce(env: Env) -> None:
    require_tool("openssl")
    key = generate_key("ec:P-256")
    req = build_cmc_request(key, requests=[TaggedRequest(3, "tcr", build_csr(key, cn="cmc-tcr", dns=["t.example"]))],
                            transaction_id=424242, sender_nonce=b"nonce-from-client")
    reply = _reply(env, *_post(env, req.der, auth=True), expect=200)
    assert reply.transaction_id == 424242 and reply.recipient_nonce == b"nonce-from-client"
    sender = reply.response.control(c.OID_CMC_SENDER_NONCE.dotted_string)
    assert sender is not None  # RFC 5272 §6.6: a fresh nonce of the server's own, not an echo ...
    again = build_cmc_request(key, requests=[TaggedRequest(3, "tcr", build_csr(key, cn="cmc-tcr", dns=["t.example"]))],
                              transaction_id=424243, sender_nonce=b"nonce-from-client")
    sender2 = _reply(env, *_post(env, again.der, auth=True), expect=200).response.control(
        c.OID_CMC_SENDER_NONCE.dotted_string)
    assert sender2 is not None
    nonces = {octets_value(sender), octets_value(sender2)}
    assert len(nonces) == 2 and b"nonce-from-client" not in nonces  # ... and new for every response
    assert [(s.status, s.body_list) for s in reply.statuses] == [(SUCCESS, (3,))]
    cert = reply.certificate_for(key.public_key())
    assert cert is not None and cert.subject.rfc4514_string() == "CN=cmc-tcr"
    # The issued certificate carries the CRL distribution point.
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"http://127.0.0.1:{env.crl_port}/crl/default.crl"
    (env.tmp / "tcr.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    run(["openssl", "verify", "-CAfile", str(env.srv.ca_pem), str(env.tmp / "tcr.pem")])


@pytest.mark.parametrize("kind,ident", [("crm", IDENT), ("tcr", IDENT), ("crm", None)],
                         ids=["ok/crmf-identity-proof", "ok/pkcs10-identity-proof", "ok/crmf-proof-no-identification"])
def test_enroll_with_identity_proof_v2(env: Env, kind: str, ident: str | None) -> None:
    """RFC 5272 §6.2: no HTTP credentials, the shared secret proves the identity."""
    key = generate_key("ec:P-384")
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estkit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"proof-{kind}")])
    der = (build_crmf(key, cert_req_id=5, subject=name, dns=["crmf.example"]) if kind == "crm"
           else build_csr(key, subject=name, dns=["crmf.example"]))
    secret = SECRET if ident else b"anonymous-secret"
    req = build_cmc_request(key, requests=[TaggedRequest(5, kind, der)], shared_secret=secret, identification=ident)
    reply = _reply(env, *_post(env, req.der), expect=200)
    cert = reply.certificate_for(key.public_key())
    assert cert is not None and cert.subject == name
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["crmf.example"]
    assert [s.body_list for s in reply.statuses] == [(5,)]


@pytest.mark.parametrize("kind", ["tcr", "crm"], ids=["ok/renew-pkcs10", "ok/renew-crmf"])
def test_renewal_signed_by_existing_certificate(env: Env, kind: str) -> None:
    """RFC 7030 §4.3: a renewal is signed by the certificate being renewed; no other credentials."""
    old_key, old_cert, _ = _enroll_tcr(env, f"renew-{kind}")
    new_key = generate_key("ec:P-256")
    der = (build_crmf(new_key, cert_req_id=2, subject=old_cert.subject) if kind == "crm"
           else build_csr(new_key, subject=old_cert.subject))
    req = build_cmc_request(old_key, requests=[TaggedRequest(2, kind, der)], signer_cert=old_cert)
    reply = _reply(env, *_post(env, req.der), expect=200)
    new_cert = reply.certificate_for(new_key.public_key())
    assert new_cert is not None and new_cert.subject == old_cert.subject
    assert new_cert.serial_number != old_cert.serial_number


def test_ok_get_cert(env: Env) -> None:
    key, cert, _ = _enroll_tcr(env, "getcert-target")
    req = build_cmc_request(key, controls=[ctl_get_cert(1, cert.issuer, cert.serial_number)], signer_cert=cert)
    reply = _reply(env, *_post(env, req.der), expect=200)
    assert cert in reply.certificates and reply.statuses[0].body_list == (1,)


# -- revocation, refusal, CRL -------------------------------------------------------

def _crl(env: Env) -> x509.CertificateRevocationList:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.crl_port}/crl/default.crl", timeout=10) as r:
        assert r.headers["Content-Type"] == c.CT_PKIX_CRL
        return x509.load_der_x509_crl(r.read())


def test_ok_revoke_then_refused_and_listed_in_crl(env: Env) -> None:
    require_tool("openssl")
    key, cert, _ = _enroll_tcr(env, "to-be-revoked")
    _okey, other, _ = _enroll_tcr(env, "stays-valid")
    before = _crl(env)
    number_before = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    req = build_cmc_request(key, controls=[ctl_revoke_request(1, cert.issuer, cert.serial_number, 1)],
                            signer_cert=cert)
    reply = _reply(env, *_post(env, req.der), expect=200)
    assert [(s.status, s.body_list) for s in reply.statuses] == [(SUCCESS, (1,))]

    # Listed in the CRL served over plain HTTP, with a larger CRL number and the reason.
    crl = _crl(env)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number_before
    assert crl.is_signature_valid(env.ca[0].public_key())  # type: ignore[arg-type]

    # openssl honours the CRL: revoked fails, the other certificate passes.
    (env.tmp / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    cp, kp = _files(env, "revoked", key, cert)
    op, _ = _files(env, "valid", _okey, other)
    bad = run(["openssl", "verify", "-crl_check", "-CAfile", str(env.srv.ca_pem), "-CRLfile", str(env.tmp / "crl.pem"),
               str(cp)], check=False)
    assert bad.returncode != 0 and b"certificate revoked" in bad.stdout + bad.stderr
    run(["openssl", "verify", "-crl_check", "-CAfile", str(env.srv.ca_pem), "-CRLfile", str(env.tmp / "crl.pem"),
         str(op)])

    # The revoked certificate can no longer authenticate: TLS simplereenroll ...
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=env.srv.ssl_context(cp, kp), timeout=30)
    conn.request("POST", "/.well-known/est/simplereenroll", body=base64.b64encode(build_csr(key, cn="to-be-revoked")),
                 headers={"Content-Type": c.CT_PKCS10})
    r = conn.getresponse()
    assert r.status == 403 and b"revoked" in r.read()
    conn.close()
    # ... nor renew through CMC (badIdentity).
    req = build_cmc_request(key, requests=[TaggedRequest(1, "tcr", build_csr(key, subject=cert.subject))],
                            signer_cert=cert)
    reply = _reply(env, *_post(env, req.der), expect=403)
    assert reply.statuses[0].fail_info == RFC5272_FAIL_INFO["badIdentity"]
    assert "revoked" in (reply.statuses[0].status_string or "")


# -- every failure path -------------------------------------------------------------

def _self_signed(key: Any, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(77).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))


def _case(env: Env, case: str) -> tuple[bytes, dict[str, Any]]:
    """The request body and _post options for one failure case."""
    key = generate_key("ec:P-256")
    tcr = [TaggedRequest(1, "tcr", build_csr(key, cn=f"fail-{case}"))]
    if case == "unknown-control":
        ctl = Control(9, "1.3.6.1.5.5.7.7.99", (b"\x05\x00",))
        return build_cmc_request(key, requests=tcr, controls=[ctl]).der, {"auth": True}
    if case == "bad-signature":
        der = bytearray(build_cmc_request(key, requests=tcr).der)
        der[-5] ^= 0x01  # inside the signature value at the end
        return bytes(der), {"auth": True}
    if case == "not-cms":
        return b"\x30\x03\x02\x01\x01", {"auth": True}
    if case == "not-pkidata":
        from estkit.protocol.cmc_cms import raw_signer, sign_content
        return sign_content(c.OID_DATA.dotted_string, b"hello", sign=raw_signer(key),
                            public_key=key.public_key()), {"auth": True}
    if case == "wrong-media-type":
        return build_cmc_request(key, requests=tcr).der, {"auth": True, "content_type": c.CT_PKCS10}
    if case == "no-authentication":
        return build_cmc_request(key, requests=tcr).der, {}
    if case == "wrong-shared-secret":
        return build_cmc_request(key, requests=tcr, shared_secret=b"guess", identification=IDENT).der, {}
    if case == "unknown-identification":
        return build_cmc_request(key, requests=tcr, shared_secret=SECRET, identification="nobody").der, {}
    if case == "pkcs10-pop":
        csr = bytearray(build_csr(key, cn="bad-pop"))
        csr[-3] ^= 0x55
        return build_cmc_request(key, requests=[TaggedRequest(1, "tcr", bytes(csr))]).der, {"auth": True}
    if case == "crmf-pop":
        crm = bytearray(build_crmf(key, cert_req_id=1, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                              "bad")])))
        crm[-3] ^= 0x55
        return build_cmc_request(key, requests=[TaggedRequest(1, "crm", bytes(crm))]).der, {"auth": True}
    if case == "linking":
        csr = build_csr(key, cn="linked", challenge_password="AAAAAAAAAAAAAAAA")
        return build_cmc_request(key, requests=[TaggedRequest(1, "tcr", csr)]).der, {"auth": True}
    if case == "foreign-signer":
        other = generate_key("ec:P-256")
        return build_cmc_request(other, requests=tcr, signer_cert=_self_signed(other, "foreign")).der, {}
    if case == "renew-changes-subject":
        okey, ocert, _ = _enroll_tcr(env, "renew-subject-old")
        return build_cmc_request(okey, requests=[TaggedRequest(1, "tcr", build_csr(key, cn="renew-subject-new"))],
                                 signer_cert=ocert).der, {}
    if case == "revoke-someone-else":
        _k1, victim, _ = _enroll_tcr(env, "victim")
        k2, attacker, _ = _enroll_tcr(env, "attacker")
        return build_cmc_request(k2, controls=[ctl_revoke_request(1, victim.issuer, victim.serial_number, 1)],
                                 signer_cert=attacker).der, {}
    if case == "revoke-unknown-serial":
        rk = generate_key("ec:P-256")
        st, _h, body = _post_ra(env, rk)
        ra = parse_certs_only(base64.b64decode(body))[0]
        return build_cmc_request(rk, controls=[ctl_revoke_request(1, ra.issuer, 0x1234567, 0)],
                                 signer_cert=ra).der, {}
    if case == "get-unknown-cert":
        okey, ocert, _ = _enroll_tcr(env, "getcert-asker")
        return build_cmc_request(okey, controls=[ctl_get_cert(1, ocert.issuer, 0x7654321)], signer_cert=ocert).der, {}
    if case == "wrong-basic-password":
        return build_cmc_request(key, requests=tcr).der, {"basic_auth": (USER, "wrong")}
    if case == "proof-bad-alg":
        from pyasn1.codec.der import encoder
        from pyasn1.type import univ
        from pyasn1_modules import rfc6402
        v = rfc6402.IdentifyProofV2()
        v["proofAlgID"]["algorithm"] = univ.ObjectIdentifier("1.3.14.3.2.26")  # SHA-1
        v["macAlgId"]["algorithm"] = univ.ObjectIdentifier("1.2.840.113549.2.7")  # HMAC-SHA1
        v["witness"] = b"\x00" * 20
        ctl = Control(6, c.OID_CMC_IDENTITY_PROOF_V2.dotted_string, (encoder.encode(v),))
        return build_cmc_request(key, requests=tcr, controls=[ctl]).der, {}
    if case == "crmf-key-not-allowed":
        k521 = generate_key("ec:P-521")
        crm = build_crmf(k521, cert_req_id=1, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p521")]))
        return build_cmc_request(k521, requests=[TaggedRequest(1, "crm", crm)]).der, {"auth": True}
    if case == "held-for-approval":
        return build_cmc_request(key, requests=tcr).der, {"auth": True, "label": "held"}
    if case == "empty-pkidata":
        return build_cmc_request(key).der, {"auth": True}
    raise AssertionError(case)


def _post_ra(env: Env, key: Any) -> tuple[int, dict[str, str], bytes]:
    """An RA certificate (EKU id-kp-cmcRA) from the 'ra' label via /simpleenroll."""
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=env.srv.ssl_context(), timeout=30)
    conn.request("POST", "/.well-known/est/ra/simpleenroll", body=base64.b64encode(build_csr(key, cn="ra-1")),
                 headers={"Content-Type": c.CT_PKCS10, "Authorization": basic(USER, PW)})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    assert out[0] == 200, out[2]
    return out


FAILURES = [
    # case, HTTP status, CMCFailInfo, body part named in the status (None: none), text in statusString
    ("unknown-control", 400, "badRequest", 9, "unknown control 1.3.6.1.5.5.7.7.99 in body part 9"),
    ("bad-signature", 400, "badMessageCheck", None, "does not verify"),
    ("not-cms", 400, "badRequest", None, "CMS"),
    ("not-pkidata", 400, "badRequest", None, "not id-cct-PKIData"),
    ("wrong-media-type", 415, "badRequest", None, "CMC-request"),
    ("no-authentication", 401, "badIdentity", None, "authentication required"),
    ("wrong-shared-secret", 401, "badIdentity", 5, "identityProofV2 does not verify"),
    ("unknown-identification", 401, "badIdentity", 5, "identityProofV2 does not verify"),
    ("pkcs10-pop", 400, "popFailed", 1, "proof of possession"),
    ("crmf-pop", 400, "popFailed", 1, "proof of possession"),
    ("linking", 400, "popFailed", 1, "linking"),
    ("foreign-signer", 403, "badIdentity", None, "did not issue"),
    ("renew-changes-subject", 400, "badRequest", 1, "subject differs"),
    ("revoke-someone-else", 403, "badIdentity", 1, "revokeRequest must be signed"),
    ("revoke-unknown-serial", 404, "badCertId", 1, "no certificate with serial 1234567"),
    ("get-unknown-cert", 404, "badCertId", 1, "no certificate with serial 7654321"),
    ("empty-pkidata", 400, "badRequest", None, "asks for nothing"),
    ("wrong-basic-password", 401, "badIdentity", None, "wrong user name or password"),
    ("proof-bad-alg", 400, "badAlg", 6, "SHA-256 and HMAC-SHA256"),
    ("crmf-key-not-allowed", 400, "badAlg", 1, "key type ec:P-521 is not allowed"),
    ("held-for-approval", 503, "tryLater", 1, "waiting for approval"),
]


@pytest.mark.parametrize("case,status,fail,part,text", FAILURES, ids=[f"fail/{f[0]}" for f in FAILURES])
def test_cmc_failure(env: Env, case: str, status: int, fail: str, part: int | None, text: str) -> None:
    require_tool("openssl")
    der, opts = _case(env, case)  # may enroll helpers (a renewal's old certificate, an attacker) first
    issued_before = _issued_count(env)
    st, headers, body = _post(env, der, **opts)
    reply = _reply(env, st, headers, body, expect=status)
    failed = [s for s in reply.statuses if s.status != SUCCESS]
    assert len(failed) == 1, reply.statuses
    assert failed[0].fail_info == RFC5272_FAIL_INFO[fail], failed[0]
    assert text in (failed[0].status_string or ""), failed[0]
    if part is not None:
        assert part in failed[0].body_list
    if status == 401:
        assert headers["www-authenticate"].startswith("Basic")
    if fail == "tryLater":
        assert headers["retry-after"] == "17"
    # Nothing was issued: not for this request's key, nor any other row in the store.
    assert _issued_count(env) == issued_before
    assert not any(cert.subject.rfc4514_string().startswith("CN=fail-") for cert in reply.certificates)


def _issued_count(env: Env) -> int:
    import sqlite3
    db = sqlite3.connect(env.srv.dir / "estkit.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0])
    finally:
        db.close()


def test_ok_openssl_signed_renewal_sent_with_curl(env: Env) -> None:
    """Interop: OpenSSL's own CMS tooling signs the PKIData (``openssl cms -sign
    -econtent_type id-cct-PKIData``), curl posts it, openssl reads the response."""
    require_tool("openssl", "curl")
    old_key, old_cert, _ = _enroll_tcr(env, "openssl-signed")
    cp, kp = _files(env, "openssl-signed", old_key, old_cert)
    new_key = generate_key("ec:P-256")
    from estkit.protocol.cmc import ctl_transaction_id, encode_pkidata
    pkidata, _ = encode_pkidata([ctl_transaction_id(2, 99)],
                                [TaggedRequest(1, "tcr", build_csr(new_key, subject=old_cert.subject))])
    (env.tmp / "pkidata.der").write_bytes(pkidata)
    run(["openssl", "cms", "-sign", "-binary", "-nodetach", "-econtent_type", c.OID_CT_PKIDATA.dotted_string,
         "-in", str(env.tmp / "pkidata.der"), "-signer", str(cp), "-inkey", str(kp), "-outform", "DER",
         "-out", str(env.tmp / "req.der")])
    (env.tmp / "req.b64").write_bytes(base64.b64encode((env.tmp / "req.der").read_bytes()) + b"\n")
    out = run(["curl", "-sS", "--cacert", str(env.srv.ca_pem), "-H", f"Content-Type: {c.CT_CMC_REQUEST}",
               "--data-binary", f"@{env.tmp / 'req.b64'}", "-o", str(env.tmp / "resp.b64"),
               "-w", "%{http_code} %{content_type}", env.srv.url("fullcmc")]).stdout.decode()
    assert out == f"200 {c.CT_CMC_RESPONSE}"
    (env.tmp / "resp.der").write_bytes(base64.b64decode((env.tmp / "resp.b64").read_bytes()))
    run(["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(env.tmp / "resp.der"),
         "-certsout", str(env.tmp / "resp-certs.pem"), "-out", str(env.tmp / "pkiresponse.der")])
    resp = decode_pkiresponse((env.tmp / "pkiresponse.der").read_bytes())
    assert [(s.status, s.body_list) for s in resp.statuses] == [(SUCCESS, (1,))]
    certs = x509.load_pem_x509_certificates((env.tmp / "resp-certs.pem").read_bytes())
    assert any(x.public_key() == new_key.public_key() and x.subject == old_cert.subject for x in certs)


def test_fail_store_refuses_record_is_internal_ca_error(env: Env) -> None:
    """A real store failure (an SQLite trigger refusing one subject) is
    internalCAError with 500, and nothing is issued."""
    import sqlite3
    db = sqlite3.connect(env.srv.dir / "estkit.db")
    db.execute("CREATE TRIGGER refuse_one BEFORE INSERT ON certificates WHEN NEW.subject = 'CN=fail-internal' "
               "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END")
    db.commit()
    try:
        key = generate_key("ec:P-256")
        req = build_cmc_request(key, requests=[TaggedRequest(1, "tcr", build_csr(key, cn="fail-internal"))])
        reply = _reply(env, *_post(env, req.der, auth=True), expect=500)
        assert reply.statuses[0].fail_info == RFC5272_FAIL_INFO["internalCAError"]
        assert reply.statuses[0].body_list == (1,)
        assert reply.certificate_for(key.public_key()) is None
    finally:
        db.execute("DROP TRIGGER refuse_one")
        db.commit()
        db.close()
