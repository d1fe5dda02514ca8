"""The one place estkit reaches into cryptography's private API.

cryptography has no public way to choose the ASN.1 string type of a CSR
attribute (RFC 7030 Appendix A.3: the challengePassword is a PrintableString;
§4.4.1.1-2: the key identifiers are OCTET STRINGs) or of a name attribute
decoded from CRMF, other than its ``_ASN1Type`` enum and the ``_tag=`` /
``_type=`` keywords.  The dependency is therefore bounded in pyproject.toml
(``cryptography>=42,<51``: every version of that range was released with this
API), and tests/test_protocol_tables.py checks the DER that comes out, so a
change in a new major version fails there first, not in a peer.
"""

from __future__ import annotations

from cryptography.x509.name import _ASN1Type

__all__ = ["ASN1String", "PRINTABLE_STRING", "OCTET_STRING", "string_type"]

ASN1String = _ASN1Type
PRINTABLE_STRING = _ASN1Type.PrintableString  # DER tag 0x13
OCTET_STRING = _ASN1Type.OctetString          # DER tag 0x04


def string_type(tag: int) -> _ASN1Type:
    """The string type of a universal DER tag (UTF8String 0x0C, PrintableString 0x13...);
    ValueError for a tag that is not one of cryptography's string types."""
    return _ASN1Type(tag)
