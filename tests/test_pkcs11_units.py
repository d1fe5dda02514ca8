"""PKCS#11 pieces that need no token: RFC 7512 URIs, where the PIN comes from, and
the assembly of certificates, CRLs and OCSP responses around a signature made
outside cryptography (estkit.ca.external), checked with a key cryptography holds
standing in for the token."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from estkit.ca import external
from estkit.ca.create import ca_name, make_ca_certificate
from estkit.ca.external import Scheme
from estkit.ca.pkcs11_uri import PinError, Pkcs11Uri, TokenSettings
from estkit.ca.signer import KeySigner
from estkit.protocol.keys import generate_key


@pytest.mark.parametrize("text,want", [
    ("pkcs11:token=estkit;object=root-ca;type=private", Pkcs11Uri(token="estkit", object="root-ca", type="private")),
    ("pkcs11:token=My%20Token;id=%01%02;x-vendor=1", Pkcs11Uri(token="My Token", id=b"\x01\x02")),
    ("PKCS11:serial=12ab;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
     Pkcs11Uri(serial="12ab", object="k", module_path="/usr/lib/softhsm/libsofthsm2.so", pin_source="file:/run/pin")),
], ids=["ok/label", "ok/percent-encoded-and-vendor", "ok/query"])
def test_ok_uri_parse(text: str, want: Pkcs11Uri) -> None:
    assert Pkcs11Uri.parse(text) == want
    assert Pkcs11Uri.parse(str(want)) == want  # str() writes what parse() reads


@pytest.mark.parametrize("text,message", [
    ("file:/etc/key.pem", "not a PKCS#11 URI"),
    ("pkcs11:token=t;object=k?pin-value=1234", "pin-value is refused"),
    ("pkcs11:token=t;object=k;colour=red", "unknown attribute 'colour'"),
    ("pkcs11:token=t;object=k;type=public", "a CA key is a private key"),
    ("pkcs11:token=t;object=k;type=weird", "unknown type"),
    ("pkcs11:object=k", "name the token"),
    ("pkcs11:token=t", "name the key"),
    ("pkcs11:token=t;token=u;object=k", "given twice"),
    ("pkcs11:token;object=k", "has no value"),
], ids=["fail/not-pkcs11", "fail/pin-value", "fail/unknown-attr", "fail/public", "fail/bad-type", "fail/no-token",
        "fail/no-object", "fail/twice", "fail/no-value"])
def test_fail_uri_parse(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        Pkcs11Uri.parse(text)
    assert message in str(exc.value)


def test_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;object=k")
    monkeypatch.setenv("ESTKIT_PKCS11_PIN", "from-env")
    monkeypatch.setenv("OTHER_PIN", "from-other")
    assert uri.pin(TokenSettings()) == "from-env"
    assert uri.pin(TokenSettings(pin_env="OTHER_PIN")) == "from-other"
    (tmp_path / "pin").write_text("from-file\n")
    by_file = Pkcs11Uri.parse(f"pkcs11:token=t;object=k?pin-source=file:{tmp_path / 'pin'}")
    assert by_file.pin(TokenSettings()) == "from-file"
    monkeypatch.delenv("ESTKIT_PKCS11_PIN")
    with pytest.raises(PinError, match="environment variable ESTKIT_PKCS11_PIN"):
        uri.pin(TokenSettings())
    with pytest.raises(PinError, match="cannot read the PIN"):
        Pkcs11Uri.parse("pkcs11:token=t;object=k?pin-source=file:/nonexistent/pin").pin(TokenSettings())
    with pytest.raises(ValueError, match="no PKCS#11 module"):
        uri.module(TokenSettings())


# -- assembly around an outside signature ---------------------------------------------------------------------


def _raw_signer(key: CertificateIssuerPrivateKeyTypes) -> Callable[[bytes, Scheme], bytes]:
    """What a token does, done by a key cryptography holds."""
    def sign(data: bytes, scheme: Scheme) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, scheme.padding(), scheme.hash)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(scheme.hash))
    return sign


CASES = [("ec:P-256", False), ("ec:P-384", False), ("rsa:2048", False), ("rsa:2048", True)]


@pytest.mark.parametrize("key_type,pss", CASES, ids=["ok/p256", "ok/p384", "ok/rsa-pkcs1", "ok/rsa-pss"])
def test_ok_assembled_structures_verify(key_type: str, pss: bool) -> None:
    key = generate_key(key_type)
    pub = key.public_key()
    scheme = external.scheme_for(pub, pss=pss)  # type: ignore[arg-type]
    root = make_ca_certificate(ca_name("Stand-in Test Root"), pub, KeySigner(key, pss=pss))  # type: ignore[arg-type]
    leaf_key = generate_key("ec:P-256")
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(ca_name("leaf")).issuer_name(root.subject)
               .public_key(leaf_key.public_key()).serial_number(7).not_valid_before(now)
               .not_valid_after(now + timedelta(days=1)))
    cert = external.sign_certificate(builder, pub, scheme, _raw_signer(key))  # type: ignore[arg-type]
    cert.verify_directly_issued_by(root)
    assert cert.signature_algorithm_oid == root.signature_algorithm_oid
    crl = external.sign_crl(x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(now)
                            .next_update(now + timedelta(days=1)), pub, scheme, _raw_signer(key))  # type: ignore[arg-type]
    assert crl.is_signature_valid(pub)  # type: ignore[arg-type]
    ob = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=root, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
        next_update=None, revocation_time=None, revocation_reason=None)
    resp = external.sign_ocsp(ob, pub, scheme, _raw_signer(key))  # type: ignore[arg-type]
    reference = KeySigner(key).sign_ocsp(ob, root)  # what cryptography itself produces
    assert resp.responder_key_hash == reference.responder_key_hash
    assert resp.signature_algorithm_oid == reference.signature_algorithm_oid
    assert external.verify_raw(pub, Scheme(scheme.hash), resp.signature, resp.tbs_response_bytes)  # type: ignore[arg-type]


def test_fail_a_signature_by_another_key_is_never_returned() -> None:
    key, other = generate_key("ec:P-256"), generate_key("ec:P-256")
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(ca_name("x")).issuer_name(ca_name("x"))
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + timedelta(days=1)))
    scheme = external.scheme_for(key.public_key())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not verify"):
        external.sign_certificate(builder, key.public_key(), scheme, _raw_signer(other))  # type: ignore[arg-type]
