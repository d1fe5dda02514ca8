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
    "OID_ECDSA_SHA256", "OID_ECDSA_SHA384", "OID_SHA256_RSA", "CRL_REASONS",
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

# -- CMS and CMC (RFC 5652, RFC 5272/6402, RFC 5958, RFC 5753) ------------------------
__all__ += [
    "OID_DATA", "OID_SIGNED_DATA", "OID_ENVELOPED_DATA", "OID_CT_PKIDATA", "OID_CT_PKIRESPONSE",
    "OID_CT_KP_AKEYPACKAGE", "OID_ATTR_CONTENT_TYPE", "OID_ATTR_MESSAGE_DIGEST", "OID_ATTR_SIGNING_TIME",
    "OID_CMC_STATUS_INFO_V2", "OID_CMC_IDENTIFICATION", "OID_CMC_IDENTITY_PROOF_V2",
    "OID_CMC_TRANSACTION_ID", "OID_CMC_SENDER_NONCE", "OID_CMC_RECIPIENT_NONCE", "OID_CMC_GET_CERT",
    "OID_CMC_REVOKE_REQUEST", "OID_SHA256", "OID_SHA384", "OID_SHA512", "OID_HMAC_SHA256",
    "OID_ECDSA_SHA512", "OID_RSAES_OAEP", "OID_AES256_CBC", "OID_AES128_CBC", "OID_AES256_WRAP",
    "OID_AES128_WRAP", "OID_ECDH_SHA256_KDF", "OID_ECDH_SHA384_KDF", "CT_PKIX_CRL", "CRL_PATH",
    "CT_OCSP_REQUEST", "CT_OCSP_RESPONSE", "OCSP_PATH",
]
OID_DATA = ObjectIdentifier("1.2.840.113549.1.7.1")
OID_SIGNED_DATA = ObjectIdentifier("1.2.840.113549.1.7.2")
OID_ENVELOPED_DATA = ObjectIdentifier("1.2.840.113549.1.7.3")
OID_CT_PKIDATA = ObjectIdentifier("1.3.6.1.5.5.7.12.2")
OID_CT_PKIRESPONSE = ObjectIdentifier("1.3.6.1.5.5.7.12.3")
# RFC 5958 §3: id-ct-KP-aKeyPackage, the content of the server-generated key (RFC 7030 §4.4.2).
OID_CT_KP_AKEYPACKAGE = ObjectIdentifier("2.16.840.1.101.2.1.2.78.5")
OID_ATTR_CONTENT_TYPE = ObjectIdentifier("1.2.840.113549.1.9.3")
OID_ATTR_MESSAGE_DIGEST = ObjectIdentifier("1.2.840.113549.1.9.4")
OID_ATTR_SIGNING_TIME = ObjectIdentifier("1.2.840.113549.1.9.5")
# id-cmc controls (RFC 5272 §6, RFC 6402).
OID_CMC_STATUS_INFO_V2 = ObjectIdentifier("1.3.6.1.5.5.7.7.25")
OID_CMC_IDENTIFICATION = ObjectIdentifier("1.3.6.1.5.5.7.7.2")
OID_CMC_IDENTITY_PROOF_V2 = ObjectIdentifier("1.3.6.1.5.5.7.7.34")
OID_CMC_TRANSACTION_ID = ObjectIdentifier("1.3.6.1.5.5.7.7.5")
OID_CMC_SENDER_NONCE = ObjectIdentifier("1.3.6.1.5.5.7.7.6")
OID_CMC_RECIPIENT_NONCE = ObjectIdentifier("1.3.6.1.5.5.7.7.7")
OID_CMC_GET_CERT = ObjectIdentifier("1.3.6.1.5.5.7.7.15")
OID_CMC_REVOKE_REQUEST = ObjectIdentifier("1.3.6.1.5.5.7.7.17")
OID_SHA256 = ObjectIdentifier("2.16.840.1.101.3.4.2.1")
OID_SHA384 = ObjectIdentifier("2.16.840.1.101.3.4.2.2")
OID_SHA512 = ObjectIdentifier("2.16.840.1.101.3.4.2.3")
OID_HMAC_SHA256 = ObjectIdentifier("1.2.840.113549.2.9")
OID_ECDSA_SHA512 = ObjectIdentifier("1.2.840.10045.4.3.4")
OID_RSAES_OAEP = ObjectIdentifier("1.2.840.113549.1.1.7")
OID_AES128_CBC = ObjectIdentifier("2.16.840.1.101.3.4.1.2")
OID_AES256_CBC = ObjectIdentifier("2.16.840.1.101.3.4.1.42")
OID_AES128_WRAP = ObjectIdentifier("2.16.840.1.101.3.4.1.5")
OID_AES256_WRAP = ObjectIdentifier("2.16.840.1.101.3.4.1.45")
# RFC 5753 §7.1.4: dhSinglePass-stdDH-sha256kdf-scheme and -sha384kdf-scheme.
OID_ECDH_SHA256_KDF = ObjectIdentifier("1.3.132.1.11.1")
OID_ECDH_SHA384_KDF = ObjectIdentifier("1.3.132.1.11.2")
# RFC 5280 §4.2.1.13 / RFC 2585: CRLs over plain HTTP, DER.
CT_PKIX_CRL = "application/pkix-crl"
CRL_PATH = "/crl"
# RFC 6960 Appendix A.1 / C: OCSP over HTTP (POST body or base64 in the GET path).
CT_OCSP_REQUEST = "application/ocsp-request"
CT_OCSP_RESPONSE = "application/ocsp-response"
OCSP_PATH = "/ocsp"

# RFC 5280 §5.3.1 CRLReason codes by their ASN.1 names (the names `estkit revoke`,
# the store and `estclient fullcmc revoke` use); 7 is unused.
CRL_REASONS: dict[str, int] = {
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3, "superseded": 4,
    "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8, "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
