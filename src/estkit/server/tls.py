"""The server's TLS context: TLS 1.2 and 1.3 only, strong suites, optional client certificates."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["server_context", "TLS12_CIPHERS"]

# RFC 7030 §6: no export, DES, NULL or anonymous suites.  TLS 1.2 stays on
# (libest and strongSwan 5.9.8 speak only 1.2); TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES:!EXPORT:!DES"


def server_context(cert_file: Path, key_file: Path, client_trust: Sequence[x509.Certificate],
                   key_password: bytes | None = None) -> ssl.SSLContext:
    """A server context that asks for, but does not require, a client
    certificate (RFC 7030 §3.3.2: /cacerts and bootstrap work without one) and
    accepts those chaining to ``client_trust``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert_file), str(key_file), password=key_password)
    if client_trust:
        pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in client_trust)
        ctx.load_verify_locations(cadata=pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
