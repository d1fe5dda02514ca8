"""The certificate authority: one method per EST operation, each citing its RFC section.

No HTTP and no SQL here: the server calls these methods (from a worker thread,
they block on the store), and the store is reached through ``estkit.ca.ports``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.authz import Authorize
from estkit.ca.identity import Enrollee, Identity, IdentityKind, RequestContext
from estkit.ca.passwords import DUMMY_HASH, VerifyCache, needs_rehash
from estkit.ca.policy import (REQUEST_VALIDATORS, EnrollRequest, Grant, Operation, RequestValidator, check_result,
                              shape_certificate)
from estkit.ca.ports import (AuditEvent, AuditEventType, Conflict, GuardFailed, IssuedCert, PendingRequest, PendingStatus, Store,
                             StoreError, StoreUnavailable, UserRecord, utc_now)
from estkit.ca.profile import Profile
from estkit.ca.rules import Policy, PolicyError, policy_from_mapping
from estkit.ca.signer import Signer
from estkit.errors import (BadRequest, EstError, Forbidden, InternalError, NotFound, Pending, ServiceUnavailable,
                           Unauthorized)
from estkit.protocol import constants as c
from estkit.protocol.csr import general_names_text
from estkit.protocol.csrattrs import CsrAttribute, encode_csrattrs, key_type_attribute
from estkit.protocol.keys import key_type_of
from estkit.protocol.pkcs7 import certs_only
from estkit.protocol.request import CertRequest

__all__ = ["IssuingCA", "CertificateAuthority", "identity_of_user"]

log = logging.getLogger("estkit.ca")


@dataclass(frozen=True)
class IssuingCA:
    """A CA certificate with its signer and the chain up to its root
    (``chain`` excludes ``cert``; empty when ``cert`` is the root)."""

    name: str
    cert: x509.Certificate
    signer: Signer
    chain: tuple[x509.Certificate, ...] = ()
    # Root key rollover (RFC 4210 §4.4): OldWithOld, OldWithNew, NewWithOld.
    extra: tuple[x509.Certificate, ...] = ()

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """This CA and every certificate up to and including the root."""
        return (self.cert, *self.chain)

    @property
    def published(self) -> tuple[x509.Certificate, ...]:
        """What /cacerts returns: the chain plus any rollover certificates."""
        return (*self.certificates, *self.extra)


class CertificateAuthority:
    """Issues certificates for EST labels under a fixed policy sequence."""

    def __init__(self, cas: Mapping[str, IssuingCA], profiles: Mapping[str, Profile], store: Store, *,
                 default_label: str, authorize: Authorize | None = None,
                 validators: Sequence[RequestValidator] = REQUEST_VALIDATORS,
                 clock: Callable[[], datetime] = utc_now, passwords: VerifyCache | None = None) -> None:
        for p in profiles.values():
            if p.ca not in cas:
                raise ValueError(f"label {p.label!r} names unknown CA {p.ca!r}")
        if default_label not in profiles:
            raise ValueError(f"default label {default_label!r} is not configured")
        self.cas = dict(cas)
        self.profiles = dict(profiles)
        self.store = store
        self.default_label = default_label
        self.validators = tuple(validators)
        # Revokes a renewed certificate on a revoke_superseded label (set by the wiring to
        # estkit.ca.revocation, which is built on this CA and publishes the CRL).
        self.supersede: Callable[[int, RequestContext], None] | None = None
        # Told of each certificate once it is recorded (the server counts them for its metrics).
        self.on_issued: Callable[[IssuedCert], None] | None = None
        self.authorize = authorize if authorize is not None else Authorize()
        self.clock = clock
        self._passwords = passwords or VerifyCache()
        self._cacerts = {name: certs_only(ca.published) for name, ca in self.cas.items()}
        # Certificates issued by any CA key of ours (the old root's too, after a rollover).
        self._ours: dict[bytes, list[x509.Certificate]] = {}
        for ca in self.cas.values():
            for ca_cert in ca.published:
                if _is_ca(ca_cert):
                    self._ours.setdefault(ca_cert.subject.public_bytes(), []).append(ca_cert)

    # -- lookups --------------------------------------------------------------

    def profile(self, label: str | None) -> Profile:
        """The profile of a label (None: the default); NotFound for an unknown label."""
        p = self.profiles.get(label if label is not None else self.default_label)
        if p is None:
            raise NotFound(f"unknown CA label {label!r}")
        return p

    def issuing_ca(self, label: str | None) -> IssuingCA:
        """The CA that issues for a label (its signer, certificate and chain)."""
        return self.cas[self.profile(label).ca]

    def ca_named(self, subject_der: bytes) -> IssuingCA | None:
        """The issuing CA whose subject has this DER, None when it is not one of ours."""
        return next((ca for ca in self.cas.values() if ca.cert.subject.public_bytes() == subject_der), None)

    def issued_certificate(self, serial: int) -> x509.Certificate | None:
        """A certificate this CA issued, by serial (RFC 5272 §6.9 getCert)."""
        stored = self.store.get_certificate(serial)
        return x509.load_der_x509_certificate(stored.der) if stored is not None else None

    def authorize_revocation(self, ra: Identity, ctx: RequestContext, label: str, cert: x509.Certificate) -> None:
        """An RA revokes only what its policy would let it request (``Authorize.authorize_revocation``)."""
        self.authorize.authorize_revocation(ra, ctx, label, cert)

    def trust_anchors(self) -> list[x509.Certificate]:
        """Every CA certificate of ours (what TLS client authentication trusts)."""
        seen: dict[bytes, x509.Certificate] = {}
        for ca in self.cas.values():
            for cert in ca.certificates:
                seen[cert.public_bytes(Encoding.DER)] = cert
            for cert in ca.extra:  # an old root stays trusted for the certificates it issued
                if cert.issuer == cert.subject:
                    seen[cert.public_bytes(Encoding.DER)] = cert
        return list(seen.values())

    # -- RFC 7030 §4.1 /cacerts -------------------------------------------------

    def cacerts(self, label: str | None) -> bytes:
        """RFC 7030 §4.1.3: certs-only DER with the issuing CA and every
        certificate up to the root."""
        return self._cacerts[self.profile(label).ca]

    # -- RFC 7030 §4.5 /csrattrs ----------------------------------------------

    def csrattrs(self, label: str | None) -> bytes | None:
        """RFC 7030 §4.5.2 / RFC 9908: the key types the label allows (first
        preferred) and, when linking is required, the challengePassword OID
        (RFC 7030 §3.5).  None when there is nothing to say (the server answers 204)."""
        p = self.profile(label)
        entries: list[CsrAttribute] = []
        if p.require_linking:
            entries.append(CsrAttribute(c.OID_CHALLENGE_PASSWORD.dotted_string))
        for kt in p.allowed_key_types:
            attr = key_type_attribute(kt)
            if attr is not None:
                entries.append(attr)
        return encode_csrattrs(entries) if entries else None

    # -- RFC 7030 §4.2 enrollment ------------------------------------------------

    def simpleenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        """RFC 7030 §4.2.1: a certificate for a PKCS#10 request."""
        return self.enroll(Operation.SIMPLEENROLL, label, request, ctx)

    def simplereenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        """RFC 7030 §4.2.2: renew (same key) or rekey (new key) the TLS client
        certificate; subject and SAN must not change."""
        return self.enroll(Operation.SIMPLEREENROLL, label, request, ctx, renew=True)

    def enroll(self, operation: Operation, label: str | None, request: CertRequest, ctx: RequestContext, *,
               renew: bool = False, public_key: CertificatePublicKeyTypes | None = None) -> x509.Certificate:
        """The fixed sequence: request validators, authorization, then (or after
        manual approval) shape, check, sign and record.

        ``public_key`` overrides the request's key (server-side key generation,
        RFC 7030 §4.4.1: the request's key and signature are then ignored)."""
        profile = self.profile(label)
        req = EnrollRequest(operation=operation, profile=profile, request=request, ctx=ctx, now=self.clock(),
                            renew=renew, server_key=public_key is not None)
        try:
            for validate in self.validators:
                validate(req)
            grant = self.authorize(req)
            key = public_key if public_key is not None else request.public_key
            if profile.manual_approval:
                cert = self._approval_gate(req, key, grant)
            else:
                cert = self._issue(req, key, grant)
        except EstError as exc:
            if exc.status >= 400:
                self._audit_quietly(AuditEvent(event=AuditEventType.REFUSED, identity=str(ctx.identity), peer=ctx.peer,
                                               label=profile.label, csr_fingerprint=request.fingerprint,
                                               detail=f"{operation.value}: {exc.status} {exc.reason}"))
            raise
        if renew and profile.revoke_superseded:
            self._revoke_superseded(ctx)
        return cert

    def _revoke_superseded(self, ctx: RequestContext) -> None:
        """The renewed certificate, now replaced and recorded, is revoked as superseded.
        The new certificate is already the client's: a failure here is logged, not returned."""
        old = ctx.client_cert.certificate if ctx.client_cert is not None else None
        if old is None or self.supersede is None:
            return
        try:
            self.supersede(old.serial_number, ctx)
        except (EstError, StoreError) as exc:
            log.error("could not revoke superseded certificate %x: %s", old.serial_number, exc)

    def _issue(self, req: EnrollRequest, public_key: CertificatePublicKeyTypes, grant: Grant) -> x509.Certificate:
        ca = self.cas[req.profile.ca]
        r = req.request
        # What shape_certificate puts in: the request's subject and, if honoured, its SAN
        # (read from the request, which has them parsed, rather than from the new certificate;
        # as text once, by the decoder when it made them already).
        subject = r.subject_text if r.subject_text is not None else r.subject.rfc4514_string()
        if not req.profile.honour_san or r.san is None:
            sans: tuple[str, ...] = ()
        else:
            sans = r.san_names if r.san_names is not None else tuple(general_names_text(r.san))
        requester = str(req.ctx.identity)
        key_type = r.key_type if public_key is r.public_key else key_type_of(public_key)
        for _attempt in range(3):
            serial = x509.random_serial_number()  # 159 random bits, positive
            builder = shape_certificate(req, issuer=ca.cert, public_key=public_key, serial=serial, grant=grant)
            cert = ca.signer.sign_certificate(builder)
            check_result(cert, ca.cert)
            record = IssuedCert(
                serial=serial, ca=ca.name, label=req.profile.label, subject=subject, sans=sans,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc, requester=requester,
                key_type=key_type, csr_fingerprint=req.request.fingerprint,
                der=cert.public_bytes(Encoding.DER), enrollee=req.ctx.identity.enrollee_name)
            event = AuditEvent(event=AuditEventType.ISSUED, identity=requester, peer=req.ctx.peer,
                               label=req.profile.label, csr_fingerprint=req.request.fingerprint, serial=serial,
                               detail=req.operation.value)
            try:
                # Recorded before it is returned: no record, no certificate.
                self.store.record_issued(record, event, grant.guard)
                if self.on_issued is not None:
                    self.on_issued(record)
                return cert
            except GuardFailed as exc:
                raise Forbidden(exc.reason) from None  # names its policy and rule (estkit.store)
            except Conflict as exc:
                if not self._serial_taken(serial):
                    log.error("cannot record issued certificate: %s", exc)
                    raise InternalError("the certificate could not be recorded; nothing was issued") from None
                log.warning("serial collision, drawing another")
            except StoreUnavailable as exc:  # 503 + Retry-After: the client tries again later
                log.warning("cannot record issued certificate: %s", exc)
                raise StoreUnavailable("the store is unavailable: nothing was issued; retry later") from None
            except StoreError as exc:
                log.error("cannot record issued certificate: %s", exc)
                raise InternalError("the certificate could not be recorded; nothing was issued") from None
        raise InternalError("could not draw a unique serial number")

    # -- RFC 7030 §4.2.3 manual approval -------------------------------------

    def _approval_gate(self, req: EnrollRequest, key: CertificatePublicKeyTypes, grant: Grant) -> x509.Certificate:
        """Hold the request for an operator: 202 + Retry-After until decided.
        The same request from the same identity finds the same pending request,
        also when a linked CSR was re-signed on a new connection (RFC 7030
        §3.5: its challengePassword changes with tls-unique)."""
        p, ctx, fp = req.profile, req.ctx, req.request.fingerprint
        who, rkey = str(ctx.identity), req.request.request_fingerprint
        pend = self.store.find_pending(who, p.label, fp, rkey)
        if pend is not None and pend.status == PendingStatus.PENDING and \
                pend.created_at + timedelta(hours=p.pending_expiry_hours) <= req.now:
            self.store.decide_pending(pend.id, PendingStatus.EXPIRED, "not decided in time", req.now,
                                      expected=PendingStatus.PENDING)
            pend = self.store.get_pending(pend.id)
        if pend is None or pend.status == PendingStatus.EXPIRED:
            pend = self.store.add_pending(who, p.label, req.operation.value, fp, req.request.der, req.now, rkey)
            self._audit_quietly(AuditEvent(event=AuditEventType.PENDING, identity=who, peer=ctx.peer, label=p.label,
                                           csr_fingerprint=fp, detail=f"{req.operation.value}: request {pend.id}"))
        if pend.status == PendingStatus.PENDING:
            raise Pending(f"request {pend.id} is waiting for approval", retry_after=p.pending_retry_after)
        if pend.status == PendingStatus.REJECTED:
            raise Forbidden(f"request {pend.id} was rejected: {pend.reason or 'no reason given'}")
        if pend.status == PendingStatus.ISSUED and pend.serial is not None:
            stored = self.store.get_certificate(pend.serial)
            if stored is not None:  # the answer to an earlier retry was lost: send it again
                return x509.load_der_x509_certificate(stored.der)
        # Claim the approved request so concurrent retries issue one certificate.
        if not self.store.decide_pending(pend.id, PendingStatus.ISSUING, pend.reason, req.now,
                                        expected=PendingStatus.APPROVED):
            raise Pending(f"request {pend.id} is being issued", retry_after=1)
        try:
            cert = self._issue(req, key, grant)
        except EstError:
            self.store.decide_pending(pend.id, PendingStatus.APPROVED, pend.reason, req.now,
                                    expected=PendingStatus.ISSUING)
            raise
        self.store.decide_pending(pend.id, PendingStatus.ISSUED, pend.reason, self.clock(), serial=cert.serial_number,
                                  expected=PendingStatus.ISSUING)
        return cert

    def decide_request(self, request_id: int, approve: bool, *, operator: str, reason: str = "") -> PendingRequest:
        """An operator approves or rejects a pending request (audited)."""
        pend = self.store.get_pending(request_id)
        if pend is None:
            raise NotFound(f"no request {request_id}")
        if pend.status != PendingStatus.PENDING:
            raise BadRequest(f"request {request_id} is {pend.status}, not pending")
        status = PendingStatus.APPROVED if approve else PendingStatus.REJECTED
        if not self.store.decide_pending(request_id, status, reason, self.clock(), expected=PendingStatus.PENDING):
            raise BadRequest(f"request {request_id} was decided meanwhile")
        self._audit_quietly(AuditEvent(event=status, identity=f"operator:{operator}", peer="-", label=pend.label,
                                       csr_fingerprint=pend.csr_fingerprint,
                                       detail=f"request {request_id} of {pend.identity}" + (f": {reason}" if reason else "")))
        decided = self.store.get_pending(request_id)
        assert decided is not None
        return decided

    def _serial_taken(self, serial: int) -> bool:
        try:
            return self.store.serial_exists(serial)
        except StoreError:
            return False

    def _audit_quietly(self, event: AuditEvent) -> None:
        try:
            self.store.audit(event)
        except StoreError as exc:
            log.error("cannot record audit event %s: %s", event.event, exc)

    # -- authentication -----------------------------------------------------

    def authenticate_user(self, name: str, password: str) -> Identity:
        """HTTP Basic: the user's identity, or Unauthorized.

        The password is verified whether or not the user exists or is disabled
        (an unknown name against a dummy hash of the current parameters), so a
        wrong password costs the same either way: names are not found by timing.
        A hash with older parameters is replaced by a current one."""
        user = self.store.get_user(name)
        ok = self._passwords.verify(name, password, user.password_hash if user is not None else DUMMY_HASH,
                                    remember=user is not None and not user.disabled)
        if user is None or user.disabled or not ok:
            raise Unauthorized("wrong user name or password")
        if needs_rehash(user.password_hash):
            try:  # compare-and-set: a password changed meanwhile is not overwritten
                self.store.replace_password_hash(name, user.password_hash, self._passwords.rehash(name, password))
            except (StoreError, ServiceUnavailable) as exc:  # verified all the same; upgraded next time
                log.warning("cannot upgrade the password hash of %s: %s", name, exc)
        return self.user_identity(user)

    def find_user(self, name: str) -> UserRecord | None:
        """A user's record, or None (HTTP Digest reads its stored HA1)."""
        return self.store.get_user(name)

    def record(self, event: AuditEvent) -> None:
        """Append an event to the audit trail (StoreError when it cannot)."""
        self.store.audit(event)

    def recently_verified(self, name: str, password: str) -> bool:
        """True if these Basic credentials verified in this process within the last
        minutes (no store access): the server need not count them as a guess."""
        return self._passwords.known(name, password)

    def user_identity(self, user: UserRecord) -> Identity:
        """The identity of a user whose credentials verified (Basic or Digest),
        or Unauthorized when the user is disabled, expired or a used one-time code."""
        if user.disabled:
            raise Unauthorized("wrong user name or password")
        if user.expires_at is not None and user.expires_at <= self.clock():
            raise Unauthorized("credentials expired")
        if user.one_time and user.used_at is not None:
            raise Unauthorized("one-time enrollment code already used")
        return identity_of_user(user)

    def identify_certificate(self, der: bytes) -> Identity:
        """The identity of a TLS client certificate the handshake already verified.

        One issued here must be in the store and not revoked; it carries the
        label it was issued under and its enrollee as they are now (docs/policy.md),
        and is an RA only when a policy grants it.  One from a bootstrap trust
        anchor is a BOOTSTRAP identity (RFC 7030 §3.3.2)."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise Unauthorized("unreadable client certificate") from None
        name = cert.subject.rfc4514_string()
        issuers = self._ours.get(cert.issuer.public_bytes(), [])
        if any(_issued_by(cert, issuer) for issuer in issuers):
            stored = self.store.get_certificate(cert.serial_number)
            if stored is None or stored.der != der:
                raise Forbidden("client certificate is not known to this CA")
            if stored.revoked:
                raise Forbidden("client certificate has been revoked")
            if cert.not_valid_after_utc <= self.clock():
                raise Forbidden("client certificate has expired")
            ident = Identity(IdentityKind.CERT, name, certificate=cert, ra_eku=_has_ra_eku(cert), label=stored.label,
                             enrollee=self._enrollee(stored.enrollee))
            if ident.ra_eku and self.authorize.grants_ra(ident):
                ident = replace(ident, is_ra=True)
            elif ident.ra_eku:
                log.warning("RA certificate %s (serial %x) has no policy granting RA powers: it may ask only "
                            "for its own names (docs/policy.md)", name, cert.serial_number)
            return ident
        return Identity(IdentityKind.BOOTSTRAP, name, certificate=cert)

    def _enrollee(self, name: str) -> Enrollee | None:
        """Who obtained a certificate, as the store knows them now (None: unknown)."""
        if not name:
            return None
        kind, _, user_name = name.partition(":")
        if kind != IdentityKind.USER.value:
            return Enrollee(name)
        user = self.store.get_user(user_name)
        if user is None:
            return Enrollee(name, lost="was removed")
        if user.disabled:
            return Enrollee(name, identity_of_user(user), lost="is disabled")
        # A one-time code's expiry is the code's: once used, its certificates renew as any others.
        if user.expires_at is not None and user.expires_at <= self.clock() and not (user.one_time and user.used_at):
            return Enrollee(name, identity_of_user(user), lost="has expired")
        return Enrollee(name, identity_of_user(user))


def identity_of_user(user: UserRecord) -> Identity:
    """A user's identity with its own policy; a damaged stored policy allows nothing."""
    policy: Policy | None = None
    if user.policy is not None:
        try:
            policy = policy_from_mapping(f"user:{user.name}", user.policy)
        except PolicyError:  # a damaged stored policy must not open everything up
            policy = Policy(name=f"user:{user.name}", labels=())
    return Identity(IdentityKind.USER, user.name, policy=policy, one_time=user.one_time)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _has_ra_eku(cert: x509.Certificate) -> bool:
    try:
        return c.OID_KP_CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
