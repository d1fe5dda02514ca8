"""EST-coaps (RFC 9148) for the client: ``coaps://host[:port]`` server URLs.

:class:`CoapTransport` has the HTTPS transport's ``exchange`` and answers in
its terms, so every ``EstClient`` operation works unchanged: the short
resource names and Content-Formats go out (RFC 9148 §4.1), binary DER
payloads are handed back in the base64 framing the client reads, a 5.03 with
Max-Age (manual approval, RFC 9148 §5) is a 202 with Retry-After, an error
code is its HTTP status with the diagnostic payload as reason, and a
multipart-core key answer (§4.8) is the RFC 7030 §4.4.2 multipart.
Confirmable requests are retransmitted (RFC 7252 §4.2) and large payloads go
block-wise both ways (RFC 7959).  aiocoap encodes the messages.
"""

from __future__ import annotations

import random
import secrets
import time

from aiocoap import Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption
from cryptography import x509

from estkit.client.auth import ClientCertificate, PasswordAuth
from estkit.client.dtls import DtlsConnection
from estkit.client.errors import NetworkError, ProtocolError, TrustError
from estkit.client.transport import BodyFor, Endpoint, Response, _is_ra, name_matches
from estkit.errors import BadRequest
from estkit.protocol import coaps as k
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, encode_b64
from estkit.protocol.multipart import build_serverkeygen
from estkit.protocol.pkcs7 import certs_only

__all__ = ["CoapTransport"]

# RFC 7252 §4.8: ACK_TIMEOUT, ACK_RANDOM_FACTOR, MAX_RETRANSMIT.
ACK_TIMEOUT, ACK_RANDOM_FACTOR, MAX_RETRANSMIT = 2.0, 1.5, 4
# RFC 7959 §2.2: 2**(SZX+4) bytes; 6 = 1024, which fits a 1280-byte MTU with DTLS and CoAP headers.
BLOCK_SZX = 6
_OP_TO_SHORT = {"cacerts": "crts", "csrattrs": "att", "simpleenroll": "sen", "simplereenroll": "sren",
                "serverkeygen": "skg"}
_MAX_RESPONSE = 1 << 20


class CoapTransport:
    """``Transport``'s interface over CoAP and DTLS, one DTLS session per operation."""

    def __init__(self, endpoint: Endpoint, *, trust_pem: str | None, client_cert: ClientCertificate | None = None,
                 timeout: float = 30.0, block_szx: int = BLOCK_SZX) -> None:
        self.endpoint = endpoint
        self.trust_pem = trust_pem
        self.client_cert = client_cert
        self.timeout = timeout
        self.block_szx = block_szx
        self._mid = random.randrange(0x10000)

    def exchange(self, method: str, op: str, *, body_for: BodyFor | None = None, content_type: str | None = None,
                 auth: PasswordAuth | None = None, verify: bool = True, tls12: bool = False) -> Response:
        """One EST operation over a new DTLS session; the body is built for its tls-unique."""
        if auth is not None:
            raise ValueError("EST-coaps authenticates with a client certificate only (RFC 9148 §3), not a password")
        short = _OP_TO_SHORT.get(op)
        if short is None:
            raise ValueError(f"{op} has no EST-coaps resource (RFC 9148 §4.1)")
        path = (*self.endpoint.prefix.strip("/").split("/"), *((self.endpoint.label,) if self.endpoint.label else ()),
                short)
        with DtlsConnection(self.endpoint.host, self.endpoint.port, trust_pem=self.trust_pem, verify=verify,
                            client_cert=self.client_cert if verify else None, timeout=self.timeout) as dtls:
            dtls.handshake()
            if verify:
                self._check_name(dtls.peer_certificate)
            payload = b""
            if body_for is not None:
                try:
                    payload = decode_b64(body_for(dtls.tls_unique), "request")  # EST-coaps carries DER
                except BadRequest as exc:
                    raise ValueError(exc.reason) from None
            code = Code.GET if method == "GET" else Code.POST
            fmt = k.CF_PKCS10 if content_type == c.CT_PKCS10 else None
            reply, body = self._request(dtls, code, path, payload, fmt)
        return self._as_http(op, reply, body)

    def _check_name(self, cert: x509.Certificate | None) -> None:
        host = self.endpoint.host
        if cert is None or not (name_matches(cert, host) or _is_ra(cert)):
            raise TrustError(f"the server's certificate does not name {host} and is not an EST RA "
                             "certificate (id-kp-cmcRA), RFC 7030 §3.6.1")

    # -- CoAP ------------------------------------------------------------------------------

    def _request(self, dtls: DtlsConnection, code: Code, path: tuple[str, ...], payload: bytes,
                 fmt: int | None) -> tuple[Message, bytes]:
        """Send (Block1 when large), then collect every Block2 block of the answer."""
        size = 1 << (self.block_szx + 4)
        token = secrets.token_bytes(4)
        num = 0
        while True:  # RFC 7959 §2.5: Block1, each block acknowledged by 2.31 Continue
            msg = self._message(code, path, token)
            if fmt is not None:
                msg.opt.content_format = fmt
            chunk = payload[num * size:(num + 1) * size]
            more = len(payload) > (num + 1) * size
            if len(payload) > size:
                msg.opt.block1 = BlockOption.BlockwiseTuple(num, more, self.block_szx)
                if num == 0:
                    msg.opt.size1 = len(payload)  # RFC 7959 §4
            msg.payload = chunk
            reply = self._confirmable(dtls, msg)
            if more and reply.code == Code.CONTINUE:
                got = reply.opt.block1
                if got is None or got.block_number != num:
                    raise ProtocolError("EST-coaps: a 2.31 Continue for another block")
                num += 1
                continue
            break
        body = bytearray(reply.payload)
        block2 = reply.opt.block2
        while block2 is not None and block2.more and reply.code.is_successful():
            if len(body) > _MAX_RESPONSE:
                raise ProtocolError("EST-coaps: response over 1 MiB")
            nxt = self._message(code, path, token)
            nxt.opt.block2 = BlockOption.BlockwiseTuple(block2.block_number + 1, False, block2.size_exponent)
            reply = self._confirmable(dtls, nxt)
            block2 = reply.opt.block2
            if block2 is None or block2.start != len(body):
                raise ProtocolError(f"EST-coaps: Block2 answer out of order ({reply.code.dotted})")
            body += reply.payload
        return reply, bytes(body)

    def _message(self, code: Code, path: tuple[str, ...], token: bytes) -> Message:
        msg = Message(code=code, uri_path=path)
        self._mid = (self._mid + 1) & 0xFFFF
        msg.mtype, msg.mid, msg.token = Type.CON, self._mid, token
        return msg

    def _confirmable(self, dtls: DtlsConnection, msg: Message) -> Message:
        """RFC 7252 §4.2: send, retransmit with exponential back-off until the
        answer (piggybacked on the ACK, or separate after an empty ACK)."""
        raw = msg.encode()
        wait = ACK_TIMEOUT * random.uniform(1, ACK_RANDOM_FACTOR)
        deadline = time.monotonic() + self.timeout
        acked = False
        for attempt in range(MAX_RETRANSMIT + 1):
            if not acked:
                dtls.send(raw)
            until = time.monotonic() + (wait if not acked else self.timeout)
            while (left := min(until, deadline) - time.monotonic()) > 0:
                data = dtls.recv(left)
                if data is None:
                    break
                try:
                    got = Message.decode(data)
                except UnparsableMessage:
                    continue
                if got.mtype == Type.RST and got.mid == msg.mid:
                    raise ProtocolError("EST-coaps: the server reset the request (RFC 7252 §4.2)")
                if got.mtype == Type.ACK and got.mid == msg.mid and got.code == Code.EMPTY:
                    acked = True  # RFC 7252 §5.2.2: a separate response follows
                    until = deadline
                    continue
                if got.token != msg.token or not got.code.is_response():
                    continue
                if got.mtype == Type.CON:  # a separate confirmable response is acknowledged
                    ack = Message(code=Code.EMPTY)
                    ack.mtype, ack.mid, ack.token = Type.ACK, got.mid, b""
                    dtls.send(ack.encode())
                if got.mtype == Type.ACK and got.mid != msg.mid:
                    continue
                return got
            if time.monotonic() >= deadline:
                break
            wait *= 2
        raise NetworkError(f"EST-coaps: no answer from {self.endpoint.host}:{self.endpoint.port} "
                           f"within {self.timeout:g}s")

    # -- back into the HTTPS client's terms ------------------------------------------------

    def _as_http(self, op: str, reply: Message, body: bytes) -> Response:
        code = reply.code
        if code.is_successful():
            fmt = reply.opt.content_format
            fmt = int(fmt) if fmt is not None else None
            if op == c.OP_SERVERKEYGEN:
                return self._keygen(body, fmt)
            if not body:
                return Response(204, (), b"", "DTLSv1.2")
            if fmt == k.CF_PKIX_CERT:  # one certificate: as a certs-only answer
                body = certs_only([x509.load_der_x509_certificate(body)])
            ctype = c.CT_CSRATTRS if op == c.OP_CSRATTRS else c.CT_CERTS_ONLY
            return Response(200, (("Content-Type", ctype),), encode_b64(body), "DTLSv1.2")
        text = body.decode("utf-8", "replace").strip() or code.dotted
        max_age = reply.opt.max_age
        if code == Code.SERVICE_UNAVAILABLE and op in _OP_TO_SHORT and max_age is not None:
            # RFC 9148 §5: 5.03 with Max-Age is EST's 202 with Retry-After (§4.2.3).
            return Response(202, ((c.HDR_RETRY_AFTER, str(int(max_age))),), text.encode(), "DTLSv1.2")
        headers = ((c.HDR_RETRY_AFTER, str(int(max_age))),) if max_age is not None and code.class_ == 5 else ()
        return Response(k.status_for_code(code), (("Content-Type", c.CT_TEXT), *headers), text.encode(), "DTLSv1.2")

    @staticmethod
    def _keygen(body: bytes, fmt: int | None) -> Response:
        if fmt != k.CF_MULTIPART_CORE:
            raise ProtocolError(f"EST-coaps skg: Content-Format {fmt}, not multipart-core (62, RFC 9148 §4.8)")
        try:
            parts = dict(k.decode_multipart_core(body))
        except ValueError as exc:
            raise ProtocolError(f"EST-coaps skg: {exc}") from None
        key_ct = k.CF_SERVER_KEY if k.CF_SERVER_KEY in parts else k.CF_PKCS8
        if key_ct not in parts or k.CF_CERTS_ONLY not in parts and k.CF_PKIX_CERT not in parts:
            raise ProtocolError("EST-coaps skg: the answer needs a key part (284 or 280) and a certificate part")
        cert = parts.get(k.CF_CERTS_ONLY)
        if cert is None:
            cert = certs_only([x509.load_der_x509_certificate(parts[k.CF_PKIX_CERT])])
        mp, ctype = build_serverkeygen(parts[key_ct], cert, encrypted=key_ct == k.CF_SERVER_KEY)
        return Response(200, (("Content-Type", ctype),), mp, "DTLSv1.2")
