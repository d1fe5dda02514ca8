"""Reading what EST servers really send (RFC 8951 §3, interop-notes).

Payloads are base64 wrapped or not, CRLF or LF, PEM-armoured or (from old
servers) raw DER, with or without ``Content-Transfer-Encoding`` (whose value
is ignored, RFC 8951 §3).  A certs-only answer may carry the CA chain and CRLs
besides the new certificate; the one for our key is picked.  A server key
labelled ``application/pkcs8`` may be a PKCS#1 RSA key (libest).  Errors are
rebuilt as the estkit error type of their status, with the server's text and
Retry-After (seconds or an HTTP date, RFC 9110 §10.2.3).
"""

from __future__ import annotations

import email.utils
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from estkit.client.auth import parse_challenges
from estkit.client.errors import ProtocolError
from estkit.client.transport import Response
from estkit.errors import BadRequest, EstError, Unauthorized, error_for_status
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, media_type
from estkit.protocol.multipart import KEY_ENCRYPTED, parse_serverkeygen
from estkit.protocol.pkcs7 import parse_certs_only

__all__ = ["payload_der", "certificates", "issued_certificate", "load_server_key", "parse_retry_after",
           "error_from", "public_der", "read_serverkeygen"]


def payload_der(body: bytes, what: str) -> bytes:
    """The DER inside a response payload, whatever its framing."""
    try:
        return decode_b64(body, what)
    except BadRequest as exc:
        if body[:1] == b"\x30":  # raw DER (Content-Transfer-Encoding: binary) from pre-RFC 8951 servers
            return body
        raise ProtocolError(f"malformed {what}: {exc.reason}") from None


def certificates(body: bytes, what: str) -> list[x509.Certificate]:
    """The certificates of a certs-only PKCS#7 payload (CRLs and order do not matter)."""
    try:
        with warnings.catch_warnings():
            # openssl crl2pkcs7 and others emit BER set ordering; cryptography reads it with a warning.
            warnings.simplefilter("ignore", UserWarning)
            return parse_certs_only(payload_der(body, what))
    except BadRequest as exc:
        raise ProtocolError(f"malformed {what}: {exc.reason}") from None


def public_der(key: PublicKeyTypes) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, for comparisons."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issued_certificate(certs: Sequence[x509.Certificate], public_key: PublicKeyTypes | None) -> x509.Certificate:
    """The certificate for ``public_key`` among those a server returned (some
    add the CA chain, RFC 7030 §4.2.3 asks for the new one only)."""
    if public_key is not None:
        want = public_der(public_key)
        for cert in certs:
            if public_der(cert.public_key()) == want:
                return cert
        raise ProtocolError("the server returned no certificate for the requested key")
    for cert in certs:
        try:
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return cert
        except x509.ExtensionNotFound:
            return cert
    return certs[0]


def load_server_key(der: bytes) -> PrivateKeyTypes:
    """A server-generated key: PKCS#8 PrivateKeyInfo (RFC 7030 §4.4.2), or the
    PKCS#1 RSAPrivateKey libest sends under the same label."""
    try:
        return serialization.load_der_private_key(der, None)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"the server-generated key does not parse: {exc}") from None


def read_serverkeygen(body: bytes, content_type: str | None,
                      open_encrypted: Callable[[bytes], bytes] | None = None, *,
                      require_encrypted: bool = False) -> tuple[PrivateKeyTypes, x509.Certificate]:
    """The key and certificate of a /serverkeygen answer (RFC 7030 §4.4.2): parts
    in either order, CRLF or LF, quoted or bare boundary; an encrypted key part is
    handed to ``open_encrypted`` (which returns the DER PrivateKeyInfo).
    ``require_encrypted``: a plaintext key part raises ProtocolError."""
    try:
        parts = parse_serverkeygen(body, content_type)
    except BadRequest as exc:
        raise ProtocolError(f"serverkeygen response: {exc.reason}") from None
    if require_encrypted and parts.key_kind != KEY_ENCRYPTED:
        # RFC 7030 §4.4.1.2: the key was asked for encrypted; a server that ignores
        # that sent it readable to anyone between it and us: refuse the downgrade.
        raise ProtocolError("serverkeygen: asked for an encrypted key (RFC 7030 §4.4.1.2) but the server "
                            f"returned it in plaintext ({c.CT_PKCS8}); accept that only with "
                            "--allow-plaintext-key (library: allow_plaintext_key=True)")
    key_der = parts.key_der
    if parts.key_kind == KEY_ENCRYPTED:
        if open_encrypted is None:
            raise ProtocolError("the server returned an encrypted key and there is no key to open it")
        key_der = open_encrypted(key_der)
    key = load_server_key(key_der)
    want = public_der(key.public_key())
    cert = next((ct for ct in parts.certificates if public_der(ct.public_key()) == want), None)
    if cert is None:
        raise ProtocolError("serverkeygen: the certificate is not for the returned key")
    return key, cert


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """Retry-After as whole seconds from now: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0, int(delta + 0.999))


def error_from(op: str, resp: Response, reason: str | None = None) -> EstError:
    """The estkit error for a refusal: its status, the server's one line of text, Retry-After."""
    if reason is None:
        text = resp.body.decode("utf-8", "replace").strip() if media_type(resp.header("Content-Type")) in (
            "", "text/plain") else ""
        reason = " ".join(text.split())[:300] or f"HTTP {resp.status}"
    retry = parse_retry_after(resp.header(c.HDR_RETRY_AFTER))
    err = error_for_status(resp.status, f"{op}: {reason}", retry)
    if isinstance(err, Unauthorized):
        chs = parse_challenges(resp.header_values(c.HDR_WWW_AUTHENTICATE))
        err.challenges = tuple(ch.scheme for ch in chs)
    return err
