"""Issuance as a fixed sequence of small, typed steps (docs/policy.md).

In the spirit of smallstep's ``sign_options.go``, every enrollment runs the
same steps in the same order (``estkit.ca.authority``):

1. request validators (this module): proof of possession, key type, a name
   to certify, linking, the renewal rules;
2. authorization (``estkit.ca.authz``): may this identity ask for this, on
   this label; its answer is a :class:`Grant`, the issuance modifiers;
3. the certificate is shaped by the profile and the grant
   (:func:`shape_certificate`), checked (:func:`check_result`), signed;
4. the store records it under the grant's guards (``estkit.ca.ports.IssueGuard``).

Steps pass typed values; a refusal is an ``EstError`` that says which rule
refused, and carries the CMC failInfo where RFC 5272 names one.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from estkit.ca.identity import IdentityKind, RequestContext
from estkit.ca.ports import IssueGuard
from estkit.ca.profile import Profile, eku_oid, key_usage_extension
from estkit.errors import BadRequest, FailInfo, Forbidden, Unauthorized
from estkit.protocol import constants as c
from estkit.protocol.csr import general_names_text
from estkit.protocol.request import CertRequest, ProofOfPossession

__all__ = ["Operation", "EnrollRequest", "Grant", "RequestValidator", "CheckProofOfPossession", "CheckKeyType",
           "CheckLinking", "CheckReenroll", "CheckSubjectPresent", "REQUEST_VALIDATORS", "shape_certificate",
           "check_result", "MIN_RSA_BITS", "linking_value", "check_key_type"]

MIN_RSA_BITS = 2048


class Operation(StrEnum):
    """The EST operations that issue a certificate (RFC 7030 §4.2-4.4)."""

    SIMPLEENROLL = c.OP_SIMPLEENROLL
    SIMPLEREENROLL = c.OP_SIMPLEREENROLL
    SERVERKEYGEN = c.OP_SERVERKEYGEN
    FULLCMC = c.OP_FULLCMC


@dataclass(frozen=True)
class EnrollRequest:
    """One enrollment as the steps see it.  ``renew``: the request renews the
    certificate that authenticates it (simplereenroll, a CMC renewal);
    ``server_key``: the key is generated here, so the request's key and its
    proof of possession are ignored (RFC 7030 §4.4.1)."""

    operation: Operation
    profile: Profile
    request: CertRequest
    ctx: RequestContext
    now: datetime
    renew: bool = False
    server_key: bool = False


@dataclass(frozen=True)
class Grant:
    """What authorization allows beyond yes: the issuance modifiers (a validity
    cap below the label's) and the guards the store checks when it records
    the certificate (one-time code, once-only claim, rate limit)."""

    policies: tuple[str, ...] = ()
    max_validity: timedelta | None = None
    guard: IssueGuard | None = None


class RequestValidator(Protocol):
    """A request validator: raise an EstError to refuse the request."""

    def __call__(self, req: EnrollRequest) -> None: ...


def linking_value(tls_unique: bytes) -> bytes:
    """RFC 7030 §3.5: the challengePassword is base64 of tls-unique."""
    return base64.b64encode(tls_unique)


class CheckProofOfPossession:
    """RFC 7030 §3.4: the request's signature (PKCS#10, a CRMF POPOSigningKey) is
    the proof of possession; CRMF raVerified (RFC 4211 §4.1) counts only when a
    registration authority sends it (RFC 7030 §3.7).  /serverkeygen ignores it
    (RFC 7030 §4.4.1: the key is made here)."""

    def __call__(self, req: EnrollRequest) -> None:
        pop = req.request.pop
        if req.server_key or pop is ProofOfPossession.VERIFIED:
            return
        if pop is ProofOfPossession.RA_VERIFIED:
            if _is_ra(req.ctx):
                return
            raise BadRequest("proof of possession raVerified is accepted only from a registration authority",
                             fail_info=FailInfo.POP_FAILED)
        raise BadRequest("the request's signature does not verify (proof of possession failed)",
                         fail_info=FailInfo.POP_FAILED)


def check_key_type(key_type: str, allowed: tuple[str, ...], *, source: str = "") -> None:
    """The one key-type rule: RSA below 2048 bits never, else one the label allows
    (a request's key, or the type /serverkeygen is asked to generate)."""
    if key_type.startswith("rsa:") and int(key_type[4:]) < MIN_RSA_BITS:
        raise BadRequest(f"RSA key of {key_type[4:]} bits refused: at least {MIN_RSA_BITS} bits are required",
                         fail_info=FailInfo.BAD_ALG)
    if key_type not in allowed:
        raise BadRequest(f"key type {key_type}{source} is not allowed for this label (allowed: {', '.join(allowed)})",
                         fail_info=FailInfo.BAD_ALG)


class CheckKeyType:
    """The key type must be one the label allows; RSA below 2048 bits never."""

    def __call__(self, req: EnrollRequest) -> None:
        if not req.server_key:  # /serverkeygen checks the type it generates (estkit.ca.keygen)
            check_key_type(req.request.key_type, req.profile.allowed_key_types)


class CheckSubjectPresent:
    """A certificate must name someone: a subject or a subjectAltName."""

    def __call__(self, req: EnrollRequest) -> None:
        if len(req.request.subject) == 0 and (req.request.san is None or not req.profile.honour_san):
            raise BadRequest("the request has an empty subject and no subjectAltName")


class CheckLinking:
    """RFC 7030 §3.5 proof-of-possession linking.

    tls-unique is defined only up to TLS 1.2 (RFC 9266 §1); on TLS 1.3 a linked
    CSR cannot be checked, so it is refused with a reason that says to use
    TLS 1.2, and a label that requires linking refuses every TLS 1.3 request.
    A linking failure in full CMC is popFailed (RFC 7030 §3.5).
    """

    def __call__(self, req: EnrollRequest) -> None:
        cp = req.request.challenge_password
        ctx = req.ctx
        if cp is None:
            if req.profile.require_linking and not (req.profile.ra_waives_linking and _is_ra(ctx)):
                raise BadRequest("proof-of-possession linking is required for this label: put "
                                 "base64(tls-unique) of this TLS 1.2 session in the CSR's challengePassword",
                                 fail_info=FailInfo.POP_FAILED)
            return
        # RFC 9148 §3: EST-coaps links with DTLS 1.2's tls-unique, defined as in TLS 1.2.
        if ctx.tls_version not in ("TLSv1.2", "DTLSv1.2") or not ctx.tls_unique:
            raise BadRequest("proof-of-possession linking failed: tls-unique exists only in TLS 1.2; "
                             "send the linked CSR over a TLS 1.2 connection", fail_info=FailInfo.POP_FAILED)
        if not hmac.compare_digest(cp.strip(), linking_value(ctx.tls_unique)):
            raise BadRequest("proof-of-possession linking failed: the CSR's challengePassword is not "
                             "base64(tls-unique) of this TLS session", fail_info=FailInfo.POP_FAILED)


def _is_ra(ctx: RequestContext) -> bool:
    # An RA as a policy grants it, not merely by its extended key usage (docs/policy.md).
    return ctx.client_cert is not None and ctx.client_cert.is_ra


class CheckReenroll:
    """RFC 7030 §4.2.2: re-enrollment is authenticated by the certificate being
    renewed, and the subject and subjectAltName must not change."""

    def __call__(self, req: EnrollRequest) -> None:
        if not req.renew:
            return
        cc = req.ctx.client_cert
        if cc is None or cc.certificate is None:
            raise Unauthorized("simplereenroll needs the TLS client certificate being renewed")
        if cc.kind != IdentityKind.CERT:
            raise Forbidden("simplereenroll renews only certificates issued by this CA")
        old = cc.certificate
        if old.subject.public_bytes() != req.request.subject.public_bytes():
            raise BadRequest("RFC 7030 §4.2.2: the CSR's subject differs from the certificate being renewed "
                             f"({req.request.subject.rfc4514_string()!r} != {old.subject.rfc4514_string()!r})")
        if general_names_text(certificate_san(old)) != general_names_text(req.request.san):
            raise BadRequest("RFC 7030 §4.2.2: the CSR's subjectAltName differs from the certificate "
                             "being renewed")


def certificate_san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    """A certificate's subjectAltName, None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


# The request validators every enrollment runs, in this order, before authorization.
REQUEST_VALIDATORS: tuple[RequestValidator, ...] = (
    CheckProofOfPossession(), CheckKeyType(), CheckSubjectPresent(), CheckLinking(), CheckReenroll(),
)


def shape_certificate(req: EnrollRequest, *, issuer: x509.Certificate, public_key: object, serial: int,
                      grant: Grant = Grant()) -> x509.CertificateBuilder:
    """The certificate the profile makes of this request (unsigned).

    Only the subjectAltName is taken from the CSR's requested extensions;
    basicConstraints is always CA:FALSE, whatever the CSR asks."""
    p = req.profile
    not_before = req.now - timedelta(minutes=5)  # tolerate clients whose clocks run a little behind
    validity = timedelta(days=p.validity_days)
    if grant.max_validity is not None and grant.max_validity < validity:
        validity = grant.max_validity
    not_after = req.now + validity
    if not_after > issuer.not_valid_after_utc:
        not_after = issuer.not_valid_after_utc
    before_ski, before_san, after_san = _profile_extensions(p, issuer)
    ski = x509.Extension(SKI_OID, False, x509.SubjectKeyIdentifier.from_public_key(public_key))  # type: ignore[arg-type]
    san = req.request.san
    # RFC 5280 §4.2.1.6: the SAN is critical when the subject is empty
    sans = [x509.Extension(SAN_OID, len(req.request.subject) == 0, san)] if p.honour_san and san is not None else []
    exts = [*before_ski, ski, *before_san, *sans, *after_san]
    return x509.CertificateBuilder(issuer_name=issuer.subject, subject_name=req.request.subject,
                                   public_key=public_key, serial_number=serial,  # type: ignore[arg-type]
                                   not_valid_before=not_before, not_valid_after=not_after, extensions=exts)


SKI_OID = x509.SubjectKeyIdentifier.oid
SAN_OID = x509.SubjectAlternativeName.oid


_Extensions = tuple[x509.Extension[x509.ExtensionType], ...]


@lru_cache(maxsize=64)
def _profile_extensions(p: Profile, issuer: x509.Certificate) -> tuple[_Extensions, _Extensions, _Extensions]:
    """The extensions every certificate of a profile and issuer carries, built
    once, in the places around the per-request ones: before the
    subjectKeyIdentifier (basicConstraints, keyUsage), between it and the
    subjectAltName (authorityKeyIdentifier, extendedKeyUsage), after the
    subjectAltName (CRL distribution point, OCSP access)."""
    before_ski = (
        x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.Extension(x509.KeyUsage.oid, True, key_usage_extension(p.key_usage)))
    before_san: list[x509.Extension[x509.ExtensionType]] = []
    try:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        before_san.append(x509.Extension(x509.AuthorityKeyIdentifier.oid, False,
                                         x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)))
    except x509.ExtensionNotFound:
        pass
    if p.extended_key_usage:
        before_san.append(x509.Extension(x509.ExtendedKeyUsage.oid, False,
                                         x509.ExtendedKeyUsage([eku_oid(e) for e in p.extended_key_usage])))
    after_san: list[x509.Extension[x509.ExtensionType]] = []
    if p.crl_url:
        after_san.append(x509.Extension(x509.CRLDistributionPoints.oid, False, x509.CRLDistributionPoints([
            x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(p.crl_url)], relative_name=None,
                                   reasons=None, crl_issuer=None)])))
    if p.ocsp_url:  # RFC 5280 §4.2.2.1 id-ad-ocsp: where clients ask (RFC 6960)
        after_san.append(x509.Extension(x509.AuthorityInformationAccess.oid, False, x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(p.ocsp_url))])))
    return before_ski, tuple(before_san), tuple(after_san)


def check_result(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Last look before a certificate leaves: never a CA, always inside the issuer's validity."""
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if bc.ca:
        raise Forbidden("refusing to issue a CA certificate")
    if cert.not_valid_after_utc <= cert.not_valid_before_utc:
        raise BadRequest("the issuing CA's validity leaves no room for this certificate")
    if cert.issuer != issuer.subject:
        raise Forbidden("issuer mismatch")
