"""A Full PKI Request (RFC 5272 §3.2.1, RFC 7030 §4.3), decoded once.

The server hands the CA this typed value: the SignedData, its PKIData, the
transactionId and senderNonce the response must echo, and each request body
part read into a :class:`~estkit.protocol.request.CertRequest` (or the
reason it could not be read, reported for that body part alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.cmc import CmcError, Control, PKIData, RequestKind, TaggedRequest, decode_pkidata, int_value, \
    octets_value
from estkit.protocol.cmc_cms import SignedContent, parse_signed
from estkit.protocol.cmc_crmf import parse_crmf
from estkit.protocol.csr import load_csr
from estkit.protocol.request import CertRequest, from_crmf, from_pkcs10

__all__ = ["RequestPart", "FullCmcRequest", "decode_full_cmc"]

T = TypeVar("T")


@dataclass(frozen=True)
class RequestPart:
    """One request body part: what it asks for, or why it cannot be read."""

    body_part_id: int
    kind: RequestKind
    request: CertRequest | None
    error: BadRequest | None = None


@dataclass(frozen=True)
class FullCmcRequest:
    """A decoded Full PKI Request; nothing in it is verified yet."""

    signed: SignedContent
    pkidata: PKIData
    transaction_id: int | None
    sender_nonce: bytes | None
    requests: tuple[RequestPart, ...]

    def control(self, oid: str) -> Control | None:
        """The first control of a type, or None."""
        return self.pkidata.control(oid)


def decode_full_cmc(der: bytes) -> FullCmcRequest:
    """Decode the DER of a ContentInfo/SignedData/PKIData; BadRequest (naming
    the body part where there is one) when it is malformed."""
    sc = parse_signed(der)
    if sc.content_type != c.OID_CT_PKIDATA.dotted_string:
        raise BadRequest(f"the SignedData carries {sc.content_type}, not id-cct-PKIData")
    pd = decode_pkidata(sc.content)
    return FullCmcRequest(signed=sc, pkidata=pd,
                          transaction_id=_value(pd, c.OID_CMC_TRANSACTION_ID.dotted_string, int_value),
                          sender_nonce=_value(pd, c.OID_CMC_SENDER_NONCE.dotted_string, octets_value),
                          requests=tuple(_read(r) for r in pd.requests))


def _value(pd: PKIData, oid: str, read: Callable[[Control], T]) -> T | None:
    ctl = pd.control(oid)
    if ctl is None:
        return None
    try:
        return read(ctl)
    except CmcError as exc:
        raise exc.in_parts(ctl.body_part_id) from None


def _read(r: TaggedRequest) -> RequestPart:
    try:
        if r.kind == RequestKind.TCR:
            return RequestPart(r.body_part_id, r.kind, from_pkcs10(load_csr(r.der)))
        if r.kind == RequestKind.CRM:
            return RequestPart(r.body_part_id, r.kind, from_crmf(parse_crmf(r.der), r.der))
    except BadRequest as exc:
        return RequestPart(r.body_part_id, r.kind, None, exc)
    return RequestPart(r.body_part_id, r.kind, None,
                       BadRequest(f"orm requests are not supported (body part {r.body_part_id})"))
