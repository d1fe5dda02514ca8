"""A fake CA that fails on purpose (DESIGN habit 6, globalsign/est's
internal/mockca): the CSR's CN picks the answer, so every error path of the
server can be reached from a real request over real TLS.  It issues real
certificates otherwise, from a throwaway CA.

Triggers (the CN of the CSR sent to simpleenroll or simplereenroll):
``forbidden``, ``pending``, ``unavailable``, ``toomany``, ``notfound``,
``badrequest``, ``crash`` (an exception that is not an EstError, with a
secret in its message).  Label ``nolabel`` does not exist."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from estkit.ca.create import ca_name, make_ca_certificate, make_tls_certificate
from estkit.ca.identity import Identity, IdentityKind, RequestContext
from estkit.ca.ports import AuditEvent, UserRecord
from estkit.ca.profile import Profile
from estkit.ca.signer import KeySigner
from estkit.errors import (BadRequest, Forbidden, NotFound, Pending, ServiceUnavailable, TooManyRequests,
                           Unauthorized)
from estkit.protocol.request import CertRequest
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import certs_only
from estkit.server.app import EstServer
from estkit.server.connections import Limits
from estkit.server.handlers import register_core
from estkit.server.run import bind
from estkit.server.tls import server_context
from estkit.server.transport import EstSite

SECRET = "s3cret-in-a-stack-trace"
USER, PASSWORD = "fake-user", "fake-pw"


class FakeCA:
    """An EstAuthority (estkit.server.ports) that answers as its triggers say."""

    def __init__(self) -> None:
        self.key = generate_key("ec:P-256")
        self.cert = make_ca_certificate(ca_name("Fake CA"), self.key.public_key(), KeySigner(self.key))
        self.events: list[AuditEvent] = []

    def profile(self, label: str | None) -> Profile:
        if label == "nolabel":
            raise NotFound(f"unknown CA label {label!r}")
        return Profile(label=label or "default", ca="default")

    def cacerts(self, label: str | None) -> bytes:
        self.profile(label)
        return certs_only([self.cert])

    def csrattrs(self, label: str | None) -> bytes | None:
        self.profile(label)
        return None

    def simpleenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        info = request
        cns = [str(a.value) for a in info.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        trigger = cns[0] if cns else ""
        if trigger == "forbidden":
            raise Forbidden("not authorized: rule 'fake': the fake CA refuses this")
        if trigger == "pending":
            raise Pending("request 7 is waiting for approval", retry_after=7)
        if trigger == "unavailable":
            raise ServiceUnavailable("the store is down", retry_after=3)
        if trigger == "toomany":
            raise TooManyRequests("slow down: rule 'fake'", retry_after=9)
        if trigger == "notfound":
            raise NotFound("no such thing")
        if trigger == "badrequest":
            raise BadRequest("the CSR is fine but the fake CA says no")
        if trigger == "crash":
            raise RuntimeError(f"database password is {SECRET}")
        now = datetime.now(UTC)
        builder = (x509.CertificateBuilder().subject_name(info.subject).issuer_name(self.cert.subject)
                   .public_key(info.public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1)))
        return KeySigner(self.key).sign_certificate(builder)

    def simplereenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        return self.simpleenroll(label, request, ctx)

    def identify_certificate(self, der: bytes) -> Identity:
        cert = x509.load_der_x509_certificate(der)
        return Identity(IdentityKind.CERT, cert.subject.rfc4514_string(), certificate=cert, label="default")

    def authenticate_user(self, name: str, password: str) -> Identity:
        if (name, password) != (USER, PASSWORD):
            raise Unauthorized("wrong user name or password")
        return Identity(IdentityKind.USER, name)

    def recently_verified(self, name: str, password: str) -> bool:
        return False

    def user_identity(self, user: UserRecord) -> Identity:
        return Identity(IdentityKind.USER, user.name)

    def find_user(self, name: str) -> UserRecord | None:
        return None

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@contextmanager
def fake_server(tmp: Path) -> Iterator[tuple[int, ssl.SSLContext, FakeCA]]:
    """The real EstServer and TLS transport around a FakeCA, on 127.0.0.1, in a
    thread of this process; yields the port, a client context that trusts it, the CA."""
    ca = FakeCA()
    tls_key = generate_key("ec:P-256")
    tls = make_tls_certificate(tls_key, ca.cert, KeySigner(ca.key), ["localhost", "127.0.0.1"])
    (tmp / "tls.pem").write_bytes(tls.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(tls_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (tmp / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    ctx = server_context(tmp / "tls.pem", tmp / "tls.key", [ca.cert])
    server = EstServer(ca)
    register_core(server)
    sock = bind("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    started, stop = threading.Event(), asyncio.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = EstSite(server, sock, ssl_context=ctx, limits=Limits())
        await site.start()
        started.set()
        await stop.wait()
        await site.stop()
        await runner.cleanup()

    def main() -> None:
        try:
            loop.run_until_complete(run())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(20) and not failure, failure
    try:
        yield sock.getsockname()[1], ssl.create_default_context(cafile=str(tmp / "ca.pem")), ca
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        sock.close()
