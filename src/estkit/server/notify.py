"""Readiness for systemd (``Type=notify``): ``sd_notify`` without a dependency.

systemd passes ``$NOTIFY_SOCKET``, a Unix datagram socket (a leading ``@``
names one in the abstract namespace); the service writes ``READY=1`` once it
serves and ``STOPPING=1`` when it begins to stop (sd_notify(3)).  Ten lines of
socket code; libsystemd's Python binding is not worth a dependency for them.
"""

from __future__ import annotations

import os
import socket

__all__ = ["sd_notify"]


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to the service manager; False when
    there is none (not started by systemd) or it cannot be reached."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
