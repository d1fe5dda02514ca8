"""The encrypted server-generated key (RFC 7030 §4.4.2, RFC 5958, RFC 5652 §6).

``application/pkcs7-mime; smime-type=server-generated-key`` is an EnvelopedData
whose content is a SignedData whose content is an AsymmetricKeyPackage
(``SEQUENCE OF OneAsymmetricKey``; a PKCS#8 PrivateKeyInfo is a version-1
OneAsymmetricKey).  The content key (AES-256-CBC) goes to the recipient:

* RSA: KeyTransRecipientInfo, RSAES-PKCS1-v1_5 (RFC 5652 §6.2.1);
* EC (P-256/P-384/P-521): KeyAgreeRecipientInfo, ephemeral-static ECDH with
  the X9.63 KDF and AES key wrap (RFC 5753 §3.1, dhSinglePass-stdDH-sha256kdf
  with aes256-wrap), what ``openssl cms -decrypt`` reads.

cryptography's PKCS7EnvelopeBuilder is RSA-only (interop-notes), hence pyasn1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes,
                                                             PrivateKeyTypes)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import tag, univ
from pyasn1_modules import rfc5280, rfc5652, rfc5753

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.asn1strings import OCTET_STRING
from estkit.protocol.der import SEQUENCE, der_tlv
from estkit.protocol.cmc_cms import (CmsError, content_info, parse_signed, sign_content, unwrap_content_info,
                                     verify_signed)
from estkit.protocol.malformed import reason

__all__ = ["SUPPORTED_RECIPIENTS", "envelope_supported", "envelope", "open_envelope", "key_package",
           "private_key_from_package", "wrap_server_key", "unwrap_server_key", "serverkeygen_csr", "decrypt_key_ids"]

SUPPORTED_RECIPIENTS = "RSA keys (key transport) and EC P-256/P-384/P-521 keys (ECDH key agreement)"


def envelope_supported(public_key: CertificatePublicKeyTypes) -> bool:
    """True if a key can receive an EnvelopedData from us."""
    return isinstance(public_key, rsa.RSAPublicKey) or (
        isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _KDF)


_KDF = {"secp256r1": (c.OID_ECDH_SHA256_KDF, hashes.SHA256), "secp384r1": (c.OID_ECDH_SHA384_KDF, hashes.SHA384),
        "secp521r1": (c.OID_ECDH_SHA384_KDF, hashes.SHA384)}
_KDF_BY_OID = {c.OID_ECDH_SHA256_KDF.dotted_string: hashes.SHA256, c.OID_ECDH_SHA384_KDF.dotted_string: hashes.SHA384}
_WRAP_LEN = {c.OID_AES256_WRAP.dotted_string: 32, c.OID_AES128_WRAP.dotted_string: 16}
_CBC_LEN = {c.OID_AES256_CBC.dotted_string: 32, c.OID_AES128_CBC.dotted_string: 16}


def _alg(oid: str, params: bytes | None = None) -> rfc5280.AlgorithmIdentifier:
    a = rfc5280.AlgorithmIdentifier()
    a["algorithm"] = univ.ObjectIdentifier(oid)
    if params is not None:
        a["parameters"] = univ.Any(params)
    return a


def _ias(cert: x509.Certificate) -> rfc5652.IssuerAndSerialNumber:
    ias = rfc5652.IssuerAndSerialNumber()
    ias["issuer"] = decoder.decode(cert.issuer.public_bytes(), asn1Spec=rfc5280.Name())[0]
    ias["serialNumber"] = cert.serial_number
    return ias


def _shared_info(wrap_oid: str, key_len: int) -> bytes:
    si = rfc5753.ECC_CMS_SharedInfo()
    si["keyInfo"] = _alg(wrap_oid)
    si["suppPubInfo"] = univ.OctetString((key_len * 8).to_bytes(4, "big")).subtype(
        explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 2))
    return bytes(encoder.encode(si))


def _kek(shared: bytes, hash_cls: Callable[[], hashes.HashAlgorithm], wrap_oid: str) -> bytes:
    n = _WRAP_LEN[wrap_oid]
    return X963KDF(algorithm=hash_cls(), length=n, sharedinfo=_shared_info(wrap_oid, n)).derive(shared)


def _recipient(cert: x509.Certificate, cek: bytes) -> rfc5652.RecipientInfo:
    pub = cert.public_key()
    ri = rfc5652.RecipientInfo()
    if isinstance(pub, rsa.RSAPublicKey):
        kt = ri["ktri"]
        kt["version"] = 0
        kt["rid"]["issuerAndSerialNumber"] = _ias(cert)
        kt["keyEncryptionAlgorithm"] = _alg(c.OID_RSA_ENCRYPTION.dotted_string, encoder.encode(univ.Null()))
        kt["encryptedKey"] = pub.encrypt(cek, padding.PKCS1v15())
        return ri
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name in _KDF:
        kdf_oid, hash_cls = _KDF[pub.curve.name]
        wrap_oid = c.OID_AES256_WRAP.dotted_string
        eph = ec.generate_private_key(pub.curve)
        kek = _kek(eph.exchange(ec.ECDH(), pub), hash_cls, wrap_oid)
        ka = rfc5652.KeyAgreeRecipientInfo().subtype(
            implicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 1))
        ka["version"] = 3
        orig = ka["originator"]["originatorKey"]
        # RFC 5753 §3.1.1: id-ecPublicKey with absent parameters, the ephemeral point.
        orig["algorithm"] = _alg(c.OID_EC_PUBLIC_KEY.dotted_string)
        orig["publicKey"] = univ.BitString.fromOctetString(eph.public_key().public_bytes(
            Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        ka["keyEncryptionAlgorithm"] = _alg(kdf_oid.dotted_string, encoder.encode(_alg(wrap_oid)))
        rek = rfc5652.RecipientEncryptedKey()
        rek["rid"]["issuerAndSerialNumber"] = _ias(cert)
        rek["encryptedKey"] = aes_key_wrap(kek, cek)
        ka["recipientEncryptedKeys"][0] = rek
        ri["kari"] = ka
        return ri
    raise BadRequest(f"cannot encrypt to a {type(pub).__name__.replace('_', '')}: supported are {SUPPORTED_RECIPIENTS}")


def envelope(recipient: x509.Certificate, content_type: str, content: bytes) -> bytes:
    """DER ContentInfo of an EnvelopedData of ``content`` for ``recipient`` (AES-256-CBC)."""
    cek, iv = os.urandom(32), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    plain = padder.update(content) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(plain) + enc.finalize()
    ri = _recipient(recipient, cek)
    ed = rfc5652.EnvelopedData()
    # RFC 5652 §6.1: version 2 when a RecipientInfo is kari (or not v0); 0 for ktri only.
    ed["version"] = 2 if ri.getName() == "kari" else 0
    ed["recipientInfos"][0] = ri
    eci = ed["encryptedContentInfo"]
    eci["contentType"] = univ.ObjectIdentifier(content_type)
    eci["contentEncryptionAlgorithm"] = _alg(c.OID_AES256_CBC.dotted_string, encoder.encode(univ.OctetString(iv)))
    eci["encryptedContent"] = univ.OctetString(ciphertext).subtype(
        implicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 0))
    return content_info(c.OID_ENVELOPED_DATA.dotted_string, encoder.encode(ed))


def open_envelope(der: bytes, private_key: PrivateKeyTypes) -> tuple[str, bytes]:
    """Decrypt an EnvelopedData with our private key: ``(contentType, content)``.
    Raises CmsError when it is malformed or not for this key."""
    _t, inner = unwrap_content_info(der, c.OID_ENVELOPED_DATA.dotted_string)
    try:
        ed, _ = decoder.decode(inner, asn1Spec=rfc5652.EnvelopedData())
        eci = ed["encryptedContentInfo"]
        alg = eci["contentEncryptionAlgorithm"]
        cbc_oid = str(alg["algorithm"])
        if cbc_oid not in _CBC_LEN:
            raise CmsError(f"unsupported content encryption algorithm {cbc_oid}")
        iv = bytes(decoder.decode(bytes(alg["parameters"]), asn1Spec=univ.OctetString())[0])
        ciphertext = bytes(eci["encryptedContent"])
        cek: bytes | None = None
        for ri in ed["recipientInfos"]:
            cek = _try_recipient(ri, private_key)
            if cek is not None:
                break
    except PyAsn1Error as exc:
        raise CmsError(f"malformed EnvelopedData: {reason(exc)}") from None
    if cek is None or len(cek) != _CBC_LEN[cbc_oid]:
        raise CmsError("the EnvelopedData is not encrypted to this key")
    dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    try:
        unpadder = sym_padding.PKCS7(128).unpadder()
        plain = unpadder.update(dec.update(ciphertext) + dec.finalize()) + unpadder.finalize()
    except ValueError:
        raise CmsError("the EnvelopedData does not decrypt (bad padding)") from None
    return str(eci["contentType"]), plain


def _try_recipient(ri: rfc5652.RecipientInfo, key: PrivateKeyTypes) -> bytes | None:
    name = ri.getName()
    if name == "ktri" and isinstance(key, rsa.RSAPrivateKey):
        kt = ri["ktri"]
        enc = bytes(kt["encryptedKey"])
        try:
            if str(kt["keyEncryptionAlgorithm"]["algorithm"]) == c.OID_RSAES_OAEP.dotted_string:
                return key.decrypt(enc, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
            return key.decrypt(enc, padding.PKCS1v15())
        except ValueError:
            return None
    if name == "kari" and isinstance(key, ec.EllipticCurvePrivateKey):
        ka = ri["kari"]
        orig = ka["originator"]
        if orig.getName() != "originatorKey":
            return None
        point = orig["originatorKey"]["publicKey"].asOctets()
        eph = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        kea = ka["keyEncryptionAlgorithm"]
        hash_cls = _KDF_BY_OID.get(str(kea["algorithm"]))
        if hash_cls is None:
            return None
        wrap = decoder.decode(bytes(kea["parameters"]), asn1Spec=rfc5280.AlgorithmIdentifier())[0]
        wrap_oid = str(wrap["algorithm"])
        if wrap_oid not in _WRAP_LEN:
            return None
        kek = _kek(key.exchange(ec.ECDH(), eph), hash_cls, wrap_oid)
        for rek in ka["recipientEncryptedKeys"]:
            try:
                return aes_key_unwrap(kek, bytes(rek["encryptedKey"]))
            except InvalidUnwrap:
                continue
    return None


def key_package(private_key_der: bytes) -> bytes:
    """RFC 5958 AsymmetricKeyPackage holding one PKCS#8 PrivateKeyInfo."""
    return der_tlv(SEQUENCE, private_key_der)  # SEQUENCE OF OneAsymmetricKey


def private_key_from_package(der: bytes) -> bytes:
    """The first OneAsymmetricKey (DER) of an AsymmetricKeyPackage."""
    try:
        seq, rest = decoder.decode(der, asn1Spec=univ.SequenceOf(componentType=univ.Any()))
    except PyAsn1Error:
        raise CmsError("not an AsymmetricKeyPackage") from None
    if rest or len(seq) < 1:
        raise CmsError("AsymmetricKeyPackage holds no key")
    return bytes(seq[0])


def wrap_server_key(private_key_der: bytes, recipient: x509.Certificate, *, sign: Callable[[bytes], bytes],
                    signer_cert: x509.Certificate) -> bytes:
    """RFC 7030 §4.4.2: the key package, signed (by the CA) and then enveloped to
    ``recipient``.  The EnvelopedData's content is the SignedData itself
    (content type id-signedData), not a ContentInfo."""
    signed = sign_content(c.OID_CT_KP_AKEYPACKAGE.dotted_string, key_package(private_key_der), sign=sign,
                          public_key=signer_cert.public_key(), signer_cert=signer_cert, certificates=[signer_cert])
    _t, signed_data = unwrap_content_info(signed)
    return envelope(recipient, c.OID_SIGNED_DATA.dotted_string, signed_data)


def unwrap_server_key(der: bytes, private_key: PrivateKeyTypes) -> tuple[bytes, tuple[x509.Certificate, ...]]:
    """Client side: decrypt and unpack a server-generated key.  Returns the DER
    PrivateKeyInfo and the certificates of the inner SignedData (its signer's
    chain; check it against the EST CA).  The inner content may be a bare
    SignedData or a ContentInfo around it (both are seen)."""
    ctype, inner = open_envelope(der, private_key)
    if ctype != c.OID_SIGNED_DATA.dotted_string:
        raise CmsError(f"encrypted key holds {ctype}, expected SignedData")
    try:
        unwrap_content_info(inner)
        ci = inner
    except CmsError:
        ci = content_info(c.OID_SIGNED_DATA.dotted_string, inner)
    sc = parse_signed(ci, expected_type=c.OID_CT_KP_AKEYPACKAGE.dotted_string)
    signer = next((cert for cert in sc.certificates if sc.signer is not None and sc.signer.matches(cert)), None)
    if signer is None or not verify_signed(sc, signer.public_key()):
        raise CmsError("the server-generated key's signature does not verify")
    return private_key_from_package(sc.content), sc.certificates


def serverkeygen_csr(key: CertificateIssuerPrivateKeyTypes, *, cn: str | None = None,
                     subject: x509.Name | None = None, dns: Sequence[str] = (),
                     asymmetric_key_id: bytes | None = None, decrypt_key_id: bytes | None = None) -> bytes:
    """DER of a /serverkeygen request.  ``asymmetric_key_id`` (RFC 7030 §4.4.1.2
    AsymmetricDecryptKeyIdentifier, the subject key identifier of the client's TLS
    certificate) asks for the key encrypted to that certificate; ``decrypt_key_id``
    (§4.4.1.1) names a symmetric key.  Both are OCTET STRING attributes."""
    name = subject if subject is not None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    for oid, value in ((c.OID_ASYMM_DECRYPT_KEY_ID, asymmetric_key_id), (c.OID_DECRYPT_KEY_ID, decrypt_key_id)):
        if value is not None:
            b = b.add_attribute(oid, value, _tag=OCTET_STRING)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, algo).public_bytes(Encoding.DER)


def decrypt_key_ids(csr: x509.CertificateSigningRequest) -> tuple[bytes | None, bytes | None]:
    """``(AsymmetricDecryptKeyIdentifier, DecryptKeyIdentifier)`` of a request, None when absent."""
    out: list[bytes | None] = []
    for oid in (c.OID_ASYMM_DECRYPT_KEY_ID, c.OID_DECRYPT_KEY_ID):
        try:
            out.append(csr.attributes.get_attribute_for_oid(oid).value)
        except x509.AttributeNotFound:
            out.append(None)
    return out[0], out[1]
