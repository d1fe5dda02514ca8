"""Client building blocks for /fullcmc (RFC 7030 §4.3): build a signed
Full PKI Request, read a Full PKI Response.  Pure functions, no I/O."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from estkit.protocol import constants as c
from estkit.protocol.cmc import (Control, PKIResponse, StatusInfo, TaggedRequest, ctl_identification,
                                 ctl_identity_proof_v2, ctl_sender_nonce, ctl_transaction_id, decode_pkiresponse,
                                 encode_pkidata, encode_req_sequence, identity_proof_witness, octets_value,
                                 int_value)
from estkit.protocol.cmc_cms import CmsError, parse_signed, raw_signer, sign_content, verify_signed

__all__ = ["CmcRequest", "CmcReply", "build_cmc_request", "parse_cmc_response"]


@dataclass(frozen=True)
class CmcRequest:
    """A signed Full PKI Request and what the response should echo."""

    der: bytes
    transaction_id: int
    sender_nonce: bytes


@dataclass(frozen=True)
class CmcReply:
    """A parsed, signature-checked Full PKI Response."""

    response: PKIResponse
    certificates: tuple[x509.Certificate, ...]
    signer: x509.Certificate
    transaction_id: int | None
    recipient_nonce: bytes | None

    @property
    def statuses(self) -> tuple[StatusInfo, ...]:
        return self.response.statuses

    def certificate_for(self, public_key: object) -> x509.Certificate | None:
        """The returned certificate for a key (the one just enrolled)."""
        return next((cert for cert in self.certificates if cert.public_key() == public_key), None)


def build_cmc_request(signing_key: CertificateIssuerPrivateKeyTypes, *, requests: Sequence[TaggedRequest] = (),
                      controls: Sequence[Control] = (), signer_cert: x509.Certificate | None = None,
                      shared_secret: bytes | None = None, identification: str | None = None,
                      transaction_id: int | None = None, sender_nonce: bytes | None = None,
                      extra_certs: Sequence[x509.Certificate] = ()) -> CmcRequest:
    """A SignedData around a PKIData (RFC 5272 §3.2).

    Initial enrollment: ``signing_key`` is the key being certified (the signer
    is named by its subjectKeyIdentifier) and ``shared_secret`` adds an
    identityProofV2 (with ``identification`` when given).  Renewal, revocation
    or getCert: ``signer_cert`` is the existing certificate of ``signing_key``.
    Body part IDs of the added controls follow the largest one given."""
    tid = transaction_id if transaction_id is not None else secrets.randbits(63)
    nonce = sender_nonce if sender_nonce is not None else os.urandom(16)
    used = [x.body_part_id for x in controls] + [r.body_part_id for r in requests]
    nxt = max(used, default=0) + 1
    ctls = list(controls)
    ctls.append(ctl_transaction_id(nxt, tid))
    ctls.append(ctl_sender_nonce(nxt + 1, nonce))
    nxt += 2
    if identification is not None:
        ctls.append(ctl_identification(nxt, identification))
        nxt += 1
    if shared_secret is not None:
        witness = identity_proof_witness(shared_secret, encode_req_sequence(requests), identification)
        ctls.append(ctl_identity_proof_v2(nxt, witness))
    pkidata, _reqs = encode_pkidata(ctls, requests)
    der = sign_content(c.OID_CT_PKIDATA.dotted_string, pkidata, sign=raw_signer(signing_key),
                       public_key=signing_key.public_key(), signer_cert=signer_cert,
                       certificates=[*([signer_cert] if signer_cert is not None else []), *extra_certs])
    return CmcRequest(der=der, transaction_id=tid, sender_nonce=nonce)


def parse_cmc_response(der: bytes, *, trusted: Sequence[x509.Certificate] = ()) -> CmcReply:
    """Parse a Full PKI Response and check its signature with the signer's
    certificate from the response.  With ``trusted`` (the EST CA chain) the
    signer must also be one of them or directly issued by one."""
    sc = parse_signed(der, expected_type=c.OID_CT_PKIRESPONSE.dotted_string)
    signer = next((cert for cert in sc.certificates if sc.signer is not None and sc.signer.matches(cert)), None)
    if signer is None:
        raise CmsError("the CMC response does not carry its signer's certificate")
    if not verify_signed(sc, signer.public_key()):
        raise CmsError("the CMC response's signature does not verify")
    if trusted and not any(signer == t or _issued_by(signer, t) for t in trusted):
        raise CmsError("the CMC response is not signed by the EST CA or one of its RAs")
    resp = decode_pkiresponse(sc.content)
    tid = resp.control(c.OID_CMC_TRANSACTION_ID.dotted_string)
    rn = resp.control(c.OID_CMC_RECIPIENT_NONCE.dotted_string)
    return CmcReply(response=resp, certificates=sc.certificates, signer=signer,
                    transaction_id=int_value(tid) if tid else None,
                    recipient_nonce=octets_value(rn) if rn else None)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # any failure means "not issued by"
        return False
