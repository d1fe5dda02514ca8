"""Base64 transfer framing and media-type comparison.

RFC 8951 §3: every EST payload is base64 of DER whatever the
Content-Transfer-Encoding header says.  Receivers accept CR, LF, space and
tab inside the base64 (and, for interop, PEM armour, and trailing NUL bytes:
libest's example server ends /csrattrs with one); senders emit the one
framing every known peer accepts: base64 on one line followed by a newline
(see interop-notes: strongSwan fails on wrapped lines, libest on no newline).
"""

from __future__ import annotations

import base64
import binascii
import re

from estkit.errors import BadRequest

__all__ = ["encode_b64", "decode_b64", "media_type", "media_params"]

_PEM = re.compile(rb"-----BEGIN [A-Z0-9 #]+-----(.*?)-----END [A-Z0-9 #]+-----", re.S)
_WS = re.compile(rb"[\s]+")
_TRAILER = b"\x00 \t\r\n\x0b\x0c"


def encode_b64(der: bytes) -> bytes:
    """Base64 of ``der`` on one line plus ``\\n``: accepted by every peer."""
    return base64.b64encode(der) + b"\n"


def decode_b64(body: bytes, what: str = "body") -> bytes:
    """Decode an EST payload: base64, wrapped or not, CRLF or LF, with stray
    spaces or tabs, optionally inside PEM armour, trailing NULs tolerated.
    Raises BadRequest."""
    # interop-notes: libest's estserver sends /csrattrs as base64 + NUL (counted
    # in Content-Length).  Only trailing NULs: one inside the data stays an error.
    body = body.rstrip(_TRAILER)
    if not body:
        raise BadRequest(f"empty {what}")
    m = _PEM.search(body)
    data = m.group(1) if m else body
    data = _WS.sub(b"", data)
    try:
        der = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None
    if not der:
        raise BadRequest(f"empty {what}")
    return der


def media_type(header: str | None) -> str:
    """The bare, lower-cased media type of a Content-Type header value
    (``application/pkcs10; charset=utf-8`` is still ``application/pkcs10``)."""
    if not header:
        return ""
    return header.split(";", 1)[0].strip().lower()


def media_params(header: str | None) -> dict[str, str]:
    """The parameters of a Content-Type value, names lower-cased, quotes removed."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";")[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip().strip('"')
    return out
