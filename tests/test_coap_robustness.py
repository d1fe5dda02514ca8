"""EST-coaps against hostile or broken peers, as tests/test_robustness.py does
for HTTPS: datagrams that are not DTLS, malformed CoAP inside DTLS, bad
options, oversized and out-of-order blocks, spoofed ClientHellos, half-open
handshakes and the session limits.  After each: no crash, no stuck state,
the server still enrolls."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption
from coap_support import Device, RawCoap, coap_server, coaps_url, manufacturer
from OpenSSL import SSL
from support import ServerProcess, free_port

from estkit.client import EstClient
from estkit.client.errors import NetworkError
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

EST = "/.well-known/est"
MAX_BODY = 2048
PER_ADDRESS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, Device]]:
    d = tmp_path_factory.mktemp("coap-rob")
    root, idevid, _stranger, _direct = manufacturer(d)
    metrics_port = free_port()

    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["bootstrap_trust"] = [str(root)]
        doc["server"]["max_body_bytes"] = MAX_BODY
        doc["server"]["handshake_timeout_seconds"] = 1
        doc["server"]["coap_idle_timeout_seconds"] = 1
        doc["server"]["coap_max_sessions_per_address"] = PER_ADDRESS
        doc["server"]["coap_max_sessions"] = PER_ADDRESS + 1
        doc["server"]["metrics_listen"] = f"127.0.0.1:{metrics_port}"

    with coap_server(d / "data", configure) as (srv, port):
        yield srv, port, idevid
        log = srv.log()
        assert "Traceback" not in log and "internal error" not in log, log


def _still_enrolls(env: Any) -> None:
    srv, port, idevid = env
    assert srv.proc is not None and srv.proc.poll() is None
    _key, cert = EstClient(coaps_url(port), trust=srv.ca_pem, client_cert=idevid.client_cert,
                           timeout=10).enroll(cn="still-here")
    assert cert.subject.rfc4514_string() == "CN=still-here"


def _csr(cn: str = "rob-dev") -> bytes:
    return build_csr(generate_key("ec:P-256"), cn=cn)


# -- not DTLS at all --------------------------------------------------------------------------------------


def test_coap_requests_are_counted_in_the_metrics(env: Any) -> None:
    """The same metrics as HTTPS (EstServer.on_request): operation, label, status."""
    _still_enrolls(env)
    port = int(env[0].config()["server"]["metrics_listen"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = re.search(r'^estkit_requests_total\{label="",operation="simpleenroll",status="200"\} (\S+)$', text, re.M)
    assert line is not None and float(line.group(1)) >= 1, text[:2000]


def test_garbage_datagrams_get_no_answer(env: Any) -> None:
    port = env[1]
    junk = [b"\x00", b"\x16", b"\x16\xfe\xfd" + b"\x00" * 10, b"\x16\xfe\xfd\x00\x00" + os.urandom(60),
            b"\x17\xfe\xfd\x00\x01" + os.urandom(40), os.urandom(1200), b"GET / HTTP/1.1\r\n\r\n"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for data in junk:
            s.sendto(data, ("127.0.0.1", port))
        with pytest.raises(TimeoutError):
            s.recv(65536)  # nothing to answer: no state, no amplification
    _still_enrolls(env)


# -- malformed CoAP inside a good DTLS session -------------------------------------------------------------

MALFORMED = [
    # id, bytes, expected answer: None (dropped) or the message type
    ("fail/truncated-header", b"\x40\x01\x00", None),
    ("fail/version-2", b"\x80\x01\x00\x06", None),
    ("fail/payload-marker-without-payload", b"\x40\x01\x00\x05\xff", Type.RST),
    ("fail/token-length-9", b"\x49\x01\x00\x07" + b"t" * 9, Type.RST),
    ("fail/option-delta-15", b"\x40\x01\x00\x08\xf1\x00", Type.RST),
    ("fail/option-longer-than-message", b"\x40\x01\x00\x09\xb5ab", Type.RST),
    ("fail/response-code-from-client", b"\x40\x45\x00\x0a", Type.RST),
    ("fail/empty-con-ping", b"\x40\x00\x00\x0b", Type.RST),
    ("fail/ack-from-client", b"\x60\x00\x00\x0c", None),
]


@pytest.mark.parametrize("data,answer", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_coap_in_dtls(env: Any, data: bytes, answer: Type | None) -> None:
    """RFC 7252 §4.2-4.3: a confirmable message that cannot be processed is
    Reset; anything else is dropped.  The session goes on working."""
    srv, port, idevid = env
    with RawCoap(srv, port, idevid) as c:
        reply = c.send_raw(data, wait=0.5 if answer is None else 5)
        if answer is None:
            assert reply is None, reply
        else:
            assert reply is not None and reply.mtype == answer and reply.mid == int.from_bytes(data[2:4], "big")
        ok = c.request(c.message(Code.GET, f"{EST}/crts"))
        assert ok.code == Code.CONTENT


BAD_OPTIONS = [
    ("fail/unknown-critical-option", {"opt_2049": b"x"}, Code.BAD_OPTION, "critical option 2049"),
    ("fail/block2-bert", {"block2": BlockOption.BlockwiseTuple(0, False, 7)}, Code.BAD_REQUEST, "BERT"),
    ("fail/block2-follow-up-never-started", {"block2": BlockOption.BlockwiseTuple(3, False, 2)},
     Code.REQUEST_ENTITY_INCOMPLETE, "block 0 first"),
]


@pytest.mark.parametrize("opts,want,text", [b[1:] for b in BAD_OPTIONS], ids=[b[0] for b in BAD_OPTIONS])
def test_bad_options(env: Any, opts: dict[str, Any], want: Code, text: str) -> None:
    srv, port, idevid = env
    with RawCoap(srv, port, idevid) as c:
        msg = c.message(Code.POST, f"{EST}/sen", _csr(), content_format=286)
        for name, value in opts.items():
            if name.startswith("opt_"):
                from aiocoap.optiontypes import OpaqueOption
                msg.opt.add_option(OpaqueOption(int(name[4:]), value))
            else:
                setattr(msg.opt, name, value)
        r = c.request(msg)
        assert r.code == want and text in r.payload.decode(), (r, r.payload)
    _still_enrolls(env)


def _block1(c: RawCoap, num: int, more: bool, payload: bytes, szx: int = 2, **opts: Any) -> Any:
    return c.request(c.message(Code.POST, f"{EST}/sen", payload, content_format=286,
                               block1=BlockOption.BlockwiseTuple(num, more, szx), **opts))


def test_oversized_bodies_are_4_13(env: Any) -> None:
    """RFC 7959 §2.9.3 / §4: Size1 over the limit, blocks adding up over it, one
    plain payload over it: 4.13 (with Size1 telling the limit); nothing kept."""
    srv, port, idevid = env
    with RawCoap(srv, port, idevid) as c:
        r = _block1(c, 0, True, b"\x30" * 64, size1=MAX_BODY + 1)
        assert r.code == Code.REQUEST_ENTITY_TOO_LARGE and r.opt.size1 == MAX_BODY
        for n in range(MAX_BODY // 1024):
            assert _block1(c, n, True, b"\x30" * 1024, szx=6).code == Code.CONTINUE
        r = _block1(c, MAX_BODY // 1024, True, b"\x30" * 1024, szx=6)
        assert r.code == Code.REQUEST_ENTITY_TOO_LARGE and r.opt.size1 == MAX_BODY
        r = c.request(c.message(Code.POST, f"{EST}/sen", b"\x30" * (MAX_BODY + 1), content_format=286))
        assert r.code == Code.REQUEST_ENTITY_TOO_LARGE
    _still_enrolls(env)


@pytest.mark.parametrize("steps", [
    pytest.param([(2, True)], id="fail/starts-at-block-2"),
    pytest.param([(0, True), (2, True)], id="fail/skips-block-1"),
    pytest.param([(0, True), (1, True), (1, True)], id="fail/repeats-block-1-as-new-message"),
])
def test_out_of_order_block1_then_a_clean_restart(env: Any, steps: list[tuple[int, bool]]) -> None:
    """RFC 7959 §2.9.2: 4.08 Request Entity Incomplete; starting again at block 0 works."""
    srv, port, idevid = env
    csr = _csr("order-dev")
    with RawCoap(srv, port, idevid) as c:
        for i, (num, more) in enumerate(steps):
            r = _block1(c, num, more, csr[num * 64:(num + 1) * 64])
            if i < len(steps) - 1:
                assert r.code == Code.CONTINUE
        assert r.code == Code.REQUEST_ENTITY_INCOMPLETE and b"out of order" in r.payload
        blocks = [csr[i:i + 64] for i in range(0, len(csr), 64)]
        for n, part in enumerate(blocks):
            r = _block1(c, n, n < len(blocks) - 1, part)
        assert r.code == Code.CHANGED, r.payload


def test_short_middle_block_is_4_00(env: Any) -> None:
    srv, port, idevid = env
    with RawCoap(srv, port, idevid) as c:
        r = _block1(c, 0, True, b"\x30" * 10)
        assert r.code == Code.BAD_REQUEST and b"RFC 7959" in r.payload


# -- DTLS state: cookies, half-open handshakes, limits, idle sessions ----------------------------------------


def _half_open(port: int, source: str = "127.0.0.1") -> socket.socket | None:
    """A handshake that passes the cookie exchange and then stops (the server
    holds state for it); None when the server does not go on (a bound)."""
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_ciphertext_mtu(1280)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(1)
    for step in range(2):  # ClientHello, HelloVerifyRequest, ClientHello with the cookie, ServerHello...
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        s.send(conn.bio_read(65536))
        try:
            conn.bio_write(s.recv(65536))
        except TimeoutError:
            assert step == 1, "no HelloVerifyRequest"
            s.close()
            return None
    return s


def test_spoofed_client_hellos_hold_no_state(env: Any) -> None:
    """RFC 6347 §4.2.1: a ClientHello without the cookie gets a HelloVerifyRequest
    and nothing is kept: many of them do not use up the per-address bound."""
    port = env[1]
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    for _ in range(PER_ADDRESS * 5):
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        conn.set_ciphertext_mtu(1280)
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(conn.bio_read(65536), ("127.0.0.1", port))
            hvr = s.recv(65536)
        assert hvr[0] == 22 and hvr[13] == 3  # a handshake record holding HelloVerifyRequest (type 3)
    _still_enrolls(env)


def test_session_bounds_handshake_and_idle_timeouts(env: Any) -> None:
    """server.coap_max_sessions_per_address and server.coap_max_sessions hold;
    half-open handshakes end after server.handshake_timeout_seconds and idle
    sessions after server.coap_idle_timeout_seconds, and then the addresses
    are served again."""
    srv, port, idevid = env
    idle = RawCoap(srv, port, idevid)
    held = [_half_open(port) for _ in range(PER_ADDRESS - 1)]
    try:
        assert all(held)
        refused = EstClient(coaps_url(port), trust=srv.ca_pem, timeout=1.0)
        with pytest.raises(NetworkError, match="timed out"):
            refused.cacerts()  # the address's bound
        other = _half_open(port, "127.0.0.2")  # another address: its first session fits in all
        held.append(other)
        assert other is not None and _half_open(port, "127.0.0.2") is None  # the bound in all
        time.sleep(2.2)  # both timeouts (1 s) and the once-a-second sweep
        with pytest.raises(NetworkError, match="closed"):
            idle.dtls.recv(1.0)  # close_notify of the idle session
    finally:
        idle.dtls.sock.close()
        for s in held:
            if s is not None:
                s.close()
    _still_enrolls(env)


def test_non_confirmable_request_gets_a_non_answer(env: Any) -> None:
    """RFC 7252 §5.2.3: a NON request is answered with a NON carrying its token."""
    srv, port, _ = env
    with RawCoap(srv, port) as c:
        msg = c.message(Code.GET, f"{EST}/crts")
        msg.mtype = Type.NON
        r = c.send_raw(msg.encode())
    assert r is not None and r.mtype == Type.NON and r.token == msg.token and r.code == Code.CONTENT


def test_access_log_names_who_asked_as_https_does(env: Any) -> None:
    """One line per EST-coaps request, fields as on HTTPS (server/app.py AccessInfo): an
    anonymous request (enroll() first reads /csrattrs, `att`) is `-`, the enrollment names
    the certificate's identity."""
    srv = env[0]
    before = len(srv.log())
    _still_enrolls(env)
    lines = [ln.split(" coaps ", 1)[1].split() for ln in srv.log()[before:].splitlines() if " coaps " in ln]
    by_op = {fields[2]: fields for fields in lines}  # PEER IDENTITY OPERATION LABEL CODE TIME
    assert by_op["csrattrs"][1] == "-", lines
    assert by_op["simpleenroll"][1] not in ("-", "anonymous") and by_op["simpleenroll"][4] == "2.04", lines
