"""estkit's own words for what a parsing library rejected.

The libraries' messages are not fit for a peer: cryptography's carry parser
internals (``ParseError { kind: UnexpectedTag { ... } }``), pyasn1's dump
schema objects and input bytes.  A refusal names what was wrong in estkit's
words (RFC 8951 §5: one line of text) and never echoes the library.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

__all__ = ["reason"]


def reason(exc: BaseException) -> str:
    """A short description of why ``exc`` rejected the input."""
    if isinstance(exc, x509.InvalidVersion):
        return f"unsupported version {int(exc.parsed_version)}"
    if isinstance(exc, x509.DuplicateExtension):
        return f"duplicate extension {exc.oid.dotted_string}"
    if isinstance(exc, x509.UnsupportedGeneralNameType):
        return "unsupported general name type"
    if isinstance(exc, UnsupportedAlgorithm):
        return "unsupported algorithm, key type or curve"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, TypeError):
        return "a value of the wrong type"
    return "malformed DER"
