"""``estkit serve --coap-listen``: EST-coaps (RFC 9148) wired from the configuration."""

from __future__ import annotations

import errno
import logging

from cryptography import x509
from OpenSSL import SSL

from estkit.ca.authority import CertificateAuthority
from estkit.ca.keygen import ServerKeyGen
from estkit.config import Config, split_listen
from estkit.server.app import EstServer
from estkit.server.coap.dtls import DtlsLimits, dtls_server_context
from estkit.server.coap.service import CoapService, bind_udp

__all__ = ["coap_starter"]

log = logging.getLogger("estkit")


def coap_starter(cfg: Config, server: EstServer, ca: CertificateAuthority, trust: list[x509.Certificate],
                 listen: str) -> CoapService:
    """Bind the UDP socket now (a taken port fails the start, as for HTTPS) and
    return the service worker 0 starts.  Client certificates are verified
    against the same anchors as on HTTPS: ours and ``server.bootstrap_trust``."""
    host, port = split_listen(listen, "--coap-listen / server.coap_listen")
    try:
        sock = bind_udp(host, port)
    except OSError as exc:
        why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise OSError(f"cannot listen on udp {host}:{port} (server.coap_listen): {why}; choose another "
                      f"address with --coap-listen or server.coap_listen in config.toml") from None
    sc = cfg.server
    cert, key = cfg.path(sc.tls_cert), cfg.path(sc.tls_key)
    try:
        dtls_server_context(cert, key, trust)  # fail now, not in the worker, on a bad key or certificate
    except SSL.Error as exc:
        raise OSError(f"EST-coaps: cannot use {cert} and {key} for DTLS: {exc}") from None
    limits = DtlsLimits(max_sessions=sc.coap_max_sessions, max_sessions_per_address=sc.coap_max_sessions_per_address,
                        handshake_timeout=sc.handshake_timeout_seconds, idle_timeout=sc.coap_idle_timeout_seconds)
    log.info("serving EST-coaps on coaps://%s:%d/.well-known/est (DTLS 1.2, worker 0)",
             f"[{host}]" if ":" in host else host, sock.getsockname()[1])
    # The context is built in the worker, and again on SIGHUP (CoapService.reload).
    return CoapService(server, ServerKeyGen(ca), sock, lambda: dtls_server_context(cert, key, trust), limits,
                       sc.max_body_bytes)
