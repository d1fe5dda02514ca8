"""Helpers for the EST-coaps (RFC 9148) tests: a server with a UDP listener,
a manufacturer PKI for bootstrap, raw CoAP requests over estkit's DTLS client
(for answers the EstClient would turn into exceptions), and libcoap's client."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from client_pki import issue, make_pki, write_pair
from cryptography.hazmat.primitives.asymmetric import ec
from support import ServerProcess, server

from estkit.client.auth import ClientCertificate
from estkit.client.dtls import DtlsConnection

COAP_CLIENT = "coap-client-openssl"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    """A certificate and key as PEM files."""

    cert: Path
    key: Path

    @property
    def client_cert(self) -> ClientCertificate:
        return ClientCertificate(self.cert, self.key)


def manufacturer(directory: Path) -> tuple[Path, Device, Device, Device]:
    """(the manufacturer's root for bootstrap_trust, an IDevID sent with its
    intermediate, a certificate from a CA nobody trusts, an IDevID the root
    issued: libcoap's client sends its certificate without a chain)."""
    mfg = make_pki()
    key, cert = mfg.leaf("idevid")
    idevid = Device(*write_pair(directory, "idevid", key, cert, (mfg.sub,)))
    dkey = ec.generate_private_key(ec.SECP256R1())
    direct = Device(*write_pair(directory, "idevid-direct", dkey,
                                issue(mfg.root_key, mfg.root.subject, "idevid-direct", dkey.public_key())))
    root = directory / "mfg-root.pem"
    write_pair(directory, "mfg-root", mfg.root_key, mfg.root)
    other = make_pki()
    skey, scert = other.leaf("stranger")
    stranger = Device(*write_pair(directory, "stranger", skey, scert, (other.sub,)))
    return root, idevid, stranger, direct


@contextmanager
def coap_server(directory: Path, configure: Any = None, **kw: Any) -> Iterator[tuple[ServerProcess, int]]:
    """``estkit serve`` with ``server.coap_listen`` on a free UDP port."""
    port = free_udp_port()

    def conf(doc: dict[str, Any]) -> None:
        doc["server"]["coap_listen"] = f"127.0.0.1:{port}"
        if configure is not None:
            configure(doc)

    with server(directory, configure=conf, **kw) as srv:
        yield srv, port


def coaps_url(port: int, path: str = "") -> str:
    return f"coaps://localhost:{port}{path}"


class RawCoap:
    """One DTLS session to the server, for hand-made CoAP messages."""

    def __init__(self, srv: ServerProcess, port: int, device: Device | None = None) -> None:
        self.dtls = DtlsConnection("127.0.0.1", port, trust_pem=srv.ca_pem.read_text(), verify=True,
                                   client_cert=device.client_cert if device else None, timeout=10)
        self.dtls.handshake()
        self.mid = 100

    def __enter__(self) -> RawCoap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dtls.close()

    def message(self, code: Code, path: str, payload: bytes = b"", **opts: Any) -> Message:
        msg = Message(code=code, payload=payload, uri_path=tuple(p for p in path.split("/") if p))
        self.mid += 1
        msg.mtype, msg.mid, msg.token = Type.CON, self.mid, self.mid.to_bytes(2, "big")
        for name, value in opts.items():
            setattr(msg.opt, name, value)
        return msg

    def send_raw(self, data: bytes, wait: float = 5.0) -> Message | None:
        self.dtls.send(data)
        got = self.dtls.recv(wait)
        return Message.decode(got) if got is not None else None

    def request(self, msg: Message, wait: float = 10.0) -> Message:
        reply = self.send_raw(msg.encode(), wait)
        assert reply is not None, "no answer"
        assert reply.mid == msg.mid and reply.mtype == Type.ACK, reply
        return reply


def request_all(c: RawCoap, msg: Message) -> tuple[Message, bytes]:
    """A request and every Block2 block of its answer (RFC 7959 §2.4)."""
    r = c.request(msg)
    body = bytearray(r.payload)
    while r.opt.block2 is not None and r.opt.block2.more:
        nxt = c.message(msg.code, "/".join(msg.opt.uri_path))
        nxt.opt.block2 = type(r.opt.block2)(r.opt.block2.block_number + 1, False, r.opt.block2.size_exponent)
        r = c.request(nxt)
        body += r.payload
    return r, bytes(body)


def coap_client(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """libcoap's client (OpenSSL build); ``-B`` bounds its wait."""
    return subprocess.run([COAP_CLIENT, "-B", "10", *args], capture_output=True, timeout=timeout)
