"""Paths, media types, headers and OIDs, each named exactly once."""

from __future__ import annotations

from cryptography.x509.oid import ObjectIdentifier

__all__ = [
    "WELL_KNOWN", "OPERATIONS", "OP_CACERTS", "OP_SIMPLEENROLL", "OP_SIMPLEREENROLL",
    "OP_CSRATTRS", "OP_SERVERKEYGEN", "OP_FULLCMC",
    "CT_PKCS10", "CT_PKCS7", "CT_CERTS_ONLY", "CT_CSRATTRS", "CT_PKCS8", "CT_CMC_REQUEST",
    "CT_CMC_RESPONSE", "CT_SERVER_KEY", "CT_MULTIPART", "CT_TEXT",
    "HDR_CTE", "HDR_RETRY_AFTER", "HDR_WWW_AUTHENTICATE",
    "OID_CHALLENGE_PASSWORD", "OID_EXTENSION_REQUEST", "OID_KP_CMC_RA",
    "OID_CHANGE_SUBJECT_NAME", "OID_DECRYPT_KEY_ID", "OID_ASYMM_DECRYPT_KEY_ID",
    "OID_EC_PUBLIC_KEY", "OID_RSA_ENCRYPTION", "OID_ED25519", "OID_SECP256R1", "OID_SECP384R1",
    "OID_ECDSA_SHA256", "OID_ECDSA_SHA384", "OID_SHA256_RSA",
]

# RFC 7030 §3.2.2: every operation lives under this prefix, optionally after a CA label.
WELL_KNOWN = "/.well-known/est"
OP_CACERTS = "cacerts"
OP_SIMPLEENROLL = "simpleenroll"
OP_SIMPLEREENROLL = "simplereenroll"
OP_CSRATTRS = "csrattrs"
OP_SERVERKEYGEN = "serverkeygen"
OP_FULLCMC = "fullcmc"
OPERATIONS = (OP_CACERTS, OP_SIMPLEENROLL, OP_SIMPLEREENROLL, OP_CSRATTRS, OP_SERVERKEYGEN, OP_FULLCMC)

# RFC 7030 §3.2.4 media types.
CT_PKCS10 = "application/pkcs10"
CT_PKCS7 = "application/pkcs7-mime"
# interop: libest's client matches this exact prefix, one space after ';'.
CT_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
CT_CMC_REQUEST = "application/pkcs7-mime; smime-type=CMC-request"
CT_CMC_RESPONSE = "application/pkcs7-mime; smime-type=CMC-response"
CT_SERVER_KEY = "application/pkcs7-mime; smime-type=server-generated-key"
CT_CSRATTRS = "application/csrattrs"
CT_PKCS8 = "application/pkcs8"
CT_MULTIPART = "multipart/mixed"
CT_TEXT = "text/plain; charset=utf-8"

HDR_CTE = "Content-Transfer-Encoding"
HDR_RETRY_AFTER = "Retry-After"
HDR_WWW_AUTHENTICATE = "WWW-Authenticate"

# PKCS#9 challengePassword carries the tls-unique value (RFC 7030 §3.5).
OID_CHALLENGE_PASSWORD = ObjectIdentifier("1.2.840.113549.1.9.7")
OID_EXTENSION_REQUEST = ObjectIdentifier("1.2.840.113549.1.9.14")
# RFC 6402 id-kp-cmcRA: marks a registration authority (RFC 7030 §3.7).
OID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
OID_CHANGE_SUBJECT_NAME = ObjectIdentifier("1.3.6.1.5.5.7.7.36")
OID_DECRYPT_KEY_ID = ObjectIdentifier("1.2.840.113549.1.9.16.2.37")
OID_ASYMM_DECRYPT_KEY_ID = ObjectIdentifier("1.2.840.113549.1.9.16.2.54")

OID_EC_PUBLIC_KEY = ObjectIdentifier("1.2.840.10045.2.1")
OID_RSA_ENCRYPTION = ObjectIdentifier("1.2.840.113549.1.1.1")
OID_ED25519 = ObjectIdentifier("1.3.101.112")
OID_SECP256R1 = ObjectIdentifier("1.2.840.10045.3.1.7")
OID_SECP384R1 = ObjectIdentifier("1.3.132.0.34")
OID_ECDSA_SHA256 = ObjectIdentifier("1.2.840.10045.4.3.2")
OID_ECDSA_SHA384 = ObjectIdentifier("1.2.840.10045.4.3.3")
OID_SHA256_RSA = ObjectIdentifier("1.2.840.113549.1.1.11")
