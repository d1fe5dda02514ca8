"""The client's HTTPS connections (RFC 7030 §3.2, §3.3, §3.6).

One TLS connection per request, owned here, so that a proof-of-possession
linked CSR is built from the tls-unique of the very connection that carries it
(§3.5; tls-unique exists only up to TLS 1.2, so such a connection is held to
1.2).  The server's identity is checked before any HTTP byte is sent: its
certificate must chain to the trust anchors and either name the URL's host
(RFC 6125) or carry id-kp-cmcRA (§3.6.1).  A 401 challenge is answered on a
new connection (libest closes the connection after a 401), never on an
unverified (bootstrap) connection (§4.1.1).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509

from estkit.client.auth import ClientCertificate, PasswordAuth, parse_challenges
from estkit.client.errors import NetworkError, ProtocolError, TrustError
from estkit.protocol import constants as c

__all__ = ["Response", "Endpoint", "Transport", "BodyFor", "name_matches"]

# Builds the request body for a connection, given its tls-unique (None when not TLS 1.2).
BodyFor = Callable[[bytes | None], bytes]
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class Response:
    """An HTTP response as the client reads it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    tls_version: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_values(self, name: str) -> list[str]:
        """Every value of a header."""
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass(frozen=True)
class Endpoint:
    """Where the EST service is: ``https://host[:port][/prefix]`` plus an optional CA label."""

    host: str
    port: int
    prefix: str
    label: str | None = None
    scheme: str = "https"  # or "coaps": EST-coaps, RFC 9148 (estkit.client.coap)

    @classmethod
    def parse(cls, url: str, label: str | None = None) -> Endpoint:
        """From ``https://est.example.com[:port][/path]``; ``/.well-known/est`` is
        appended unless the path already holds it (RFC 7030 §3.2.2).  ``coaps://``
        is EST over CoAP and DTLS (RFC 9148 §3), port 5684 by default."""
        parts = urlsplit(url if "://" in url else "https://" + url)
        if parts.scheme not in ("https", "coaps"):
            raise ValueError(f"EST runs over HTTPS (RFC 7030 §3.3) or CoAP over DTLS (coaps://, RFC 9148): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        path = parts.path.rstrip("/")
        if c.WELL_KNOWN not in path:
            path += c.WELL_KNOWN
        if label is not None and (not label or "/" in label or label in c.OPERATIONS):
            raise ValueError(f"bad CA label {label!r} (RFC 7030 §3.2.2)")
        return cls(parts.hostname, parts.port or (443 if parts.scheme == "https" else 5684), path, label,
                   parts.scheme)

    def path(self, op: str) -> str:
        """The request path of an operation."""
        return f"{self.prefix}/{self.label}/{op}" if self.label else f"{self.prefix}/{op}"


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 §6.4: ``host`` (a DNS name or an IP address) is one of the
    certificate's subjectAltName entries; ``*`` only as the whole leftmost label."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        return ip in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    want = host.rstrip(".").lower().split(".")
    for name in san.get_values_for_type(x509.DNSName):
        have = name.rstrip(".").lower().split(".")
        if len(have) != len(want):
            continue
        if have == want or (have[0] == "*" and len(have) > 2 and have[1:] == want[1:]):
            return True
    return False


def _is_ra(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return c.OID_KP_CMC_RA in eku


class Transport:
    """Opens verified (or, for bootstrap, unverified) TLS connections to one endpoint."""

    def __init__(self, endpoint: Endpoint, *, trust_pem: str | None, client_cert: ClientCertificate | None = None,
                 timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.trust_pem = trust_pem
        self.client_cert = client_cert
        self.timeout = timeout

    def context(self, *, verify: bool, tls12: bool) -> ssl.SSLContext:
        """The TLS context of one connection."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7030 §3.3.1; 1.2 and 1.3 today
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # checked in _connect: the host name OR id-kp-cmcRA (§3.6.1)
        if verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
            if self.trust_pem is not None:
                ctx.load_verify_locations(cadata=self.trust_pem)
            else:
                ctx.load_default_certs()  # the Implicit trust anchor store (§3.6.1)
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None and verify:
            try:
                ctx.load_cert_chain(str(self.client_cert.cert_file), str(self.client_cert.key_file),
                                    password=self.client_cert.key_password)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load the TLS client certificate: {exc}") from None
        return ctx

    def _connect(self, host: str, port: int, *, verify: bool, tls12: bool) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                           context=self.context(verify=verify, tls12=tls12))
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise TrustError(f"the server's certificate is not trusted: {exc.verify_message}") from None
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise NetworkError(f"cannot connect to {host}:{port}: {exc}") from None
        if verify:
            sock: ssl.SSLSocket = conn.sock
            der = sock.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der) if der else None
            if cert is None or not (name_matches(cert, host) or _is_ra(cert)):
                conn.close()
                raise TrustError(f"the server's certificate does not name {host} and is not an EST RA "
                                 "certificate (id-kp-cmcRA), RFC 7030 §3.6.1")
        return conn

    def exchange(self, method: str, op: str, *, body_for: BodyFor | None = None, content_type: str | None = None,
                 auth: PasswordAuth | None = None, verify: bool = True, tls12: bool = False) -> Response:
        """Send one request (a new connection; the body built for it), answer a
        401 challenge once on a new connection, follow same-origin redirects."""
        host, port, path = self.endpoint.host, self.endpoint.port, self.endpoint.path(op)
        authorization = auth.basic() if auth is not None and auth.preemptive and verify else None
        answered = 0
        for _hop in range(_MAX_REDIRECTS + 1):
            resp, body = self._once(method, host, port, path, body_for, content_type, authorization, verify, tls12)
            if resp.status == 401 and auth is not None and verify and answered < 2:
                chosen = auth.choose(parse_challenges(resp.header_values(c.HDR_WWW_AUTHENTICATE)))
                stale = chosen is not None and (chosen.param("stale") or "").lower() == "true"
                if chosen is not None and (answered == 0 or stale):
                    # The answer goes on a new connection, so a linked body is rebuilt (§3.5).
                    authorization = auth.answer(chosen, method=method, uri=path, body=body)
                    answered += 1
                    continue
            if resp.status in _REDIRECTS and resp.header("Location"):
                loc = urlsplit(resp.header("Location") or "")
                if loc.netloc and (loc.scheme != "https" or loc.hostname != host or (loc.port or 443) != port):
                    # RFC 7030 §3.2.1: another origin needs the user's consent; we do not follow.
                    raise ProtocolError(f"{op}: redirect to another origin refused: {resp.header('Location')}")
                path = loc.path + (f"?{loc.query}" if loc.query else "")
                continue
            return resp
        raise ProtocolError(f"{op}: too many redirects")

    def _once(self, method: str, host: str, port: int, path: str, body_for: BodyFor | None, content_type: str | None,
              authorization: str | None, verify: bool, tls12: bool) -> tuple[Response, bytes]:
        conn = self._connect(host, port, verify=verify, tls12=tls12)
        try:
            sock: ssl.SSLSocket = conn.sock
            tls_unique = sock.get_channel_binding("tls-unique") if sock.version() == "TLSv1.2" else None
            body = body_for(tls_unique) if body_for is not None else b""
            headers = {"Accept": "*/*"}
            if content_type:
                headers["Content-Type"] = content_type
            if authorization:
                headers["Authorization"] = authorization
            try:
                conn.request(method, path, body=body if body_for is not None else None, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException, socket.timeout) as exc:
                raise NetworkError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            return Response(r.status, tuple(r.getheaders()), data, sock.version()), body
        finally:
            conn.close()
