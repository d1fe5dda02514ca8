"""Full CMC (RFC 7030 §4.3, RFC 5272/5273/5274, RFC 6402) on top of the CA.

One call per request: :meth:`CmcService.fullcmc` takes the request as
protocol/ decoded it (``estkit.protocol.cmc_request``) and always answers
with a signed Full PKI Response and an HTTP status; a failure is a
``CMCStatusInfoV2`` with its CMCFailInfo AND a 4xx/5xx status (RFC 7030
§4.3.2).  No HTTP, base64 or media types here: the handler does those.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.authority import IssuingCA
from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.policy import Operation
from estkit.ca.ports import StoredCert
from estkit.ca.profile import Profile
from estkit.ca.revocation import reason_name
from estkit.errors import BadRequest, EstError, FailInfo, Forbidden, InternalError, NotFound, Pending, Unauthorized
from estkit.protocol import constants as c
from estkit.protocol.cmc import (FAILED, SUCCESS, CmcError, Control, PKIData, RequestKind, StatusInfo,
                                 ctl_recipient_nonce, ctl_sender_nonce, ctl_status_info_v2, ctl_transaction_id,
                                 decode_get_cert, decode_identity_proof_v2, decode_revoke_request, encode_pkiresponse,
                                 identity_proof_witness, utf8_value)
from estkit.protocol.cmc_cms import CmsError, sign_content, verify_signed
from estkit.protocol.cmc_request import FullCmcRequest
from estkit.protocol.request import CertRequest

__all__ = ["CmcService", "CmcOutcome", "CmcAuthority", "Revoker", "KNOWN_CONTROLS"]

O = c  # short alias for the OIDs below
KNOWN_CONTROLS = frozenset(o.dotted_string for o in (
    O.OID_CMC_TRANSACTION_ID, O.OID_CMC_SENDER_NONCE, O.OID_CMC_RECIPIENT_NONCE, O.OID_CMC_IDENTIFICATION,
    O.OID_CMC_IDENTITY_PROOF_V2, O.OID_CMC_REVOKE_REQUEST, O.OID_CMC_GET_CERT))


@dataclass(frozen=True)
class CmcOutcome:
    """The signed PKIResponse and the HTTP status it goes out with."""

    status: int
    der: bytes
    retry_after: int | None = None
    statuses: tuple[StatusInfo, ...] = ()


@dataclass(frozen=True)
class _Echo:
    """What the response returns of the request (RFC 5272 §6.6, §6.6.1): its
    transactionId, and its senderNonce as recipientNonce."""

    transaction_id: int | None = None
    sender_nonce: bytes | None = None


def _failed(exc: EstError) -> StatusInfo:
    """An error as a CMCStatusInfoV2 (RFC 5272 §6.1.4): its failInfo, its body parts, its reason."""
    return StatusInfo(FAILED, exc.body_parts, exc.reason, int(exc.fail_info))


def _http_status(exc: EstError) -> int:
    """RFC 7030 §4.3.2: a failed full CMC request goes out with a 4xx/5xx status;
    one held for manual approval (tryLater) with 503 and Retry-After."""
    return 503 if isinstance(exc, Pending) else exc.status


class CmcAuthority(Protocol):
    """What full CMC needs of the CA (declared here, where it is consumed)."""

    def profile(self, label: str | None) -> Profile: ...

    def issuing_ca(self, label: str | None) -> IssuingCA: ...

    def ca_named(self, subject_der: bytes) -> IssuingCA | None: ...

    def identify_certificate(self, der: bytes) -> Identity: ...

    def enroll(self, operation: Operation, label: str | None, request: CertRequest, ctx: RequestContext, *,
               renew: bool = False) -> x509.Certificate: ...

    def issued_certificate(self, serial: int) -> x509.Certificate | None: ...

    def authorize_revocation(self, ra: Identity, ctx: RequestContext, label: str, cert: x509.Certificate) -> None: ...


class Revoker(Protocol):
    """Revocation as full CMC asks for it (``estkit.ca.revocation.Revocation``)."""

    def revoke(self, serial: int, reason: str, *, identity: str, peer: str = "-", issuer: x509.Name | None = None,
               authorize: Callable[[StoredCert, x509.Certificate], None] | None = None) -> object: ...


class CmcService:
    """/fullcmc: enrollment (tcr, crm), renewal, revokeRequest, getCert."""

    def __init__(self, ca: CmcAuthority, revocation: Revoker,
                 shared_secrets: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        self.ca = ca
        self.revocation = revocation
        # label -> identification ("" when none is sent) -> shared secret (RFC 5272 §6.2)
        self.secrets = dict(shared_secrets or {})

    def fullcmc(self, label: str | None, request: FullCmcRequest, ctx: RequestContext,
                auth_error: EstError | None = None) -> CmcOutcome:
        """RFC 7030 §4.3: process one decoded Full PKI Request; never raises for a CMC failure."""
        issuing = self.ca.issuing_ca(label)
        echo = _Echo(request.transaction_id, request.sender_nonce)
        try:
            self._supported(request)
            if auth_error is not None:
                raise auth_error
            signer = self._signer(request)
            identity = self._identity(self.ca.profile(label).label, request.pkidata, signer, ctx)
            statuses, certs, http, retry = self._process(label, request, signer, identity, ctx)
        except EstError as exc:
            st = _failed(exc)
            return CmcOutcome(_http_status(exc), self._respond(issuing, echo, [st], []), exc.retry_after, (st,))
        return CmcOutcome(http, self._respond(issuing, echo, statuses, certs), retry, tuple(statuses))

    def failure(self, label: str | None, exc: EstError) -> CmcOutcome:
        """The signed response to a request that could not be decoded at all
        (wrong media type, not base64, not a SignedData of a PKIData)."""
        st = _failed(exc)
        issuing = self.ca.issuing_ca(label)
        return CmcOutcome(_http_status(exc), self._respond(issuing, _Echo(), [st], []), exc.retry_after, (st,))

    # -- what is supported, and who signed ------------------------------------------

    @staticmethod
    def _supported(request: FullCmcRequest) -> None:
        pd = request.pkidata
        # RFC 5272 §3.2.1.2.1: an unrecognized control fails the whole PKIData.
        for ctl in pd.controls:
            if ctl.oid not in KNOWN_CONTROLS:
                raise BadRequest(f"unknown control {ctl.oid} in body part {ctl.body_part_id}",
                                 body_parts=(ctl.body_part_id,))
        for part in request.requests:
            if part.kind == RequestKind.ORM:
                raise BadRequest(f"orm requests are not supported (body part {part.body_part_id})",
                                 body_parts=(part.body_part_id,))
        if pd.cms_body_parts or pd.other_body_parts:
            raise BadRequest("nested cmsSequence and otherMsgSequence are not supported",
                             body_parts=pd.cms_body_parts + pd.other_body_parts)
        if not pd.requests and not any(x.oid in (c.OID_CMC_REVOKE_REQUEST.dotted_string,
                                                 c.OID_CMC_GET_CERT.dotted_string) for x in pd.controls):
            raise BadRequest("the PKIData asks for nothing (no request, revokeRequest or getCert)")

    def _signer(self, request: FullCmcRequest) -> Identity | None:
        """The certificate identity that signed (renewal, RA, revocation), or None
        when the request is signed by the key being certified (RFC 5272 §3.2.1.3.1)."""
        sc = request.signed
        sid = sc.signer
        cert = next((x for x in sc.certificates if sid is not None and sid.matches(x)), None)
        if cert is not None:
            try:
                ident = self.ca.identify_certificate(cert.public_bytes(Encoding.DER))
            except (Forbidden, Unauthorized) as exc:
                raise Forbidden(f"the request's signer: {exc.reason}") from None
            if ident.kind != IdentityKind.CERT:
                raise Forbidden("the request is signed by a certificate this CA did not issue")
            if not verify_signed(sc, cert.public_key()):
                raise BadRequest("the SignedData signature does not verify", fail_info=FailInfo.BAD_MESSAGE_CHECK)
            return ident
        for part in request.requests:
            if part.request is not None and sid is not None and sid.ski is not None and \
                    verify_signed(sc, part.request.public_key):
                return None
        raise BadRequest("the SignedData signature does not verify with the signer's certificate or with the key "
                         "of any request", fail_info=FailInfo.BAD_MESSAGE_CHECK)

    def _identity(self, label: str, pd: PKIData, signer: Identity | None, ctx: RequestContext) -> Identity:
        proof = pd.control(c.OID_CMC_IDENTITY_PROOF_V2.dotted_string)
        ident_ctl = pd.control(c.OID_CMC_IDENTIFICATION.dotted_string)
        proven: Identity | None = None
        if proof is not None:
            bpid = (proof.body_part_id,)
            try:
                ident = utf8_value(ident_ctl) if ident_ctl is not None else None
                hash_alg, mac_alg, witness = decode_identity_proof_v2(proof)
            except CmcError as exc:
                raise exc.in_parts(*bpid) from None
            if hash_alg != c.OID_SHA256.dotted_string or mac_alg != c.OID_HMAC_SHA256.dotted_string:
                raise BadRequest("identityProofV2 must use SHA-256 and HMAC-SHA256", fail_info=FailInfo.BAD_ALG,
                                 body_parts=bpid)
            secret = self.secrets.get(label, {}).get(ident or "")
            expect = identity_proof_witness(secret, pd.req_sequence_der, ident) if secret is not None else None
            if expect is None or not hmac.compare_digest(expect, witness):
                raise Unauthorized("identityProofV2 does not verify (unknown identification or wrong shared secret)",
                                   body_parts=bpid)
            proven = Identity(IdentityKind.CMC, ident or "-")
        if signer is not None:
            return signer
        if ctx.identity.kind != IdentityKind.ANONYMOUS:
            return ctx.identity
        if proven is not None:
            return proven
        raise Unauthorized("authentication required: HTTP Basic, a TLS client certificate, identityProofV2, or a "
                           "request signed by a certificate of this CA")

    # -- requests and controls ------------------------------------------------------

    def _process(self, label: str | None, request: FullCmcRequest, signer: Identity | None, identity: Identity,
                 ctx: RequestContext) -> tuple[list[StatusInfo], list[x509.Certificate], int, int | None]:
        """Every request and action control; the HTTP status is that of the first failure."""
        statuses: list[StatusInfo] = []
        https: list[tuple[int, int | None]] = []
        certs: list[x509.Certificate] = []
        ok: list[int] = []
        cctx = RequestContext(identity=identity, client_cert=signer if signer is not None else ctx.client_cert,
                              peer=ctx.peer, tls_unique=ctx.tls_unique, tls_version=ctx.tls_version)
        is_ra = (signer is not None and signer.is_ra) or (ctx.client_cert is not None and ctx.client_cert.is_ra)
        # Signed by a certificate that is not an RA by its EKU: a renewal of that certificate
        # (RFC 5272 §3.2.1.3.1).  An id-kp-cmcRA certificate without a grant is no RA and no renewal:
        # authorization then holds it to its own names.
        renew = signer is not None and not signer.ra_eku
        for part in request.requests:
            try:
                if part.request is None:
                    raise part.error or BadRequest("unreadable request")
                certs.append(self.ca.enroll(Operation.FULLCMC, label, part.request, cctx, renew=renew))
                ok.append(part.body_part_id)
            except EstError as exc:
                exc.in_parts(part.body_part_id)
                statuses.append(_failed(exc))
                https.append((_http_status(exc), exc.retry_after))
        for ctl in request.pkidata.controls:
            try:
                if ctl.oid == c.OID_CMC_REVOKE_REQUEST.dotted_string:
                    self._revoke(ctl, signer, is_ra, ctx)
                    ok.append(ctl.body_part_id)
                elif ctl.oid == c.OID_CMC_GET_CERT.dotted_string:
                    certs.append(self._get_cert(ctl))
                    ok.append(ctl.body_part_id)
            except EstError as exc:
                exc.in_parts(ctl.body_part_id)
                statuses.append(_failed(exc))
                https.append((_http_status(exc), exc.retry_after))
        if ok:
            statuses.insert(0, StatusInfo(SUCCESS, tuple(ok)))
        http, retry = https[0] if https else (200, None)
        return statuses, certs, http, retry

    def _revoke(self, ctl: Control, signer: Identity | None, is_ra: bool, ctx: RequestContext) -> None:
        """RFC 5272 §6.11: by the certificate itself (signing the request) or an RA."""
        issuer_der, serial, reason, _comment = decode_revoke_request(ctl)
        reason_text = reason_name(reason)
        own = signer is not None and signer.certificate is not None and \
            signer.certificate.serial_number == serial and signer.certificate.issuer.public_bytes() == issuer_der
        if not (own or is_ra):
            raise Forbidden("revokeRequest must be signed by the certificate being revoked or come from an RA")
        named = self.ca.ca_named(issuer_der)
        if named is None:
            raise NotFound("revokeRequest names an issuer that is not this CA", fail_info=FailInfo.BAD_CERT_ID)
        who = str(signer) if signer is not None else str(ctx.identity)
        check = None
        ra = signer if signer is not None and signer.is_ra else ctx.client_cert
        if not own and ra is not None:  # an RA revokes only within its own policy, as it enrolls (RFC 7030 §3.7)
            ca = self.ca

            def check(stored: StoredCert, cert: x509.Certificate) -> None:
                ca.authorize_revocation(ra, ctx, stored.label, cert)
        try:
            self.revocation.revoke(serial, reason_text, identity=who, peer=ctx.peer, issuer=named.cert.subject,
                                   authorize=check)
        except NotFound as exc:
            raise NotFound(exc.reason, fail_info=FailInfo.BAD_CERT_ID) from None

    def _get_cert(self, ctl: Control) -> x509.Certificate:
        """RFC 5272 §6.9: a certificate this CA issued, by issuer and serial."""
        issuer_der, serial = decode_get_cert(ctl)
        cert = self.ca.issued_certificate(serial)
        if cert is None or (issuer_der is not None and cert.issuer.public_bytes() != issuer_der):
            raise NotFound(f"no certificate with serial {serial:x} from that issuer", fail_info=FailInfo.BAD_CERT_ID)
        return cert

    # -- response -------------------------------------------------------------------

    def _respond(self, issuing: IssuingCA, echo: _Echo, statuses: list[StatusInfo],
                 certs: list[x509.Certificate]) -> bytes:
        """RFC 5272 §3.2.2 Full PKI Response, signed by the issuing CA; status per
        body part, transactionId echoed, the senderNonce returned as recipientNonce."""
        ctls: list[Control] = [ctl_status_info_v2(i + 1, s) for i, s in enumerate(statuses)]
        n = len(ctls) + 1
        if echo.transaction_id is not None:
            ctls.append(ctl_transaction_id(n, echo.transaction_id))
            n += 1
        if echo.sender_nonce is not None:
            ctls.append(ctl_recipient_nonce(n, echo.sender_nonce))
            n += 1
        ctls.append(ctl_sender_nonce(n, os.urandom(16)))
        seen: dict[bytes, x509.Certificate] = {}
        for cert in [*certs, *issuing.certificates]:
            seen.setdefault(cert.public_bytes(Encoding.DER), cert)
        try:
            return sign_content(c.OID_CT_PKIRESPONSE.dotted_string, encode_pkiresponse(ctls),
                                sign=issuing.signer.sign_data, public_key=issuing.cert.public_key(),
                                signer_cert=issuing.cert, certificates=list(seen.values()))
        except CmsError as exc:
            raise InternalError(f"cannot sign the CMC response: {exc.reason}") from None
