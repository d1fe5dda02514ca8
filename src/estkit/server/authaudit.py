"""Failed authentication in the audit trail, aggregated so strangers cannot fill the store.

A failed login (Basic or Digest), a refused client certificate (not ours,
revoked, expired...) and a request refused by the throttle are counted in
memory per (identity or address, reason, minute); the worker writes one
``auth-failed`` row per key and minute, with the count, at most once a
minute and when it stops.  At most ``max_keys`` keys a minute are kept
apart; the rest are folded into one ``*`` row per reason.  Rows are per
worker process (the detail names it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from estkit.ca.ports import AuditEvent, AuditEventType, StoreError

__all__ = ["AuthFailureLog", "failure_kind"]

log = logging.getLogger("estkit.server")


@dataclass
class _Count:
    label: str
    count: int = 0
    peers: set[str] = field(default_factory=set)


def failure_kind(who: str, reason: str) -> str:
    """A failure's kind from a closed set (the reasons themselves are free text):
    ``throttled``, ``password``, ``certificate`` or ``other``."""
    if reason.startswith("throttled"):
        return "throttled"
    if who.startswith("user:"):
        return "password"
    if who.startswith("cert:"):
        return "certificate"
    return "other"


class AuthFailureLog:
    """Counts failed authentications and writes them, aggregated, through ``sink``."""

    def __init__(self, sink: Callable[[AuditEvent], None], *, clock: Callable[[], float] = time.time,
                 max_keys: int = 100) -> None:
        self._sink = sink
        self._clock = clock
        self._max = max_keys
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str, str], _Count] = {}  # (minute, who, reason)
        self._keys_in: dict[int, int] = {}  # minute -> distinct keys kept apart
        # Told the kind of each failure as it happens (estkit.server.metrics counts them).
        self.on_failure: Callable[[str], None] | None = None

    def record(self, who: str, peer: str, reason: str, label: str | None = None) -> None:
        """Count one failure of ``who`` (``user:NAME``, ``cert:SUBJECT``, ``address:IP``)
        from ``peer`` (the client's address) for ``reason``."""
        if self.on_failure is not None:
            self.on_failure(failure_kind(who, reason))
        minute = int(self._clock() // 60)
        with self._lock:
            key = (minute, who, reason)
            if key not in self._counts:
                if self._keys_in.get(minute, 0) >= self._max:
                    key = (minute, "*", reason)
                else:
                    self._keys_in[minute] = self._keys_in.get(minute, 0) + 1
            c = self._counts.setdefault(key, _Count(label or "-"))
            c.count += 1
            if len(c.peers) < 4:
                c.peers.add(peer)

    def flush(self, *, everything: bool = False) -> int:
        """Write the minutes that are over (every minute with ``everything``, at
        shutdown); returns the rows written.  A store failure is logged and
        those counts are dropped (the access log still has each request)."""
        now_minute = int(self._clock() // 60)
        with self._lock:
            done = {k: v for k, v in self._counts.items() if everything or k[0] < now_minute}
            for k in done:
                del self._counts[k]
            for m in [m for m in self._keys_in if everything or m < now_minute]:
                del self._keys_in[m]
        for (minute, who, reason), c in sorted(done.items()):
            at = datetime.fromtimestamp(minute * 60, UTC)
            peers = sorted(c.peers)
            peer = peers[0] if len(peers) == 1 else f"{peers[0]} +more"
            self._write(AuditEvent(
                event=AuditEventType.AUTH_FAILED, identity=who, peer=peer, label=c.label,
                detail=f"{reason}: {c.count} failure{'s' if c.count != 1 else ''} in the minute from "
                       f"{at:%H:%M}Z, from {', '.join(peers) if len(peers) < 4 else 'several addresses'} "
                       f"(worker {os.getpid()})", at=at))
        return len(done)

    def _write(self, event: AuditEvent) -> None:
        try:
            self._sink(event)
        except StoreError as exc:
            log.error("cannot record the auth-failed audit event of %s: %s", event.identity, exc)
