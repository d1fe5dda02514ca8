"""Password hashing for HTTP Basic identities: scrypt, salted, slow.

The stored form is ``scrypt$N$r$p$salt$hash`` (base64 parts).  Verifying a
scrypt hash costs tens of milliseconds by design; a server process remembers
successful verifications for a short while (keyed by an HMAC under a
per-process random key, never the password itself) so that a device sending
the same credentials on every request costs one scrypt, not one per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time

__all__ = ["hash_password", "verify_password", "generate_password", "VerifyCache", "digest_ha1",
           "DIGEST_HASHES"]

# RFC 7616 §3.4.2: the hash function behind each Digest algorithm name.
DIGEST_HASHES = {"SHA-256": "sha256", "MD5": "md5"}

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "scrypt${}${}${}${}${}".format(_N, _R, _P, base64.b64encode(salt).decode(),
                                          base64.b64encode(dk).decode())


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the stored hash (constant-time compare)."""
    try:
        scheme, n, r, p, salt_b64, dk_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, want = base64.b64decode(salt_b64), base64.b64decode(dk_b64)
        got = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def digest_ha1(name: str, realm: str, password: str) -> dict[str, str]:
    """RFC 7616 §3.4.2 A1 = H(username:realm:password) for every algorithm: what a
    server must keep to verify Digest.  It is password-equivalent (for Digest, in
    this realm), which is why it is stored only for users who ask for Digest."""
    a1 = f"{name}:{realm}:{password}".encode()
    return {alg: hashlib.new(h, a1).hexdigest() for alg, h in DIGEST_HASHES.items()}


def generate_password(nbytes: int = 18) -> str:
    """A random password, URL-safe, for demo users and one-time codes."""
    return secrets.token_urlsafe(nbytes)


class VerifyCache:
    """Remembers (user, password, stored hash) triples that verified, for ``ttl`` seconds."""

    def __init__(self, ttl: float = 300.0, max_entries: int = 10000, max_parallel: int = 2) -> None:
        self._key = os.urandom(32)
        self._ttl = ttl
        self._max = max_entries
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()
        # One scrypt holds 16 MiB (128 * r * N bytes): a burst of first requests
        # must neither run one per thread nor repeat the same verification.
        self._inflight: dict[bytes, threading.Lock] = {}
        self._parallel = threading.BoundedSemaphore(max_parallel)

    def _tag(self, name: str, password: str, stored: str) -> bytes:
        msg = b"\0".join((name.encode(), password.encode(), stored.encode()))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def verify(self, name: str, password: str, stored: str) -> bool:
        """Like :func:`verify_password`, but remembers success for a while."""
        tag = self._tag(name, password, stored)
        with self._lock:
            if self._fresh(tag):
                return True
            flight = self._inflight.setdefault(tag, threading.Lock())
        # The same credentials arriving together: the first verifies, the others
        # wait for it and find the result (a failure is not remembered: they retry).
        with flight:
            with self._lock:
                if self._fresh(tag):
                    return True
            try:
                with self._parallel:
                    ok = verify_password(password, stored)
                if ok:
                    self._remember(tag)
            finally:
                with self._lock:
                    if self._inflight.get(tag) is flight:
                        del self._inflight[tag]
        return ok

    def _fresh(self, tag: bytes) -> bool:
        exp = self._seen.get(tag)
        return exp is not None and exp > time.monotonic()

    def _remember(self, tag: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) >= self._max:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                if len(self._seen) >= self._max:
                    self._seen.clear()
            self._seen[tag] = now + self._ttl
