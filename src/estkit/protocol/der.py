"""DER tag-length-value encoding, written once (X.690 §8.1.3, DER §10.1).

For the few structures estkit assembles from DER pieces it already holds (a
CRMF CertRequest around a certificate's subject, a getCert body, an RFC 5958
key package around a PKCS#8 key): re-parsing those pieces with pyasn1 only to
encode them again would be slower and lossier than wrapping the bytes.
"""

from __future__ import annotations

__all__ = ["der_length", "der_tlv", "SEQUENCE"]

SEQUENCE = 0x30


def der_length(n: int) -> bytes:
    """The DER length octets of ``n`` content bytes: short form below 128,
    else the long form with the fewest length bytes (X.690 §8.1.3, §10.1)."""
    if n < 0:
        raise ValueError("a DER length is never negative")
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_tlv(tag: int, body: bytes) -> bytes:
    """One DER element: the (single-byte) identifier ``tag``, its length, ``body``."""
    return bytes([tag]) + der_length(len(body)) + body
