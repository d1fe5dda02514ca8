"""HTTP/1.1 framing on the TLS listener (server/h1.py), against a real
``estkit serve``: pipelined requests answered in order, ``Expect:
100-continue``, HTTP/1.0 keep-alive, HEAD, chunked bodies (well-formed and
not), the header size bound, Date and Server on every response."""

from __future__ import annotations

import base64
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from support import ServerProcess, basic, server

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

USER, PW = "h11", "h11-pw-4711"
WK = c.WELL_KNOWN

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server(tmp_path_factory.mktemp("h11") / "d", users={USER: PW}) as s:
        yield s


def _conn(srv: ServerProcess) -> ssl.SSLSocket:
    tcp = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return srv.ssl_context().wrap_socket(tcp, server_hostname="localhost")


def _responses(s: ssl.SSLSocket, n: int, *, head: bool = False) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Read ``n`` responses (status line, headers, body) off one connection."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            assert data, (out, buf)
            buf += data
        head_raw, _, buf = buf.partition(b"\r\n\r\n")
        status, *lines = head_raw.split(b"\r\n")
        headers = {k.decode().lower(): v.decode().strip() for k, _, v in (ln.partition(b":") for ln in lines)}
        size = 0 if head or status.split()[1] in (b"100", b"204") else int(headers["content-length"])
        while len(buf) < size:
            data = s.recv(65536)
            assert data
            buf += data
        out.append((status, headers, buf[:size]))
        buf = buf[size:]
    return out


def _post(body: bytes, *, extra: str = "", length: bool = True) -> bytes:
    framing = f"Content-Length: {len(body)}\r\n" if length else ""
    return (f"POST {WK}/simpleenroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: {c.CT_PKCS10}\r\n"
            f"Authorization: {basic(USER, PW)}\r\n{framing}{extra}\r\n").encode()


def _csr_b64(cn: str) -> bytes:
    return base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)) + b"\n"


def test_pipelined_requests_are_answered_in_order(srv: ServerProcess) -> None:
    body = _csr_b64("pipelined")
    get = f"GET {WK}/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    with _conn(srv) as s:
        s.sendall(get + _post(body) + body + f"GET {WK}/csrattrs HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        got = _responses(s, 3)
    assert [r[0].split()[1] for r in got] == [b"200"] * 3, [r[0] for r in got]
    assert [r[1]["content-type"].split(";")[0] for r in got] == [c.CT_PKCS7, c.CT_PKCS7, c.CT_CSRATTRS], got


def test_expect_100_continue(srv: ServerProcess) -> None:
    """RFC 9110 §10.1.1: a client that waits for 100 Continue before its body gets it."""
    body = _csr_b64("expect")
    with _conn(srv) as s:
        s.sendall(_post(body, extra="Expect: 100-continue\r\n"))
        interim = _responses(s, 1)[0]
        assert interim[0] == b"HTTP/1.1 100 Continue", interim
        s.sendall(body)
        final = _responses(s, 1)[0]
    assert final[0].startswith(b"HTTP/1.1 200 "), final


@pytest.mark.parametrize("chunks,status", [
    pytest.param(None, 200, id="ok/chunked"),
    pytest.param(b"zz\r\nabc\r\n0\r\n\r\n", 400, id="fail/bad-chunk-size"),
])
def test_chunked_body(srv: ServerProcess, chunks: bytes | None, status: int) -> None:
    body = _csr_b64("chunked")
    if chunks is None:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:])) + b"0\r\n\r\n"
    with _conn(srv) as s:
        s.sendall(_post(b"", extra="Transfer-Encoding: chunked\r\n", length=False) + chunks)
        got = _responses(s, 1)[0]
    assert got[0].split()[1] == str(status).encode(), got


def test_http10_keepalive_and_head(srv: ServerProcess) -> None:
    with _conn(srv) as s:
        s.sendall(f"GET {WK}/cacerts HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        first = _responses(s, 1)[0]
        assert first[0].startswith(b"HTTP/1.0 200 ") and first[1]["connection"] == "keep-alive", first
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = _responses(s, 1, head=True)[0]
    assert head[0].startswith(b"HTTP/1.1 200 ") and head[1]["content-length"] == "3", head


def test_every_response_has_date_and_server(srv: ServerProcess) -> None:
    with _conn(srv) as s:
        s.sendall(f"GET {WK}/cacerts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        got = _responses(s, 1)[0]
    assert got[1]["server"] == "estkit"
    # RFC 9110 §6.6.1: an origin server with a clock sends Date.
    sent = email.utils.parsedate_to_datetime(got[1]["date"]).timestamp()
    assert abs(sent - time.time()) < 5, got[1]["date"]
    assert got[1]["connection"] == "close"


def test_header_fields_bounded_in_all(srv: ServerProcess) -> None:
    """Each field under the 8,190-byte bound, but 100 of them: 431, one line, closed."""
    fields = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(100))
    with _conn(srv) as s:
        s.sendall(f"GET {WK}/cacerts HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n".encode())
        got = _responses(s, 1)[0]
        assert s.recv(100) == b""
    assert got[0].startswith(b"HTTP/1.1 431 ") and got[2] == b"request header too large\n", got


def test_many_pipelined_requests_all_answered(srv: ServerProcess) -> None:
    """More pipelined requests than are parsed ahead (reading pauses while the
    queue is full, and resumes as it drains): every one answered, in order."""
    n = 60
    with _conn(srv) as s:
        s.sendall(b"".join(f"GET {WK}/cacerts?n={i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode() for i in range(n)))
        got = _responses(s, n)
    assert all(r[0].startswith(b"HTTP/1.1 200 ") for r in got) and len(got) == n
