"""Load-balancer probes on the EST listener: ``GET /healthz`` and ``GET /readyz``.

RFC 7030 §3.2.2 puts every EST path under ``/.well-known/est``, so these
top-level paths never collide with a CA label.  Neither asks for
authentication.  ``/healthz`` says only that the process serves; ``/readyz``
says whether it can do its job: the store answers, every issuing CA key signs,
the TLS server certificate is within its validity.  The answer is one
``text/plain`` line: ``ok`` (200) or the first failing check (503), never a
500.  A result is kept for ``cache_seconds`` per worker so that probes every
second from several balancers do not sign and query each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from estkit.ca.authority import CertificateAuthority
from estkit.server import drain
from estkit.server.http import HttpResponse
from estkit.server.wire import text_response

__all__ = ["Readiness", "HEALTHZ", "READYZ"]

log = logging.getLogger("estkit.server")

HEALTHZ = "/healthz"
READYZ = "/readyz"
# A probe payload: what a CA key signs to show it still can (a PKCS#11 token
# unplugged, a key file replaced under a running server...).
_PROBE = b"estkit readiness probe"


class Readiness:
    """The checks behind ``/readyz``, with their result cached per worker."""

    def __init__(self, ca: CertificateAuthority, *, tls_not_after: datetime | None = None,
                 cache_seconds: float = 2.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ca = ca
        self.tls_not_after = tls_not_after  # set by the wiring from server.tls_cert
        self.cache_seconds = cache_seconds
        self.timeout = timeout  # a store that does not answer is as bad as one that refuses
        self._clock = clock
        self._cached: tuple[float, str | None] | None = None
        # One check at a time per worker: probes arriving while the store hangs
        # wait for that check instead of each taking an executor thread the
        # EST operations need.
        self._running: asyncio.Future[str | None] | None = None
        self._stage = "tls"  # the check in progress, named when it takes too long

    def check(self) -> str | None:
        """Run every check (blocking: store I/O, signing); None when all pass,
        else the failing check as ``name: why`` (no secrets, no stack)."""
        try:
            return self._checks()
        except Exception:  # a probe answers 503, never 500
            log.exception("readiness: %s check failed", self._stage)
            return f"{self._stage}: check failed"

    def _checks(self) -> str | None:
        self._stage = "tls"
        now = self.ca.clock()
        if self.tls_not_after is not None and now >= self.tls_not_after:
            return f"tls: the server certificate expired at {self.tls_not_after:%Y-%m-%dT%H:%M:%SZ}"
        self._stage = "store"
        try:
            self.ca.store.serial_exists(0)  # a one-row primary-key lookup: the store answers
        except Exception as exc:  # whatever the driver raises, the probe names the check
            self._note("readiness: store check failed: %s", exc)
            return "store: unavailable"
        for name, issuing in self.ca.cas.items():
            self._stage = f"ca {name}"
            try:
                issuing.signer.sign_data(_PROBE)
            except Exception as exc:
                self._note("readiness: CA %s cannot sign: %s", name, exc)
                return f"ca {name}: the key cannot sign"
        return None

    def _note(self, msg: str, *args: object) -> None:
        """Log a failure when readiness is lost, not at every probe while it stays lost."""
        if self._cached is None or self._cached[1] is None:
            log.warning(msg, *args)

    async def result(self) -> str | None:
        """The cached result, or a fresh one off the event loop."""
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self.cache_seconds:
            return cached[1]
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().run_in_executor(None, self.check)
            self._running.add_done_callback(self._keep)
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            return f"{self._stage}: no answer within {self.timeout:g}s"  # the check still running

    def _keep(self, done: asyncio.Future[str | None]) -> None:
        if not done.cancelled():
            self._cached = (self._clock(), done.result())

    async def readyz(self) -> HttpResponse:
        """``GET /readyz``: 200 ``ok`` or 503 naming the failing check
        (``draining`` once the process was told to stop: server/drain.py)."""
        if drain.STATE.draining:
            return text_response(503, drain.DRAINING_REASON)
        failed = await self.result()
        return text_response(200, "ok") if failed is None else text_response(503, failed)


async def healthz() -> HttpResponse:
    """``GET /healthz``: the process serves requests."""
    return text_response(200, "ok")
