"""The /serverkeygen response: ``multipart/mixed`` with a key part and a certs-only part.

RFC 7030 §4.4.2: the private key as ``application/pkcs8`` (base64 DER
PrivateKeyInfo) or, encrypted, ``application/pkcs7-mime;
smime-type=server-generated-key``; then the certificate as
``application/pkcs7-mime; smime-type=certs-only``.  We emit CRLF line ends,
each part with its own Content-Type and ``Content-Transfer-Encoding: base64``
(libest wants the header per part), the key first, base64 on one line.

The parser takes every form peers send (interop-notes): either part order,
CRLF or LF, quoted or bare boundary, ``multipart/mixed ; boundary=`` with a
space (RFC 7030 Appendix A.4), with or without a preamble or the CTE header.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from cryptography import x509

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, encode_b64, media_params, media_type
from estkit.protocol.pkcs7 import parse_certs_only

__all__ = ["ServerKeygenParts", "build_serverkeygen", "parse_serverkeygen", "KEY_PLAIN", "KEY_ENCRYPTED"]

KEY_PLAIN = "pkcs8"
KEY_ENCRYPTED = "server-generated-key"
_BOUNDARY_OK = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")  # RFC 2046 §5.1.1


@dataclass(frozen=True)
class ServerKeygenParts:
    """What a /serverkeygen response carries: the key part (DER PrivateKeyInfo,
    a PKCS#1 key from libest, or the DER of the encrypted CMS) and the certificates."""

    key_kind: str  # KEY_PLAIN or KEY_ENCRYPTED
    key_der: bytes
    certificates: tuple[x509.Certificate, ...]


def build_serverkeygen(key_der: bytes, certs_only_der: bytes, *, encrypted: bool = False,
                       boundary: str | None = None) -> tuple[bytes, str]:
    """``(body, content_type)`` of the multipart response (RFC 7030 §4.4.2)."""
    b = boundary or "estkit-" + secrets.token_hex(12)
    key_type = c.CT_SERVER_KEY if encrypted else c.CT_PKCS8
    out = bytearray()
    for ctype, der in ((key_type, key_der), (c.CT_CERTS_ONLY, certs_only_der)):
        out += (f"--{b}\r\nContent-Type: {ctype}\r\n{c.HDR_CTE}: base64\r\n\r\n").encode()
        out += encode_b64(der).rstrip(b"\n") + b"\r\n"
    out += f"--{b}--\r\n".encode()
    return bytes(out), f"{c.CT_MULTIPART}; boundary={b}"


def _split_headers(part: bytes) -> tuple[dict[str, str], bytes]:
    text = part.lstrip(b"\r\n") if part.startswith((b"\r\n", b"\n")) else part
    m = re.search(rb"\r?\n\r?\n", text)
    if m is None:
        # No header block: a part with only a body (headers are all optional in MIME).
        if b":" in text.split(b"\n", 1)[0]:
            return _parse_header_lines(text), b""
        return {}, text
    return _parse_header_lines(text[:m.start()]), text[m.end():]


def _parse_header_lines(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    for raw in block.decode("latin-1").splitlines():
        if raw[:1] in (" ", "\t") and last:  # RFC 5322 folding
            headers[last] += " " + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if sep:
            last = name.strip().lower()
            headers[last] = value.strip()
    return headers


def parse_serverkeygen(body: bytes, content_type: str | None) -> ServerKeygenParts:
    """Parse a /serverkeygen response (any part order, CRLF or LF, quoted
    boundary).  Raises BadRequest when it is not the two parts RFC 7030 §4.4.2 wants."""
    if media_type(content_type) != c.CT_MULTIPART:
        raise BadRequest(f"serverkeygen response is {media_type(content_type) or 'untyped'}, not {c.CT_MULTIPART}")
    boundary = media_params(content_type).get("boundary")
    if not boundary or not _BOUNDARY_OK.match(boundary):
        raise BadRequest("multipart response without a usable boundary parameter")
    delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?=\r?\n|$)")
    pieces: list[bytes] = []
    pos: int | None = None
    closed = False
    for m in delim.finditer(body):
        if pos is not None:
            pieces.append(body[pos:m.start()])
        if m.group(1):
            closed = True
            break
        pos = m.end()
    if not closed and pos is not None:
        pieces.append(body[pos:])  # tolerate a missing close delimiter
    key: tuple[str, bytes] | None = None
    certs: tuple[x509.Certificate, ...] | None = None
    for piece in pieces:
        headers, payload = _split_headers(piece)
        ctype = headers.get("content-type", "")
        mt = media_type(ctype)
        smime = media_params(ctype).get("smime-type", "").lower()
        if mt == c.CT_PKCS8:
            key = (KEY_PLAIN, decode_b64(payload, "key part"))
        elif mt == c.CT_PKCS7 and smime == "server-generated-key":
            key = (KEY_ENCRYPTED, decode_b64(payload, "encrypted key part"))
        elif mt == c.CT_PKCS7:
            certs = tuple(parse_certs_only(decode_b64(payload, "certificate part")))
    if key is None:
        raise BadRequest("serverkeygen response has no application/pkcs8 or server-generated-key part")
    if certs is None:
        raise BadRequest("serverkeygen response has no certs-only part")
    return ServerKeygenParts(key_kind=key[0], key_der=key[1], certificates=certs)
