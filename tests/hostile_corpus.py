"""A seeded corpus of hostile and broken EST requests (issue 11).

Every case is the exact bytes a client writes after the TLS handshake, so a
case can be stored in the regression file (tests/data/hostile-regressions.jsonl)
and replayed byte for byte.  Kinds:

- ``csr``: structure-aware mutations of valid PKCS#10 requests (a DER walker
  picks a TLV and changes its tag, length, contents, or drops, duplicates or
  truncates it), single corrupted bytes, and hand-made ones (version 5,
  explicit EC parameters), to /simpleenroll, /simplereenroll, /serverkeygen;
- ``cmc``: the same mutations of signed Full PKI Requests to /fullcmc;
- ``body``: base64 and framing variants (PEM, wrapped, NUL, multipart-ish);
- ``http``: request-line and header variants (methods, paths, versions,
  bare LF, folding, duplicate or wrong Content-Length, chunked, huge headers).

``well_formed`` marks requests whose HTTP framing is valid: they must get a
response.  The others may get a 4xx or have the connection closed.
"""

from __future__ import annotations

import base64
import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from estkit.protocol import constants as c
from estkit.protocol.cmc import TaggedRequest
from estkit.protocol.cmc_client import build_cmc_request
from estkit.protocol.cmc_crmf import build_crmf
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

from cryptography import x509
from cryptography.x509.oid import NameOID

# openssl ecparam -name prime256v1 -param_enc explicit -outform DER
P256_EXPLICIT = bytes.fromhex(
    "3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"
    "305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886"
    "bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bc"
    "e6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51"
    "f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101")
P256_OID = bytes.fromhex("06082a8648ce3d030107")


@dataclass(frozen=True)
class Case:
    """One request as written on the connection."""

    id: str
    raw: bytes
    well_formed: bool
    # An unsupported HTTP version may get 505: the only 5xx a case may see.
    version_case: bool = False


# -- DER walking ---------------------------------------------------------------------------------------


@dataclass
class Node:
    tag: int
    content: bytes
    children: list[Node] | None  # None: primitive (or not parsed as constructed)

    def encode(self) -> bytes:
        body = b"".join(ch.encode() for ch in self.children) if self.children is not None else self.content
        return bytes([self.tag]) + _length(len(body)) + body


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def parse_der(data: bytes) -> list[Node]:
    """TLVs of ``data``, constructed ones recursively."""
    out: list[Node] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated")
        tag, first = data[pos], data[pos + 1]
        hdr = pos + 2
        if first < 0x80:
            ln = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4:
                raise ValueError("length")
            ln = int.from_bytes(data[hdr:hdr + n], "big")
            hdr += n
        end = hdr + ln
        if end > len(data):
            raise ValueError("truncated")
        content = data[hdr:end]
        children = None
        if tag & 0x20:
            children = parse_der(content)
        out.append(Node(tag, content, children))
        pos = end
    return out


def _all_nodes(nodes: list[Node]) -> list[tuple[list[Node], int]]:
    found: list[tuple[list[Node], int]] = []
    for i, n in enumerate(nodes):
        found.append((nodes, i))
        if n.children is not None:
            found.extend(_all_nodes(n.children))
    return found


_OIDS = [bytes.fromhex(h) for h in ("06032a0304", "06092a864886f70d010101", "06072a8648ce3d0201", P256_OID.hex(),
                                    "06082a8648ce3d030108", "060a2a864886f70d01090e00", "06092a864886f70d010907",
                                    "060355041d", "0603551d11", "06052b81040022", "0600", "06017f")]


def mutate_der(der: bytes, rnd: random.Random) -> tuple[str, bytes]:
    """One structure-aware mutation of ``der``; returns (name, new DER)."""
    op = rnd.choice(["flip", "flip", "truncate", "trailing", "tag", "content", "drop", "dup", "int", "oid",
                     "len-long", "len-indef", "bitstring", "empty", "nest"])
    if op == "flip":
        b = bytearray(der)
        i = rnd.randrange(len(b))
        b[i] = (b[i] + rnd.randrange(1, 256)) % 256
        return f"flip@{i}", bytes(b)
    if op == "truncate":
        i = rnd.randrange(1, len(der))
        return f"truncate@{i}", der[:i]
    if op == "trailing":
        return "trailing", der + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 16)))
    tree = parse_der(der)
    nodes = _all_nodes(tree)
    parent, i = rnd.choice(nodes)
    node = parent[i]
    if op == "tag":
        node.tag = rnd.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x30,
                               0x31, 0xA0, 0xA3, 0x80, 0x1F, 0xFF])
        if not node.tag & 0x20 and node.children is not None:
            node.content, node.children = node.encode()[2:], None
    elif op == "content":
        node.children = None
        node.content = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 1, 2, 5, 17, 64])))
    elif op == "drop":
        del parent[i]
    elif op == "dup":
        parent.insert(i, Node(node.tag, node.content, node.children))
    elif op == "int":
        node.tag, node.children = 0x02, None
        node.content = rnd.choice([b"\x05", b"\xff", b"\x00\x00", b"", b"\x7f" * 40, b"\x80" + b"\x00" * 8,
                                   b"\x01\x00\x00\x00\x00"])
    elif op == "oid":
        node.children = None
        o = rnd.choice(_OIDS)
        node.tag, node.content = o[0], o[2:]
    elif op == "bitstring":
        node.tag, node.children = 0x03, None
        node.content = rnd.choice([b"", b"\x08\x00", b"\x07", b"\x00" + b"\x30\x00"])
    elif op == "empty":
        node.children, node.content = ([] if node.tag & 0x20 else None), b""
    elif op == "nest":
        inner = Node(node.tag, node.content, node.children)
        for _ in range(rnd.choice([2, 30, 100])):
            inner = Node(0x30, b"", [inner])
        parent[i] = inner
    out = b"".join(n.encode() for n in tree)
    if op == "len-long":  # non-minimal (BER) length on the outermost TLV
        body = out[2:] if out[1] < 0x80 else out[2 + (out[1] & 0x7F):]
        out = bytes([out[0], 0x84]) + len(body).to_bytes(4, "big") + body
    elif op == "len-indef":
        body = out[2:] if out[1] < 0x80 else out[2 + (out[1] & 0x7F):]
        out = bytes([out[0], 0x80]) + body + b"\x00\x00"
    return op, out


# -- hand-made CSRs --------------------------------------------------------------------------------------


def csr_with_version(der: bytes, version: int) -> bytes:
    """The CSR with its CertificationRequestInfo version replaced (signature then invalid)."""
    tree = parse_der(der)
    assert tree[0].children is not None
    info = tree[0].children[0]
    assert info.children is not None
    info.children[0] = Node(0x02, version.to_bytes(1, "big", signed=True), None)
    return tree[0].encode()


def csr_with_explicit_ec(der: bytes, tweak: int = 0) -> bytes:
    """A P-256 CSR whose SubjectPublicKeyInfo names the curve by explicit
    parameters (``tweak`` changes one byte of them: a curve nobody knows)."""
    params = bytearray(P256_EXPLICIT)
    if tweak:
        params[tweak % len(params)] ^= 0x01
    tree = parse_der(der)
    for parent, i in _all_nodes(tree):
        n = parent[i]
        if n.tag == 0x06 and n.content == P256_OID[2:]:
            parent[i] = parse_der(bytes(params))[0]
            break
    else:
        raise AssertionError("not a P-256 CSR")
    return tree[0].encode()


# -- requests ----------------------------------------------------------------------------------------------


def http_request(method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                 version: str = "HTTP/1.1", eol: bytes = b"\r\n") -> bytes:
    """A request as bytes, with Host, Content-Length (for a body) and Connection: close."""
    hs = [("Host", "localhost"), *(headers or [])]
    if body or method == "POST":
        hs.append(("Content-Length", str(len(body))))
    hs.append(("Connection", "close"))
    head = f"{method} {path} {version}".encode() + eol
    head += b"".join(k.encode() + b": " + v.encode("latin-1") + eol for k, v in hs)
    return head + eol + body


@dataclass(frozen=True)
class Creds:
    """Credentials the corpus sends (and the log must never show)."""

    user: str
    password: str
    otp_user: str
    otp: str

    def basic(self, otp: bool = False) -> str:
        u, p = (self.otp_user, self.otp) if otp else (self.user, self.password)
        return "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()


WK = c.WELL_KNOWN


def _post(path: str, der: bytes, ctype: str, auth: str, b64: bool = True) -> bytes:
    body = base64.b64encode(der) + b"\n" if b64 else der
    return http_request("POST", path, body, [("Content-Type", ctype), ("Authorization", auth)])


def csr_cases(rnd: random.Random, creds: Creds, n: int, label: str) -> Iterator[Case]:
    """Mutated and hand-made PKCS#10 requests."""
    keys = [generate_key(k) for k in ("ec:P-256", "ec:P-384", "rsa:2048", "ed25519")]
    seeds = [build_csr(k, cn=f"fuzz-{i}", dns=[f"f{i}.example"]) for i, k in enumerate(keys)]
    ops = [c.OP_SIMPLEENROLL, c.OP_SIMPLEREENROLL, c.OP_SERVERKEYGEN]
    p256 = seeds[0]
    special = [("version5", csr_with_version(p256, 5)), ("version-1", csr_with_version(p256, -1)),
               ("version1", csr_with_version(p256, 1)), ("explicit-ec", csr_with_explicit_ec(p256)),
               ("explicit-ec-unknown-curve", csr_with_explicit_ec(p256, 60)),
               ("explicit-ec-bad-b", csr_with_explicit_ec(p256, 100))]
    for name, der in special:
        for op in (c.OP_SIMPLEENROLL, c.OP_SERVERKEYGEN):
            yield Case(f"csr/{name}/{op}", _post(f"{WK}/{label}/{op}", der, c.CT_PKCS10, creds.basic()), True)
    for i in range(n):
        seed = rnd.choice(seeds)
        name, der = mutate_der(seed, rnd)
        if rnd.random() < 0.3:  # a second mutation on top
            try:
                name2, der = mutate_der(der, rnd)
                name += "+" + name2
            except (ValueError, IndexError, RecursionError):
                pass
        op = rnd.choice(ops)
        path = f"{WK}/{label}/{op}" if rnd.random() < 0.7 else f"{WK}/{op}"
        yield Case(f"csr/{i}/{name}/{op}", _post(path, der, c.CT_PKCS10, creds.basic(otp=rnd.random() < 0.2)),
                   True)


def cmc_cases(rnd: random.Random, creds: Creds, n: int, label: str) -> Iterator[Case]:
    """Mutated signed Full PKI Requests (PKCS#10 and CRMF inside)."""
    k1, k2 = generate_key("ec:P-256"), generate_key("rsa:2048")
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmc-fuzz")])
    seeds = [build_cmc_request(k1, requests=[TaggedRequest(1, "tcr", build_csr(k1, cn="cmc-fuzz"))]).der,
             build_cmc_request(k2, requests=[TaggedRequest(2, "crm", build_crmf(k2, cert_req_id=2, subject=subj,
                                                                                  dns=["c.example"]))],
                               shared_secret=b"fuzz-secret", identification="dev").der]
    for i, der in enumerate(seeds):
        yield Case(f"cmc/seed{i}", _post(f"{WK}/{label}/fullcmc", der, c.CT_CMC_REQUEST, creds.basic()), True)
    for i in range(n):
        name, der = mutate_der(rnd.choice(seeds), rnd)
        yield Case(f"cmc/{i}/{name}", _post(f"{WK}/{label}/fullcmc", der, c.CT_CMC_REQUEST, creds.basic()), True)


def body_cases(rnd: random.Random, creds: Creds, label: str) -> Iterator[Case]:
    """Framing variants of otherwise valid requests, and multipart-ish bodies."""
    der = build_csr(generate_key("ec:P-256"), cn="framing")
    b64 = base64.b64encode(der)
    auth = creds.basic()
    bodies: dict[str, bytes] = {
        "ok/plain": b64 + b"\n", "ok/wrapped": b"\r\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)),
        "ok/pem": b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64 + b"\n-----END CERTIFICATE REQUEST-----\n",
        "empty": b"", "spaces": b"   \r\n\t ", "bad-b64": b"!!!!" + b64, "nul": b64[:10] + b"\x00" + b64[10:],
        "padding": b64 + b"====", "binary-der": der, "pem-empty": b"-----BEGIN X-----\n-----END X-----\n",
        "pem-garbage": b"-----BEGIN X-----\n%%%%\n-----END X-----\n", "utf8": "é€😀".encode() * 10,
        "b64-of-garbage": base64.b64encode(b"\x30\x82\xff\xff"), "b64-huge-len": base64.b64encode(b"\x30\x84\x7f\xff\xff\xff"),
        "latin1": bytes(range(128, 256)),
    }
    boundary = "est-fuzz-boundary"
    mp = (f"--{boundary}\r\nContent-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode()
          + b64 + f"\r\n--{boundary}--\r\n".encode())
    for name, body in bodies.items():
        for op in (c.OP_SIMPLEENROLL, c.OP_SERVERKEYGEN, c.OP_FULLCMC):
            ct = c.CT_CMC_REQUEST if op == c.OP_FULLCMC else c.CT_PKCS10
            yield Case(f"body/{name}/{op}", http_request("POST", f"{WK}/{label}/{op}", body,
                                                         [("Content-Type", ct), ("Authorization", auth)]), True)
    for ct in (f"multipart/mixed; boundary={boundary}", "multipart/mixed", f"multipart/form-data; boundary={boundary}",
               "application/pkcs10; boundary=x", "application/PKCS10;;;", "application/pkcs10, text/plain", "", ";",
               "application/x-www-form-urlencoded", "text/plain; charset=utf-16"):
        for op in (c.OP_SIMPLEENROLL, c.OP_SERVERKEYGEN, c.OP_FULLCMC):
            yield Case(f"body/multipart/{ct}/{op}", http_request(
                "POST", f"{WK}/{label}/{op}", mp, [("Content-Type", ct), ("Authorization", auth)]), True)
    half = mp[: len(mp) // 2]
    yield Case("body/multipart-truncated", http_request(
        "POST", f"{WK}/{label}/serverkeygen", half,
        [("Content-Type", f"multipart/mixed; boundary={boundary}"), ("Authorization", auth)]), True)


def http_cases(rnd: random.Random, creds: Creds, label: str) -> Iterator[Case]:
    """Request-line and header variants."""
    auth = creds.basic()
    body = base64.b64encode(build_csr(generate_key("ec:P-256"), cn="hdr")) + b"\n"
    ok_get = f"{WK}/{label}/cacerts"
    for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "G\x01T", "X" * 300):
        for p in (ok_get, f"{WK}/simpleenroll", "/", "*", f"{WK}/../../etc/passwd", f"{WK}//cacerts",
                  f"{WK}/%00/cacerts", f"{WK}/{'a' * 5000}/cacerts", f"{WK}/a/b/c/d", f"{WK}/é/cacerts",
                  "http://evil.example" + ok_get, f"{WK}/cacerts?x=1&x=2#frag", f"{WK}/{label}/cacerts/"):
            raw = http_request(m, p, b"" if m != "POST" else body,
                               [("Content-Type", c.CT_PKCS10)] if m == "POST" else [])
            yield Case(f"http/method/{m[:10]}/{p[:40]}", raw, m.isalpha() and m.isupper() and len(m) < 20
                       and " " not in p and len(p) < 4000 and all(32 < ord(ch) < 127 for ch in p))
    for v in ("HTTP/0.9", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0", "HTTP/1.2", "HTTP/9.9", "http/1.1",
              "HTTP/1.10", "HTTP/1", "HTTP/", "", "HTTPS/1.1", "HTTP/1.1 extra"):
        raw = http_request("GET", ok_get, version=v) if v else f"GET {ok_get}\r\n\r\n".encode()
        yield Case(f"http/version/{v or 'none'}", raw, v in ("HTTP/1.0", "HTTP/1.1"), version_case=True)
    post = lambda extra, eol=b"\r\n": http_request(  # noqa: E731
        "POST", f"{WK}/{label}/simpleenroll", body, [("Content-Type", c.CT_PKCS10), *extra], eol=eol)
    variants: dict[str, tuple[bytes, bool]] = {
        "bare-lf-after-auth": (post([("Authorization", auth)]).replace(b"\r\nAuthorization: " + auth.encode() + b"\r\n",
                                                                       b"\r\nAuthorization: " + auth.encode() + b"\n"), False),
        "bare-lf-everywhere": (post([("Authorization", auth)], eol=b"\n"), False),
        "bare-cr": (post([("Authorization", auth)]).replace(b"\r\nHost", b"\rHost"), False),
        "auth-nul": (post([("Authorization", auth + "\x00")]), False),
        "auth-folded": (post([("Authorization", "Basic"), ("X", "y")]).replace(b"Basic\r\n", b"Basic\r\n " +
                                                                                 auth.split()[1].encode() + b"\r\n"), False),
        "space-before-colon": (post([("Authorization", auth)]).replace(b"Authorization:", b"Authorization :"), False),
        "no-colon": (post([("Authorization", auth)]).replace(b"Authorization: ", b"Authorization "), False),
        "auth-basic-garbage": (post([("Authorization", "Basic !!!notbase64")]), True),
        "auth-basic-nocolon": (post([("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())]), True),
        "auth-basic-latin1": (post([("Authorization", "Basic " + base64.b64encode("é:ü".encode("latin-1")).decode())]), True),
        "auth-basic-empty": (post([("Authorization", "Basic ")]), True),
        "auth-digest-bogus": (post([("Authorization", 'Digest username="x", nonce=, response')]), True),
        "auth-bearer": (post([("Authorization", "Bearer abc")]), True),
        "auth-twice": (post([("Authorization", auth), ("Authorization", auth)]), True),
        "auth-huge": (post([("Authorization", "Basic " + "A" * 9000)]), False),
        "header-huge": (post([("Authorization", auth), ("X-Big", "b" * 20000)]), False),
        "many-headers": (post([("Authorization", auth), *[(f"X-H{i}", "v") for i in range(300)]]), True),
        "cl-dup-differ": (post([("Authorization", auth), ("Content-Length", "3")]), False),
        "cl-negative": (post([("Authorization", auth)]).replace(f"Content-Length: {len(body)}".encode(),
                                                               b"Content-Length: -1"), False),
        "cl-nonnumeric": (post([("Authorization", auth)]).replace(f"Content-Length: {len(body)}".encode(),
                                                                 b"Content-Length: 1e3"), False),
        "cl-huge": (post([("Authorization", auth)]).replace(f"Content-Length: {len(body)}".encode(),
                                                           b"Content-Length: 99999999999999999999"), False),
        "cl-too-small": (post([("Authorization", auth)]).replace(f"Content-Length: {len(body)}".encode(),
                                                                b"Content-Length: 10"), False),
        "te-chunked-bad": (http_request("POST", f"{WK}/{label}/simpleenroll", b"", [
            ("Content-Type", c.CT_PKCS10), ("Authorization", auth), ("Transfer-Encoding", "chunked")]).replace(
            b"Content-Length: 0\r\n", b"") + b"zz\r\nabc\r\n0\r\n\r\n", False),
        "te-chunked-ok": (http_request("POST", f"{WK}/{label}/simpleenroll", b"", [
            ("Content-Type", c.CT_PKCS10), ("Authorization", auth), ("Transfer-Encoding", "chunked")]).replace(
            b"Content-Length: 0\r\n", b"") + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n", True),
        "te-and-cl": (post([("Authorization", auth), ("Transfer-Encoding", "chunked")]), False),
        "te-gzip": (post([("Authorization", auth), ("Content-Encoding", "gzip")]), True),
        "expect-continue": (post([("Authorization", auth), ("Expect", "100-continue")]), True),
        "expect-bogus": (post([("Authorization", auth), ("Expect", "200-ok")]), True),
        "upgrade-h2c": (post([("Authorization", auth), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
                        .replace(b"Connection: close", b"Connection: Upgrade, HTTP2-Settings"), True),
        "upgrade-websocket": (http_request("GET", ok_get, b"", [("Upgrade", "websocket"),
                                                                 ("Sec-WebSocket-Key", "x")]), True),
        "no-host": (http_request("GET", ok_get).replace(b"Host: localhost\r\n", b""), True),
        "host-dup": (http_request("GET", ok_get, b"", [("Host", "evil")]), True),
        "ctl-in-header": (http_request("GET", ok_get, b"", [("X-Ctl", "a\x01b\x7f")]), False),
        "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
        "empty-line-only": (b"\r\n\r\n", False),
        "tls-in-tls": (bytes.fromhex("160301002a0100002603030000"), False),
        "null-bytes": (b"\x00" * 64, False),
        "pipelined": (http_request("GET", ok_get).replace(b"Connection: close\r\n", b"") * 3, True),
    }
    for name, (raw, ok) in variants.items():
        yield Case(f"http/hdr/{name}", raw, ok)
    for i in range(60):  # random junk lines
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
        yield Case(f"http/junk/{i}", junk + b"\r\n\r\n", False)


def corpus(seed: int, creds: Creds, *, label: str, csr_n: int = 1500, cmc_n: int = 600) -> list[Case]:
    """The whole corpus for ``seed`` (the same seed gives the same mutations)."""
    rnd = random.Random(seed)
    gens: list[Callable[[], Iterator[Case]]] = [
        lambda: csr_cases(rnd, creds, csr_n, label), lambda: cmc_cases(rnd, creds, cmc_n, label),
        lambda: body_cases(rnd, creds, label), lambda: http_cases(rnd, creds, label)]
    return [case for g in gens for case in g()]


# -- sending ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What came back for a case: the first response's status line, headers
    and body, or ``status`` None when the server closed without answering."""

    status: int | None
    reason_line: bytes
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""


def send(port: int, ctx: ssl.SSLContext, raw: bytes, timeout: float = 15.0) -> Answer:
    """Write ``raw`` on a fresh TLS connection and read the first response
    (up to its Content-Length) or until the server closes."""
    import socket
    import time
    t0 = time.monotonic()
    buf = b""
    err = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as tcp, \
                ctx.wrap_socket(tcp, server_hostname="localhost") as s:
            s.settimeout(timeout)
            try:
                s.sendall(raw)
            except OSError as exc:  # the server may close before reading everything
                err = f"send: {type(exc).__name__}"
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    hdrs = _headers(buf[:head_end])
                    need = int(hdrs.get("content-length", "0") or 0)
                    if len(buf) >= head_end + 4 + need and buf.startswith(b"HTTP/") and \
                            not buf.startswith(b"HTTP/1.1 100"):
                        break
                    if buf.startswith(b"HTTP/1.1 100"):
                        buf = buf[head_end + 4:]
                        continue
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    err = "timeout"
                    break
                except OSError as exc:
                    err = f"recv: {type(exc).__name__}"
                    break
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        err = err or f"connect: {type(exc).__name__}: {exc}"
    dt = time.monotonic() - t0
    head_end = buf.find(b"\r\n\r\n")
    if not buf.startswith(b"HTTP/") or head_end < 0:
        return Answer(None, b"", {}, buf, dt, err)
    first = buf.split(b"\r\n", 1)[0]
    hdrs = _headers(buf[:head_end])
    try:
        status = int(first.split()[1])
    except (IndexError, ValueError):
        return Answer(None, first, hdrs, buf, dt, "bad status line")
    need = int(hdrs.get("content-length", "0") or 0)
    return Answer(status, first, hdrs, buf[head_end + 4:head_end + 4 + need], dt, err)


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep:
            out[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return out


_LEAKS = (b"ParseError", b"Traceback", b"TagSet", b"aiohttp", b"Python/", b"b'", b"\\x", b"<class")


def problems(case: Case, ans: Answer) -> list[str]:
    """What is wrong with ``ans`` as an answer to ``case`` (empty: fine)."""
    out: list[str] = []
    if ans.error == "timeout":
        out.append("no answer in time (hang)")
    if ans.status is None:
        if case.well_formed:
            out.append(f"well-formed request not answered ({ans.error or 'closed'})")
        return out
    if ans.status >= 500 and not (case.version_case and ans.status == 505):
        out.append(f"answered {ans.status}")
    if case.version_case and not case.well_formed and ans.status < 400:
        out.append(f"unsupported HTTP version answered {ans.status}")
    server = ans.headers.get("server")
    if server not in (None, "estkit"):
        out.append(f"Server header reveals {server!r}")
    # /fullcmc answers its failures with a CMC response (RFC 5272 §3.2.3): not text.
    if ans.status >= 400 and not ans.headers.get("content-type", "").startswith(c.CT_PKCS7):
        body = ans.body
        if any(leak in body for leak in _LEAKS) or body.count(b"\n") > 1 or len(body) > 400:
            out.append(f"error body is not one estkit line: {body[:120]!r}")
        if not ans.headers.get("content-type", "").startswith("text/plain"):
            out.append(f"error without text/plain: {ans.headers.get('content-type')!r}")
    if ans.reason_line and not ans.reason_line.startswith(b"HTTP/1."):
        out.append(f"status line {ans.reason_line[:40]!r}")
    return out
