"""Throttling of failed authentication: a token bucket per client address and
per user name.

Each failed password (HTTP Basic or Digest) takes a token from the bucket of
the client's address and from the bucket of the user name it tried.  A bucket
holds ``per_minute`` tokens and refills at ``per_minute`` a minute; while
either bucket is empty, requests with a password from that address or for
that user name get 429 with ``Retry-After`` (RFC 6585 §4) before anything is
verified, the correct password included: a guesser learns nothing and costs
no scrypt.  The per-user limit is the higher one, so a guesser from one
address is stopped by its address and the user still logs in from elsewhere;
guessers from many addresses lock the user name for a while (the price of
stopping them).  IPv6 clients are counted per /64, what one host usually gets.

The state is per worker process, in memory: N workers allow up to N times
the limits, and each node counts on its own.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from estkit.errors import TooManyRequests

__all__ = ["FailureThrottle", "Rule", "Blocked", "address_of"]


@dataclass(frozen=True)
class Rule:
    """One limit: the configuration key that names it and its value."""

    key: str
    per_minute: int


def address_of(peer: str) -> str:
    """The throttled address of a peer ``ip:port``: the IP, or its /64 for IPv6."""
    host = peer.rpartition(":")[0].strip("[]") or peer
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class Blocked:
    """A throttled address or user name: who, the rule, and when to retry."""

    who: str          # address:IP or user:NAME (as the audit trail names it)
    where: str        # for the client's message
    rule: Rule
    retry_after: int  # seconds

    def error(self) -> TooManyRequests:
        """The 429, one line naming the rule (RFC 6585 §4: Retry-After)."""
        return TooManyRequests(f"too many failed authentications {self.where}: rule 'server.{self.rule.key}' "
                               f"({self.rule.per_minute} a minute); retry in {self.retry_after} s",
                               retry_after=self.retry_after)


class _Buckets:
    """Token buckets by key; a full bucket is the same as no bucket (pruned)."""

    def __init__(self, rule: Rule, clock: Callable[[], float], max_keys: int) -> None:
        self.rule = rule
        self._rate = rule.per_minute / 60.0
        self._clock = clock
        self._max = max_keys
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def _level(self, key: str, now: float) -> float:
        tokens, when = self._tokens.get(key, (float(self.rule.per_minute), now))
        return min(float(self.rule.per_minute), tokens + (now - when) * self._rate)

    def wait(self, key: str) -> int:
        """Seconds until ``key`` may try again (0: now)."""
        if self.rule.per_minute <= 0:
            return 0
        level = self._level(key, self._clock())
        return 0 if level >= 1.0 else max(1, math.ceil((1.0 - level) / self._rate))

    def take(self, key: str) -> None:
        if self.rule.per_minute <= 0:
            return
        now = self._clock()
        self._tokens[key] = (max(0.0, self._level(key, now) - 1.0), now)
        if len(self._tokens) > self._max:
            self._prune(now)

    def give(self, key: str) -> None:
        if self.rule.per_minute <= 0 or key not in self._tokens:
            return
        now = self._clock()
        self._tokens[key] = (min(float(self.rule.per_minute), self._level(key, now) + 1.0), now)

    def _prune(self, now: float) -> None:
        full = float(self.rule.per_minute)
        self._tokens = {k: v for k, v in self._tokens.items() if self._level(k, now) < full}
        if len(self._tokens) > self._max:  # keep the most recently failing half
            keep = sorted(self._tokens.items(), key=lambda kv: kv[1][1])[len(self._tokens) // 2:]
            self._tokens = dict(keep)


class FailureThrottle:
    """Failed-authentication limits per client address and per user name."""

    def __init__(self, per_address: Rule, per_user: Rule, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._lock = threading.Lock()  # failures are counted in worker threads, checked on the loop
        self._address = _Buckets(per_address, clock, max_keys)
        self._user = _Buckets(per_user, clock, max_keys)

    def check(self, peer: str, user: str | None) -> Blocked | None:
        """Which limit stops the peer's address or the user name now, if any."""
        addr = address_of(peer)
        with self._lock:
            by_addr = self._address.wait(addr)
            by_user = self._user.wait(user) if user is not None else 0
        if by_addr:
            return Blocked(f"address:{addr}", f"from {addr}", self._address.rule, by_addr)
        if by_user:
            return Blocked(f"user:{user}", f"for user {user!r}", self._user.rule, by_user)
        return None

    def attempt(self, peer: str, user: str) -> Blocked | None:
        """Like :meth:`check`, and when not blocked take a token from both buckets at
        once: an attempt counts as a failure until :meth:`refund` (it verified).  So
        the attempts in flight count too, not only those already failed: a burst
        of guesses cannot start more verifications than the limit."""
        blocked = self.check(peer, user)
        if blocked is None:
            self.failed(peer, user)
        return blocked

    def refund(self, peer: str, user: str) -> None:
        """Give back an :meth:`attempt`'s tokens: it succeeded."""
        addr = address_of(peer)
        with self._lock:
            self._address.give(addr)
            self._user.give(user)

    def failed(self, peer: str, user: str | None) -> None:
        """Count one failed authentication from ``peer`` for ``user``."""
        addr = address_of(peer)
        with self._lock:
            self._address.take(addr)
            if user is not None:
                self._user.take(user)
