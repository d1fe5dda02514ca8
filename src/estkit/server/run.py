"""Serving: N worker processes on one listening port (an SO_REUSEPORT group).

The CA (keys loaded once) and the TLS context are built before forking, so
every worker shares the same session-ticket keys and a resumed session works
whichever worker accepts it.  SIGTERM or SIGINT stops every worker cleanly.
A worker that dies otherwise is restarted on the same socket (connections
the kernel queued on it meanwhile wait there), after a back-off that grows
while it keeps dying soon after starting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from estkit.server import drain
from estkit.server.connections import Limits
from estkit.server.app import EST_SERVER
from estkit.server.transport import EstSite

__all__ = ["serve", "bind", "Service"]

# Something served beside the aiohttp sites in one worker (EST-coaps): started
# in the worker's loop, it returns the coroutine function that stops it.
Service = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]

log = logging.getLogger("estkit.server")
# Held while starting (a SIGHUP before its handler would kill the process), delivered once handled.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


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
                      ssl_ctx: ssl.SSLContext | None, extra_sites: list[tuple[Callable[[], web.Application], socket.socket]],
                      limits: Limits, on_stop: Callable[[], object] | None = None,
                      on_reload: Callable[[], object] | None = None, services: list[Service] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: reload what on_reload reloads (the TLS certificate); open connections keep theirs.
    loop.add_signal_handler(signal.SIGHUP, on_reload if on_reload is not None else (lambda: None))
    # A SIGTERM that arrived while starting was held (see serve); deliver it now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    runners: list[web.AppRunner] = []
    est_sites: list[EstSite] = []
    for factory, s, ctx in [(make_app, sock, ssl_ctx), *[(f, s2, None) for f, s2 in extra_sites]]:
        # shutdown_timeout: what the plain-HTTP listeners' requests (the proxy
        # listener's enrollments among them) get to finish once a stop closes them.
        runner = web.AppRunner(factory(), access_log=None, handle_signals=False, shutdown_timeout=limits.stop_timeout,
                               keepalive_timeout=limits.keepalive_timeout, lingering_time=0)
        await runner.setup()  # the application's startup hooks run whoever serves its socket
        if ctx is not None:
            # The TLS listener speaks HTTP/1.1 itself (server/h1.py) to the EstServer
            # behind the application; aiohttp serves the plain-HTTP listeners.
            est = EstSite(runner.app[EST_SERVER], s, ssl_context=ctx, limits=limits)
            await est.start()
            est_sites.append(est)
        else:
            await web.SockSite(runner, s).start()
        runners.append(runner)
    stoppers = [await start() for start in services or []]
    await stop.wait()
    if on_stop is not None:
        on_stop()
    await _drain(est_sites, limits)
    for stop_service in stoppers:  # EST-coaps too serves through the drain, then stops
        await stop_service()
    for est in est_sites:
        await est.stop()
    for runner in runners:
        await runner.cleanup()


async def _drain(sites: list[EstSite], limits: Limits) -> None:
    """The stop sequence of server/drain.py: draining, stop accepting, finish."""
    drain.STATE.begin()
    if limits.drain_seconds > 0:
        log.info("stopping: draining for %gs (/readyz answers 503)", limits.drain_seconds)
        await asyncio.sleep(limits.drain_seconds)
    for site in sites:
        site.stop_accepting()
    settled = await asyncio.gather(*(site.settle(limits.stop_timeout) for site in sites))
    if not all(settled):
        log.warning("stopping: connections still open after server.stop_timeout_seconds (%gs) are closed",
                    limits.stop_timeout)


def _loop_run(coro_factory: Callable[[], object]) -> None:
    try:
        import uvloop
        uvloop.run(coro_factory())  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro_factory())  # type: ignore[arg-type]


def serve(make_app: Callable[[], web.Application], sock: socket.socket, ssl_ctx: ssl.SSLContext | None, *,
          workers: int = 1, extra_sites: list[tuple[Callable[[], web.Application], socket.socket]] | None = None,
          on_ready: Callable[[], object] | None = None, on_stop: Callable[[], object] | None = None,
          on_reload: Callable[[], object] | None = None, limits: Limits | None = None,
          on_worker_exit: Callable[[int], object] | None = None, services: list[Service] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 on a clean stop).
    ``services`` run in the first worker only (slot 0, restarted with it).
    ``on_ready`` runs once the port accepts connections, ``on_stop`` when a stop begins,
    ``on_worker_exit(pid)`` when a worker process has been reaped."""
    # The socket already accepts connections: hold stop signals until handlers
    # exist, so a stop right after start is still a clean stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    extra = extra_sites or []
    lim = limits or Limits()
    if workers <= 1:
        if on_ready:
            on_ready()
        _loop_run(lambda: _run_worker(make_app, sock, ssl_ctx, extra, lim, on_stop, on_reload, services))
        return 0
    socks = _worker_sockets(sock, workers)

    def spawn(slot: int) -> int:
        own = socks[slot]
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for s in socks:
                    if s is not own:
                        s.close()  # each worker holds only its own socket of the group
                _loop_run(lambda: _run_worker(make_app, own, ssl_ctx, extra, lim, on_reload=on_reload,
                                              services=services if slot == 0 else None))
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    # The parent keeps every socket open (it never accepts on them) so that a
    # restarted worker takes over its predecessor's socket and queue.
    children: dict[int, int] = {}  # pid -> slot
    started: dict[int, float] = {}  # slot -> start time
    quick_deaths = [0] * len(socks)
    due: dict[int, float] = {}  # slot -> when to restart it
    for slot in range(len(socks)):
        children[spawn(slot)] = slot
        started[slot] = time.monotonic()
    stopping = False
    stop_at = 0.0
    listening = True

    def _forward(signum: int, _frame: object) -> None:
        nonlocal stopping, stop_at
        if not stopping and on_stop is not None:
            on_stop()
        if not stopping:
            stop_at = time.monotonic()
        stopping = True
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _forward_reload(signum: int, _frame: object) -> None:
        for child in children:  # each worker reloads its own copy of the TLS context
            try:
                os.kill(child, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGHUP, _forward_reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if on_ready:
        on_ready()
    while children or (due and not stopping):
        if stopping and listening and time.monotonic() >= stop_at + lim.drain_seconds:
            # The workers stop accepting now (server/drain.py); the port closes once
            # no process holds it, so the parent lets go of its copies too.
            listening = False
            for s in {*socks, *(s2 for _f, s2 in extra)}:
                s.close()
        pid, st = _reap()
        if pid:
            slot = children.pop(pid)
            if on_worker_exit is not None:
                on_worker_exit(pid)
            if stopping:
                continue
            lived = time.monotonic() - started[slot]
            quick_deaths[slot] = quick_deaths[slot] + 1 if lived < _STABLE_AFTER else 0
            delay = _backoff(quick_deaths[slot])
            log.error("worker %d %s after %.0fs; restarting it in %.1fs", pid, _exit_reason(st), lived, delay)
            due[slot] = time.monotonic() + delay
            continue
        now = time.monotonic()
        for slot, when in list(due.items()):
            if stopping:
                due.clear()
                break
            if when <= now:
                del due[slot]
                children[spawn(slot)] = slot
                started[slot] = now
        time.sleep(0.1)
    for s in set(socks):
        s.close()
    return 0


# A worker that lived this long before dying is restarted at once.
_STABLE_AFTER = 10.0


def _backoff(quick_deaths: int) -> float:
    """No wait for a worker that had been running; then 0.5 s doubling to 30 s."""
    return 0.0 if quick_deaths == 0 else min(30.0, 0.5 * 2 ** (quick_deaths - 1))


def _reap() -> tuple[int, int]:
    """A child that exited, without waiting: (pid, status) or (0, 0)."""
    try:
        return os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0, 0
    except InterruptedError:
        return 0, 0


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
