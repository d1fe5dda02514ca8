"""The OCSP responder (RFC 6960): a DER OCSPRequest in, a signed DER
OCSPResponse out.  No HTTP here (that is :mod:`estkit.server.ocsp`).

Revocation state is read from the store on every request (a primary-key read),
so a revocation by ``estkit revoke`` shows at once; responses are signed per
request with thisUpdate = now.  Who signs for each CA (a delegated responder
certificate or the CA key) comes from :mod:`estkit.ca.ocsp_signer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.ports import StoreError
from estkit.ca.signer import Signer

__all__ = ["OcspResponder", "ResponderKey", "key_hash_input", "MAX_NONCE"]

log = logging.getLogger("estkit.ocsp")

# RFC 8954 §2.1: a nonce is 1 to 32 octets; a longer one is not echoed.
MAX_NONCE = 32


@dataclass(frozen=True)
class ResponderKey:
    """What signs one CA's responses: a delegated OCSP signing certificate
    (RFC 6960 §4.2.2.2, ``delegated``) with its key, or the CA certificate and key."""

    cert: x509.Certificate
    signer: Signer
    delegated: bool


def key_hash_input(key: CertificatePublicKeyTypes) -> bytes:
    """The value of the subjectPublicKey BIT STRING (RFC 6960 §4.1.1 issuerKeyHash:
    "excluding the tag and length fields"), from the key's own encodings."""
    if isinstance(key, rsa.RSAPublicKey):  # RFC 8017 RSAPublicKey
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):  # RFC 5480 §2.2 ECPoint, uncompressed
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):  # RFC 8410 §4
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise ValueError(f"unsupported CA key type {type(key).__name__}")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class _Request:
    name_hash: bytes
    key_hash: bytes
    serial: int
    algorithm: hashes.HashAlgorithm
    nonce: bytes | None


def _parse(der: bytes) -> _Request | None:
    """The one request of an OCSPRequest (RFC 6960 §4.1.1), None when malformed
    or when it uses what this responder cannot read (several requests, an unknown hash)."""
    try:
        req = ocsp.load_der_ocsp_request(der)
        nonce: bytes | None = None
        try:
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            pass
        return _Request(req.issuer_name_hash, req.issuer_key_hash, req.serial_number, req.hash_algorithm, nonce)
    # What cryptography raises for bad DER (ValueError, TypeError, DuplicateExtension...),
    # an unknown hash (UnsupportedAlgorithm) and several requests in one (NotImplementedError).
    except (ValueError, TypeError, UnsupportedAlgorithm, NotImplementedError, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as exc:
        log.debug("malformed OCSP request: %s", exc)
        return None


class OcspResponder:
    """Answers OCSP requests for the CA's issuing CAs from the store."""

    def __init__(self, ca: CertificateAuthority, keys: Callable[[str], ResponderKey], *,
                 next_update: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.ca = ca
        self.keys = keys
        self.next_update = next_update
        self.clock = clock if clock is not None else ca.clock
        self._hashes: dict[tuple[str, str], tuple[bytes, bytes]] = {}

    def _issuer_hashes(self, issuing: IssuingCA, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
        """(issuerNameHash, issuerKeyHash) of a CA under one hash (RFC 6960 §4.1.1 CertID)."""
        k = (issuing.name, algorithm.name)
        got = self._hashes.get(k)
        if got is None:
            got = (_digest(algorithm, issuing.cert.subject.public_bytes()),
                   _digest(algorithm, key_hash_input(issuing.cert.public_key())))
            self._hashes[k] = got
        return got

    def respond(self, der: bytes) -> bytes:
        """The DER OCSPResponse for a DER OCSPRequest; never raises (RFC 6960 §2.3:
        malformedRequest, unauthorized, tryLater when the store fails, internalError)."""
        req = _parse(der)
        if req is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        exact: IssuingCA | None = None
        partial: IssuingCA | None = None
        for issuing in self.ca.cas.values():
            name_hash, key_hash = self._issuer_hashes(issuing, req.algorithm)
            if (name_hash, key_hash) == (req.name_hash, req.key_hash):
                exact = issuing
                break
            if partial is None and (name_hash == req.name_hash or key_hash == req.key_hash):
                partial = issuing
        responder = exact or partial
        if responder is None:
            # RFC 6960 §2.3: not a CA this server answers for.
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        try:
            return self._sign(responder, req, self._status(exact, req.serial))
        except StoreError as exc:
            # RFC 6960 §2.3 tryLater: the status cannot be read now; a client may ask again.
            log.error("OCSP: cannot read the store: %s", exc)
            return _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        except Exception:  # RFC 6960 §2.3 internalError rather than an HTTP 500
            log.exception("OCSP: cannot answer for CA %r", responder.name)
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)

    def _status(self, issuing: IssuingCA | None, serial: int) -> tuple[ocsp.OCSPCertStatus, datetime | None,
                                                                       x509.ReasonFlags | None]:
        """RFC 6960 §2.2: good, revoked (time, reason) or unknown (not issued by this CA:
        an issuer hash of someone else, or a serial it never issued)."""
        if issuing is None:
            return ocsp.OCSPCertStatus.UNKNOWN, None, None
        stored = self.ca.store.get_certificate(serial)
        if stored is None or stored.ca != issuing.name:
            return ocsp.OCSPCertStatus.UNKNOWN, None, None
        if stored.revoked_at is None:
            return ocsp.OCSPCertStatus.GOOD, None, None
        reason = next((f for f in x509.ReasonFlags if f.value == stored.revocation_reason), None)
        # RFC 5280 §5.3.1 (which RFC 6960 §2.2 reuses): omit the reason rather than say unspecified.
        if reason == x509.ReasonFlags.unspecified:
            reason = None
        return ocsp.OCSPCertStatus.REVOKED, stored.revoked_at.replace(microsecond=0), reason

    def _sign(self, issuing: IssuingCA, req: _Request,
              status: tuple[ocsp.OCSPCertStatus, datetime | None, x509.ReasonFlags | None]) -> bytes:
        key = self.keys(issuing.name)
        now = self.clock().replace(microsecond=0)
        cert_status, revoked_at, reason = status
        b = (ocsp.OCSPResponseBuilder()
             .add_response_by_hash(issuer_name_hash=req.name_hash, issuer_key_hash=req.key_hash,
                                   serial_number=req.serial, algorithm=req.algorithm, cert_status=cert_status,
                                   this_update=now, next_update=now + self.next_update,
                                   revocation_time=revoked_at, revocation_reason=reason))
        if key.delegated:
            # RFC 6960 §4.2.2.2: the client needs the delegated certificate to check the signature.
            b = b.certificates([key.cert])
        if req.nonce is not None and 0 < len(req.nonce) <= MAX_NONCE:
            # RFC 8954 §2.1 / RFC 6960 §4.4.1: echo the request's nonce.
            b = b.add_extension(x509.OCSPNonce(req.nonce), critical=False)
        return key.signer.sign_ocsp(b, key.cert).public_bytes(serialization.Encoding.DER)


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
