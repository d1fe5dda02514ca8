"""Serving: N worker processes on one listening port (an SO_REUSEPORT group).

The CA (keys loaded once) and the TLS context are built before forking, so
every worker shares the same session-ticket keys and a resumed session works
whichever worker accepts it.  SIGTERM or SIGINT stops every worker cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable

from aiohttp import web

__all__ = ["serve", "bind"]

log = logging.getLogger("estkit.server")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket (IPv6 when the host is an IPv6 address).

    With ``reuse_port`` it opens an SO_REUSEPORT group that :func:`serve`
    extends with one socket per worker; a port another process already
    listens on is still refused (a plain bind probes it first), so a second
    server never silently shares the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = reuse_port and hasattr(socket, "SO_REUSEPORT")
    if reuse_port and port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=reuse_port)
    sock.set_inheritable(True)
    return sock


def _worker_sockets(sock: socket.socket, workers: int) -> list[socket.socket]:
    """A listening socket per worker.  Workers sharing one socket do not share
    its connections: the first to wake accepts a whole burst (wrk's eight
    keep-alive connections all went to one worker, leaving the other core
    idle).  In an SO_REUSEPORT group the kernel spreads connections over the
    workers' sockets.  Without the group every worker shares ``sock``."""
    reuse = hasattr(socket, "SO_REUSEPORT") and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    if workers <= 1 or not reuse:
        return [sock] * max(workers, 1)
    host, port = sock.getsockname()[:2]
    extra = []
    for _ in range(workers - 1):
        s = socket.create_server((host, port), family=sock.family, backlog=1024, reuse_port=True)
        s.set_inheritable(True)
        extra.append(s)
    return [sock, *extra]


async def _run_worker(make_app: Callable[[], web.Application], sock: socket.socket,
                      ssl_ctx: ssl.SSLContext | None, extra_sites: list[tuple[Callable[[], web.Application], socket.socket]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A SIGTERM that arrived while starting was held (see serve); deliver it now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    runners: list[web.AppRunner] = []
    for factory, s, ctx in [(make_app, sock, ssl_ctx), *[(f, s2, None) for f, s2 in extra_sites]]:
        runner = web.AppRunner(factory(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, s, ssl_context=ctx, shutdown_timeout=2.0).start()
        runners.append(runner)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def _loop_run(coro_factory: Callable[[], object]) -> None:
    try:
        import uvloop
        uvloop.run(coro_factory())  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro_factory())  # type: ignore[arg-type]


def serve(make_app: Callable[[], web.Application], sock: socket.socket, ssl_ctx: ssl.SSLContext | None, *,
          workers: int = 1, extra_sites: list[tuple[Callable[[], web.Application], socket.socket]] | None = None,
          on_ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 on a clean stop)."""
    # The socket already accepts connections: hold stop signals until handlers
    # exist, so a stop right after start is still a clean stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    extra = extra_sites or []
    if workers <= 1:
        if on_ready:
            on_ready()
        _loop_run(lambda: _run_worker(make_app, sock, ssl_ctx, extra))
        return 0
    children: list[int] = []
    socks = _worker_sockets(sock, workers)
    for own in socks:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for s in socks:
                    if s is not own:
                        s.close()  # each worker holds only its own socket of the group
                _loop_run(lambda: _run_worker(make_app, own, ssl_ctx, extra))
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    if socks[0] is not socks[-1]:
        for s in socks:  # the workers hold them; a worker's socket closes with it
            s.close()
    stopping = False

    def _forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if on_ready:
        on_ready()
    status = 0
    alive = set(children)
    while alive:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        alive.discard(pid)
        if not stopping:
            log.error("worker %d exited (%d); stopping", pid, st)
            status = 1
            _forward(signal.SIGTERM, None)
    return status
