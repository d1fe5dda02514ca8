"""Key types by name: describe, check and generate.

A key type is named as ``ec:P-256``, ``ec:P-384``, ``rsa:2048`` (any size),
``ed25519``: the form used in profiles, in ``/csrattrs`` and on the command line.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

__all__ = ["KEY_TYPES", "key_type_of", "generate_key", "check_key_type_name", "signing_key"]

KEY_TYPES = ("ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "rsa:3072", "rsa:4096", "ed25519")

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1,
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def key_type_of(key: CertificatePublicKeyTypes) -> str:
    """The name of a public key's type, e.g. ``rsa:2048`` or ``ec:P-256``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa:{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec:" + _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448"
    return "unknown"


def signing_key(key: PrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    """``key`` if it can sign a request or a certificate; ValueError for
    key-agreement keys (X25519, DH...), which a file may hold as well."""
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                        ed448.Ed448PrivateKey, dsa.DSAPrivateKey)):
        return key
    raise ValueError(f"a {type(key).__name__} cannot sign")


def check_key_type_name(name: str) -> str:
    """Validate a key type name; returns it normalised or raises ValueError."""
    n = name.strip()
    low = n.lower()
    if low == "ed25519":
        return "ed25519"
    if low.startswith("rsa:"):
        size = int(low[4:])
        if size < 1024 or size > 16384:
            raise ValueError(f"RSA size out of range: {name}")
        return f"rsa:{size}"
    if low.startswith("ec:"):
        curve = n[3:].upper()
        if curve in _CURVES:
            return f"ec:{curve}"
    raise ValueError(f"unknown key type {name!r} (use one of {', '.join(KEY_TYPES)})")


def generate_key(name: str) -> CertificateIssuerPrivateKeyTypes:
    """A new private key of the named type."""
    n = check_key_type_name(name)
    if n == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if n.startswith("rsa:"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(n[4:]))
    return ec.generate_private_key(_CURVES[n[3:]]())
