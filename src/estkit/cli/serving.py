"""``estkit serve``: wire the config into a running server."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509

from estkit.cli.wiring import build_authority, build_revocation, build_server, build_store, load_pem_certs
from estkit.config import Config, split_listen
from estkit.protocol.constants import CRL_PATH, OCSP_PATH
from estkit.ca.authority import CertificateAuthority
from estkit.ca.server_cert import ServerCertificate
from estkit.server.app import EstServer
from estkit.server.run import bind, serve
from estkit.server.tls import server_context
from estkit.server.connections import Limits, auto_max_connections
from estkit.server.notify import sd_notify
from estkit.server.periodic import every

if TYPE_CHECKING:
    from estkit.server.coap.service import CoapService
    from estkit.server.metrics import StateCollector

__all__ = ["run_server", "ListenError"]

log = logging.getLogger("estkit")


class ListenError(OSError):
    """A listening address could not be taken; the message names it and what to do."""


def _bind(host: str, port: int, key: str, **kw: bool) -> socket.socket:
    try:
        return bind(host, port, **kw)
    except OSError as exc:
        why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ListenError(f"cannot listen on {host}:{port} ({key}): {why}; stop what listens there or choose "
                          f"another address with --listen or {key} in config.toml") from None


def run_server(cfg: Config, *, listen: str | None = None, workers: int | None = None,
               on_ready: Callable[[], object] | None = None, coap_listen: str | None = None) -> int:
    """Build everything once, bind, fork the workers and serve until stopped.
    ``on_ready`` runs once the port accepts connections (the quickstart's banner)."""
    from estkit.cli.perms import secure_dir
    for fix in secure_dir(cfg.dir):  # a DIR made by an older estkit, or by hand
        log.warning("fixed permissions: %s", fix)
    n = workers if workers is not None else cfg.server.workers
    if n <= 0:
        n = os.cpu_count() or 1
    store = build_store(cfg)
    ca = build_authority(cfg, store, workers=n)
    revocation = build_revocation(ca)  # one per process: CMC revocations, superseded renewals, the CRL listener
    server = build_server(cfg, ca, revocation)
    trust = ca.trust_anchors() + [c for p in cfg.server.bootstrap_trust for c in load_pem_certs(cfg.path(p))]
    tls = ServerCertificate(ca, cfg.path(cfg.server.tls_cert), cfg.path(cfg.server.tls_key),
                            renew_before=timedelta(days=cfg.server.tls_renew_before_days))
    tls.refresh()  # renewed now if due, before the workers fork with it
    ssl_ctx = server_context(tls.cert_path, tls.key_path, trust)
    tls_not_after = tls.current.not_valid_after_utc
    if server.readiness is not None:
        server.readiness.tls_not_after = tls_not_after  # /readyz fails once it has expired
    host, port = split_listen(listen or cfg.server.listen, "--listen")
    extra = []
    sc = cfg.server
    if sc.crl_listen:
        # The CRL over plain HTTP, where the certificates' CRL Distribution Points point.
        from estkit.server.crl import crl_app
        revocation.refresh()  # publish (or renew) every CRL before serving
        crl_host, crl_port = split_listen(sc.crl_listen, "server.crl_listen")
        crl_sock = _bind(crl_host, crl_port, "server.crl_listen")
        extra.append((lambda: crl_app(revocation), crl_sock))
        log.info("serving CRLs on http://%s:%d%s/<ca>.crl", crl_host, crl_sock.getsockname()[1], CRL_PATH)
    if sc.ocsp_listen:
        # The OCSP responder (RFC 6960), where the certificates' AIA points; its
        # delegated certificates are issued or renewed here, before the workers fork.
        from estkit.cli.wiring import build_ocsp
        from estkit.server.crl import crl_app
        from estkit.server.ocsp import add_ocsp, ocsp_app
        responder, keys = build_ocsp(cfg, ca)
        if sc.ocsp_listen == sc.crl_listen:  # one listener serves both paths
            extra[-1] = (lambda: add_ocsp(crl_app(revocation), responder, keys.refresh), crl_sock)
            ocsp_sock = crl_sock
        else:
            ocsp_sock = _bind(*split_listen(sc.ocsp_listen, "server.ocsp_listen"), "server.ocsp_listen")
            extra.append((lambda: ocsp_app(responder, keys.refresh), ocsp_sock))
        log.info("serving OCSP on http://%s:%d%s (signed by %s)", *ocsp_sock.getsockname()[:2], OCSP_PATH,
                 "delegated responder certificates" if sc.ocsp_signer == "delegated" else "the CA keys")
    services: list[CoapService] = []
    if coap_listen or sc.coap_listen:  # EST-coaps (RFC 9148): estkit.cli.coap_serving
        from estkit.cli.coap_serving import coap_starter
        services.append(coap_starter(cfg, server, ca, trust, coap_listen or sc.coap_listen))
    metrics_dir, state = None, None
    if cfg.server.metrics_listen:
        metrics_dir, site, state = _metrics_site(cfg, server, ca, tls_not_after)
        extra.append(site)
    if sc.proxy_listen:
        # Plain HTTP for a TLS-terminating proxy, which forwards the client's TLS
        # facts in headers trusted only here (estkit.server.proxied).
        from estkit.server.proxied import bind_unix, proxied_app
        from estkit.server.proxyproto import TrustedProxies
        p_sock = (bind_unix(cfg.path(sc.proxy_listen[len("unix:"):])) if sc.proxy_listen.startswith("unix:")
                  else _bind(*split_listen(sc.proxy_listen, "server.proxy_listen"), "server.proxy_listen"))
        extra.append((lambda: proxied_app(server, TrustedProxies(sc.trusted_proxies), trust), p_sock))
        log.info("serving EST for the proxies %s on %s", ", ".join(sc.trusted_proxies), sc.proxy_listen)
    tls.on_change = lambda cert: _load_tls(tls, ssl_ctx, cert, server, state, services)
    # Bound last: once the EST port answers, everything (CRLs included) is ready.
    # From here a stop signal waits until the workers can stop cleanly (serve unblocks it).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    sock = _bind(host, port, "server.listen", reuse_port=n > 1)
    store.close()  # workers open their own connections
    log.info("serving EST on https://%s:%d/.well-known/est with %d worker(s)", host, sock.getsockname()[1], n)
    limits = Limits(handshake_timeout=sc.handshake_timeout_seconds, header_timeout=sc.header_timeout_seconds,
                    keepalive_timeout=sc.keepalive_timeout_seconds,
                    max_connections=sc.max_connections or auto_max_connections(), max_body=sc.max_body_bytes,
                    drain_seconds=sc.drain_seconds, stop_timeout=sc.stop_timeout_seconds,
                    proxy_protocol_from=sc.trusted_proxies if sc.proxy_protocol else ())
    # systemd Type=notify (deploy/systemd/estkit.service): ready once the port accepts connections.
    check = float(sc.tls_renew_check_seconds)

    def make_app() -> web.Application:
        app = server.app()
        # Each worker looks at its TLS certificate: loads one another worker renewed, renews one that is due.
        app.cleanup_ctx.append(every(check, tls.refresh, "TLS certificate check"))
        return app

    return serve(make_app, sock, ssl_ctx, workers=n, extra_sites=extra, limits=limits,
                 on_ready=lambda: _ready(on_ready), on_stop=lambda: sd_notify("STOPPING=1"),
                 on_reload=tls.reload, on_worker_exit=_worker_exited if metrics_dir else None,
                 services=list(services))


def _load_tls(tls: ServerCertificate, ssl_ctx: ssl.SSLContext, cert: x509.Certificate, server: EstServer,
              state: StateCollector | None, services: Sequence[CoapService] = ()) -> None:
    """A new TLS certificate and key from disk (SIGHUP, or a renewal) into this
    worker's context, and EST-coaps' DTLS context: new handshakes get them, open
    connections keep theirs.  (From the check's thread: a handshake copies the
    context's certificate when it starts, under the GIL, so it sees the old pair
    or the new one.)"""
    for service in services:
        service.reload()
    try:
        ssl_ctx.load_cert_chain(str(tls.cert_path), str(tls.key_path))
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot load the TLS certificate from %s (%s); still serving the old one", tls.cert_path, exc)
        return
    if server.readiness is not None:
        server.readiness.tls_not_after = cert.not_valid_after_utc
    if state is not None:
        state.tls_not_after = cert.not_valid_after_utc
    log.info("reloaded the TLS certificate from %s (serial %x, valid until %s)", tls.cert_path, cert.serial_number,
             cert.not_valid_after_utc.isoformat())


def _metrics_site(cfg: Config, server: EstServer, ca: CertificateAuthority, tls_not_after: datetime
                  ) -> tuple[Path, tuple[Callable[[], web.Application], socket.socket], StateCollector]:
    """Prometheus metrics over plain HTTP (estkit.server.metrics), served by the
    workers on one shared socket like the CRL: whichever worker accepts a scrape
    reads the files of all of them.  The parent stays a bare reaper that only
    removes the directory and marks dead workers."""
    from estkit.server.metrics import (EstMetrics, StateCollector, metrics_app, prepare_multiproc_dir,
                                       remove_multiproc_dir)
    m_host, m_port = split_listen(cfg.server.metrics_listen, "server.metrics_listen")
    m_sock = _bind(m_host, m_port, "server.metrics_listen")
    # Private (0700) under the data directory, emptied now and removed when the
    # parent exits, however it exits (workers leave with os._exit: no atexit there).
    metrics_dir = prepare_multiproc_dir(cfg.dir / "metrics")
    atexit.register(remove_multiproc_dir, metrics_dir)
    metrics = EstMetrics([*server.operations, "healthz", "readyz"], ca.profiles)
    server.on_request = metrics.request
    ca.on_issued = lambda rec: metrics.issued(rec.label)
    server.auth.failures.on_failure = metrics.auth_failure
    state = StateCollector(ca, tls_not_after)
    log.info("serving metrics on http://%s:%d/metrics", m_host, m_sock.getsockname()[1])
    return metrics_dir, (lambda: metrics_app(state), m_sock), state


def _worker_exited(pid: int) -> None:
    from estkit.server.metrics import worker_exited
    worker_exited(pid)


def _ready(then: Callable[[], object] | None) -> None:
    if then is not None:
        then()
    sd_notify("READY=1")
