"""Server-side key generation (RFC 7030 §4.4).

The CSR names the subject and SANs; its public key and signature are ignored
(§4.4.1).  The new key never touches the store or the log: it exists in this
process only until the response is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from estkit.ca.authority import IssuingCA
from estkit.ca.identity import RequestContext
from estkit.ca.policy import Operation, check_key_type
from estkit.ca.profile import Profile
from estkit.errors import BadRequest, NotFound
from estkit.protocol.cmc_cms import key_identifiers
from estkit.protocol.request import CertRequest
from estkit.protocol.envelope import SUPPORTED_RECIPIENTS, decrypt_key_ids, envelope_supported, wrap_server_key
from estkit.protocol.keys import KEY_TYPES, generate_key

__all__ = ["ServerKeyGen", "GeneratedKey", "KeyGenAuthority"]


@dataclass(frozen=True)
class GeneratedKey:
    """The issued certificate and its key: DER PrivateKeyInfo, or (``encrypted``)
    the DER EnvelopedData of RFC 7030 §4.4.2."""

    certificate: x509.Certificate
    key_der: bytes
    encrypted: bool

    def __repr__(self) -> str:  # never print key material
        return f"GeneratedKey({self.certificate.serial_number:x}, encrypted={self.encrypted})"


class KeyGenAuthority(Protocol):
    """What server-side key generation needs of the CA: the label's profile,
    the one enrollment sequence, and the issuing CA that signs the key's
    envelope."""

    def profile(self, label: str | None) -> Profile: ...

    def enroll(self, operation: Operation, label: str | None, request: CertRequest, ctx: RequestContext, *,
               renew: bool = False, public_key: CertificatePublicKeyTypes | None = None) -> x509.Certificate: ...

    def issuing_ca(self, label: str | None) -> IssuingCA: ...


class ServerKeyGen:
    """/serverkeygen on top of the CA."""

    def __init__(self, ca: KeyGenAuthority) -> None:
        self.ca = ca

    def serverkeygen(self, label: str | None, request: CertRequest, ctx: RequestContext, *,
                     encrypt: bool = False) -> GeneratedKey:
        """RFC 7030 §4.4: generate a key of the label's (or the CSR's) type,
        certify it for the CSR's subject and SANs, return both.  ``encrypt``:
        the key goes encrypted to the client certificate whatever the CSR says
        (EST-coaps ``skc``, RFC 9148 §4.8)."""
        profile = self.ca.profile(label)
        if not profile.serverkeygen:
            # RFC 7030 §4.4: optional; off unless the label enables it.
            raise NotFound(f"serverkeygen is not enabled for label {profile.label!r}")
        if request.pkcs10 is None:
            raise BadRequest("serverkeygen takes a PKCS#10 request (RFC 7030 §4.4.1)")
        recipient = self._recipient(request.pkcs10, ctx, profile.serverkeygen_encrypt or encrypt)
        key_type = profile.serverkeygen_key_type or request.key_type
        if key_type not in KEY_TYPES:
            raise BadRequest(f"cannot generate a {key_type} key (supported: {', '.join(KEY_TYPES)})")
        # The label's own serverkeygen_key_type is the operator's choice; a type taken from the
        # CSR must be one the label allows, by the same rule as any request's key.
        check_key_type(key_type, (key_type,) if profile.serverkeygen_key_type else profile.allowed_key_types,
                       source="" if profile.serverkeygen_key_type else " (from the CSR)")
        key = generate_key(key_type)
        cert = self.ca.enroll(Operation.SERVERKEYGEN, label, request, ctx, public_key=key.public_key())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        del key
        if recipient is None:
            return GeneratedKey(cert, der, False)
        issuing = self.ca.issuing_ca(label)
        wrapped = wrap_server_key(der, recipient, sign=issuing.signer.sign_data, signer_cert=issuing.cert)
        return GeneratedKey(cert, wrapped, True)

    @staticmethod
    def _recipient(csr: x509.CertificateSigningRequest, ctx: RequestContext,
                   label_demands: bool) -> x509.Certificate | None:
        """Whom to encrypt the key to (RFC 7030 §4.4.1.2), or None for a plain key.
        Decided before anything is issued, so a refusal issues nothing."""
        asym_id, sym_id = decrypt_key_ids(csr)
        if sym_id is not None:
            # §4.4.1.1: a symmetric key shared out of band; this server holds none.
            raise BadRequest("unknown DecryptKeyIdentifier: this server holds no symmetric keys "
                             "(use AsymmetricDecryptKeyIdentifier with the TLS client certificate)")
        if asym_id is None and not label_demands:
            return None
        tls = ctx.client_cert.certificate if ctx.client_cert is not None else None
        if tls is None:
            raise BadRequest("an encrypted server-generated key needs a TLS client certificate to encrypt to")
        if asym_id is not None and asym_id not in key_identifiers(tls.public_key(), tls):
            raise BadRequest("unknown AsymmetricDecryptKeyIdentifier: it is not the subject key identifier "
                             "of the TLS client certificate")
        if not envelope_supported(tls.public_key()):
            raise BadRequest(f"cannot encrypt the key to this TLS client certificate's key: supported are "
                             f"{SUPPORTED_RECIPIENTS}")
        return tls
