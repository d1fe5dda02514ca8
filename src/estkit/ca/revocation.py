"""Revocation and the CRL of each CA (RFC 5280 §5).

A revocation is recorded in the store (first one wins) and the CA's CRL is
regenerated at once; a CRL is also regenerated when it comes within
``refresh_before`` of its nextUpdate (the server calls :meth:`Revocation.refresh`
periodically).  The CRL number lives in the store and only ever grows; several
server processes may race to regenerate, the store's compare-and-set lets one win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.ports import AuditEvent, AuditEventType, CrlRecord, StoredCert, StoreError
from estkit.errors import BadRequest, EstError, NotFound
from estkit.protocol.constants import CRL_REASONS

__all__ = ["REASONS", "Revocation", "Revoked", "reason_name", "HOLD"]

log = logging.getLogger("estkit.ca")

# RFC 5280 §5.3.1 CRLReason, by the names the CLI and the store use.
REASONS: dict[str, x509.ReasonFlags] = {f.value: f for f in x509.ReasonFlags}
_BY_CODE = {code: name for name, code in CRL_REASONS.items()}


HOLD = "certificateHold"  # RFC 5280 §5.3.1: the one reason that is not final


@dataclass(frozen=True)
class Revoked:
    """A revocation's outcome: the certificate as stored now, and whether this call changed it."""

    cert: StoredCert
    changed: bool


def reason_name(value: str | int) -> str:
    """A CRLReason by name (case-insensitive) or RFC 5280 code; BadRequest if unknown."""
    if isinstance(value, int) or value.isdigit():
        name = _BY_CODE.get(int(value))
    else:
        name = next((n for n in REASONS if n.lower() == value.lower()), None)
    if name is None or name == "removeFromCRL":
        raise BadRequest(f"unknown revocation reason {value!r} (one of "
                         f"{', '.join(n for n in REASONS if n != 'removeFromCRL')})")
    return name


class Revocation:
    """Revokes certificates and keeps each CA's CRL current."""

    def __init__(self, ca: CertificateAuthority, *, validity: timedelta = timedelta(days=1),
                 refresh_before: timedelta = timedelta(hours=8),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.ca = ca
        self.validity = validity
        self.refresh_before = refresh_before
        self.clock = clock if clock is not None else ca.clock  # the CA's clock: one clock everywhere

    def revoke(self, serial: int, reason: str, *, identity: str, peer: str = "-",
               issuer: x509.Name | None = None,
               authorize: Callable[[StoredCert, x509.Certificate], None] | None = None) -> Revoked:
        """Mark a certificate revoked and publish a new CRL.  NotFound for an
        unknown serial (or one of another issuer).  A revoked certificate stays
        as it is (no new CRL, no audit row: ``changed`` is False), except that a
        certificateHold becomes final when revoked with another reason
        (RFC 5280 §5.3.1).  ``authorize`` sees the certificate first and may
        refuse (raise)."""
        name = reason_name(reason)
        stored = self.ca.store.get_certificate(serial)
        if stored is None:
            raise NotFound(f"no certificate with serial {serial:x}")
        cert = x509.load_der_x509_certificate(stored.der)
        if issuer is not None and cert.issuer != issuer:
            raise NotFound(f"certificate {serial:x} was not issued by {issuer.rfc4514_string()}")
        if authorize is not None:
            try:
                authorize(stored, cert)
            except EstError as exc:  # a refused revocation is a decision too: recorded
                self._audit(AuditEvent(event=AuditEventType.REFUSED, identity=identity, peer=peer, label=stored.label,
                                       serial=serial, detail=f"revoke: {exc.status} {exc.reason}"))
                raise
        if stored.revoked:
            if stored.revocation_reason != HOLD or name == HOLD:
                return Revoked(stored, changed=False)
            result = self.ca.store.change_revocation(serial, expected_reason=HOLD, reason=name)
            detail = f"{HOLD} -> {name}"
        else:
            result = self.ca.store.revoke(serial, name, self.clock())
            detail = name
        if result is None:
            raise NotFound(f"no certificate with serial {serial:x}")
        if result.revocation_reason != name:  # another revocation got there first
            return Revoked(result, changed=False)
        self._audit(AuditEvent(event=AuditEventType.REVOKED, identity=identity, peer=peer, label=stored.label, serial=serial,
                               detail=detail))
        if result.ca in self.ca.cas:
            self.regenerate(result.ca)
        return Revoked(result, changed=True)

    def release_hold(self, serial: int, *, identity: str, peer: str = "-") -> StoredCert:
        """RFC 5280 §5.3.1: a certificate on hold (and only one on hold) is valid
        again; the next CRL no longer lists it.  BadRequest otherwise."""
        stored = self.ca.store.get_certificate(serial)
        if stored is None:
            raise NotFound(f"no certificate with serial {serial:x}")
        if not stored.revoked:
            raise BadRequest(f"certificate {serial:x} is not revoked")
        if stored.revocation_reason != HOLD:
            raise BadRequest(f"certificate {serial:x} is revoked for {stored.revocation_reason}, which is final: "
                             f"only a {HOLD} can be released")
        result = self.ca.store.change_revocation(serial, expected_reason=HOLD, reason=None)
        if result is None:
            raise BadRequest(f"certificate {serial:x} changed meanwhile; try again")
        self._audit(AuditEvent(event=AuditEventType.UNREVOKED, identity=identity, peer=peer, label=stored.label, serial=serial,
                               detail=f"{HOLD} released"))
        if result.ca in self.ca.cas:
            self.regenerate(result.ca)
        return result

    def _audit(self, event: AuditEvent) -> None:
        try:
            self.ca.store.audit(event)
        except StoreError as exc:
            log.error("cannot record the %s audit event: %s", event.event, exc)

    def current(self, ca_name: str) -> CrlRecord:
        """The CA's CRL, regenerated first if there is none or it is about to expire."""
        if ca_name not in self.ca.cas:
            raise NotFound(f"no CA named {ca_name!r}")
        rec = self.ca.store.get_crl(ca_name)
        if rec is None or rec.next_update - self.clock() <= self.refresh_before:
            return self.regenerate(ca_name)
        return rec

    def refresh(self) -> None:
        """Make sure no CA's CRL is near its nextUpdate (the server's periodic task)."""
        for name in self.ca.cas:
            self.current(name)

    def regenerate(self, ca_name: str) -> CrlRecord:
        """Sign a new CRL with the next CRL number and store it, one signer at
        a time through the store (several nodes revoking at once each publish
        theirs, in turn: RFC 5280 §5.2.3, the number only grows)."""
        issuing = self.ca.cas[ca_name]
        return self.ca.store.publish_crl(ca_name, lambda number: self._build(issuing, number))

    def _build(self, issuing: IssuingCA, number: int) -> CrlRecord:
        now = self.clock().replace(microsecond=0)
        nxt = now + self.validity
        b = (x509.CertificateRevocationListBuilder()
             .issuer_name(issuing.cert.subject)
             .last_update(now)
             .next_update(nxt)
             .add_extension(x509.CRLNumber(number), critical=False))
        try:
            ski = issuing.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        except x509.ExtensionNotFound:
            pass
        for stored in self.ca.store.list_revoked(issuing.name):
            if stored.revoked_at is None:
                continue
            rb = x509.RevokedCertificateBuilder().serial_number(stored.serial).revocation_date(stored.revoked_at)
            reason = REASONS.get(stored.revocation_reason or "")
            # RFC 5280 §5.3.1: omit the reason code rather than say unspecified.
            if reason is not None and reason != x509.ReasonFlags.unspecified:
                rb = rb.add_extension(x509.CRLReason(reason), critical=False)
            b = b.add_revoked_certificate(rb.build())
        crl = issuing.signer.sign_crl(b)
        return CrlRecord(ca=issuing.name, number=number, this_update=now, next_update=nxt,
                         der=crl.public_bytes(Encoding.DER))
