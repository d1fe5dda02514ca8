"""Password hashing for HTTP Basic identities: scrypt, salted, slow.

The stored form is ``scrypt$N$r$p$salt$hash`` (base64 parts): the parameters
are stored with every hash, so hashes made with older parameters still verify
and are replaced by one with :data:`CURRENT` on the next successful login
(:func:`needs_rehash`).  :data:`CURRENT` is one of OWASP's equivalent
recommendations for scrypt (Password Storage Cheat Sheet: N=2^14, r=8, p=5),
the one that takes 16 MiB rather than N=2^17's 128 MiB, and a few hundred
milliseconds per verification: the number of verifications at once
is bounded (:class:`VerifyCache`), and a server process remembers successful
verifications for a short while (keyed by an HMAC under a per-process random
key, never the password itself) so that a device sending the same credentials
on every request costs one scrypt, not one per request.

A name that is not a user is verified against :data:`DUMMY_HASH` (current
parameters, random salt and hash), so that a wrong password costs the same
whether the user exists or not: user names cannot be found by timing.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from estkit.errors import ServiceUnavailable

__all__ = ["hash_password", "verify_password", "generate_password", "VerifyCache", "digest_ha1",
           "DIGEST_HASHES", "ScryptParams", "CURRENT", "OWASP_EQUIVALENT", "DUMMY_HASH", "needs_rehash", "parse_hash"]

_T = TypeVar("_T")

# RFC 7616 §3.4.2: the hash function behind each Digest algorithm name.
DIGEST_HASHES = {"SHA-256": "sha256", "MD5": "md5"}


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost parameters (RFC 7914 §2): N (CPU/memory), r (block size), p (parallelism)."""

    n: int
    r: int
    p: int

    @property
    def memory(self) -> int:
        """Bytes one computation needs: OpenSSL's own bound, 128·r·(N + 2 + p)."""
        return 128 * self.r * (self.n + 2 + self.p)

    def weaker_than(self, other: ScryptParams) -> bool:
        """True if any parameter is below ``other``'s."""
        return self.n < other.n or self.r < other.r or self.p < other.p


# OWASP Password Storage Cheat Sheet: scrypt at one of five equivalent settings,
# from N=2^17, r=8, p=1 (128 MiB) to N=2^13, r=8, p=10 (8 MiB); each trades memory
# for sequential work (p is computed one lane after another, in the same block).
OWASP_EQUIVALENT = (ScryptParams(2**17, 8, 1), ScryptParams(2**16, 8, 2), ScryptParams(2**15, 8, 3),
                    ScryptParams(2**14, 8, 5), ScryptParams(2**13, 8, 10))
# N=2^14, r=8, p=5: 16 MiB a verification.  With N=2^17 a worker that had verified
# a password peaked at 221 MB (the 150 MB target of docs/benchmark.md), and each
# verification at once (server.auth_max_parallel) added 128 MiB; 16 MiB stays under it.
CURRENT = ScryptParams(n=2**14, r=8, p=5)
# A stored hash never makes us allocate more than this (a damaged or hostile row).
_MAX_MEMORY = 512 * 1024 * 1024


def _encode(params: ScryptParams, salt: bytes, dk: bytes) -> str:
    return "scrypt${}${}${}${}${}".format(params.n, params.r, params.p, base64.b64encode(salt).decode(),
                                          base64.b64encode(dk).decode())


# Verifying against it costs what verifying a real current hash costs, and never succeeds.
DUMMY_HASH = _encode(CURRENT, os.urandom(16), os.urandom(32))


def parse_hash(stored: str) -> tuple[ScryptParams, bytes, bytes] | None:
    """``(params, salt, hash)`` of a stored hash; None if it is not one we can verify."""
    try:
        scheme, n, r, p, salt_b64, dk_b64 = stored.split("$")
        params = ScryptParams(int(n), int(r), int(p))
        salt, dk = base64.b64decode(salt_b64, validate=True), base64.b64decode(dk_b64, validate=True)
    except (ValueError, TypeError):
        return None
    if scheme != "scrypt" or min(params.n, params.r, params.p) < 1 or params.memory > _MAX_MEMORY or not dk:
        return None
    return params, salt, dk


def hash_password(password: str, params: ScryptParams = CURRENT) -> str:
    """A new salted scrypt hash of ``password``."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=params.n, r=params.r, p=params.p, dklen=32,
                        maxmem=params.memory + 2**20)
    return _encode(params, salt, dk)


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the stored hash (constant-time compare)."""
    parsed = parse_hash(stored)
    if parsed is None:
        return False
    params, salt, want = parsed
    try:
        got = hashlib.scrypt(password.encode(), salt=salt, n=params.n, r=params.r, p=params.p,
                             dklen=len(want), maxmem=params.memory + 2**20)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, want)


@functools.lru_cache(maxsize=1024)  # a pure function of the stored string, asked on every Basic request
def needs_rehash(stored: str) -> bool:
    """True if the hash was made with parameters weaker than :data:`CURRENT` and
    than every setting OWASP counts as its equal (a hash at N=2^17, p=1, made
    by estkit before, is as strong and stays)."""
    parsed = parse_hash(stored)
    return parsed is not None and parsed[0] not in OWASP_EQUIVALENT and parsed[0].weaker_than(CURRENT)


def digest_ha1(name: str, realm: str, password: str) -> dict[str, str]:
    """RFC 7616 §3.4.2 A1 = H(username:realm:password) for every algorithm: what a
    server must keep to verify Digest.  It is password-equivalent (for Digest, in
    this realm), which is why it is stored only for users who ask for Digest."""
    a1 = f"{name}:{realm}:{password}".encode()
    return {alg: hashlib.new(h, a1).hexdigest() for alg, h in DIGEST_HASHES.items()}


def generate_password(nbytes: int = 18) -> str:
    """A random password, URL-safe, for demo users and one-time codes."""
    return secrets.token_urlsafe(nbytes)


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable("too many password verifications at once; retry shortly", retry_after=1)


class _Flight:
    """One verification in progress, whose result others with the same credentials wait for."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._ok = False
        self._error: BaseException | None = None

    def done(self, ok: bool | None, error: BaseException | None = None) -> None:
        self._ok, self._error = bool(ok), error
        self._event.set()

    def wait(self, timeout: float) -> bool:
        if not self._event.wait(timeout):
            raise _busy()
        if self._error is not None:
            raise _busy() if not isinstance(self._error, ServiceUnavailable) else self._error
        return self._ok


class VerifyCache:
    """Remembers (user, password, stored hash) triples that verified, for ``ttl``
    seconds, and bounds the scrypt computations running at once.

    At most ``max_parallel`` verifications (or new hashes) run at once: each
    holds :data:`CURRENT`'s 128 MiB.  Up to ``max_waiting`` more wait for a slot,
    at most ``wait_seconds``; beyond that :class:`ServiceUnavailable` (503,
    Retry-After 1): a flood of first logins must neither grow the process's
    memory nor tie up every worker thread while a device with a remembered
    password waits behind it."""

    def __init__(self, ttl: float = 300.0, max_entries: int = 10000, max_parallel: int = 2,
                 max_waiting: int | None = None, wait_seconds: float = 5.0, max_following: int = 16) -> None:
        self._key = os.urandom(32)
        self._ttl = ttl
        self._max = max_entries
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._inflight: dict[bytes, _Flight] = {}
        self.max_parallel = max(1, max_parallel)
        self._parallel = threading.BoundedSemaphore(self.max_parallel)
        self._max_waiting = max_waiting if max_waiting is not None else 2 * self.max_parallel
        self._inside = 0
        self._following = 0
        self._max_following = max_following
        self._wait_seconds = wait_seconds

    def _tag(self, name: str, password: str, stored: str) -> bytes:
        msg = b"\0".join((name.encode(), password.encode(), stored.encode()))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def verify(self, name: str, password: str, stored: str, *, remember: bool = True) -> bool:
        """Like :func:`verify_password`, but remembers success for a while.

        The same credentials arriving together are verified once: the others
        wait for that result, success or failure (16 guessers sending the same
        password cost one scrypt).  ``remember=False`` neither looks in nor adds
        to the memory: for a disabled user, whose refusal must cost the same
        whether the password was right or not (a quick one would confirm a guess)."""
        tag = self._tag(name, password, stored)
        if remember:
            with self._lock:
                if self._fresh(tag):
                    return True
        with self._lock:
            flight = self._inflight.get(tag)
            leader = flight is None
            if flight is None:
                flight = self._inflight[tag] = _Flight()
        if not leader:
            return self._follow(flight)
        try:
            with self._admitted():
                ok = self._run(verify_password, password, stored)
            if ok and remember:
                self._remember(tag, self._tag(name, password, ""))
            flight.done(ok)
            return ok
        except BaseException as exc:
            flight.done(None, exc)  # those waiting get the same 503
            raise
        finally:
            with self._lock:
                if self._inflight.get(tag) is flight:
                    del self._inflight[tag]

    def _follow(self, flight: _Flight) -> bool:
        """Wait for another thread's verification of the same credentials.  It
        holds a thread but no memory, so it is bounded apart from
        :meth:`_admitted`: a device's burst of first requests (or a one-time
        code sent by eight clients at once) is not refused; beyond
        ``max_following``, 503.  A burst of the same guess is bounded by the
        throttle first (estkit.server.throttle: an unknown password takes its
        tokens before it is verified)."""
        with self._lock:
            if self._following >= self._max_following:
                raise _busy()
            self._following += 1
        try:
            return flight.wait(self._wait_seconds + 1.0)
        finally:
            with self._lock:
                self._following -= 1

    def rehash(self, name: str, password: str) -> str:
        """A new hash of a password that just verified, with :data:`CURRENT`
        parameters (same bounds as verifications); remembered as verified."""
        with self._admitted():
            stored = self._run(hash_password, password)
        self._remember(self._tag(name, password, stored), self._tag(name, password, ""))
        return stored

    def known(self, name: str, password: str) -> bool:
        """True if these credentials verified (against whatever hash) within the
        last ``ttl`` seconds: a hint that needs no store lookup, for the server
        to tell a known device from a guesser before it hands the request over."""
        with self._lock:
            return self._fresh(self._tag(name, password, ""))

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """At most ``max_parallel + max_waiting`` threads inside (running or waiting
        for a slot); more get 503 at once."""
        with self._lock:
            if self._inside >= self.max_parallel + self._max_waiting:
                raise _busy()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1

    def _run(self, fn: Callable[..., _T], *args: str) -> _T:
        if not self._parallel.acquire(timeout=self._wait_seconds):
            raise _busy()
        try:
            return fn(*args)
        finally:
            self._parallel.release()

    def _fresh(self, tag: bytes) -> bool:
        exp = self._seen.get(tag)
        return exp is not None and exp > time.monotonic()

    def _remember(self, *tags: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) + len(tags) > self._max:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                if len(self._seen) + len(tags) > self._max:
                    self._seen.clear()
            for tag in tags:
                self._seen[tag] = now + self._ttl
