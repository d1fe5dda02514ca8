"""EST-coaps (RFC 9148) names and wire values shared by the client and the server.

The short resource names (§4.1), their CoAP Content-Formats (§8.2), the
mapping between estkit's errors (HTTP statuses) and CoAP response codes
(§5), and the multipart-core payload of server-side key generation
(RFC 8710 §2, used by RFC 9148 §4.8).  CoAP messages and options are
encoded by aiocoap; this module holds only what RFC 9148 adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiocoap.numbers.codes import Code

from estkit.errors import EstError, MethodNotAllowed, Pending
from estkit.protocol import constants as c

__all__ = [
    "CF_TEXT", "CF_LINK_FORMAT", "CF_MULTIPART_CORE", "CF_SERVER_KEY", "CF_CERTS_ONLY", "CF_PKCS8",
    "CF_CSRATTRS", "CF_PKCS10", "CF_PKIX_CERT", "DEFAULT_PORT", "CoapOp", "COAP_OPS", "OP_BY_SHORT",
    "code_for_error", "status_for_code", "allowed_of", "encode_multipart_core", "decode_multipart_core",
]

# RFC 9148 §8.2 (and RFC 7252 §12.3, RFC 8710 §5) Content-Format numbers.
CF_TEXT = 0
CF_LINK_FORMAT = 40
CF_MULTIPART_CORE = 62
CF_SERVER_KEY = 280  # application/pkcs7-mime; smime-type=server-generated-key
CF_CERTS_ONLY = 281  # application/pkcs7-mime; smime-type=certs-only
CF_PKCS8 = 284
CF_CSRATTRS = 285
CF_PKCS10 = 286
CF_PKIX_CERT = 287
# RFC 7252 §6.2: coaps' default port.
DEFAULT_PORT = 5684


@dataclass(frozen=True)
class CoapOp:
    """An EST-coaps resource: its short name (RFC 9148 §4.1, Table 1), the EST
    operation it is, its method, the Content-Format it takes, the ones it
    answers in (first: the default), and its success code (§4.2, Table 2)."""

    short: str
    operation: str
    method: Code
    request_format: int | None
    response_formats: tuple[int, ...]
    success: Code

    @property
    def rt(self) -> str:
        """The resource type advertised in /.well-known/core (RFC 9148 §4.1)."""
        return "ace.est." + self.short


COAP_OPS: tuple[CoapOp, ...] = (
    CoapOp("crts", c.OP_CACERTS, Code.GET, None, (CF_CERTS_ONLY, CF_PKIX_CERT), Code.CONTENT),
    CoapOp("sen", c.OP_SIMPLEENROLL, Code.POST, CF_PKCS10, (CF_CERTS_ONLY, CF_PKIX_CERT), Code.CHANGED),
    CoapOp("sren", c.OP_SIMPLEREENROLL, Code.POST, CF_PKCS10, (CF_CERTS_ONLY, CF_PKIX_CERT), Code.CHANGED),
    CoapOp("att", c.OP_CSRATTRS, Code.GET, None, (CF_CSRATTRS,), Code.CONTENT),
    CoapOp("skg", c.OP_SERVERKEYGEN, Code.POST, CF_PKCS10, (CF_MULTIPART_CORE,), Code.CHANGED),
    # skc is skg whose private key always comes back encrypted (280 instead of 284, RFC 9148 §4.8).
    CoapOp("skc", c.OP_SERVERKEYGEN, Code.POST, CF_PKCS10, (CF_MULTIPART_CORE,), Code.CHANGED),
)
OP_BY_SHORT = {op.short: op for op in COAP_OPS}

# RFC 9148 §5 / RFC 8075 §7: HTTP statuses of estkit's errors as CoAP codes,
# in one table both ways.  202 (manual approval) is 5.03 with Max-Age.
_CODES: tuple[tuple[int, Code], ...] = (
    (400, Code.BAD_REQUEST),
    (401, Code.UNAUTHORIZED),
    (403, Code.FORBIDDEN),
    (404, Code.NOT_FOUND),
    (405, Code.METHOD_NOT_ALLOWED),
    (406, Code.NOT_ACCEPTABLE),
    (408, Code.REQUEST_ENTITY_INCOMPLETE),
    (413, Code.REQUEST_ENTITY_TOO_LARGE),
    (415, Code.UNSUPPORTED_CONTENT_FORMAT),
    (429, Code.TOO_MANY_REQUESTS),  # RFC 8516
    (500, Code.INTERNAL_SERVER_ERROR),
    (501, Code.NOT_IMPLEMENTED),
    (503, Code.SERVICE_UNAVAILABLE),
)
_BY_STATUS = dict(_CODES)
_BY_CODE = {code: status for status, code in _CODES}


def code_for_error(exc: EstError) -> Code:
    """The CoAP code for an estkit error (RFC 9148 §5)."""
    if isinstance(exc, Pending):
        return Code.SERVICE_UNAVAILABLE  # with Max-Age: RFC 9148 §5, like HTTP 202 + Retry-After
    if exc.status in _BY_STATUS:
        return _BY_STATUS[exc.status]
    return Code.BAD_REQUEST if 400 <= exc.status < 500 else Code.INTERNAL_SERVER_ERROR


def status_for_code(code: Code) -> int:
    """The HTTP status estkit's errors use for a CoAP error code (the client
    rebuilds the same error type with ``error_for_status``)."""
    return _BY_CODE.get(code, 400 if code.class_ == 4 else 500)


def allowed_of(exc: EstError) -> tuple[str, ...]:
    """The methods a 4.05 names in its diagnostic (CoAP has no Allow option)."""
    return exc.allowed if isinstance(exc, MethodNotAllowed) else ()


# -- multipart-core (RFC 8710 §2): a CBOR array of (Content-Format uint, payload bstr) pairs ----------------
# Only definite-length unsigned integers, byte strings and the one array are
# used here; this is the whole grammar RFC 9148 §4.8 needs, so it is written
# out rather than adding a CBOR library for it.


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("too large for CBOR")


def encode_multipart_core(parts: list[tuple[int, bytes]]) -> bytes:
    """RFC 8710 §2: ``[ct1, payload1, ct2, payload2, ...]`` in CBOR."""
    out = bytearray(_head(4, 2 * len(parts)))
    for ct, payload in parts:
        out += _head(0, ct) + _head(2, len(payload)) + payload
    return bytes(out)


def _read_head(data: bytes, i: int) -> tuple[int, int, int]:
    if i >= len(data):
        raise ValueError("truncated")
    major, info = data[i] >> 5, data[i] & 31
    i += 1
    if info < 24:
        return major, info, i
    sizes = {24: 1, 25: 2, 26: 4, 27: 8}
    if info not in sizes or i + sizes[info] > len(data):
        raise ValueError("unsupported or truncated CBOR head")
    return major, int.from_bytes(data[i:i + sizes[info]], "big"), i + sizes[info]


def decode_multipart_core(data: bytes) -> list[tuple[int, bytes]]:
    """The (Content-Format, payload) pairs of a multipart-core payload;
    ValueError when it is not one."""
    major, n, i = _read_head(data, 0)
    if major != 4 or n % 2:
        raise ValueError("multipart-core is a CBOR array of an even number of items")
    parts: list[tuple[int, bytes]] = []
    for _ in range(n // 2):
        major, ct, i = _read_head(data, i)
        if major != 0:
            raise ValueError("multipart-core: a Content-Format must be an unsigned integer")
        major, length, i = _read_head(data, i)
        if major != 2 or i + length > len(data):
            raise ValueError("multipart-core: a part must be a byte string")
        parts.append((ct, data[i:i + length]))
        i += length
    if i != len(data):
        raise ValueError("multipart-core: data after the array")
    return parts
