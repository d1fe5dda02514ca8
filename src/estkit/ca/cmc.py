"""Full CMC (RFC 7030 §4.3, RFC 5272/5273/5274, RFC 6402) on top of the CA.

One call per request: :meth:`CmcService.fullcmc` takes the HTTP body and
always answers with a signed Full PKI Response and an HTTP status; a failure
is a ``CMCStatusInfoV2`` with its CMCFailInfo AND a 4xx/5xx status
(RFC 7030 §4.3.2).  No HTTP here: the handler only encodes the outcome.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.authz import Authorize
from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.policy import MIN_RSA_BITS
from estkit.ca.ports import StoredCert
from estkit.ca.revocation import Revocation, reason_name
from estkit.errors import (BadRequest, EstError, Forbidden, InternalError, NotFound, Pending, ServiceUnavailable,
                           Unauthorized)
from estkit.protocol import constants as c
from estkit.protocol.cmc import (FAIL_INFO, FAILED, SUCCESS, CmcError, Control, PKIData, StatusInfo,
                                 ctl_recipient_nonce, ctl_sender_nonce, ctl_status_info_v2, ctl_transaction_id,
                                 decode_get_cert, decode_identity_proof_v2, decode_pkidata, decode_revoke_request,
                                 encode_pkiresponse, identity_proof_witness, int_value, octets_value, utf8_value)
from estkit.protocol.cmc_cms import CmsError, SignedContent, parse_signed, sign_content, verify_signed
from estkit.protocol.cmc_crmf import parse_crmf
from estkit.protocol.csr import CsrInfo, load_csr
from estkit.protocol.framing import decode_b64, media_params, media_type
from estkit.protocol.keys import key_type_of

__all__ = ["CmcService", "CmcOutcome", "CrmfInfo", "KNOWN_CONTROLS"]

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
class CrmfInfo(CsrInfo):
    """A CRMF request seen through the CSR facts the policy steps read."""

    crmf_subject: x509.Name = field(default_factory=lambda: x509.Name([]))
    crmf_san: x509.SubjectAlternativeName | None = None

    @property
    def subject(self) -> x509.Name:
        return self.crmf_subject

    @property
    def san(self) -> x509.SubjectAlternativeName | None:
        return self.crmf_san


class _Fail(Exception):
    def __init__(self, fail: str, reason: str, http: int, body_parts: tuple[int, ...] = (),
                 retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.fail, self.reason, self.http, self.body_parts = fail, reason, http, body_parts
        self.retry_after = retry_after


def _from_error(exc: EstError, bpid: tuple[int, ...]) -> _Fail:
    """An EstError from the CA as a CMC failure (RFC 5272 §6.1.4)."""
    if isinstance(exc, Unauthorized):
        return _Fail("badIdentity", exc.reason, 401, bpid)
    if isinstance(exc, Forbidden):
        return _Fail("badIdentity", exc.reason, 403, bpid)
    if isinstance(exc, (Pending, ServiceUnavailable)):
        # A request held for manual approval (RFC 7030 §4.2.3): retry the same request later.
        return _Fail("tryLater", exc.reason, 503, bpid, exc.retry_after)
    if exc.status >= 500:
        return _Fail("internalCAError", exc.reason, exc.status, bpid)
    low = exc.reason.lower()
    # RFC 7030 §3.5: a linking failure in CMC is popFailed.
    if "proof-of-possession" in low or "proof of possession" in low:
        return _Fail("popFailed", exc.reason, 400, bpid)
    return _Fail("badRequest", exc.reason, exc.status if 400 <= exc.status < 500 else 400, bpid)


class CmcService:
    """/fullcmc: enrollment (tcr, crm), renewal, revokeRequest, getCert."""

    def __init__(self, ca: CertificateAuthority, revocation: Revocation,
                 shared_secrets: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        self.ca = ca
        self.revocation = revocation
        # label -> identification ("" when none is sent) -> shared secret (RFC 5272 §6.2)
        self.secrets = dict(shared_secrets or {})

    def fullcmc(self, label: str | None, body: bytes, content_type: str | None, ctx: RequestContext,
                auth_error: EstError | None = None) -> CmcOutcome:
        """RFC 7030 §4.3: process one Full PKI Request; never raises for a CMC failure."""
        profile = self.ca.profile(label)
        issuing = self.ca.cas[profile.ca]
        echo: dict[str, object] = {}
        try:
            pd, sc = self._decode(body, content_type, echo)
            if auth_error is not None:
                raise _from_error(auth_error, ())
            signer = self._signer(sc, pd)
            identity = self._identity(profile.label, pd, signer, ctx)
            statuses, certs, http, retry = self._process(label, pd, signer, identity, ctx)
        except _Fail as f:
            st = StatusInfo(FAILED, f.body_parts, f.reason, FAIL_INFO[f.fail])
            return CmcOutcome(f.http, self._respond(issuing, echo, [st], []), f.retry_after, (st,))
        return CmcOutcome(http, self._respond(issuing, echo, statuses, certs), retry, tuple(statuses))

    # -- decoding and identity ----------------------------------------------------

    def _decode(self, body: bytes, content_type: str | None, echo: dict[str, object]) -> tuple[PKIData, SignedContent]:
        smime = media_params(content_type).get("smime-type", "").lower()
        if media_type(content_type) != c.CT_PKCS7 or smime not in ("cmc-request", ""):
            raise _Fail("badRequest", f"fullcmc takes {c.CT_CMC_REQUEST}", 415)
        try:
            sc = parse_signed(decode_b64(body, "request body"))
            if sc.content_type != c.OID_CT_PKIDATA.dotted_string:
                raise _Fail("badRequest", f"the SignedData carries {sc.content_type}, not id-cct-PKIData", 400)
            pd = decode_pkidata(sc.content)
        except BadRequest as exc:
            raise _Fail("badRequest", exc.reason, 400) from None
        for oid, key, conv in ((c.OID_CMC_TRANSACTION_ID, "tid", int_value), (c.OID_CMC_SENDER_NONCE, "nonce",
                                                                             octets_value)):
            ctl = pd.control(oid.dotted_string)
            if ctl is not None:
                try:
                    echo[key] = conv(ctl)
                except CmcError as exc:
                    raise _Fail("badRequest", exc.reason, 400, (ctl.body_part_id,)) from None
        # RFC 5272 §3.2.1.2.1: an unrecognized control fails the whole PKIData.
        for ctl in pd.controls:
            if ctl.oid not in KNOWN_CONTROLS:
                raise _Fail("badRequest", f"unknown control {ctl.oid} in body part {ctl.body_part_id}", 400,
                            (ctl.body_part_id,))
        for r in pd.requests:
            if r.kind == "orm":
                raise _Fail("badRequest", f"orm requests are not supported (body part {r.body_part_id})", 400,
                            (r.body_part_id,))
        if pd.cms_body_parts or pd.other_body_parts:
            parts = pd.cms_body_parts + pd.other_body_parts
            raise _Fail("badRequest", "nested cmsSequence and otherMsgSequence are not supported", 400, parts)
        if not pd.requests and not any(x.oid in (c.OID_CMC_REVOKE_REQUEST.dotted_string,
                                                 c.OID_CMC_GET_CERT.dotted_string) for x in pd.controls):
            raise _Fail("badRequest", "the PKIData asks for nothing (no request, revokeRequest or getCert)", 400)
        return pd, sc

    def _signer(self, sc: SignedContent, pd: PKIData) -> Identity | None:
        """The certificate identity that signed (renewal, RA, revocation), or None
        when the request is signed by the key being certified (RFC 5272 §3.2.1.3.1)."""
        sid = sc.signer
        cert = next((x for x in sc.certificates if sid is not None and sid.matches(x)), None)
        if cert is not None:
            try:
                ident = self.ca.identify_certificate(cert.public_bytes(Encoding.DER))
            except (Forbidden, Unauthorized) as exc:
                raise _Fail("badIdentity", f"the request's signer: {exc.reason}", 403) from None
            if ident.kind != IdentityKind.CERT:
                raise _Fail("badIdentity", "the request is signed by a certificate this CA did not issue", 403)
            if not verify_signed(sc, cert.public_key()):
                raise _Fail("badMessageCheck", "the SignedData signature does not verify", 400)
            return ident
        for r in pd.requests:
            key = self._request_key(r.kind, r.der)
            if key is not None and sid is not None and sid.ski is not None and verify_signed(sc, key):
                return None
        raise _Fail("badMessageCheck", "the SignedData signature does not verify with the signer's certificate "
                    "or with the key of any request", 400)

    @staticmethod
    def _request_key(kind: str, der: bytes) -> CertificatePublicKeyTypes | None:
        try:
            if kind == "tcr":
                return load_csr(der).csr.public_key()
            return parse_crmf(der).public_key
        except BadRequest:
            return None

    def _identity(self, label: str, pd: PKIData, signer: Identity | None, ctx: RequestContext) -> Identity:
        proof = pd.control(c.OID_CMC_IDENTITY_PROOF_V2.dotted_string)
        ident_ctl = pd.control(c.OID_CMC_IDENTIFICATION.dotted_string)
        proven: Identity | None = None
        if proof is not None:
            try:
                ident = utf8_value(ident_ctl) if ident_ctl is not None else None
                hash_alg, mac_alg, witness = decode_identity_proof_v2(proof)
            except CmcError as exc:
                raise _Fail("badRequest", exc.reason, 400, (proof.body_part_id,)) from None
            if hash_alg != c.OID_SHA256.dotted_string or mac_alg != c.OID_HMAC_SHA256.dotted_string:
                raise _Fail("badAlg", "identityProofV2 must use SHA-256 and HMAC-SHA256", 400, (proof.body_part_id,))
            secret = self.secrets.get(label, {}).get(ident or "")
            expect = identity_proof_witness(secret, pd.req_sequence_der, ident) if secret is not None else None
            if expect is None or not hmac.compare_digest(expect, witness):
                raise _Fail("badIdentity", "identityProofV2 does not verify (unknown identification or wrong "
                            "shared secret)", 401, (proof.body_part_id,))
            proven = Identity(IdentityKind.USER, f"cmc:{ident or '-'}")
        if signer is not None:
            return signer
        if ctx.identity.kind != IdentityKind.ANONYMOUS:
            return ctx.identity
        if proven is not None:
            return proven
        raise _Fail("badIdentity", "authentication required: HTTP Basic, a TLS client certificate, "
                    "identityProofV2, or a request signed by a certificate of this CA", 401)

    # -- requests and controls ------------------------------------------------------

    def _process(self, label: str | None, pd: PKIData, signer: Identity | None, identity: Identity,
                 ctx: RequestContext) -> tuple[list[StatusInfo], list[x509.Certificate], int, int | None]:
        """Every request and action control; the HTTP status is that of the first failure."""
        statuses: list[StatusInfo] = []
        https: list[tuple[int, int | None]] = []
        certs: list[x509.Certificate] = []
        ok: list[int] = []
        cctx = RequestContext(identity=identity, client_cert=signer if signer is not None else ctx.client_cert,
                              peer=ctx.peer, tls_unique=ctx.tls_unique, tls_version=ctx.tls_version)
        is_ra = (signer is not None and signer.is_ra) or (ctx.client_cert is not None and ctx.client_cert.is_ra)
        renew = signer is not None and not signer.is_ra
        for r in pd.requests:
            try:
                certs.append(self._enroll(label, r.kind, r.der, r.body_part_id, cctx, renew, is_ra))
                ok.append(r.body_part_id)
            except _Fail as f:
                statuses.append(StatusInfo(FAILED, f.body_parts, f.reason, FAIL_INFO[f.fail]))
                https.append((f.http, f.retry_after))
        for ctl in pd.controls:
            try:
                if ctl.oid == c.OID_CMC_REVOKE_REQUEST.dotted_string:
                    self._revoke(ctl, signer, is_ra, ctx)
                    ok.append(ctl.body_part_id)
                elif ctl.oid == c.OID_CMC_GET_CERT.dotted_string:
                    certs.append(self._get_cert(ctl))
                    ok.append(ctl.body_part_id)
            except _Fail as f:
                statuses.append(StatusInfo(FAILED, f.body_parts, f.reason, FAIL_INFO[f.fail]))
                https.append((f.http, f.retry_after))
        if ok:
            statuses.insert(0, StatusInfo(SUCCESS, tuple(ok)))
        http, retry = https[0] if https else (200, None)
        return statuses, certs, http, retry

    def _enroll(self, label: str | None, kind: str, der: bytes, bpid: int, ctx: RequestContext, renew: bool,
                is_ra: bool) -> x509.Certificate:
        try:
            if kind == "tcr":
                info = load_csr(der)
                if not info.signature_valid:
                    raise _Fail("popFailed", "the PKCS#10 signature does not verify (proof of possession)", 400,
                                (bpid,))
                return self.ca.enroll(c.OP_FULLCMC, label, der, ctx, renew=renew, csr=info)
            crmf = parse_crmf(der)
            if not (crmf.pop == "signature" and crmf.pop_valid) and not (crmf.pop == "raVerified" and is_ra):
                raise _Fail("popFailed", f"CRMF proof of possession {crmf.pop} is not acceptable "
                            "(a valid POPOSigningKey, or raVerified from an RA)", 400, (bpid,))
            kt = key_type_of(crmf.public_key)
            allowed = self.ca.profile(label).allowed_key_types
            if (kt.startswith("rsa:") and int(kt[4:]) < MIN_RSA_BITS) or kt not in allowed:
                raise _Fail("badAlg", f"key type {kt} is not allowed (allowed: {', '.join(allowed)})", 400, (bpid,))
            info = CrmfInfo(csr=None, der=der, key_type=kt, signature_valid=True,  # type: ignore[arg-type]
                            challenge_password=None, crmf_subject=crmf.subject, crmf_san=crmf.san)
            return self.ca.enroll(c.OP_FULLCMC, label, der, ctx, renew=renew, public_key=crmf.public_key,
                                  csr=info)
        except EstError as exc:
            raise _from_error(exc, (bpid,)) from None

    def _revoke(self, ctl: Control, signer: Identity | None, is_ra: bool, ctx: RequestContext) -> None:
        """RFC 5272 §6.11: by the certificate itself (signing the request) or an RA."""
        try:
            issuer_der, serial, reason, _comment = decode_revoke_request(ctl)
            reason_text = reason_name(reason)
        except BadRequest as exc:
            raise _Fail("badRequest", exc.reason, 400, (ctl.body_part_id,)) from None
        own = signer is not None and signer.certificate is not None and \
            signer.certificate.serial_number == serial and signer.certificate.issuer.public_bytes() == issuer_der
        if not (own or is_ra):
            raise _Fail("badIdentity", "revokeRequest must be signed by the certificate being revoked or come "
                        "from an RA", 403, (ctl.body_part_id,))
        issuer = next((ca.cert.subject for ca in self.ca.cas.values()
                       if ca.cert.subject.public_bytes() == issuer_der), None)
        if issuer is None:
            raise _Fail("badCertId", "revokeRequest names an issuer that is not this CA", 404, (ctl.body_part_id,))
        who = str(signer) if signer is not None else str(ctx.identity)
        check = None
        if not own:  # an RA revokes only within its own policy, as it enrolls (RFC 7030 §3.7)
            ra = signer if signer is not None and signer.is_ra else ctx.client_cert
            authorize = next((p for p in self.ca.policies if isinstance(p, Authorize)), None)
            if ra is not None and authorize is not None:
                def check(stored: StoredCert, cert: x509.Certificate) -> None:
                    authorize.authorize_revocation(ra, ctx, stored.label, cert)
        try:
            self.revocation.revoke(serial, reason_text, identity=who, peer=ctx.peer, issuer=issuer, authorize=check)
        except NotFound as exc:
            raise _Fail("badCertId", exc.reason, 404, (ctl.body_part_id,)) from None
        except EstError as exc:
            raise _from_error(exc, (ctl.body_part_id,)) from None

    def _get_cert(self, ctl: Control) -> x509.Certificate:
        """RFC 5272 §6.9: a certificate this CA issued, by issuer and serial."""
        try:
            issuer_der, serial = decode_get_cert(ctl)
        except CmcError as exc:
            raise _Fail("badRequest", exc.reason, 400, (ctl.body_part_id,)) from None
        stored = self.ca.store.get_certificate(serial)
        cert = x509.load_der_x509_certificate(stored.der) if stored is not None else None
        if cert is None or (issuer_der is not None and cert.issuer.public_bytes() != issuer_der):
            raise _Fail("badCertId", f"no certificate with serial {serial:x} from that issuer", 404,
                        (ctl.body_part_id,))
        return cert

    # -- response -------------------------------------------------------------------

    def _respond(self, issuing: IssuingCA, echo: dict[str, object], statuses: list[StatusInfo],
                 certs: list[x509.Certificate]) -> bytes:
        """RFC 5272 §3.2.2 Full PKI Response, signed by the issuing CA; status per
        body part, transactionId echoed, the senderNonce returned as recipientNonce."""
        ctls: list[Control] = [ctl_status_info_v2(i + 1, s) for i, s in enumerate(statuses)]
        n = len(ctls) + 1
        if "tid" in echo:
            ctls.append(ctl_transaction_id(n, int(echo["tid"])))  # type: ignore[call-overload]
            n += 1
        if "nonce" in echo:
            ctls.append(ctl_recipient_nonce(n, bytes(echo["nonce"])))  # type: ignore[call-overload]
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
