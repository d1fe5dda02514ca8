"""CMC PKIData and PKIResponse (RFC 5272, RFC 6402), shared by client and server.

Built with pyasn1-modules ``rfc6402`` (pyasn1-modules has no ``rfc5272``; 6402
carries the updated module).  Two traps handled here (interop-notes):

* ``CMCStatusInfoV2`` with ``otherInfo`` cannot be decoded by pyasn1-modules
  0.4.2 (two untagged SEQUENCE alternatives): it is decoded by hand.
* identityProofV2's witness covers the reqSequence exactly as encoded in the
  request, so the raw bytes are kept (:attr:`PKIData.req_sequence_der`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, univ
from pyasn1_modules import rfc5280, rfc6402

from estkit.errors import BadRequest, FailInfo
from estkit.protocol import constants as c
from estkit.protocol.der import SEQUENCE, der_tlv
from estkit.protocol.malformed import reason

__all__ = [
    "SUCCESS", "FAILED", "PENDING", "NO_SUPPORT", "FAIL_INFO", "fail_name",
    "Control", "RequestKind", "TaggedRequest", "PKIData", "StatusInfo", "PKIResponse",
    "decode_pkidata", "encode_pkidata", "encode_pkiresponse", "decode_pkiresponse",
    "encode_status_info_v2", "decode_status_info_v2", "identity_proof_witness",
    "ctl_transaction_id", "ctl_sender_nonce", "ctl_recipient_nonce", "ctl_identification",
    "ctl_identity_proof_v2", "ctl_revoke_request", "ctl_get_cert", "ctl_status_info_v2",
    "int_value", "octets_value", "utf8_value", "read_tlvs", "decode_revoke_request", "decode_get_cert",
    "decode_identity_proof_v2", "encode_req_sequence", "CmcError",
]

# RFC 5272 §6.1.1 CMCStatus; §6.1.4 CMCFailInfo is estkit.errors.FailInfo (named here by RFC name).
SUCCESS, FAILED, PENDING, NO_SUPPORT = 0, 2, 3, 4
FAIL_INFO = {f.rfc_name: int(f) for f in FailInfo}
_FAIL_NAME = {v: k for k, v in FAIL_INFO.items()}


def fail_name(code: int | None) -> str:
    """The CMCFailInfo name of a code (``badRequest``), or ``failInfo(N)``."""
    return _FAIL_NAME.get(code, f"failInfo({code})") if code is not None else "-"


class CmcError(BadRequest):
    """A CMC structure is malformed."""


@dataclass(frozen=True)
class Control:
    """A TaggedAttribute: bodyPartID, attribute type and the DER of each value."""

    body_part_id: int
    oid: str
    values: tuple[bytes, ...]


class RequestKind(StrEnum):
    """RFC 5272 §3.2.1.2.2 TaggedRequest alternatives."""

    TCR = "tcr"  # a PKCS#10 CertificationRequest
    CRM = "crm"  # a CRMF CertReqMsg (RFC 4211)
    ORM = "orm"  # another request message (not supported here)


@dataclass(frozen=True)
class TaggedRequest:
    """A request body part: ``tcr`` (DER PKCS#10) or ``crm`` (DER CertReqMsg)."""

    body_part_id: int
    kind: RequestKind
    der: bytes


@dataclass(frozen=True)
class PKIData:
    """A decoded PKIData (RFC 5272 §3.2.1)."""

    controls: tuple[Control, ...]
    requests: tuple[TaggedRequest, ...]
    req_sequence_der: bytes
    cms_body_parts: tuple[int, ...] = ()
    other_body_parts: tuple[int, ...] = ()

    def control(self, oid: str) -> Control | None:
        """The first control of a type, or None."""
        return next((x for x in self.controls if x.oid == oid), None)


@dataclass(frozen=True)
class StatusInfo:
    """One CMCStatusInfoV2 (RFC 5272 §6.1.1)."""

    status: int
    body_list: tuple[int, ...]
    status_string: str | None = None
    fail_info: int | None = None

    def __str__(self) -> str:
        what = {SUCCESS: "success", FAILED: "failed", PENDING: "pending", NO_SUPPORT: "noSupport"}.get(
            self.status, str(self.status))
        extra = f" {fail_name(self.fail_info)}" if self.fail_info is not None else ""
        return f"{what}{extra} {list(self.body_list)}: {self.status_string or ''}".rstrip(": ")


@dataclass(frozen=True)
class PKIResponse:
    """A decoded PKIResponse with its status entries pulled out."""

    controls: tuple[Control, ...]
    statuses: tuple[StatusInfo, ...] = field(default_factory=tuple)

    def control(self, oid: str) -> Control | None:
        """The first control of a type, or None."""
        return next((x for x in self.controls if x.oid == oid), None)


# -- a minimal DER reader (for the parts pyasn1-modules cannot decode) -----------------

def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """``(tag, header_end, end, start)`` of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise CmcError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    hdr = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or hdr + n > len(data):
            raise CmcError("bad DER length")
        length = int.from_bytes(data[hdr:hdr + n], "big")
        hdr += n
    if hdr + length > len(data):
        raise CmcError("truncated DER")
    return tag, hdr, hdr + length, pos


def read_tlvs(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The TLVs in ``data`` as ``(tag, contents, whole encoding)``."""
    out = []
    pos = 0
    while pos < len(data):
        tag, hdr, end, start = _read_tlv(data, pos)
        out.append((tag, data[hdr:end], data[start:end]))
        pos = end
    return out


def _seq_contents(der: bytes) -> list[tuple[int, bytes, bytes]]:
    items = read_tlvs(der)
    if len(items) != 1 or items[0][0] != 0x30:
        raise CmcError("expected one DER SEQUENCE")
    return read_tlvs(items[0][1])


def _int(contents: bytes) -> int:
    return int.from_bytes(contents, "big", signed=True) if contents else 0


# -- values --------------------------------------------------------------------

def int_value(ctl: Control) -> int:
    """The INTEGER value of a control (transactionId)."""
    try:
        return int(decoder.decode(ctl.values[0], asn1Spec=univ.Integer())[0])
    except (PyAsn1Error, IndexError):
        raise CmcError(f"control {ctl.oid} in body part {ctl.body_part_id} is not an INTEGER") from None


def octets_value(ctl: Control) -> bytes:
    """The OCTET STRING value of a control (nonces)."""
    try:
        return bytes(decoder.decode(ctl.values[0], asn1Spec=univ.OctetString())[0])
    except (PyAsn1Error, IndexError):
        raise CmcError(f"control {ctl.oid} in body part {ctl.body_part_id} is not an OCTET STRING") from None


def utf8_value(ctl: Control) -> str:
    """The UTF8String value of a control (identification)."""
    try:
        return str(decoder.decode(ctl.values[0], asn1Spec=char.UTF8String())[0])
    except (PyAsn1Error, IndexError, UnicodeDecodeError):
        raise CmcError(f"control {ctl.oid} in body part {ctl.body_part_id} is not a UTF8String") from None


def _control(bpid: int, oid: x509.ObjectIdentifier, value: object) -> Control:
    return Control(bpid, oid.dotted_string, (encoder.encode(value),))


def ctl_transaction_id(bpid: int, tid: int) -> Control:
    """RFC 5272 §6.6 transactionId."""
    return _control(bpid, c.OID_CMC_TRANSACTION_ID, univ.Integer(tid))


def ctl_sender_nonce(bpid: int, nonce: bytes) -> Control:
    """RFC 5272 §6.6 senderNonce."""
    return _control(bpid, c.OID_CMC_SENDER_NONCE, univ.OctetString(nonce))


def ctl_recipient_nonce(bpid: int, nonce: bytes) -> Control:
    """RFC 5272 §6.6 recipientNonce."""
    return _control(bpid, c.OID_CMC_RECIPIENT_NONCE, univ.OctetString(nonce))


def ctl_identification(bpid: int, name: str) -> Control:
    """RFC 5272 §6.2.3 identification (UTF8String)."""
    return _control(bpid, c.OID_CMC_IDENTIFICATION, char.UTF8String(name))


def identity_proof_witness(shared_secret: bytes, req_sequence_der: bytes, identification: str | None) -> bytes:
    """RFC 5272 §6.2.1/§6.2.3: HMAC-SHA256 keyed with SHA-256(secret [|| identification])
    over the reqSequence exactly as encoded."""
    key_material = shared_secret + (identification.encode() if identification is not None else b"")
    return hmac.new(hashlib.sha256(key_material).digest(), req_sequence_der, hashlib.sha256).digest()


def ctl_identity_proof_v2(bpid: int, witness: bytes) -> Control:
    """RFC 6402 §2.5 identityProofV2 with SHA-256 and HMAC-SHA256."""
    v = rfc6402.IdentifyProofV2()
    v["proofAlgID"]["algorithm"] = univ.ObjectIdentifier(c.OID_SHA256.dotted_string)
    v["macAlgId"]["algorithm"] = univ.ObjectIdentifier(c.OID_HMAC_SHA256.dotted_string)
    v["witness"] = witness
    return _control(bpid, c.OID_CMC_IDENTITY_PROOF_V2, v)


def ctl_revoke_request(bpid: int, issuer: x509.Name, serial: int, reason: int, comment: str | None = None) -> Control:
    """RFC 5272 §6.11 revokeRequest (reason is an RFC 5280 CRLReason code)."""
    v = rfc6402.RevokeRequest()
    v["issuerName"] = decoder.decode(issuer.public_bytes(), asn1Spec=rfc5280.Name())[0]
    v["serialNumber"] = serial
    v["reason"] = reason
    if comment:
        v["comment"] = comment
    return _control(bpid, c.OID_CMC_REVOKE_REQUEST, v)


def ctl_get_cert(bpid: int, issuer: x509.Name, serial: int) -> Control:
    """RFC 5272 §6.9 getCert, the issuer as a directoryName (``[4]``, explicit:
    Name is a CHOICE)."""
    name = issuer.public_bytes()
    body = der_tlv(0xA4, name) + encoder.encode(univ.Integer(serial))
    return Control(bpid, c.OID_CMC_GET_CERT.dotted_string, (der_tlv(SEQUENCE, body),))


def decode_revoke_request(ctl: Control) -> tuple[bytes, int, int, str | None]:
    """``(issuer Name DER, serial, reason code, comment)`` of a revokeRequest control."""
    try:
        v, _ = decoder.decode(ctl.values[0], asn1Spec=rfc6402.RevokeRequest())
        comment = str(v["comment"]) if v["comment"].isValue else None
        return encoder.encode(v["issuerName"]), int(v["serialNumber"]), int(v["reason"]), comment
    except (PyAsn1Error, IndexError, ValueError):
        raise CmcError(f"malformed revokeRequest in body part {ctl.body_part_id}") from None


def decode_get_cert(ctl: Control) -> tuple[bytes | None, int]:
    """``(issuer Name DER when a directoryName, else None; serial)`` of a getCert control."""
    try:
        items = _seq_contents(ctl.values[0])
        if len(items) != 2 or items[1][0] != 0x02:
            raise CmcError(f"malformed getCert in body part {ctl.body_part_id}")
        issuer = items[0][1] if items[0][0] == 0xA4 else None
        return issuer, _int(items[1][1])
    except IndexError:
        raise CmcError(f"malformed getCert in body part {ctl.body_part_id}") from None


def decode_identity_proof_v2(ctl: Control) -> tuple[str, str, bytes]:
    """``(proofAlgID, macAlgId, witness)`` of an identityProofV2 control."""
    try:
        v, _ = decoder.decode(ctl.values[0], asn1Spec=rfc6402.IdentifyProofV2())
        return str(v["proofAlgID"]["algorithm"]), str(v["macAlgId"]["algorithm"]), bytes(v["witness"])
    except (PyAsn1Error, IndexError):
        raise CmcError(f"malformed identityProofV2 in body part {ctl.body_part_id}") from None


# -- status ----------------------------------------------------------------------

def encode_status_info_v2(info: StatusInfo) -> bytes:
    """DER of a CMCStatusInfoV2 (failInfo as otherInfo when set)."""
    v = rfc6402.CMCStatusInfoV2()
    v["cMCStatus"] = info.status
    for i, bpid in enumerate(info.body_list):
        v["bodyList"][i]["bodyPartID"] = bpid
    if not info.body_list:
        v["bodyList"].clear()
    if info.status_string:
        v["statusString"] = info.status_string
    if info.fail_info is not None:
        v["otherInfo"]["failInfo"] = info.fail_info
    return bytes(encoder.encode(v))


def decode_status_info_v2(der: bytes) -> StatusInfo:
    """Decode a CMCStatusInfoV2 by hand (pyasn1-modules cannot when otherInfo is present)."""
    items = _seq_contents(der)
    if len(items) < 2 or items[0][0] != 0x02 or items[1][0] != 0x30:
        raise CmcError("malformed CMCStatusInfoV2")
    status = _int(items[0][1])
    body: list[int] = []
    for tag, contents, _w in read_tlvs(items[1][1]):
        if tag == 0x02:
            body.append(_int(contents))
        elif tag == 0x30:  # bodyPartPath: its last element names the part
            path = [_int(x[1]) for x in read_tlvs(contents)]
            if path:
                body.append(path[-1])
    text: str | None = None
    fail: int | None = None
    for tag, contents, _w in items[2:]:
        if tag == 0x0C:
            text = contents.decode("utf-8", "replace")
        elif tag == 0x02:
            fail = _int(contents)
    return StatusInfo(status=status, body_list=tuple(body), status_string=text, fail_info=fail)


def ctl_status_info_v2(bpid: int, info: StatusInfo) -> Control:
    """A statusInfoV2 control for a response."""
    return Control(bpid, c.OID_CMC_STATUS_INFO_V2.dotted_string, (encode_status_info_v2(info),))


# -- PKIData / PKIResponse ------------------------------------------------------------

def _tagged_attributes(controls: Sequence[Control]) -> univ.SequenceOf:
    seq = univ.SequenceOf(componentType=rfc6402.TaggedAttribute())
    for i, ctl in enumerate(controls):
        ta = rfc6402.TaggedAttribute()
        ta["bodyPartID"] = ctl.body_part_id
        ta["attrType"] = univ.ObjectIdentifier(ctl.oid)
        for j, v in enumerate(ctl.values):
            ta["attrValues"][j] = univ.Any(v)
        seq[i] = ta
    return seq


def encode_req_sequence(requests: Sequence[TaggedRequest]) -> bytes:
    """DER of the reqSequence (what identityProofV2's witness covers)."""
    out: list[bytes] = []
    for r in requests:
        tr = rfc6402.TaggedRequest()
        if r.kind == RequestKind.TCR:
            tcr = tr["tcr"]
            tcr["bodyPartID"] = r.body_part_id
            tcr["certificationRequest"] = decoder.decode(r.der, asn1Spec=rfc6402.CertificationRequest())[0]
        elif r.kind == RequestKind.CRM:
            tr["crm"] = _crm_value(r.der)
        else:
            raise ValueError(f"unknown request kind {r.kind}")
        out.append(encoder.encode(tr))
    body = b"".join(out)
    return der_tlv(SEQUENCE, body)


def _crm_value(der: bytes) -> object:
    """A CertReqMsg DER as the pyasn1 value of the ``crm [1]`` alternative."""
    spec = rfc6402.TaggedRequest.componentType.getTypeByPosition(1)
    # The [1] IMPLICIT tag replaces the SEQUENCE tag: decode with the tagged spec.
    return decoder.decode(b"\xa1" + der[1:], asn1Spec=spec)[0]


def encode_pkidata(controls: Sequence[Control], requests: Sequence[TaggedRequest]) -> tuple[bytes, bytes]:
    """``(PKIData DER, reqSequence DER)``: the second is embedded verbatim in the first."""
    ctl = encoder.encode(_tagged_attributes(controls))
    reqs = encode_req_sequence(requests)
    empty = b"\x30\x00"
    body = ctl + reqs + empty + empty
    return der_tlv(SEQUENCE, body), reqs


def decode_pkidata(der: bytes) -> PKIData:
    """Decode a PKIData; raises CmcError when malformed."""
    try:
        items = _seq_contents(der)
        if len(items) != 4 or any(t != 0x30 for t, _c, _w in items):
            raise CmcError("PKIData must be a SEQUENCE of four SEQUENCEs")
        pd, rest = decoder.decode(der, asn1Spec=rfc6402.PKIData())
    except PyAsn1Error as exc:
        raise CmcError(f"not a PKIData: {reason(exc)}") from None
    if rest:
        raise CmcError("trailing data after PKIData")
    controls = tuple(Control(int(ta["bodyPartID"]), str(ta["attrType"]),
                             tuple(bytes(v) for v in ta["attrValues"])) for ta in pd["controlSequence"])
    reqs: list[TaggedRequest] = []
    for tr in pd["reqSequence"]:
        name = tr.getName()
        if name == "tcr":
            reqs.append(TaggedRequest(int(tr["tcr"]["bodyPartID"]), RequestKind.TCR,
                                      encoder.encode(tr["tcr"]["certificationRequest"])))
        elif name == "crm":
            raw = encoder.encode(tr["crm"])
            reqs.append(TaggedRequest(int(tr["crm"]["certReq"]["certReqId"]), RequestKind.CRM, b"\x30" + raw[1:]))
        else:
            reqs.append(TaggedRequest(int(tr["orm"]["bodyPartID"]), RequestKind.ORM, encoder.encode(tr["orm"])))
    return PKIData(controls=controls, requests=tuple(reqs), req_sequence_der=items[1][2],
                   cms_body_parts=tuple(int(t["bodyPartID"]) for t in pd["cmsSequence"]),
                   other_body_parts=tuple(int(o["bodyPartID"]) for o in pd["otherMsgSequence"]))


def encode_pkiresponse(controls: Sequence[Control]) -> bytes:
    """DER of a PKIResponse with these controls and empty cms/other sequences."""
    ctl = bytes(encoder.encode(_tagged_attributes(controls)))
    body = ctl + b"\x30\x00\x30\x00"
    return der_tlv(SEQUENCE, body)


def decode_pkiresponse(der: bytes) -> PKIResponse:
    """Decode a PKIResponse; status entries are decoded by hand."""
    items = _seq_contents(der)
    if len(items) < 1 or items[0][0] != 0x30:
        raise CmcError("malformed PKIResponse")
    controls: list[Control] = []
    statuses: list[StatusInfo] = []
    for _t, ta, _w in read_tlvs(items[0][1]):
        parts = read_tlvs(ta)
        if len(parts) != 3:
            raise CmcError("malformed TaggedAttribute in PKIResponse")
        bpid = _int(parts[0][1])
        oid = str(decoder.decode(parts[1][2], asn1Spec=univ.ObjectIdentifier())[0])
        values = tuple(w for _t2, _c2, w in read_tlvs(parts[2][1]))
        controls.append(Control(bpid, oid, values))
        if oid == c.OID_CMC_STATUS_INFO_V2.dotted_string:
            statuses.extend(decode_status_info_v2(v) for v in values)
    return PKIResponse(controls=tuple(controls), statuses=tuple(statuses))
