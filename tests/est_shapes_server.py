"""A small but real HTTPS EST server for client tests, behaving the way other
EST servers do on the wire (interop-notes: libest, RFC 7030 Appendix A):

* HTTP Digest (RFC 7616: SHA-256 and MD5, qop=auth), really verified against
  a known password with nonces it issued; a 401 challenge comes first and the
  connection is closed after every status >= 400 (libest);
* 400 to a request body without a newline (libest);
* base64 wrapped at 64 columns with CRLF and no Content-Transfer-Encoding,
  ``/cacerts`` without smime-type, enroll answers carrying the CA chain;
* ``/serverkeygen``: certificate part first, LF line ends, quoted boundary, a
  PKCS#1 RSA key labelled ``application/pkcs8`` (libest);
* the ``held`` label answers 202 with an HTTP-date Retry-After first;
* ``/csrattrs``: 204 by default, or ``csrattrs_body`` as a 200 (libest's
  example server sends the base64 followed by a NUL byte, counted in
  Content-Length);
* ``/serverkeygen`` always answers a plaintext key, even when the CSR asks for
  it encrypted (a server that ignores the request: a downgrade to detect).

Certificates are signed by a test CA with cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from client_pki import Pki, issue, write_pair
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from estkit.protocol.pkcs7 import certs_only

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
_HASH = {"SHA-256": lambda b: hashlib.sha256(b).hexdigest(), "MD5": lambda b: hashlib.md5(b).hexdigest()}


@dataclass
class ShapesConfig:
    user: str = "digest-user"
    password: str = "digest-pw"
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    realm: str = "shapes"
    stale_first: bool = False
    protect_cacerts: bool = False  # /cacerts behind Digest too (to see that bootstrap never answers)
    authorizations: list[str] = field(default_factory=list)  # every Authorization header received
    seen: list[dict[str, str]] = field(default_factory=list)  # verified Digest answers
    bodies: list[bytes] = field(default_factory=list)
    csrattrs_body: bytes | None = None  # None: 204; else sent as-is in a 200 application/csrattrs
    csrattrs_status: int = 200  # another status: sent with csrattrs_body as text/plain
    redirect_after_auth: str | None = None  # an origin: authenticated POSTs get a 307 there (same path)
    paths: list[str] = field(default_factory=list)  # every request path, in order


def _b64_wrapped(der: bytes) -> bytes:
    b = base64.b64encode(der)
    return b"\r\n".join(b[i:i + 64] for i in range(0, len(b), 64)) + b"\r\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.close_connection = True  # libest closes after any error, without saying so
        self.end_headers()
        self.wfile.write(body)

    def _challenge(self, stale: bool = False) -> None:
        cfg: ShapesConfig = self.server.cfg
        nonce = secrets.token_urlsafe(16)
        self.server.nonces.add(nonce)
        self.send_response(401)
        for alg in cfg.algorithms:
            self.send_header("WWW-Authenticate", f'Digest realm="{cfg.realm}", qop="auth", algorithm={alg}, '
                                                 f'nonce="{nonce}", opaque="op4que"' + (", stale=true" if stale else ""))
        self.send_header("Content-Length", "0")
        self.close_connection = True
        self.end_headers()

    def _authorized(self) -> bool:
        cfg: ShapesConfig = self.server.cfg
        header = self.headers.get("Authorization", "")
        if header:
            cfg.authorizations.append(header)
        if not header.startswith("Digest "):
            self._challenge()
            return False
        p = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(header)}
        alg = p.get("algorithm", "MD5")
        if p.get("nonce") not in self.server.nonces or alg not in cfg.algorithms or p.get("qop") != "auth" \
                or p.get("uri") != self.path or p.get("username") != cfg.user or p.get("opaque") != "op4que":
            self._send(401, b"bad digest parameters\n", "text/plain")
            return False
        h = _HASH[alg]
        ha1 = h(f"{cfg.user}:{cfg.realm}:{cfg.password}".encode())
        ha2 = h(f"{self.command}:{self.path}".encode())
        expect = h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}".encode())
        if p.get("response") != expect:
            self._send(401, b"wrong password\n", "text/plain")
            return False
        if cfg.stale_first and not self.server.staled:
            self.server.staled = True
            self.server.nonces.discard(p["nonce"])
            self._challenge(stale=True)
            return False
        cfg.seen.append(p)
        return True

    def do_GET(self) -> None:  # noqa: N802
        self.server.cfg.paths.append(self.path)
        if self.path.startswith("/moved/"):  # same origin (RFC 7030 §3.2.1)
            self._send(301, b"", None, {"Location": self.path[len("/moved"):]})
            return
        if self.path.startswith("/elsewhere/"):
            self._send(302, b"", None, {"Location": "https://est.example.net" + self.path[len("/elsewhere"):]})
            return
        if self.path.endswith("/cacerts") and self.server.cfg.protect_cacerts and not self._authorized():
            return
        if self.path.endswith("/cacerts"):
            # libest: application/pkcs7-mime without smime-type; wrapped base64, no CTE header.
            self._send(200, _b64_wrapped(certs_only([self.server.pki.sub, self.server.pki.root])), "application/pkcs7-mime")
        elif self.path.endswith("/csrattrs") and self.server.cfg.csrattrs_body is not None:
            st = self.server.cfg.csrattrs_status
            self._send(st, self.server.cfg.csrattrs_body, "application/csrattrs" if st == 200 else "text/plain")
        elif self.path.endswith("/csrattrs"):
            self._send(204, b"")
        else:
            self._send(404, b"not here\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        self.server.cfg.paths.append(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.cfg.bodies.append(body)
        if not self._authorized():
            return
        if self.server.cfg.redirect_after_auth:
            self._send(307, b"", None, {"Location": self.server.cfg.redirect_after_auth + self.path})
            return
        if not body.endswith(b"\n"):  # libest's server
            self._send(400, b"body without newline\n", "text/plain")
            return
        csr = x509.load_der_x509_csr(base64.b64decode(body))
        pki: Pki = self.server.pki
        if "/held/" in self.path and not self.server.held_once:
            self.server.held_once = True
            when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
            self._send(202, b"", None, {"Retry-After": when})
            return
        if self.path.endswith("/serverkeygen"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            cert = issue(pki.sub_key, pki.sub.subject, csr.subject.rfc4514_string()[3:] or "kg", key.public_key())
            pkcs1 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())
            b = "=_est part"
            out = (f"--{b}\nContent-Type: application/pkcs7-mime; smime-type=certs-only\n\n".encode()
                   + _b64_wrapped(certs_only([cert])).replace(b"\r\n", b"\n")
                   + f"--{b}\nContent-Type: application/pkcs8\n\n".encode()
                   + _b64_wrapped(pkcs1).replace(b"\r\n", b"\n") + f"--{b}--\n".encode())
            self._send(200, out, f'multipart/mixed; boundary="{b}"')
            return
        cn = csr.subject.rfc4514_string()[3:] or "device"
        cert = issue(pki.sub_key, pki.sub.subject, cn, csr.public_key())
        # The chain comes along, leaf last (some servers do this).
        self._send(200, _b64_wrapped(certs_only([pki.root, pki.sub, cert])),
                   "application/pkcs7-mime; smime-type=certs-only")


@dataclass
class ShapesServer:
    port: int
    cfg: ShapesConfig
    trust: Path

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"


@contextmanager
def shapes_server(pki: Pki, cfg: ShapesConfig | None = None, *, dns: tuple[str, ...] = ("localhost",),
                  ips: tuple[str, ...] = ("127.0.0.1",), ra: bool = False) -> Iterator[ShapesServer]:
    """Run the server on 127.0.0.1 in a thread; TLS 1.2 only, like libest."""
    cfg = cfg or ShapesConfig()
    tmp = Path(tempfile.mkdtemp(prefix="est-shapes-"))
    key, cert = pki.server(dns=dns, ips=ips, ra=ra)
    cp, kp = write_pair(tmp, "server", key, cert, (pki.sub,))
    (tmp / "trust.pem").write_bytes(pki.root.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cp), str(kp))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.pki, httpd.cfg, httpd.nonces = pki, cfg, set()  # type: ignore[attr-defined]
    httpd.staled = httpd.held_once = False  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield ShapesServer(httpd.server_address[1], cfg, tmp / "trust.pem")
    finally:
        httpd.shutdown()
        httpd.server_close()
