"""The EST-coaps resources (RFC 9148 §4): routing, Content-Formats, and one
call into the CA per operation, through the same ``EstAuthority`` and
``Authenticator`` as HTTPS, so labels, policies, audit, metrics and errors
are the same.  Payloads are binary DER (RFC 9148 §4.3), not base64."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiocoap.numbers.codes import Code
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.identity import RequestContext
from estkit.ca.keygen import GeneratedKey, ServerKeyGen
from estkit.errors import (BadRequest, EstError, MethodNotAllowed, NotFound, Unauthorized,
                           UnsupportedMediaType)
from estkit.protocol import coaps as k
from estkit.protocol.pkcs7 import certs_only, parse_certs_only
from estkit.protocol.request import decode_pkcs10
from estkit.server.app import AccessInfo, EstServer
from estkit.server.auth import Presented
from estkit.server.coap.exchange import CoapReply, CoapRequest

__all__ = ["EstResources", "link_format"]

access = logging.getLogger("estkit.access")

WELL_KNOWN_CORE = (".well-known", "core")
EST_ROOT = (".well-known", "est")


def link_format(query: tuple[str, ...] = ()) -> bytes:
    """RFC 9148 §4.1 / RFC 6690: the EST resources with their ``rt`` and ``ct``,
    filtered by ``rt=...`` (a trailing ``*`` matches a prefix, RFC 6690 §4.1)."""
    links = []
    for op in k.COAP_OPS:
        cts = " ".join(str(ct) for ct in op.response_formats)
        attrs = {"rt": op.rt, "ct": cts}
        if not all(_matches(attrs, q) for q in query):
            continue
        ct = f'"{cts}"' if " " in cts else cts
        links.append(f'</{"/".join(EST_ROOT)}/{op.short}>;rt="{op.rt}";ct={ct}')
    return ",".join(links).encode()


def _matches(attrs: dict[str, str], q: str) -> bool:
    name, _, want = q.partition("=")
    if name not in attrs:
        return name == "href" or not want  # filters on attributes we do not have: ignored
    values = attrs[name].split(" ")
    if want.endswith("*"):
        return any(v.startswith(want[:-1]) for v in values)
    return want in values


class EstResources:
    """``render`` for server/coap/exchange.py."""

    def __init__(self, server: EstServer, keygen: ServerKeyGen | None) -> None:
        self.server = server
        self.keygen = keygen

    async def render(self, req: CoapRequest) -> CoapReply:
        """Route, answer, log and count one complete request."""
        if req.path == WELL_KNOWN_CORE:
            if req.method != Code.GET:
                return CoapReply.error(MethodNotAllowed("/.well-known/core takes GET", allowed=("GET",)))
            return CoapReply(Code.CONTENT, link_format(req.query), k.CF_LINK_FORMAT)
        start = time.perf_counter()
        info = AccessInfo()
        try:
            reply = await self._operation(req, info)
            status = 200
        except EstError as exc:
            reply, status = CoapReply.error(exc), exc.status
        elapsed = time.perf_counter() - start
        if self.server.access_log:
            access.info("coaps %s %s %s %s %s %.1fms", req.session.peer_str, info.identity, info.op,
                        info.label or "-", reply.code.dotted, elapsed * 1000)
        if self.server.on_request is not None and info.op != "-":
            self.server.on_request(info.op, info.label, status, elapsed)
        return reply

    async def _operation(self, req: CoapRequest, info: AccessInfo) -> CoapReply:
        if req.path[:2] != EST_ROOT or len(req.path) not in (3, 4):
            raise NotFound("no such EST-coaps resource: /.well-known/est/[label/]crts|sen|sren|skg|skc|att")
        label = req.path[2] if len(req.path) == 4 else None
        if label is not None and (not label or len(label) > 64 or not label.isprintable()):
            raise NotFound("unknown CA label")
        op = k.OP_BY_SHORT.get(req.path[-1])
        if op is None:
            raise NotFound(f"unknown EST-coaps resource {req.path[-1][:32]!r}")
        info.op, info.label = op.operation, label or ""
        self.server.ca.profile(label)  # 4.04 for an unknown label
        if req.method != op.method:
            raise MethodNotAllowed(f"{op.short} takes {op.method.name}, not {req.method.name}",
                                   allowed=(op.method.name,))
        if req.accept is not None and req.accept not in op.response_formats:
            # RFC 7252 §5.10.4: 4.06 when the Accept cannot be honoured.
            raise EstError(f"{op.short} answers in Content-Format "
                           f"{' or '.join(map(str, op.response_formats))}, not {req.accept}", status=406)
        if op.request_format is not None:
            if req.content_format != op.request_format:
                raise UnsupportedMediaType(f"{op.short} takes Content-Format {op.request_format} "
                                           f"(application/pkcs10, DER), not {req.content_format}")
            if not req.payload:
                raise BadRequest(f"{op.short} needs a DER PKCS#10 request as payload")
        single = req.accept == k.CF_PKIX_CERT
        if op.short == "crts":
            der = self.server.ca.cacerts(label)
            if single:
                # RFC 9148 §4.4: 287 carries one certificate, the trust anchor (the root).
                chain = parse_certs_only(der)
                root = next((c for c in chain if c.issuer == c.subject), chain[-1])
                return CoapReply(op.success, root.public_bytes(Encoding.DER), k.CF_PKIX_CERT)
            return CoapReply(op.success, der, k.CF_CERTS_ONLY)
        if op.short == "att":
            # RFC 7030 §4.5.2's 204 has no CoAP GET equivalent: 2.05 with an empty payload.
            return CoapReply(op.success, self.server.ca.csrattrs(label) or b"", k.CF_CSRATTRS)
        if op.short in ("sen", "sren"):
            enroll = self.server.ca.simpleenroll if op.short == "sen" else self.server.ca.simplereenroll

            def issue(der: bytes, ctx: RequestContext) -> x509.Certificate:
                # Decoded once the client is authenticated, as on HTTPS (server/handlers.py).
                return enroll(label, decode_pkcs10(der), ctx)
            cert = await self._as_client(req, label, info, issue, req.payload)
            if single:
                return CoapReply(op.success, cert.public_bytes(Encoding.DER), k.CF_PKIX_CERT)
            return CoapReply(op.success, certs_only([cert]), k.CF_CERTS_ONLY)
        if self.keygen is None:
            raise NotFound("server-side key generation is not served here")
        # RFC 9148 §4.8: skc always encrypts the key (to the DTLS client certificate);
        # skg does when the CSR or the label asks for it (RFC 7030 §4.4.1.2).
        keygen, encrypt = self.keygen, op.short == "skc"

        def generate(der: bytes, ctx: RequestContext) -> GeneratedKey:
            return keygen.serverkeygen(label, decode_pkcs10(der), ctx, encrypt=encrypt)
        result: GeneratedKey = await self._as_client(req, label, info, generate, req.payload)
        # [key ct, key, cert ct, cert]: the key 280 (CMS-encrypted) or 284 (PKCS#8).
        key_ct = k.CF_SERVER_KEY if result.encrypted else k.CF_PKCS8
        body = k.encode_multipart_core([(key_ct, result.key_der), (k.CF_CERTS_ONLY, certs_only([result.certificate]))])
        return CoapReply(op.success, body, k.CF_MULTIPART_CORE)

    async def _as_client(self, req: CoapRequest, label: str | None, info: AccessInfo,
                         fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, ctx)`` in a worker thread, as the DTLS client certificate
        (RFC 9148 §3: EST-coaps authenticates the client in the handshake)."""
        s = req.session
        if s.cert_der is None:
            raise Unauthorized("authentication required: a DTLS client certificate (RFC 9148 §3)")
        presented = Presented(peer=s.peer_str, label=label, tls=True, tls_version="DTLSv1.2",
                              tls_unique=s.tls_unique, cert_der=s.cert_der)

        def job() -> Any:
            ctx = self.server.auth.context_blocking(presented, require=True)
            info.identity = str(ctx.identity)
            return fn(*args, ctx)

        return await self.server.run_ca(job)
