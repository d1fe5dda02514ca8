"""Signers: what holds a CA key.  A key file today; a PKCS#11 token can
implement the same protocol."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

__all__ = ["Signer", "KeySigner", "load_signer", "write_private_key", "hash_for"]


class Signer(Protocol):
    """Signs certificates, CRLs and OCSP responses with a CA key it may never reveal."""

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        """The CA's public key."""

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a finished builder."""

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        """Sign a finished CRL builder."""

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        """Sign an OCSP response builder as ``responder`` (whose key this is), naming it
        by key hash (RFC 6960 §4.2.1 BasicOCSPResponse, ResponderID byKey).  The builder
        has no responder ID yet: cryptography refuses a builder whose responder
        certificate is not the signing key's, and a token signer signs through a stand-in."""

    def sign_data(self, data: bytes) -> bytes:
        """A raw signature over ``data`` with the key's natural hash (:func:`hash_for`):
        PKCS#1 v1.5 for RSA, DER ECDSA for EC, pure EdDSA.  Used for CMS SignedData
        (CMC responses, RFC 5272 §3.2.2; server-generated keys, RFC 7030 §4.4.2)."""


def hash_for(key: CertificateIssuerPrivateKeyTypes | CertificateIssuerPublicKeyTypes) -> hashes.HashAlgorithm | None:
    """The signature hash that matches a key's strength (None for EdDSA)."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
                        ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.key_size >= 512:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size >= 7680:
        return hashes.SHA384()
    return hashes.SHA256()


class KeySigner:
    """A signer over an in-memory private key (loaded once from a file)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, *, pss: bool = False) -> None:
        self._key = key
        self._hash = hash_for(key)
        # RSASSA-PSS for certificates and CRLs (RFC 4055 §3.1: MGF1 with the same hash,
        # salt as long as the hash); CMS and OCSP stay PKCS#1 v1.5.
        self._padding = (padding.PSS(padding.MGF1(self._hash or hashes.SHA256()), (self._hash or hashes.SHA256()).digest_size)
                         if pss and isinstance(key, rsa.RSAPrivateKey) else None)

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, self._hash, rsa_padding=self._padding)  # type: ignore[arg-type]

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self._key, self._hash, rsa_padding=self._padding)  # type: ignore[arg-type]

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        return builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder).sign(self._key, self._hash)

    def sign_data(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), self._hash or hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self._hash or hashes.SHA256()))
        return key.sign(data)  # type: ignore[call-arg]


def load_signer(path: Path, passphrase: bytes | None = None, *, pss: bool = False) -> KeySigner:
    """Load a PEM private key file (optionally encrypted) into a signer."""
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc} (set the CA key passphrase)") from None
    except ValueError as exc:
        raise ValueError(f"{path}: cannot load private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise ValueError(f"{path}: unsupported CA key type")
    return KeySigner(key, pss=pss)


def write_private_key(path: Path, key: CertificateIssuerPrivateKeyTypes,
                      passphrase: bytes | None = None) -> None:
    """Write a PEM private key with mode 0600 from the start (never briefly readable)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
