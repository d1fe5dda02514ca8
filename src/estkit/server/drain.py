"""Draining on SIGTERM, so that a rolling restart behind a load balancer fails
no request.

A node told to stop does not close its port at once: a balancer still sends
it new connections until its health check notices, and every connection
queued in the kernel when the port closes would be reset.  So a stop goes:

1. **draining** (``drain_seconds``): ``/readyz`` answers 503 ``draining`` (the
   balancer's check takes the node out), every response carries
   ``Connection: close`` (kept-alive clients reconnect, through the balancer,
   to another node), and connections are still accepted and served;
2. **stop accepting**: the listening socket is closed (in every process that
   holds it), so a new connection is refused at once and the balancer tries
   another node (HAProxy ``retries`` / ``redispatch``);
3. **finish** (bounded by ``stop_timeout_seconds``): connections still in their
   TLS handshake or that have not yet sent their first request get to send it,
   requests in progress complete; then the process exits.

The state is per process: the worker that received the signal drains; a
stop is process-wide, so a module-level flag is what it is.
"""

from __future__ import annotations

import time

__all__ = ["DrainState", "STATE", "DRAINING_REASON"]

DRAINING_REASON = "draining: the server is stopping"


class DrainState:
    """Whether this process is stopping, and since when."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        """True from the stop signal on."""
        return self.since is not None

    def begin(self) -> None:
        """Start draining (idempotent: a second SIGTERM changes nothing)."""
        if self.since is None:
            self.since = time.monotonic()


STATE = DrainState()
