"""The connection bound and the rate-limited refusal log of one worker
(used by server/transport.py).

Held connections must not lock out new clients: each worker keeps at most
``max_connections`` open and closes the one idle longest to admit a new one;
refusals (handshakes, unparsable requests) are logged at a bounded rate, so
a flood cannot fill the disk faster than it sends.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Limits", "Conn", "ConnectionTable", "RateLimitedLog", "refusal_log", "auto_max_connections"]

access = logging.getLogger("estkit.access")


@dataclass(frozen=True)
class Limits:
    """Per-connection timeouts (seconds) and the per-worker connection bound."""

    handshake_timeout: float = 10.0
    header_timeout: float = 15.0
    keepalive_timeout: float = 30.0
    max_connections: int = 1024
    max_body: int = 65536
    # A stop (server/drain.py): how long /readyz says "draining" while the port
    # still accepts, then how long connections get to finish.
    drain_seconds: float = 0.0
    stop_timeout: float = 30.0
    # [server] proxy_protocol: the PROXY v2 header is required from these
    # addresses (server/proxyproto.py); empty: not accepted from anyone.
    proxy_protocol_from: tuple[str, ...] = ()


def auto_max_connections() -> int:
    """The bound when the configuration says 0: three quarters of the open-file
    limit (the rest is for the store, logs and files), at most 1024."""
    try:
        import resource
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, soft * 3 // 4))


class RateLimitedLog:
    """At most ``rate`` lines a second (bursts of ``burst``); what is dropped
    is counted and reported with the next line that gets through."""

    def __init__(self, rate: float = 10.0, burst: int = 20) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.dropped = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.dropped += 1
            return
        self.tokens -= 1
        if self.dropped:
            access.info("(%d more lines like the next one were not logged)", self.dropped)
            self.dropped = 0
        access.info(msg, *args)


refusal_log = RateLimitedLog()


class Conn:
    """One accepted connection as the table sees it."""

    __slots__ = ("close", "registered", "served")

    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close
        self.registered = False
        self.served = False  # a request started on it (before that it is a new client's)


class ConnectionTable:
    """The open connections of one worker; the idle ones in the order they
    became idle, so that the one idle longest is closed first when the bound
    is reached.  A connection is idle unless a request is being handled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.idle: OrderedDict[Conn, None] = OrderedDict()

    def admit(self, conn: Conn) -> bool:
        """Register ``conn`` (idle), closing the longest-idle connection when
        full; False when every connection is busy."""
        while self.count >= self.limit:
            if not self.evict_oldest():
                return False
        conn.registered = True
        self.count += 1
        self.idle[conn] = None
        return True

    def evict_oldest(self) -> bool:
        """Close the connection idle longest; False when none is idle."""
        if not self.idle:
            return False
        oldest = next(iter(self.idle))
        self.drop(oldest)
        oldest.close()
        return True

    def busy(self, conn: Conn) -> None:
        conn.served = True
        self.idle.pop(conn, None)

    def settled(self) -> bool:
        """True when no connection is in a request, in its TLS handshake or
        yet to send its first request: what a stop waits for (server/drain.py).
        Idle kept-alive connections do not count: they are closed."""
        return self.count == len(self.idle) and all(c.served for c in self.idle)

    def close_idle(self) -> None:
        """Close the kept-alive connections that are between requests."""
        for conn in [c for c in self.idle if c.served]:
            self.drop(conn)
            conn.close()

    def rest(self, conn: Conn) -> None:
        if conn.registered:
            self.idle[conn] = None
            self.idle.move_to_end(conn)

    def drop(self, conn: Conn) -> None:
        if conn.registered:
            conn.registered = False
            self.count -= 1
            self.idle.pop(conn, None)

    def close_all(self) -> None:
        for conn in list(self.idle):
            self.drop(conn)
            conn.close()
