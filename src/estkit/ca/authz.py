"""Authorization: what an authenticated identity may ask for.

Authentication (``estkit.server.auth``) says who is asking; a :class:`Policy`
says which labels that identity may use, which subject and subjectAltName
values it may request, the longest validity it gets and how many certificates
per period.  :class:`Authorize` is the policy step that applies it, inside the
CA's fixed sequence, so every operation that issues (simpleenroll,
simplereenroll, serverkeygen, fullcmc including RA requests) is covered.

Where a policy comes from, first match wins:

1. a user's own policy in the store (``estkit user add/set``);
2. the first ``[policies.NAME]`` table of the config whose selectors match
   (``users``, ``subjects``, ``issuers``, ``kinds``; none at all matches everyone);
3. none: the identity may request anything the label's profile allows.

What cannot be decided before signing is handed to the store as an
:class:`IssueGuard` and checked in the transaction that records the
certificate: a one-time code is consumed, a once-only claim is taken, the
rate limit is counted (so concurrent requests and several worker processes
or nodes cannot overshoot).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.policy import DEFAULT_POLICIES, EnrollRequest, RequestPolicy
from estkit.ca.ports import IssueGuard
from estkit.errors import Forbidden

__all__ = ["RateLimit", "Policy", "Authorize", "PolicyError", "parse_rate", "policy_from_mapping",
           "POLICY_KEYS", "SELECTOR_KEYS", "GUARD", "MAX_VALIDITY", "AUTHORIZED_POLICIES",
           "KINDS"]

# Keys of EnrollRequest.extra the CA's issuing step reads.
GUARD = "authz.guard"
MAX_VALIDITY = "authz.max_validity"

POLICY_KEYS = ("labels", "cn", "subject", "dns", "ip", "email", "uri", "max_validity_days", "rate", "once")
SELECTOR_KEYS = ("users", "subjects", "issuers", "kinds")
KINDS = ("user", "cert", "ra", "bootstrap")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400}
_PLACEHOLDER = re.compile(r"\{(name|serialNumber)\}")


class PolicyError(ValueError):
    """A policy definition is wrong; the message names the key."""


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` certificates per ``seconds`` for one identity."""

    count: int
    seconds: int

    def __str__(self) -> str:
        for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if self.seconds % secs == 0:
                n = self.seconds // secs
                return f"{self.count}/{unit}" if n == 1 else f"{self.count}/{n}{unit[0]}"
        return f"{self.count}/{self.seconds}s"


def parse_rate(text: str) -> RateLimit:
    """``10/hour``, ``100/day``, ``5/10m``, ``3/30s`` as a :class:`RateLimit`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", text)
    if not m or m.group(3) not in _UNITS or int(m.group(1)) <= 0 or m.group(2) == "0":
        raise PolicyError(f"rate {text!r}: expected COUNT/PERIOD such as 10/hour, 100/day, 5/10m")
    return RateLimit(int(m.group(1)), int(m.group(2) or 1) * _UNITS[m.group(3)])


@dataclass(frozen=True)
class Policy:
    """One identity's rules.  ``None`` means "not restricted"; once any name
    rule (cn, subject, dns, ip, email, uri) is set, a subjectAltName of a kind
    without a rule is refused."""

    name: str
    labels: tuple[str, ...] | None = None
    cn: tuple[str, ...] | None = None
    subject: tuple[str, ...] | None = None
    dns: tuple[str, ...] | None = None
    ip: tuple[str, ...] | None = None
    email: tuple[str, ...] | None = None
    uri: tuple[str, ...] | None = None
    max_validity_days: int | None = None
    rate: RateLimit | None = None
    once: bool = False
    # Selectors (config policies only): whom the policy applies to.
    users: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=(), repr=False,
                                                                                compare=False)

    @property
    def restricts_names(self) -> bool:
        """True when any subject or SAN rule is set."""
        return any(v is not None for v in (self.cn, self.subject, self.dns, self.ip, self.email, self.uri))

    def applies_to(self, ident: Identity) -> bool:
        """Do this config policy's selectors match the identity?"""
        if self.kinds and _kind(ident) not in self.kinds:
            return False
        if not (self.users or self.subjects or self.issuers):
            return True
        if ident.kind == IdentityKind.USER and any(fnmatch.fnmatchcase(ident.name, p) for p in self.users):
            return True
        cert = ident.certificate
        if cert is None:
            return False
        return (any(fnmatch.fnmatchcase(cert.subject.rfc4514_string(), p) for p in self.subjects)
                or any(fnmatch.fnmatchcase(cert.issuer.rfc4514_string(), p) for p in self.issuers))


def _kind(ident: Identity) -> str:
    return "ra" if ident.is_ra else ident.kind.value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"'{key}' must be a list of non-empty strings")
    return tuple(value)


def policy_from_mapping(name: str, raw: Mapping[str, Any], *, selectors: bool = False) -> Policy:
    """A policy from a config table or a user's stored JSON; PolicyError names a bad key."""
    known = POLICY_KEYS + (SELECTOR_KEYS if selectors else ())
    vals: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise PolicyError(f"unknown key '{key}' (known: {', '.join(known)})")
        if key == "max_validity_days":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PolicyError("'max_validity_days' must be a positive integer")
            vals[key] = value
        elif key == "rate":
            if not isinstance(value, str):
                raise PolicyError("'rate' must be a string such as \"10/hour\"")
            vals[key] = parse_rate(value)
        elif key == "once":
            if not isinstance(value, bool):
                raise PolicyError("'once' must be true or false")
            vals[key] = value
        else:
            vals[key] = _strings(key, value)
    for k in vals.get("kinds", ()):
        if k not in KINDS:
            raise PolicyError(f"'kinds': unknown {k!r} (one of {', '.join(KINDS)})")
    nets = []
    for net in vals.get("ip", ()):
        try:
            nets.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise PolicyError(f"'ip': {net!r} is not an IP network such as 10.0.0.0/8") from None
    return Policy(name=name, _networks=tuple(nets), **vals)


def _vars(ident: Identity, ctx: RequestContext) -> dict[str, str | None]:
    cert = ident.certificate or (ctx.client_cert.certificate if ctx.client_cert is not None else None)
    name: str | None = ident.name if ident.kind == IdentityKind.USER else _attr(cert, NameOID.COMMON_NAME)
    return {"name": name, "serialNumber": _attr(cert, NameOID.SERIAL_NUMBER)}


def _attr(cert: x509.Certificate | None, oid: x509.ObjectIdentifier) -> str | None:
    if cert is None:
        return None
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


def _expand(pattern: str, values: Mapping[str, str | None]) -> str | None:
    """Substitute ``{name}`` / ``{serialNumber}``, glob-escaped (a user named
    ``*`` must not become a wildcard); None when a value is missing."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        v = values.get(m.group(1))
        if not v:
            missing = True
            return ""
        return glob.escape(v)

    out = _PLACEHOLDER.sub(sub, pattern)
    return None if missing else out


def _match(value: str, patterns: Sequence[str], values: Mapping[str, str | None], *, fold: bool = False) -> bool:
    for p in patterns:
        e = _expand(p, values)
        if e is not None and fnmatch.fnmatchcase(value.lower() if fold else value, e.lower() if fold else e):
            return True
    return False


class Authorize:
    """The authorization step (runs last in the validation sequence, before a
    request is held for approval or issued)."""

    def __init__(self, rules: Sequence[Policy] = ()) -> None:
        self.rules = tuple(rules)

    def policy_for(self, ident: Identity) -> Policy | None:
        """The identity's policy: its own stored one, else the first matching config policy."""
        if ident.kind == IdentityKind.USER and ident.policy is not None:
            try:
                return policy_from_mapping(f"user:{ident.name}", ident.policy)
            except PolicyError:  # a damaged stored policy must not open everything up
                return Policy(name=f"user:{ident.name}", labels=())
        return next((p for p in self.rules if p.applies_to(ident)), None)

    def __call__(self, req: EnrollRequest) -> None:
        ident = req.ctx.identity
        guard_user = ident.name if ident.kind == IdentityKind.USER and ident.one_time else None
        p = self.policy_for(ident)
        if p is None:
            if guard_user:
                req.extra[GUARD] = IssueGuard(consume_user=guard_user)
            return
        self._check(p, req)
        if p.max_validity_days is not None:
            req.extra[MAX_VALIDITY] = timedelta(days=min(p.max_validity_days, req.profile.validity_days))
        claim = None
        if p.once:
            claim = ("cert:" + hashlib.sha256(ident.certificate.public_bytes(Encoding.DER)).hexdigest()
                     if ident.certificate is not None else str(ident))
        if guard_user or claim or p.rate:
            req.extra[GUARD] = IssueGuard(consume_user=guard_user, claim=claim, policy=p.name,
                                          rate_count=p.rate.count if p.rate else None,
                                          rate_seconds=p.rate.seconds if p.rate else 0)

    @staticmethod
    def _refuse(p: Policy, rule: str, why: str) -> Forbidden:
        return Forbidden(f"not authorized: policy '{p.name}' rule '{rule}': {why}")

    def authorize_revocation(self, ident: Identity, ctx: RequestContext, label: str, cert: x509.Certificate) -> None:
        """An RA revoking someone else's certificate (RFC 5272 §6.11) may revoke
        only what its policy would have let it request: the certificate's label
        and names are checked like an enrollment's (Forbidden naming the rule)."""
        p = self.policy_for(ident)
        if p is None:
            return
        try:
            san: x509.SubjectAlternativeName | None = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        self._check_target(p, ident, ctx, label, cert.subject, san)

    def _check(self, p: Policy, req: EnrollRequest) -> None:
        self._check_target(p, req.ctx.identity, req.ctx, req.profile.label, req.csr.subject,
                           req.csr.san if req.profile.honour_san else None)

    def _check_target(self, p: Policy, ident: Identity, ctx: RequestContext, label: str, subject: x509.Name,
                      san: x509.SubjectAlternativeName | None) -> None:
        if p.labels is not None and label not in p.labels:
            raise self._refuse(p, "labels", f"label {label!r} is not allowed for {ident} "
                               f"(allowed: {', '.join(p.labels) or 'none'})")
        if not p.restricts_names:
            return
        values = _vars(ident, ctx)
        if p.subject is not None and not _match(subject.rfc4514_string(), p.subject, values):
            raise self._refuse(p, "subject", f"subject {subject.rfc4514_string()!r} is not allowed")
        if p.cn is not None:
            cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not cns and len(subject) > 0:
                raise self._refuse(p, "cn", "the subject has no CN")
            for cn in cns:
                if not _match(cn, p.cn, values):
                    raise self._refuse(p, "cn", f"CN {cn!r} is not allowed")
        for gn in san or ():
            self._check_san(p, gn, values)

    def _check_san(self, p: Policy, gn: x509.GeneralName, values: Mapping[str, str | None]) -> None:
        if isinstance(gn, x509.DNSName):
            if p.dns is None or not _match(gn.value, p.dns, values, fold=True):
                raise self._refuse(p, "dns", f"DNS name {gn.value!r} is not allowed")
        elif isinstance(gn, x509.IPAddress):
            addr = gn.value
            if isinstance(addr, (ipaddress.IPv4Network, ipaddress.IPv6Network)) or \
                    not any(addr.version == n.version and addr in n for n in p._networks):
                raise self._refuse(p, "ip", f"IP address {addr} is not allowed")
        elif isinstance(gn, x509.RFC822Name):
            if p.email is None or not _match(gn.value, p.email, values, fold=True):
                raise self._refuse(p, "email", f"email {gn.value!r} is not allowed")
        elif isinstance(gn, x509.UniformResourceIdentifier):
            if p.uri is None or not _match(gn.value, p.uri, values):
                raise self._refuse(p, "uri", f"URI {gn.value!r} is not allowed")
        else:
            raise self._refuse(p, "san", f"subjectAltName of type {type(gn).__name__} is not allowed")


# The sequence the CA runs by default: validation first, authorization last.
AUTHORIZED_POLICIES: tuple[RequestPolicy, ...] = (*DEFAULT_POLICIES, Authorize())
