"""The CA's policy sequence, shaping and recording, on a real SQLite store."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.create import ca_name, make_ca_certificate
from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.profile import Profile
from estkit.ca.signer import KeySigner
from estkit.errors import BadRequest, EstError, InternalError
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.request import decode_pkcs10
from estkit.store import open_store

ALICE = RequestContext(identity=Identity(IdentityKind.USER, "alice"), peer="127.0.0.1:1")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    k = generate_key("ec:P-256")
    root = make_ca_certificate(ca_name("Test Root"), k.public_key(), KeySigner(k))
    store = open_store(f"sqlite:///{tmp_path}/ca.db")
    profiles = {"default": Profile("default", "main"),
                "short": Profile("short", "main", validity_days=2, extended_key_usage=("clientAuth", "serverAuth"),
                                 honour_san=False, allowed_key_types=("ec:P-384",))}
    return CertificateAuthority({"main": IssuingCA("main", root, KeySigner(k))}, profiles, store,
                                default_label="default")


def _bad_sig(der: bytes) -> bytes:
    b = bytearray(der)
    b[-5] ^= 1
    return bytes(b)


def _csr_with_ca_true() -> bytes:
    key = generate_key("ec:P-256")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sneaky")]))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return csr.public_bytes(Encoding.DER)


@pytest.mark.parametrize("label,csr,status,reason", [
    pytest.param(None, lambda: build_csr(generate_key("rsa:1024"), cn="weak"), 400, "at least 2048",
                 id="fail/rsa-1024"),
    pytest.param("short", lambda: build_csr(generate_key("ec:P-256"), cn="x"), 400, "not allowed",
                 id="fail/key-type-not-allowed"),
    pytest.param(None, lambda: _bad_sig(build_csr(generate_key("ec:P-256"), cn="x")), 400, "signature",
                 id="fail/bad-signature"),
    pytest.param(None, lambda: build_csr(generate_key("ec:P-256")), 400, "empty subject", id="fail/no-names"),
    pytest.param(None, lambda: build_csr(generate_key("ec:P-256"), cn="x", challenge_password="abc"), 400,
                 "linking failed", id="fail/linking-without-tls"),
    pytest.param("ghost", lambda: build_csr(generate_key("ec:P-256"), cn="x"), 404, "unknown CA label",
                 id="fail/unknown-label"),
])
def test_policy_refusals(ca: CertificateAuthority, label: str | None, csr, status: int, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EstError) as exc:
        ca.simpleenroll(label, decode_pkcs10(csr()), ALICE)
    assert exc.value.status == status and reason in exc.value.reason
    assert ca.store.count_certificates() == 0


@pytest.mark.parametrize("kt", ["ec:P-256", "ec:P-384", "rsa:2048", "ed25519"])
def test_ok_issue_each_key_type(ca: CertificateAuthority, kt: str) -> None:
    cert = ca.simpleenroll(None, decode_pkcs10(build_csr(generate_key(kt), cn="dev1", dns=["dev1.example"])), ALICE)
    assert cert.subject.rfc4514_string() == "CN=dev1"
    stored = ca.store.get_certificate(cert.serial_number)
    assert stored is not None and stored.requester == "user:alice" and stored.sans == ("DNS:dev1.example",)
    assert stored.der == cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                       fromlist=["Encoding"]).Encoding.DER)


def test_ok_ca_true_request_is_never_honoured(ca: CertificateAuthority) -> None:
    cert = ca.simpleenroll(None, decode_pkcs10(_csr_with_ca_true()), ALICE)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_ok_profile_shapes_certificate(ca: CertificateAuthority) -> None:
    cert = ca.simpleenroll("short", decode_pkcs10(build_csr(generate_key("ec:P-384"), cn="s", dns=["ignored.example"])), ALICE)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 2 * 86400 <= life.total_seconds() <= 2 * 86400 + 600
    ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_ok_serials_random_positive_unique(ca: CertificateAuthority) -> None:
    serials = {ca.simpleenroll(None, decode_pkcs10(build_csr(generate_key("ec:P-256"), cn=f"d{i}")), ALICE).serial_number
               for i in range(20)}
    assert len(serials) == 20 and all(0 < s < (1 << 159) for s in serials)
    assert max(s.bit_length() for s in serials) > 64


def test_fail_store_write_failure_issues_nothing(ca: CertificateAuthority, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ca.db")
    db.execute("CREATE TRIGGER fail_insert BEFORE INSERT ON certificates WHEN NEW.subject = 'CN=fail-store' "
               "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END;")
    db.commit()
    db.close()
    with pytest.raises(InternalError) as exc:
        ca.simpleenroll(None, decode_pkcs10(build_csr(generate_key("ec:P-256"), cn="fail-store")), ALICE)
    assert exc.value.status == 500 and "nothing was issued" in exc.value.reason
    assert ca.store.count_certificates() == 0
    ca.simpleenroll(None, decode_pkcs10(build_csr(generate_key("ec:P-256"), cn="fine")), ALICE)
    assert ca.store.count_certificates() == 1


def test_ok_csrattrs_announce_key_types_and_linking(ca: CertificateAuthority) -> None:
    from estkit.protocol.csrattrs import decode_csrattrs, key_types_from
    attrs = decode_csrattrs(ca.csrattrs("short") or b"")
    assert key_types_from(attrs) == ["ec:P-384"]
    ca.profiles["short"] = replace(ca.profiles["short"], require_linking=True)
    attrs = decode_csrattrs(ca.csrattrs("short") or b"")
    assert "1.2.840.113549.1.9.7" in attrs.oids()


def test_fail_refusal_is_audited(ca: CertificateAuthority) -> None:
    with pytest.raises(BadRequest):
        ca.simpleenroll(None, decode_pkcs10(build_csr(generate_key("rsa:1024"), cn="weak")), ALICE)
    ev = ca.store.list_audit(event="refused")
    assert ev and ev[0].identity == "user:alice" and "2048" in ev[0].detail
