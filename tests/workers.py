"""Which worker process of an ``estkit serve --workers N`` served a request.

The kernel hands each new connection to one worker; /proc tells which: the
connection's socket inode (``/proc/net/tcp``) is among that worker's file
descriptors.  ``https_on_worker`` connects, finds the worker that accepted,
and reconnects (sending nothing) while that worker is one to avoid, so a test
can make requests land on every worker and prove a claim "across workers"."""

from __future__ import annotations

import http.client
import os
import ssl
import time
from pathlib import Path

from support import Reply, ServerProcess

__all__ = ["worker_pids", "https_on_worker"]


def worker_pids(srv: ServerProcess) -> list[int]:
    """The worker processes (children of the ``estkit serve`` process), once all are forked."""
    assert srv.proc is not None
    pid = srv.proc.pid
    deadline = time.monotonic() + 15
    while True:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(kids) >= srv.workers or time.monotonic() > deadline:
            assert len(kids) == srv.workers, f"{len(kids)} workers forked, {srv.workers} expected"
            return kids
        time.sleep(0.05)


def _inode(server_port: int, client_port: int) -> str | None:
    """The server side of the connection 127.0.0.1:client_port -> server_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            if local == server_port and remote == client_port and f[9] != "0":
                return f[9]
    return None


def _holder(inode: str, pids: list[int]) -> int | None:
    want = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def https_on_worker(srv: ServerProcess, method: str, op: str, body: bytes | None, *, avoid: set[int],
                    label: str | None = None, headers: dict[str, str] | None = None,
                    ctx: ssl.SSLContext | None = None, tries: int = 60) -> tuple[Reply, int]:
    """One request on a fresh TLS connection accepted by a worker not in ``avoid``
    (connections accepted by another are closed before anything is sent);
    returns the reply and the serving worker's pid."""
    pids = worker_pids(srv)
    path = srv.url(op, label).split(f":{srv.port}", 1)[1]
    for _ in range(tries):
        conn = http.client.HTTPSConnection("localhost", srv.port, context=ctx or srv.ssl_context(), timeout=30)
        try:
            conn.connect()
            sock: ssl.SSLSocket = conn.sock  # type: ignore[assignment]
            pid = None
            for _wait in range(100):  # the handshake is done; the accepting worker holds the socket
                inode = _inode(srv.port, sock.getsockname()[1])
                pid = _holder(inode, pids) if inode else None
                if pid is not None:
                    break
                time.sleep(0.01)
            assert pid is not None, "no worker holds the connection"
            if pid in avoid:
                continue
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read(), sock.version()), pid
        finally:
            conn.close()
    raise AssertionError(f"no connection reached a worker outside {avoid} in {tries} tries")
