"""Authorization rules: what a policy says, and how its patterns match.

A :class:`Policy` comes from a user's record in the store (``estkit user
add/set``) or from a ``[policies.NAME]`` table of the config; the
authorization step (``estkit.ca.authz``) applies it.
"""

from __future__ import annotations

import fnmatch
import glob
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RateLimit", "Policy", "PolicyError", "parse_rate", "policy_from_mapping", "POLICY_KEYS",
           "SELECTOR_KEYS", "KINDS", "expand", "matches"]

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

    def lists_label(self, label: str) -> bool:
        """True when the policy names this label explicitly (not merely leaves labels open)."""
        return self.labels is not None and label in self.labels

    def allows_ip(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Is the address inside one of the ``ip`` networks?"""
        return any(addr.version == n.version and addr in n for n in self._networks)


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


def expand(pattern: str, values: Mapping[str, str | None]) -> str | None:
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


def matches(value: str, patterns: Sequence[str], values: Mapping[str, str | None], *, fold: bool = False) -> bool:
    """Does ``value`` match any of the glob ``patterns`` once their placeholders are filled?"""
    for p in patterns:
        e = expand(p, values)
        if e is not None and fnmatch.fnmatchcase(value.lower() if fold else value, e.lower() if fold else e):
            return True
    return False


