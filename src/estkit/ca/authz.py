"""Authorization: may this identity ask for this certificate, on this label?

Authentication (``estkit.server.auth``) says who is asking; :class:`Authorize`
decides what it may ask for.  It is one step of the CA's fixed sequence
(``estkit.ca.policy``), so every operation that issues is covered:
simpleenroll, simplereenroll, serverkeygen and fullcmc (PKCS#10 and CRMF,
signed by an RA or not), and it runs before a request is held for manual
approval.  The model, with the threat each rule closes, is docs/policy.md:

- A **user** (HTTP Basic or Digest) is bound by its own policy, else by the
  first ``[policies.NAME]`` table that selects it; with neither it may ask
  for any name (an operator made that credential; ``estkit user add`` warns).
  The same holds for a **bootstrap** identity (a manufacturer's certificate)
  and a full CMC **identityProofV2** identity, with config tables only.
- A **certificate issued here** carries its enrollee's authority, never more.
  Its enrollee (who obtained the first certificate of its chain of renewals)
  must still be allowed: a disabled, expired or removed user's certificates
  stop enrolling.  The enrollee's policy bounds it.  Without a ``[policies]``
  table that selects the certificate itself (its *grant*) it may ask only
  for its own names (its subject, a subset of its subjectAltNames) on the
  label it was issued under; with a grant, for what the grant allows.
- **RA authority is granted, never obtained**: a label whose certificates
  carry id-kp-cmcRA serves only identities whose policy lists that label,
  and a certificate with that EKU acts as an RA (RFC 7030 §3.7) only while a
  grant selects it.
- **Renewal** (RFC 7030 §4.2.2) keeps the names (``CheckReenroll``), so name
  rules are not asked again; label rules are: a certificate stays on its label
  unless its grant lists the other one.

What cannot be decided before signing goes to the store as an ``IssueGuard``
in the :class:`~estkit.ca.policy.Grant`: a one-time code is consumed, a
once-only claim taken, the rate limit counted, in the transaction that
records the certificate.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.policy import EnrollRequest, Grant, certificate_san
from estkit.ca.ports import IssueGuard
from estkit.ca.rules import Policy, matches
from estkit.errors import Forbidden
from estkit.protocol.csr import general_names_text

__all__ = ["Authorize", "Refused", "selects"]


class Refused(Forbidden):
    """403: the request is outside what the identity may ask for.  The reason
    names the policy (when one applies) and the rule; ``rule`` and ``policy``
    keep them for the audit trail.  In full CMC it is badIdentity."""

    def __init__(self, policy: str | None, rule: str, why: str) -> None:
        where = f"policy '{policy}' " if policy else ""
        super().__init__(f"not authorized: {where}rule '{rule}': {why}")
        self.policy = policy
        self.rule = rule


def _kind(ident: Identity) -> str:
    """The ``kinds`` selector value of an identity: an id-kp-cmcRA certificate
    is ``ra`` by its EKU (a grant is what makes it act as one)."""
    if ident.kind == IdentityKind.CERT:
        return "ra" if ident.ra_eku else "cert"
    if ident.kind == IdentityKind.CMC:
        return "user"
    return str(ident.kind.value)


def selects(p: Policy, ident: Identity) -> bool:
    """Do a config policy's selectors match the identity?"""
    if p.kinds and _kind(ident) not in p.kinds:
        return False
    if not (p.users or p.subjects or p.issuers):
        return True
    if ident.kind in (IdentityKind.USER, IdentityKind.CMC):
        name = ident.name if ident.kind == IdentityKind.USER else str(ident)
        return any(fnmatch.fnmatchcase(name, pat) for pat in p.users)
    cert = ident.certificate
    if cert is None:
        return False
    return (any(fnmatch.fnmatchcase(cert.subject.rfc4514_string(), pat) for pat in p.subjects)
            or any(fnmatch.fnmatchcase(cert.issuer.rfc4514_string(), pat) for pat in p.issuers))


def _vars(ident: Identity, ctx: RequestContext) -> dict[str, str | None]:
    """The values of ``{name}`` and ``{serialNumber}`` for an identity."""
    cert = ident.certificate or (ctx.client_cert.certificate if ctx.client_cert is not None else None)
    name = ident.name if ident.kind in (IdentityKind.USER, IdentityKind.CMC) else _attr(cert, NameOID.COMMON_NAME)
    return {"name": name, "serialNumber": _attr(cert, NameOID.SERIAL_NUMBER)}


def _attr(cert: x509.Certificate | None, oid: x509.ObjectIdentifier) -> str | None:
    if cert is None:
        return None
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


class Authorize:
    """The authorization step: a :class:`Grant`, or :class:`Refused` naming the rule."""

    def __init__(self, rules: Sequence[Policy] = ()) -> None:
        self.rules = tuple(rules)

    def policy_for(self, ident: Identity) -> Policy | None:
        """The policy an identity is bound by: a user's own, else the first
        config table that selects it (for a certificate issued here: its grant)."""
        if ident.kind == IdentityKind.USER and ident.policy is not None:
            return ident.policy
        return next((p for p in self.rules if selects(p, ident)), None)

    def grants_ra(self, ident: Identity) -> bool:
        """Does a policy make this id-kp-cmcRA certificate an RA (RFC 7030 §3.7)?"""
        return ident.ra_eku and self.policy_for(ident) is not None

    def __call__(self, req: EnrollRequest) -> Grant:
        ident = req.ctx.identity
        if ident.kind == IdentityKind.CERT:
            return self._certificate(req, ident)
        p = self.policy_for(ident)
        if p is not None:
            self._check(p, req, ident, names=True)
        self._ra_label(req, p)
        one_time = ident.name if ident.kind == IdentityKind.USER and ident.one_time else None
        return self._grant(req, ident, p, None, one_time)

    def _certificate(self, req: EnrollRequest, ident: Identity) -> Grant:
        """A certificate issued here: its enrollee's authority, its grant or its own names."""
        en = ident.enrollee
        if en is not None and en.lost is not None:
            raise Refused(None, "enrollee", f"{en.name}, who obtained this certificate, {en.lost}: its "
                          "certificates may no longer enroll (they stay valid for TLS until revoked or expired)")
        grant = self.policy_for(ident)
        label = req.profile.label
        if grant is None:
            self._ra_label(req, None)
            if not req.renew:
                self._own_names(req, ident)
            if label != ident.label:
                raise Refused(None, "own-label", f"this certificate was issued under label {ident.label!r} and "
                              f"may not enroll on {label!r} (a [policies] table can allow it)")
        else:
            self._check(grant, req, ident, names=not req.renew)
            self._ra_label(req, grant)
            if req.renew and label != ident.label and not grant.lists_label(label):
                raise Refused(grant.name, "own-label", f"renewal stays on label {ident.label!r} unless the policy "
                              f"lists {label!r}")
        bound = self.policy_for(en.user) if en is not None and en.user is not None else None
        if bound is not None and en is not None and en.user is not None:
            # A certificate never carries more than its enrollee may ask for itself.
            self._check(bound, req, en.user, names=not req.renew)
        return self._grant(req, ident, grant, bound, None)

    def _grant(self, req: EnrollRequest, ident: Identity, p: Policy | None, bound: Policy | None,
               one_time: str | None) -> Grant:
        caps = [q.max_validity_days for q in (p, bound) if q is not None and q.max_validity_days is not None]
        max_validity = timedelta(days=min(caps)) if caps else None
        claim = None
        if p is not None and p.once:
            claim = ("cert:" + hashlib.sha256(ident.certificate.public_bytes(Encoding.DER)).hexdigest()
                     if ident.certificate is not None else str(ident))
        rate = p.rate if p is not None else None
        guard = None
        if one_time or claim or rate:
            guard = IssueGuard(consume_user=one_time, claim=claim, policy=p.name if p is not None else "",
                               rate_count=rate.count if rate else None, rate_seconds=rate.seconds if rate else 0)
        names = tuple(q.name for q in (p, bound) if q is not None)
        return Grant(policies=names, max_validity=max_validity, guard=guard)

    @staticmethod
    def _ra_label(req: EnrollRequest, p: Policy | None) -> None:
        """RA authority is granted, never obtained (RFC 7030 §3.7)."""
        label = req.profile.label
        if req.profile.issues_ra and (p is None or not p.lists_label(label)):
            raise Refused(p.name if p is not None else None, "ra-label",
                          f"label {label!r} issues RA certificates (id-kp-cmcRA): only identities whose policy "
                          "lists this label may use it")

    @staticmethod
    def _own_names(req: EnrollRequest, ident: Identity) -> None:
        """Without a grant, a certificate asks only for its own subject and a subset of its SANs."""
        cert = ident.certificate
        assert cert is not None  # a certificate identity always has its certificate
        subject = req.request.subject
        own = set(general_names_text(certificate_san(cert)))
        asked = general_names_text(req.request.san if req.profile.honour_san else None)
        foreign = [n for n in asked if n not in own]
        if len(subject) > 0 and subject.public_bytes() != cert.subject.public_bytes():
            foreign.insert(0, subject.rfc4514_string())
        if foreign:
            hint = ("an RA certificate acts as an RA only when a [policies] table selects it" if ident.ra_eku
                    else "a [policies] table can allow more")
            raise Refused(None, "own-names", f"a certificate without a policy may ask only for its own subject "
                          f"and subjectAltNames, not {', '.join(foreign)} ({hint})")

    def authorize_revocation(self, ident: Identity, ctx: RequestContext, label: str, cert: x509.Certificate) -> None:
        """An RA revoking someone else's certificate (RFC 5272 §6.11) may revoke
        only what its policy would have let it request: the certificate's label
        and names are checked like an enrollment's (Refused naming the rule)."""
        p = self.policy_for(ident)
        if p is None:
            raise Refused(None, "ra", "only a registration authority that a policy selects revokes others' "
                          "certificates")
        self._check_target(p, ident, ctx, label, cert.subject, certificate_san(cert))
        en = ident.enrollee
        bound = self.policy_for(en.user) if en is not None and en.user is not None else None
        if bound is not None and en is not None and en.user is not None:
            self._check_target(bound, en.user, ctx, label, cert.subject, certificate_san(cert))

    def _check(self, p: Policy, req: EnrollRequest, ident: Identity, *, names: bool) -> None:
        san = req.request.san if req.profile.honour_san else None
        self._check_target(p, ident, req.ctx, req.profile.label, req.request.subject, san, names=names)

    def _check_target(self, p: Policy, ident: Identity, ctx: RequestContext, label: str, subject: x509.Name,
                      san: x509.SubjectAlternativeName | None, *, names: bool = True) -> None:
        if p.labels is not None and label not in p.labels:
            raise Refused(p.name, "labels", f"label {label!r} is not allowed for {ident} "
                          f"(allowed: {', '.join(p.labels) or 'none'})")
        if not names or not p.restricts_names:
            return
        values = _vars(ident, ctx)
        if p.subject is not None and not matches(subject.rfc4514_string(), p.subject, values):
            raise Refused(p.name, "subject", f"subject {subject.rfc4514_string()!r} is not allowed")
        if p.cn is not None:
            cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not cns and len(subject) > 0:
                raise Refused(p.name, "cn", "the subject has no CN")
            for cn in cns:
                if not matches(cn, p.cn, values):
                    raise Refused(p.name, "cn", f"CN {cn!r} is not allowed")
        for gn in san or ():
            _check_san(p, gn, values)


def _check_san(p: Policy, gn: x509.GeneralName, values: Mapping[str, str | None]) -> None:
    """Once a policy has any name rule, a SAN of a kind without a rule is refused."""
    if isinstance(gn, x509.DNSName):
        if p.dns is None or not matches(gn.value, p.dns, values, fold=True):
            raise Refused(p.name, "dns", f"DNS name {gn.value!r} is not allowed")
    elif isinstance(gn, x509.IPAddress):
        addr = gn.value
        if isinstance(addr, (ipaddress.IPv4Network, ipaddress.IPv6Network)) or not p.allows_ip(addr):
            raise Refused(p.name, "ip", f"IP address {addr} is not allowed")
    elif isinstance(gn, x509.RFC822Name):
        if p.email is None or not matches(gn.value, p.email, values, fold=True):
            raise Refused(p.name, "email", f"email {gn.value!r} is not allowed")
    elif isinstance(gn, x509.UniformResourceIdentifier):
        if p.uri is None or not matches(gn.value, p.uri, values):
            raise Refused(p.name, "uri", f"URI {gn.value!r} is not allowed")
    else:
        raise Refused(p.name, "san", f"subjectAltName of type {type(gn).__name__} is not allowed")
