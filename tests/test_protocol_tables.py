"""The small shared encodings and tables of estkit.protocol, each checked
against an independent source: pyasn1's own DER encoder for lengths, and
cryptography's CRLReason encoding for RFC 5280 §5.3.1 reason codes."""

from __future__ import annotations

import pytest
from cryptography import x509
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from estkit.client import REVOCATION_REASONS
from estkit.protocol.constants import CRL_REASONS
from estkit.protocol.der import SEQUENCE, der_length, der_tlv


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24],
                         ids=lambda n: f"ok/length-{n}")
def test_der_tlv_matches_pyasn1(n: int) -> None:
    body = b"\x5a" * n
    assert der_tlv(0x04, body) == encoder.encode(univ.OctetString(body))
    assert der_tlv(SEQUENCE, encoder.encode(univ.OctetString(body))) == encoder.encode(
        univ.SequenceOf(componentType=univ.OctetString()).setComponents(univ.OctetString(body)))


def test_fail_negative_length() -> None:
    with pytest.raises(ValueError):
        der_length(-1)


def test_crl_reason_codes_are_rfc5280s() -> None:
    # cryptography writes the CRLReason extension as DER ENUMERATED: its last byte is the code.
    for flag in x509.ReasonFlags:
        assert CRL_REASONS[flag.value] == x509.CRLReason(flag).public_bytes()[-1], flag
    assert set(CRL_REASONS) == {f.value for f in x509.ReasonFlags}
    assert REVOCATION_REASONS == {k: v for k, v in CRL_REASONS.items() if k != "removeFromCRL"}


def test_private_string_types_give_the_der_tags_estkit_relies_on() -> None:
    """estkit.protocol.asn1strings is bounded to cryptography<51; this fails first if a
    version changes what the private string-type API encodes."""
    from importlib.metadata import version

    from pyasn1.codec.der import decoder as der_decoder
    from pyasn1_modules import rfc2986

    from estkit.protocol.asn1strings import OCTET_STRING, PRINTABLE_STRING, string_type
    from estkit.protocol.constants import OID_CHALLENGE_PASSWORD
    from estkit.protocol.csr import build_csr
    from estkit.protocol.keys import generate_key

    assert 42 <= int(version("cryptography").split(".")[0]) < 51
    kid = x509.ObjectIdentifier("1.2.840.113549.1.9.16.2.54")  # AsymmetricDecryptKeyIdentifier
    der = build_csr(generate_key("ec:P-256"), cn="t", challenge_password="abc",
                    octet_attributes=[(kid, b"\x01\x02")])
    req, _ = der_decoder.decode(der, asn1Spec=rfc2986.CertificationRequest())
    tags = {str(a["type"]): bytes(a["values"][0])[0] for a in req["certificationRequestInfo"]["attributes"]}
    assert tags[OID_CHALLENGE_PASSWORD.dotted_string] == 0x13 and tags[kid.dotted_string] == 0x04
    assert PRINTABLE_STRING.value == 0x13 and OCTET_STRING.value == 0x04
    assert string_type(0x0C).value == 0x0C  # UTF8String, as CRMF names may carry it
