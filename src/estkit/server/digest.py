"""HTTP Digest authentication (RFC 7616), per label, off by default.

Offered besides Basic on labels whose ``digest_auth`` names algorithms
(``SHA-256``, and ``MD5`` for old clients).  Only ``qop=auth``: the body is
protected by TLS, not by ``auth-int``.

The server keeps, per user who asked for Digest, H(user:realm:password) for
each algorithm (RFC 7616 §3.4.2).  Nonces are stateless so that every worker
process and node accepts them: a timestamp and random bytes, authenticated
with an HMAC under a key from ``DIR/digest-secret`` (shared by every worker;
copy it to every node).  An expired but genuine nonce gets a new challenge
with ``stale=true`` (RFC 7616 §3.3), so the client retries without asking
for the password again.  The ``uri`` must be the request-target, or, for
libest's client, the same operation without the label (see ``uri_matches``).
Nonce counts are not tracked (that would need shared
state); replay within a nonce's lifetime is left to TLS to prevent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path


from estkit.server.ports import EstAuthority
from estkit.ca.identity import Identity
from estkit.ca.passwords import DIGEST_HASHES
from estkit.errors import Unauthorized
from estkit.protocol import constants as c
from estkit.server.auth import Authenticator
from estkit.server.http import HttpRequest

__all__ = ["DigestAuth", "parse_digest", "load_secret", "uri_matches", "SECRET_FILE"]

SECRET_FILE = "digest-secret"
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")


def load_secret(directory: Path) -> bytes:
    """The nonce key shared by every worker (and node): ``DIR/digest-secret``, created (0600) if missing."""
    path = directory / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        data = os.urandom(32)
        f.write(data)
    return data


def parse_digest(header: str | None) -> dict[str, str] | None:
    """The parameters of an ``Authorization: Digest`` header; None for another
    scheme; Unauthorized when it is malformed."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    out: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise Unauthorized("malformed Digest Authorization header")
        value = m.group(2) if m.group(2) is not None else m.group(3)
        out[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return out


def uri_matches(uri: str, target: str, label: str | None) -> bool:
    """RFC 7616 §3.4.6: the Digest ``uri`` is the request-target itself.  One
    alias, for libest's client (interop-notes): it sends to
    ``/.well-known/est/<label>/<op>`` but computes ``uri`` over
    ``/.well-known/est/<op>``, the same operation with the label removed.
    Nothing wider: another operation, label or form is a mismatch."""
    if uri == target:
        return True
    if not label:
        return False
    prefix = f"{c.WELL_KNOWN}/{label}/"
    op = target[len(prefix):] if target.startswith(prefix) else ""
    return op in c.OPERATIONS and uri == f"{c.WELL_KNOWN}/{op}"


class DigestAuth:
    """Issues Digest challenges and verifies Digest credentials."""

    def __init__(self, ca: EstAuthority, realm: str, secret: bytes, *, nonce_lifetime: int = 300,
                 clock: Callable[[], float] = time.time, guard: Authenticator | None = None) -> None:
        self.ca = ca
        self.guard = guard  # throttles and audits wrong passwords as for Basic
        self.realm = realm
        self._key = hmac.new(secret, b"estkit digest nonce v1", hashlib.sha256).digest()
        self.lifetime = nonce_lifetime
        self.clock = clock

    def algorithms(self, label: str | None) -> tuple[str, ...]:
        """The Digest algorithms a label offers (empty: Digest is off there)."""
        return self.ca.profile(label).digest_auth

    def _nonce(self) -> str:
        body = struct.pack(">Q", int(self.clock())) + os.urandom(8)
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def _nonce_state(self, nonce: str) -> str:
        """``fresh``, ``stale`` (genuine but expired) or ``bad``."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return "bad"
        if len(raw) != 32 or not hmac.compare_digest(hmac.new(self._key, raw[:16], hashlib.sha256).digest()[:16],
                                                     raw[16:]):
            return "bad"
        age = self.clock() - struct.unpack(">Q", raw[:8])[0]
        return "fresh" if -5 <= age <= self.lifetime else "stale"

    def challenges(self, label: str | None, *, stale: bool = False) -> list[str]:
        """RFC 7616 §3.3 WWW-Authenticate values, strongest algorithm first, one fresh nonce.

        ``algorithm`` is quoted although RFC 7616 §3.3 says not to: Bouncy Castle's
        EST client (1.72) parses only quoted values and fails on the token form;
        curl and other clients read both."""
        nonce = self._nonce()
        extra = ", stale=true" if stale else ""
        return [f'Digest realm="{self.realm}", qop="auth", algorithm="{alg}", nonce="{nonce}"{extra}'
                for alg in self.algorithms(label)]

    async def authenticate(self, request: HttpRequest, label: str | None) -> Identity | None:
        """The user of a Digest Authorization header; None if there is none."""
        params = parse_digest(request.headers.get("Authorization"))
        if params is None:
            return None
        algs = self.algorithms(label)
        if not algs:
            raise Unauthorized("Digest authentication is not enabled for this label")
        missing = [k for k in _REQUIRED if not params.get(k)]
        if missing:
            raise Unauthorized(f"Digest credentials lack {', '.join(missing)} (qop=auth is required)")
        alg = params.get("algorithm", "MD5")  # RFC 7616 §3.3: MD5 when absent
        if alg not in algs:
            raise Unauthorized(f"Digest algorithm {alg} is not offered here (offered: {', '.join(algs)})")
        if params["realm"] != self.realm or params["qop"] != "auth":
            raise Unauthorized("Digest credentials for another realm or qop")
        if not uri_matches(params["uri"], request.target, label):  # RFC 7616 §3.4.6
            raise Unauthorized("Digest uri does not match the request")
        state = self._nonce_state(params["nonce"])
        if state == "stale":
            raise Unauthorized("Digest nonce expired", challenges=tuple(self.challenges(label, stale=True)))
        if state == "bad":
            raise Unauthorized("unknown Digest nonce")
        if self.guard is not None:
            self.guard.check_password_attempt(request.peer, params["username"], label)
        user = await asyncio.get_running_loop().run_in_executor(None, self.ca.find_user, params["username"])
        ha1 = (user.digest_ha1 or {}).get(alg) if user is not None else None
        expect = ""
        if user is not None and ha1 is not None:
            h = DIGEST_HASHES[alg]
            ha2 = hashlib.new(h, f"{request.method}:{params['uri']}".encode()).hexdigest()
            expect = hashlib.new(h, ":".join((ha1, params["nonce"], params["nc"], params["cnonce"], "auth",
                                              ha2)).encode()).hexdigest()
        if user is None or not expect or not hmac.compare_digest(expect, params["response"].lower()):
            if self.guard is not None:
                self.guard.password_failed(request.peer, params["username"], "wrong user name or password",
                                           label)
            raise Unauthorized("wrong user name or password")
        return self.ca.user_identity(user)
