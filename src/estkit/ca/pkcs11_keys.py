"""Putting CA keys into a PKCS#11 token: generated there (``estkit init``) or
imported once from a key file (``estkit ca import-key``).

Either way the private key object is a token object, private (login needed),
sensitive and non-extractable (PKCS#11 v2.40 §4.9: CKA_SENSITIVE, CKA_EXTRACTABLE),
so that neither estkit nor anyone with the PIN can read it back; beside it a
public key object with the same label and id lets estkit find the public key.
"""

from __future__ import annotations

import os
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from estkit.ca import pkcs11 as p11
from estkit.ca.pkcs11 import TokenError, _login, _why, find_public_key, open_token
from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings

__all__ = ["TOKEN_KEY_TYPES", "generate_in_token", "import_into_token", "key_exists"]

# What estkit signs with through a token (the list; EdDSA tokens are rare).
TOKEN_KEY_TYPES = ("ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096")
_CURVE_OIDS = {"ec:P-256": "secp256r1", "ec:P-384": "secp384r1"}
_PROTECT = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
_PUBLIC = {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True}


def _rw_session(uri: Pkcs11Uri, settings: TokenSettings) -> Any:
    """A read-write session (the caller holds :data:`estkit.ca.pkcs11.CALLS`)."""
    token = open_token(uri, settings)
    _login(uri, settings, token)
    try:
        return token.open(rw=True)
    except PKCS11Error as exc:
        raise TokenError(f"{uri}: cannot open a read-write session: {_why(exc)}") from None


def key_exists(uri: Pkcs11Uri, settings: TokenSettings) -> bool:
    """Whether a private key with the URI's label/id is in the token."""
    with p11.CALLS:
        session = _rw_session(uri, settings)
        try:
            return any(True for _ in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                          **({Attribute.LABEL: uri.object} if uri.object else {}),
                                                          **({Attribute.ID: uri.id} if uri.id else {})}))
        finally:
            session.close()


def generate_in_token(uri: Pkcs11Uri, settings: TokenSettings, key_type: str) -> CertificateIssuerPublicKeyTypes:
    """A new key pair of ``key_type`` generated inside the token under the URI's label;
    returns its public key.  Refuses to add a second key under a label in use."""
    if key_type not in TOKEN_KEY_TYPES:
        raise TokenError(f"key type {key_type} is not supported in a token (one of {', '.join(TOKEN_KEY_TYPES)})")
    if key_exists(uri, settings):
        raise TokenError(f"{uri}: the token already holds a key with this label; use it with "
                         "--pkcs11-key-label or choose another label")
    ident = uri.id or os.urandom(8)
    with p11.CALLS:
        _generate(uri, settings, key_type, ident)
    return find_public_key(uri, settings)


def _generate(uri: Pkcs11Uri, settings: TokenSettings, key_type: str, ident: bytes) -> None:
    session = _rw_session(uri, settings)
    try:
        if key_type.startswith("ec:"):
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_OIDS[key_type])}, local=True)
            params.generate_keypair(store=True, label=uri.object, id=ident,
                                    public_template=_PUBLIC, private_template=_PROTECT)
        else:
            session.generate_keypair(KeyType.RSA, int(key_type[4:]), store=True, label=uri.object, id=ident,
                                     public_template=_PUBLIC, private_template=_PROTECT)
    except PKCS11Error as exc:
        raise TokenError(f"{uri}: cannot generate a {key_type} key: {_why(exc)}") from None
    finally:
        session.close()


def import_into_token(key: CertificateIssuerPrivateKeyTypes, uri: Pkcs11Uri, settings: TokenSettings) -> None:
    """Copy a file-based CA key into the token as a sensitive, non-extractable object
    (and its public key beside it).  The caller removes the file afterwards."""
    if key_exists(uri, settings):
        raise TokenError(f"{uri}: the token already holds a key with this label")
    ident = uri.id or os.urandom(8)
    common = {Attribute.LABEL: uri.object, Attribute.ID: ident}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        oid = {"secp256r1": "secp256r1", "secp384r1": "secp384r1"}.get(key.curve.name)
        if oid is None:
            raise TokenError(f"curve {key.curve.name} is not supported in a token (P-256, P-384 are)")
        ec_params = encode_named_curve_parameters(oid)
        point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        from asn1crypto.core import OctetString
        priv: dict[Any, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC,
                                Attribute.EC_PARAMS: ec_params,
                                Attribute.VALUE: key.private_numbers().private_value.to_bytes(
                                    (key.curve.key_size + 7) // 8, "big")}
        pub: dict[Any, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
                               Attribute.EC_PARAMS: ec_params, Attribute.EC_POINT: OctetString(point).dump()}
    elif isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()

        def b(i: int) -> bytes:
            return i.to_bytes((i.bit_length() + 7) // 8 or 1, "big")
        priv = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.MODULUS: b(n.public_numbers.n), Attribute.PUBLIC_EXPONENT: b(n.public_numbers.e),
                Attribute.PRIVATE_EXPONENT: b(n.d), Attribute.PRIME_1: b(n.p), Attribute.PRIME_2: b(n.q),
                Attribute.EXPONENT_1: b(n.dmp1), Attribute.EXPONENT_2: b(n.dmq1), Attribute.COEFFICIENT: b(n.iqmp)}
        pub = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.RSA,
               Attribute.MODULUS: b(n.public_numbers.n), Attribute.PUBLIC_EXPONENT: b(n.public_numbers.e)}
    else:
        raise TokenError("only EC (P-256, P-384) and RSA CA keys can be imported into a token")
    with p11.CALLS:
        session = _rw_session(uri, settings)
        try:
            session.create_object({**priv, **common, **_PROTECT})
            session.create_object({**pub, **common, **_PUBLIC})
        except PKCS11Error as exc:
            raise TokenError(f"{uri}: cannot import the key: {_why(exc)}") from None
        finally:
            session.close()
