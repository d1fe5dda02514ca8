"""CSR attributes (RFC 7030 §4.5, RFC 8951 §4, RFC 9908).

``CsrAttrs ::= SEQUENCE OF AttrOrOID``; ``AttrOrOID ::= CHOICE { oid, attribute }``.
A required key type is an attribute whose type is the key's algorithm OID and
whose value is the curve OID (EC) or the modulus size (RSA), RFC 9908 §3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc5652, rfc7030

from estkit.errors import BadRequest
from estkit.protocol import constants as c

__all__ = ["CsrAttribute", "CsrAttrs", "encode_csrattrs", "decode_csrattrs", "key_type_attribute",
           "key_types_from"]

_CURVE_OIDS = {"P-256": c.OID_SECP256R1.dotted_string, "P-384": c.OID_SECP384R1.dotted_string,
               "P-521": "1.3.132.0.35"}
_CURVE_BY_OID = {v: k for k, v in _CURVE_OIDS.items()}


@dataclass(frozen=True)
class CsrAttribute:
    """One entry: a bare OID (``values`` empty) or an attribute with DER values."""

    oid: str
    values: tuple[bytes, ...] = ()
    is_attribute: bool = False


@dataclass(frozen=True)
class CsrAttrs:
    """The decoded /csrattrs answer."""

    entries: tuple[CsrAttribute, ...] = field(default_factory=tuple)

    def oids(self) -> set[str]:
        return {e.oid for e in self.entries}


def key_type_attribute(key_type: str) -> CsrAttribute | None:
    """The RFC 9908 attribute that asks for ``key_type`` (``ec:P-256``, ``rsa:2048``);
    ``ed25519`` is announced as the bare algorithm OID."""
    if key_type.startswith("ec:"):
        curve = _CURVE_OIDS.get(key_type[3:])
        if curve is None:
            return None
        return CsrAttribute(c.OID_EC_PUBLIC_KEY.dotted_string,
                            (encoder.encode(univ.ObjectIdentifier(curve)),), True)
    if key_type.startswith("rsa:"):
        return CsrAttribute(c.OID_RSA_ENCRYPTION.dotted_string,
                            (encoder.encode(univ.Integer(int(key_type[4:]))),), True)
    if key_type == "ed25519":
        return CsrAttribute(c.OID_ED25519.dotted_string)
    return None


def key_types_from(attrs: CsrAttrs) -> list[str]:
    """The key types a /csrattrs answer asks for, in order (unknown entries ignored,
    RFC 7030 §4.5.2: clients MUST ignore what they do not understand)."""
    out: list[str] = []
    for e in attrs.entries:
        try:
            if e.oid == c.OID_EC_PUBLIC_KEY.dotted_string:
                for v in e.values:
                    oid, _ = decoder.decode(v, asn1Spec=univ.ObjectIdentifier())
                    if str(oid) in _CURVE_BY_OID:
                        out.append("ec:" + _CURVE_BY_OID[str(oid)])
            elif e.oid == c.OID_RSA_ENCRYPTION.dotted_string:
                for v in e.values:
                    n, _ = decoder.decode(v, asn1Spec=univ.Integer())
                    out.append(f"rsa:{int(n)}")
            elif e.oid == c.OID_ED25519.dotted_string:
                out.append("ed25519")
        except PyAsn1Error:
            continue
    return out


def encode_csrattrs(entries: Sequence[CsrAttribute]) -> bytes:
    """DER of ``CsrAttrs``."""
    seq = rfc7030.CsrAttrs()
    for i, e in enumerate(entries):
        choice = rfc7030.AttrOrOID()
        if e.is_attribute or e.values:
            attr = rfc5652.Attribute()
            attr["attrType"] = univ.ObjectIdentifier(e.oid)
            for j, v in enumerate(e.values):
                attr["attrValues"][j] = univ.Any(v)
            choice["attribute"] = attr
        else:
            choice["oid"] = univ.ObjectIdentifier(e.oid)
        seq[i] = choice
    return bytes(encoder.encode(seq))


def decode_csrattrs(der: bytes) -> CsrAttrs:
    """Parse DER ``CsrAttrs``; raises BadRequest when it is not one."""
    try:
        seq, rest = decoder.decode(der, asn1Spec=rfc7030.CsrAttrs(), decodeOpenTypes=False)
    except PyAsn1Error:
        # pyasn1's message dumps whole schemas: keep the reason one short line.
        raise BadRequest("not a CsrAttrs structure (RFC 7030 §4.5.2: a DER SEQUENCE OF AttrOrOID)") from None
    if rest:
        raise BadRequest("trailing data after CsrAttrs")
    out: list[CsrAttribute] = []
    for choice in seq:
        name = choice.getName()
        if name == "oid":
            out.append(CsrAttribute(str(choice["oid"])))
        else:
            attr = choice["attribute"]
            vals = tuple(encoder.encode(v) if not isinstance(v, univ.Any) else bytes(v)
                         for v in attr["attrValues"])
            out.append(CsrAttribute(str(attr["attrType"]), vals, True))
    return CsrAttrs(tuple(out))
